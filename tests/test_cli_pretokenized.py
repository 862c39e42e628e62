"""The command line over pre-tokenized data: register with --tokenizer, stream the stored ids,
one-line errors. Issue 15. Runs the real ``mixplane`` command."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from mixplane.tokens import train_bpe
from tests.conftest import run_cli
from tests.tokendata import documents, stored, write_megatron, write_memmap


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("cli")
    tok = train_bpe(["one two three four five six " * 30], vocab_size=280)
    tok.save(root / "tokenizer.json")
    eos = tok.eos_id
    assert eos is not None
    docs = documents(31, 60, vocab=tok.vocab_size, eos=eos)
    write_megatron(root / "data" / "web" / "part", docs[:30], "uint16")
    write_megatron(root / "data" / "code" / "part", docs[30:], "uint16")
    return root, root / "tokenizer.json", docs


def test_register_and_stream_megatron(data: tuple[Path, Path, list], tmp_path: Path) -> None:  # type: ignore[type-arg]
    root, tokenizer, docs = data
    home = tmp_path / "home"
    proc = run_cli(
        home,
        "register",
        "m",
        str(root / "data"),
        "--tokenizer",
        str(tokenizer),
        "--path-pattern",
        r"/(?P<source>[a-z]+)/part",
        "--json",
    )
    info = json.loads(proc.stdout)
    assert (info["format"], info["files"], info["samples"]) == ("megatron", 2, 60)
    assert info["properties"] == ["source"]
    proc = run_cli(
        home,
        "stream",
        "--tokenizer",
        str(tokenizer),
        "--mixture",
        '{"source=web": 1}',
        "--seq-len",
        "8",
        "--max-windows",
        "20",
    )
    windows = [orjson.loads(line) for line in proc.stdout.splitlines()]
    tokens = [windows[0]["input_ids"][0]] + [t for w in windows for t in w["labels"]]
    assert len(tokens) == 20 * 8 + 1
    eos = json.loads(tokenizer.read_text())["added_tokens"][0]["id"]
    # the stream is the web documents' stored ids, one after the other (in the job's order;
    # a chunk of the default size holds several epochs of these 30 documents)
    web = [stored([d], eos) for d in docs[:30]]
    at = 0
    while at < len(tokens):
        rest = tokens[at:]
        match = [d for d in web if d[: len(rest)] == rest[: len(d)]]
        assert len(match) == 1, f"no stored document at token {at}"
        at += len(match[0])


def test_errors_are_one_line(data: tuple[Path, Path, list], tmp_path: Path) -> None:  # type: ignore[type-arg]
    root, tokenizer, docs = data
    home = tmp_path / "home"
    write_memmap(tmp_path / "raw.npy", docs, "uint16", metadata=False)
    cases = [
        (["m", str(root / "data" / "web" / "part.idx")], "pass tokenizer=NAME|PATH"),
        (["r", str(tmp_path / "raw.npy"), "--tokenizer", str(tokenizer)], "--token-dtype uint16"),
        (
            [
                "r",
                str(tmp_path / "raw.npy"),
                "--tokenizer",
                str(tokenizer),
                "--token-dtype",
                "uint16",
            ],
            "follow the last EOS",
        ),
    ]
    for args, says in cases:
        proc = run_cli(home, "register", *args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert "no datasets registered" in run_cli(home, "ls").stdout
