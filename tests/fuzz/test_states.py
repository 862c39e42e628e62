"""Broken saved states: stream state files, job and window-stream state dicts, the torch
dataset's state, and job snapshots.

A real state is made once (``mixplane stream --state-out``, ``Job.state_dict()``, a snapshot),
then mistyped (one node replaced, dropped or added, anywhere in the tree) or its bytes cut,
flipped or spliced. Each input is loaded where the package loads such state, and the stream is
asked for its next window (a state that loads but breaks planning later is found too):

- ``mixplane stream --resume-from F`` (click's runner): status 0, or 1 with one ``error:`` line;
- ``Job.load_state_dict`` then ``WindowStream.load_state_dict``, and
  ``TokenWindowDataset.load_state_dict``, then one window: a one-line ``MixplaneError``, or the
  window; after an error the job still streams from where it was (a failed load changes nothing);
- ``JobSnapshot.load`` of a folder whose ``snapshot.json`` is broken, then one window.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from mixplane.catalog import Catalog
from mixplane.cli import main
from mixplane.client import Client
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.windows import WindowStream
from mixplane.errors import MixplaneError
from mixplane.job import Job
from mixplane.tokens.tokenizer import load_tokenizer
from tests.conftest import corpus_tokenizer, write_corpus
from tests.fuzz.harness import BYTE_MUTATIONS, SEED, Tally, count, mistype, one_line, rng_for

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32
JOB = ["--mixture", json.dumps(MIX), "--chunk-size", "5", "--seed", "3", "--seq-len", str(SEQ)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(catalog home, tokenizer.json, a stream state file written by the CLI)."""
    root = tmp_path_factory.mktemp("fuzz-states")
    write_corpus(root / "data", files=2, per_file=150)
    with Catalog.open(root / "home") as catalog:
        catalog.register(
            "corpus", root / "data", properties={"language": "meta.language"}, progress=False
        )
        corpus_tokenizer(catalog, samples=100).save(root / "tokenizer.json")
    state = root / "state.json"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(root / "home"),
            "stream",
            "--tokenizer",
            str(root / "tokenizer.json"),
            *JOB,
            "--max-windows",
            "3",
            "--out",
            str(root / "windows.jsonl"),
            "--state-out",
            str(state),
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return root / "home", root / "tokenizer.json", state


def broken_json(doc: Any, label: str) -> bytes:
    """The document mistyped (two inputs in three) or its JSON bytes mutated."""
    rng = rng_for(label)
    if rng.random() < 2 / 3:
        for _ in range(rng.randint(1, 2)):
            doc = mistype(doc, rng)
        return json.dumps(doc).encode()
    mutation = rng.choice(sorted(BYTE_MUTATIONS))
    return BYTE_MUTATIONS[mutation](json.dumps(doc).encode(), rng)


def mistyped(doc: Any, label: str) -> Any:
    """The document with one or two nodes mistyped (a state handed over as a dict)."""
    rng = rng_for(label)
    for _ in range(rng.randint(1, 2)):
        doc = mistype(doc, rng)
    return doc


def in_process(call: Callable[[], Any], label: str) -> str:
    try:
        call()
    except MixplaneError as exc:
        one_line(str(exc), label)
        return "error"
    except Exception as exc:
        pytest.fail(f"{label}: {type(exc).__name__}: {exc!s:.2000} (seed {SEED})")
    return "accepted"


