"""``mixplane stream``: the token windows one rank receives, as JSON lines, resumable by file.

Most runs go through click's ``CliRunner`` in this process (a subprocess costs ~0.7 s of
imports, and the resume matrix needs dozens of runs); the tests of separate processes and of
user errors run the real command line (``run_cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from mixplane.catalog.catalog import Catalog
from mixplane.cli import main
from mixplane.client import Client
from tests.conftest import corpus_tokenizer, run_cli, write_corpus
from tests.resume import check_resume

MIX = '{"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}'
SEQ = 48
# chunks of 5 samples hold ~200 tokens: a chunk yields 0 to 6 windows of 48 tokens, and windows
# hold tokens carried over from earlier chunks of their component
JOB = [
    "--mixture",
    MIX,
    "--unit",
    "samples",
    "--chunk-size",
    "5",
    "--seed",
    "3",
    "--seq-len",
    str(SEQ),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A catalog holding 'corpus' (1200 samples, three languages) and a trained tokenizer."""
    root = tmp_path_factory.mktemp("stream")
    write_corpus(root / "data")
    with Catalog.open(root / "home") as catalog:
        catalog.register(
            "corpus",
            root / "data",
            properties={"language": "meta.language", "quality": "meta.quality"},
            progress=False,
        )
        trained = corpus_tokenizer(catalog)
    tokenizer = root / "tokenizer.json"
    trained.save(tokenizer)
    return root / "home", tokenizer


def stream(setup: tuple[Path, Path], *args: str, code: int = 0) -> Any:
    """``mixplane --home H stream --tokenizer T ARGS`` in this process."""
    home, tokenizer = setup
    result = CliRunner().invoke(
        main, ["--home", str(home), "stream", "--tokenizer", str(tokenizer), *args]
    )
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    return result


def windows_of(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_windows_hold_consistent_fields(setup: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl"
    result = stream(setup, *JOB, "--max-windows", "40", "--out", str(out), "--json")
    summary = orjson.loads(result.stdout)  # the windows went to a file: the summary to stdout
    windows = windows_of(out)
    assert len(windows) == summary["windows"] == 40
    assert summary["tokens"] == 40 * SEQ
    assert sorted(summary["components"].values()) == ["language=de", "language=en", "language=fr"]
    previous: dict[int, dict[str, Any]] = {}
    for k, w in enumerate(windows):
        assert w["window"] == k
        assert summary["components"][str(w["component_id"])] == w["component"]
        assert w["domain_ids"] == [w["component_id"]] * SEQ
        assert len(w["input_ids"]) == len(w["labels"]) == len(w["position_ids"]) == SEQ
        assert w["labels"][:-1] == w["input_ids"][1:]  # labels are the inputs shifted by one
        assert w["cu_seqlens"][0] == 0 and w["cu_seqlens"][-1] == SEQ
        starts = w["cu_seqlens"][:-1]
        assert [i for i, p in enumerate(w["position_ids"]) if p == 0] == starts
        before = previous.get(w["component_id"])
        if before is not None:  # a component's windows overlap by one token
            assert w["input_ids"][0] == before["labels"][-1]
        previous[w["component_id"]] = w
    assert {w["component"] for w in windows} == set(summary["components"].values())


def test_json_map_is_the_jobs_components(setup: tuple[Path, Path]) -> None:
    result = stream(setup, *JOB, "--max-windows", "3", "--json")
    summary = orjson.loads(result.stderr)  # the windows went to stdout: the summary to stderr
    assert len(result.stdout.splitlines()) == summary["windows"] == 3
    with Client.local(setup[0]) as client:
        job = client.submit("x", unit="samples", mixture=orjson.loads(MIX))
        selectors = {str(i): c.selector for i, c in enumerate(job.result.components)}
    assert summary["components"] == selectors
    assert summary["first_window"] == 0 and summary["ended"] is False


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--unit", "tokens", "--chunk-size", "80"],
        ["--dp-groups", "2", "--dp-group", "1", "--workers", "2", "--worker", "1"],
        ["--ranks-per-group", "2", "--rank", "1"],
    ],
    ids=["samples", "tokens", "group-1-worker-1", "rank-1"],
)
def test_resume_continues_exactly(
    setup: tuple[Path, Path], tmp_path: Path, extra: list[str]
) -> None:
    n = 10
    args = [*JOB, *extra]
    stream(setup, *args, "--max-windows", str(n), "--out", str(tmp_path / "full.jsonl"))
    full = windows_of(tmp_path / "full.jsonl")
    assert len(full) == n
    states = {}  # k -> the state file after k windows
    for k in range(1, n):
        states[k] = tmp_path / f"state-{k}.json"
        out = tmp_path / f"first-{k}.jsonl"
        stream(
            setup, *args, "--max-windows", str(k), "--out", str(out), "--state-out", str(states[k])
        )
        assert windows_of(out) == full[:k]

    def restored_after(k: int) -> list[dict[str, Any]]:
        out = tmp_path / f"rest-{k}.jsonl"
        rest = ["--max-windows", str(n - k), "--out", str(out)]
        stream(setup, *args, *rest, "--resume-from", str(states[k]))
        return windows_of(out)

    # chunk[k]: the chunk window k (1-based) came from, which the state after it points at
    chunk = {k: orjson.loads(states[k].read_bytes())["window_state"]["stream"]["j"] for k in states}
    inside = [k for k in range(1, n - 1) if chunk[k + 1] == chunk[k]]  # resume mid-chunk
    across = [k for k in range(1, n - 1) if chunk[k + 1] != chunk[k]]  # at a chunk's end
    assert len(inside) >= 2 and len(across) >= 2, chunk
    check_resume(full, restored_after, [*inside[:2], *across[:2], n - 1])
    assert not list(tmp_path.glob(".*.tmp"))  # the state files were renamed into place


