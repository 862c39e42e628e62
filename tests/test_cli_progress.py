"""Long commands show a progress bar on a terminal (stderr is a pseudo-terminal here) and none
when stderr is not one (the other CLI tests: their stderr is a pipe)."""

from __future__ import annotations

import csv
import fcntl
import os
import pty
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from tests.conftest import COMMAND, run_cli, write_corpus

MIX = '{"language=en": 0.5, "language=de": 0.5}'


def on_terminal(home: Path, *args: str) -> tuple[int, str]:
    """``mixplane --home HOME ARGS`` with stderr on a pseudo-terminal; (exit status, what the
    terminal showed)."""
    env = {k: v for k, v in os.environ.items() if k != "MIXPLANE_HOME"}
    master, slave = pty.openpty()
    # a terminal 120 columns wide (a new pseudo-terminal has none: bars would be empty)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [*COMMAND, "--home", str(home), *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    shown = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        shown.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(shown).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("progress")
    write_corpus(root / "data")
    code, shown = on_terminal(
        root / "home", "register", "corpus", str(root / "data"), "--property",
        "language=meta.language",
    )  # fmt: skip
    assert code == 0, shown
    assert "%|" in shown  # registration: a bar
    return root / "home"


def test_tokenizer_train_and_stream_show_bars(home: Path, tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer.json"
    code, shown = on_terminal(
        home, "tokenizer", "train", "--dataset", "corpus", "--vocab-size", "300",
        "--samples", "200", "--out", str(tokenizer),
    )  # fmt: skip
    assert code == 0, shown
    assert "Merges" in shown or "Count pairs" in shown  # the BPE trainer's own bars
    out = tmp_path / "w.jsonl"
    code, shown = on_terminal(
        home, "stream", "--tokenizer", str(tokenizer), "--mixture", MIX, "--seq-len", "32",
        "--max-windows", "50", "--out", str(out),
    )  # fmt: skip
    assert code == 0, shown
    assert "50/50" in shown and "window" in shown
    assert len(out.read_bytes().splitlines()) == 50


def test_replay_shows_a_bar(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    with trace.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "domain", "loss_sum", "tokens"])
        for step in range(1, 31):
            for domain, loss in (("a", 3.0), ("b", 2.0 + 1.0 / step)):
                w.writerow([step, domain, loss * 100, 100])
    out = tmp_path / "w.csv"
    args = ["replay", "--algorithm", "loss-proportional", "--losses", str(trace), "--out", str(out)]
    code, shown = on_terminal(tmp_path / "h", *args)
    assert code == 0, shown
    assert "replay" in shown and "30/30" in shown
    plain = run_cli(tmp_path / "h", *args)  # stderr a pipe: no bar
    assert "%|" not in plain.stderr


def test_count_tokens_shows_a_bar(home: Path) -> None:
    code, shown = on_terminal(home, "count-tokens", "--tokenizer", "qwen", "--workers", "2")
    assert code == 0, shown
    assert "count-tokens" in shown and "%|" in shown
    plain = run_cli(home, "count-tokens", "--tokenizer", "qwen")  # stderr a pipe: no bar
    assert "%|" not in plain.stderr and "cached 1200 samples" in plain.stdout