def test_broken_states(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    home, tokenizer_path, state_file = setup
    saved = orjson.loads(state_file.read_bytes())
    tally = Tally("states")
    n = count("states")
    runner = CliRunner()
    for i in range(n // 4):  # the CLI's --resume-from
        label = f"states/cli/{i}"
        path = tmp_path / f"state-{i}.json"
        path.write_bytes(broken_json(saved, label))
        result = runner.invoke(
            main,
            [
                "--home",
                str(home),
                "stream",
                "--tokenizer",
                str(tokenizer_path),
                *JOB,
                "--max-windows",
                "1",
                "--out",
                str(tmp_path / "w.jsonl"),
                "--resume-from",
                str(path),
            ],
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            exc = result.exception
            pytest.fail(
                f"{label}: the CLI raised {type(exc).__name__}: {exc!s:.2000} (seed {SEED})"
            )
        if result.exit_code:
            lines = result.stderr.strip().splitlines()
            assert result.exit_code == 1 and len(lines) == 1, f"{label}: {result.stderr!r}"
            assert lines[0].startswith("error: "), label
        tally.add("cli --resume-from", "error" if result.exit_code else "accepted")

    tokenizer = load_tokenizer(str(tokenizer_path))
    with Client.local(home) as client:

        def submit() -> Job:
            return client.submit("s", mixture=MIX, chunk_size=5, seed=3)

        job = submit()
        windows = WindowStream(job, tokenizer, SEQ, prefetch=0)
        next(iter(windows))
        job_state, window_state = job.state_dict(), windows.state_dict()
        expected = next(iter(windows)).input_ids.tolist()  # the window after the saved position
        for i in range(n // 4):  # Job.load_state_dict, then WindowStream.load_state_dict
            label = f"states/job/{i}"
            part = "job" if i % 2 else "window"
            doc = mistyped(job_state if part == "job" else window_state, label)
            fresh = submit()
            stream = WindowStream(fresh, tokenizer, SEQ, prefetch=0)

            def load(
                doc: Any = doc, fresh: Job = fresh, stream: WindowStream = stream, part: str = part
            ) -> None:
                if part == "job":
                    fresh.load_state_dict(doc)
                    stream.load_state_dict(window_state)
                else:
                    fresh.load_state_dict(job_state)
                    stream.load_state_dict(doc)
                next(iter(stream))

            outcome = in_process(load, label)
            if outcome == "error":  # nothing half-loaded: the real states still load and agree
                fresh.load_state_dict(job_state)
                stream = WindowStream(fresh, tokenizer, SEQ, prefetch=0)
                stream.load_state_dict(window_state)
                again = next(iter(stream)).input_ids.tolist()
                assert again == expected, f"{label}: a failed load changed the job"
            tally.add(f"{part} load_state_dict", outcome)
        job.close()

        torch_part(client, tokenizer, n // 4, tally)
        snapshot_part(job_state, client, tmp_path, n - 3 * (n // 4), tally)
    print(tally.report())
    assert tally.inputs >= count("states")


def torch_part(client: Client, tokenizer: Any, n: int, tally: Tally) -> None:
    """``TokenWindowDataset.load_state_dict``: the state is taken at the next iteration."""
    pytorch = pytest.importorskip("mixplane.integrations.pytorch")
    job = client.submit("t", mixture=MIX, chunk_size=5, seed=3)
    dataset = pytorch.TokenWindowDataset(job, tokenizer, SEQ, dp_group=0, group_rank=0)
    next(iter(dataset))
    saved = dataset.state_dict()
    for i in range(n):
        label = f"states/torch/{i}"
        doc = mistyped(saved, label) if i % 3 else None
        fresh = pytorch.TokenWindowDataset(job, tokenizer, SEQ, dp_group=0, group_rank=0)

        def load(doc: Any = doc, fresh: Any = fresh, label: str = label) -> None:
            if doc is None:  # bytes that are not JSON never reach the dataset; a bare value
                doc = rng_for(label).choice([None, 3, "state", [], {"version": 1}])
            fresh.load_state_dict(doc)
            next(iter(fresh))

        tally.add("TokenWindowDataset", in_process(load, label))
    job.close()


def snapshot_part(job_state: Any, client: Client, tmp_path: Path, n: int, tally: Tally) -> None:
    """``JobSnapshot.load`` of a folder whose snapshot.json is broken, then a window."""
    job = client.submit("snap", mixture=MIX, chunk_size=5, seed=3)
    good = job.snapshot().save(tmp_path / "snapshot")
    job.close()
    meta = json.loads((good / "snapshot.json").read_text())
    for i in range(n):
        label = f"states/snapshot/{i}"
        folder = tmp_path / f"snap-{i}"
        shutil.copytree(good, folder)
        (folder / "snapshot.json").write_bytes(broken_json(meta, label))

        def load(folder: Path = folder) -> None:
            snap = JobSnapshot.load(folder)
            restored = Job.from_snapshot(snap)
            try:
                next(iter(restored.stream(0, 0, 0)))
            finally:
                restored.close()

        tally.add("JobSnapshot.load", in_process(load, label))
        shutil.rmtree(folder)