def test_resume_twice_in_a_row(setup: tuple[Path, Path], tmp_path: Path) -> None:
    full, state = tmp_path / "full.jsonl", tmp_path / "s.json"
    stream(setup, *JOB, "--max-windows", "12", "--out", str(full))
    parts = []
    for k, n in enumerate((3, 4, 5)):
        out = tmp_path / f"{k}.jsonl"
        resume = ["--resume-from", str(state)] if k else []
        stream(
            setup,
            *JOB,
            "--max-windows",
            str(n),
            "--out",
            str(out),
            "--state-out",
            str(state),
            *resume,
        )
        parts += windows_of(out)
    assert parts == windows_of(full)
    assert [w["window"] for w in parts] == list(range(12))


def test_separate_processes_agree(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """The issue's example, each run its own process: 5 windows, then 7 more from the state
    file, equal the first 12 of one run; and two runs write the same bytes."""
    home, tokenizer = setup
    args = ["stream", "--tokenizer", str(tokenizer), *JOB]
    one = run_cli(home, *args, "--max-windows", "12").stdout
    two = run_cli(home, *args, "--max-windows", "12").stdout
    assert one == two and len(one.splitlines()) == 12
    state = tmp_path / "s.json"
    first = run_cli(home, *args, "--max-windows", "5", "--state-out", str(state)).stdout
    rest = run_cli(home, *args, "--max-windows", "7", "--resume-from", str(state)).stdout
    assert first + rest == one


def test_dp_groups_receive_different_windows(setup: tuple[Path, Path]) -> None:
    topology = ["--dp-groups", "2", "--max-windows", "8"]
    zero = stream(setup, *JOB, *topology, "--dp-group", "0").stdout.splitlines()
    one = stream(setup, *JOB, *topology, "--dp-group", "1").stdout.splitlines()
    ids = [{tuple(orjson.loads(w)["input_ids"]) for w in lines} for lines in (zero, one)]
    assert len(zero) == len(one) == 8
    assert not ids[0] & ids[1]
    again = stream(setup, *JOB, *topology, "--ranks-per-group", "2", "--rank", "1").stdout
    assert again.splitlines() == zero  # every rank of a group receives the same windows


def test_state_at_the_end_of_the_job(setup: tuple[Path, Path], tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    small = [*JOB, "--where", "quality < 0.02", "--on-exhausted", "redistribute"]
    result = stream(setup, *small, "--max-windows", "1000", "--state-out", str(state), "--json")
    summary = orjson.loads(result.stderr)
    assert summary["ended"] is True and 0 < summary["windows"] < 1000
    again = stream(setup, *small, "--resume-from", str(state), "--json")
    assert again.stdout == ""
    assert orjson.loads(again.stderr)["windows"] == 0


ERROR_JOB = [*JOB, "--dp-groups", "2", "--workers", "2"]


@pytest.fixture(scope="module")
def saved(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A state file's bytes after two windows of ``ERROR_JOB``."""
    state = tmp_path_factory.mktemp("saved") / "s.json"
    stream(setup, *ERROR_JOB, "--max-windows", "2", "--state-out", str(state))
    return state.read_bytes()


def corrupt(path: Path, edit: Any) -> None:
    data = orjson.loads(path.read_bytes())
    edit(data)
    path.write_bytes(orjson.dumps(data))


@pytest.mark.parametrize(
    ("args", "prepare", "says"),
    [
        (["--resume-from", "{dir}/missing.json"], None, "missing.json: no such file"),
        (["--resume-from", "{state}", "--dp-group", "1"], None, "--dp-group 0 (saved) vs 1"),
        (["--resume-from", "{state}", "--seq-len", "32"], None, "--seq-len 48 (saved) vs 32"),
        (["--resume-from", "{state}", "--seed", "4"], None, "--seed 3 (saved) vs 4"),
        (["--resume-from", "{state}", "--workers", "1"], None, "--ranks-per-group/--workers"),
        (["--resume-from", "{state}"], lambda p: p.write_text('{"form'), "is not JSON"),
        (["--resume-from", "{state}"], lambda p: p.write_text("[1]"), "not a stream state file"),
        (
            ["--resume-from", "{state}"],
            lambda p: corrupt(p, lambda d: d.pop("window_state")),
            "corrupt (missing or mistyped: window_state)",
        ),
        (
            ["--resume-from", "{state}"],
            lambda p: corrupt(p, lambda d: d["window_state"].pop("packer")),
            "the window stream state is corrupt (KeyError",
        ),
        (
            ["--resume-from", "{state}"],
            lambda p: corrupt(p, lambda d: d["job_state"].update(spec="0")),
            "different job definition",
        ),
        (
            ["--resume-from", "{state}"],
            lambda p: corrupt(p, lambda d: d.update(tokenizer_fingerprint="0")),
            "(fingerprints differ)",
        ),
        (["--dp-group", "2"], None, "--dp-group 2 is outside the topology"),
        (["--bos"], None, "no beginning-of-sequence token; drop --bos"),
    ],
    ids=[
        "missing-file",
        "other-dp-group",
        "other-seq-len",
        "other-seed",
        "other-topology",
        "not-json",
        "not-a-state",
        "missing-key",
        "corrupt-window-state",
        "other-job",
        "other-tokenizer",
        "outside-topology",
        "bos-without-token",
    ],
)
def test_user_errors_are_one_line(
    setup: tuple[Path, Path],
    saved: bytes,
    tmp_path: Path,
    args: list[str],
    prepare: Any,
    says: str,
) -> None:
    home, tokenizer = setup
    state = tmp_path / "s.json"
    state.write_bytes(saved)
    if prepare is not None:
        prepare(state)
    args = [a.format(dir=tmp_path, state=state) for a in args]
    proc = run_cli(home, "stream", "--tokenizer", str(tokenizer), *ERROR_JOB, *args, check=False)
    assert proc.returncode == 1, proc.stderr
    # (a samples job streamed as tokens also gets its one-line warning)
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert says in lines[0]
    assert proc.stdout == ""


def test_help_names_the_options() -> None:
    result = CliRunner().invoke(main, ["stream", "--help"])
    assert result.exit_code == 0
    for option in ("--tokenizer", "--seq-len", "--max-windows", "--state-out", "--resume-from"):
        assert option in result.output
    assert "one JSON object per line" in result.output


def test_segments_are_documents(setup: tuple[Path, Path]) -> None:
    """Inside a window, each segment after the first starts a document of the corpus right
    after the previous document's end-of-sequence token."""
    from mixplane.tokens import load_tokenizer

    tokenizer = load_tokenizer(str(setup[1]))
    lines = stream(setup, *JOB, "--max-windows", "6").stdout.splitlines()
    starts = 0
    for window in map(orjson.loads, lines):
        ids = window["input_ids"]
        for start in window["cu_seqlens"][1:-1]:
            assert ids[start - 1] == tokenizer.eos_id
            assert tokenizer.decode(ids[start : start + 3]).startswith("doc ")
            starts += 1
    assert starts > 0
