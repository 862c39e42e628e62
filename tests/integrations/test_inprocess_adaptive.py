"""Adaptive mixing across ranks with an in-process job: every rank plans what one planner does.

Two gloo processes each open the same ADO job (dp_groups=2) from one snapshot, with no server,
and send each step's loss through ``LossFeedback`` (``adaptive_proc.py``): every rank applies
the reduced numbers to its own job from the greatest change point. Both ranks' weights and
mixture logs are identical at every step, and each rank's batches are the ones a single
planner (one job serving both DP groups in this process, fed the same numbers) delivers to
its DP group; a run stopped halfway and resumed in new processes continues it exactly. The
negative controls: each rank applying at its own change point makes the ranks' plans differ
(the comparison sees it), and a rank whose mixture differs is refused on both ranks.
Also ``Job.feedback(..., at=)`` itself in one process.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdata")

from mixplane.chunking import Topology  # noqa: E402
from mixplane.client import Client  # noqa: E402
from mixplane.client.snapshot import JobSnapshot  # noqa: E402
from mixplane.client.windows import WindowStream  # noqa: E402
from mixplane.errors import PlanError  # noqa: E402
from mixplane.integrations.pytorch import domain_loss_sums  # noqa: E402
from mixplane.job import Job  # noqa: E402
from tests.conftest import register_language_corpus  # noqa: E402
from tests.integrations.adaptive_proc import (  # noqa: E402
    BATCH,
    SEQ,
    batch_digest,
    step_loss,
)

ROOT = Path(__file__).resolve().parents[2]
MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
STEPS = 24
HALF = 12
ADO = {
    "start_step": 6,
    "refit_interval": 6,
    "ignore_steps": 2,
    "subsample": 1,
    "savgol_window": 5,
    "seq_len": SEQ,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Any]]:
    """A snapshot of an ADO job over two DP groups, and its tokenizer."""
    root = tmp_path_factory.mktemp("inprocess-adaptive")
    with Client.local(root / "home") as client:
        tokenizer = register_language_corpus(client, root)
        job = client.submit(
            "run",
            mixture=MIX,
            chunk_size=400,
            seed=11,
            tokenizer=tokenizer,
            algorithm="ado",
            algorithm_options=ADO,
            topology=Topology(dp_groups=2),
        )
        job.snapshot().save(root / "snap")
        proportional = client.submit(  # new weights at every step (Job.feedback(at=) tests)
            "lp",
            mixture=MIX,
            chunk_size=400,
            seed=11,
            tokenizer=tokenizer,
            algorithm="loss-proportional",
            topology=Topology(dp_groups=2),
        )
        proportional.snapshot().save(root / "snap-lp")
    yield root / "snap", root / "tokenizer.json", tokenizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ranks(
    corpus: tuple[Path, Path, Any], out: Path, *extra: str
) -> list[subprocess.Popen[str]]:
    """Both ranks of a gloo group running ``adaptive_proc``."""
    snapshot, tokenizer, _ = corpus
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
        }
        args = [str(snapshot), str(tokenizer), f"{out}.{rank}.json", *extra]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.integrations.adaptive_proc", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen[str]], out: Path) -> list[dict[str, Any]]:
    """Each rank's output, once both have exited cleanly."""
    for p in procs:
        _out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    return [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in range(2)]


def run_ranks(corpus: tuple[Path, Path, Any], out: Path, *extra: str) -> list[dict[str, Any]]:
    return finish(start_ranks(corpus, out, *extra), out)


def single_planner(corpus: tuple[Path, Path, Any], steps: int) -> list[dict[str, Any]]:
    """One job serving both DP groups in this process, fed each step's summed numbers: what
    each DP group receives (in ``adaptive_proc``'s output form)."""
    snapshot, _, tokenizer = corpus
    job = Job.from_snapshot(JobSnapshot.load(snapshot), tokenizer)
    k = job.num_components
    streams = [iter(WindowStream(job, tokenizer, SEQ, dp_group=g)) for g in range(2)]
    out: list[dict[str, Any]] = [{"steps": []} for _ in range(2)]
    seen = [0.0] * k
    try:
        for step in range(1, steps + 1):
            batches = [list(itertools.islice(s, BATCH)) for s in streams]
            sums = torch.zeros(k, dtype=torch.float64)
            counts = torch.zeros(k, dtype=torch.float64)
            for windows in batches:
                domains = torch.from_numpy(
                    np.stack([w.domain_ids for w in windows]).astype(np.int64)
                )
                s, c = domain_loss_sums(step_loss(domains, seen), domains, k)
                sums, counts = sums + s, counts + c
            at = job.feedback(step, sums.numpy(), counts.numpy())
            seen = [a + float(b) for a, b in zip(seen, counts.tolist(), strict=True)]
            for g, windows in enumerate(batches):
                ids = np.stack([w.input_ids for w in windows])
                components = np.array([w.component for w in windows])
                out[g]["steps"].append(
                    {
                        "batch": batch_digest(ids, components),
                        "weights": job.weights.tolist(),
                        "log_len": len(job.mixture_log),
                        "at": at,
                    }
                )
    finally:
        for s in streams:
            s.close()  # type: ignore[attr-defined]
    for g in range(2):
        out[g]["mixture_log"] = job.mixture_log
    return out


def assert_same_plan(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two ranks planned the same: weights, mixture log length and change chunk at every step,
    and the same mixture log."""
    for x, y in zip(a["steps"], b["steps"], strict=True):
        assert (x["weights"], x["log_len"], x["at"]) == (y["weights"], y["log_len"], y["at"])
    assert a["mixture_log"] == b["mixture_log"]


@pytest.mark.integration
def test_ranks_plan_as_one_planner_and_resume_exactly(
    corpus: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    stop = ("--stop-after", str(HALF), "--state-out", str(tmp_path / "st"))
    halves = start_ranks(corpus, tmp_path / "half", "--steps", str(STEPS), *stop)
    full = run_ranks(corpus, tmp_path / "full", "--steps", str(STEPS))
    half = finish(halves, tmp_path / "half")
    assert [r["error"] for r in full] == [None, None]
    assert [len(r["steps"]) for r in full] == [STEPS, STEPS]
    log = full[0]["mixture_log"]
    changes = [e for e in log if e["cause"] == "adapt"]
    assert len(changes) >= STEPS - ADO["start_step"] - 2  # ADO moved the weights
    assert not np.allclose(changes[-1]["weights"], log[0]["weights"], atol=1e-3)
    assert_same_plan(full[0], full[1])  # identical plans on both ranks, at every step

    chunks = [c for r in full for c in r["chunks"]]
    assert sorted(c["index"] for c in chunks) == list(range(len(chunks)))  # each chunk once
    samples = [tuple(x) for c in chunks for x in c["samples"]]
    assert len(samples) == len(set(samples))  # every sample at most once, over both DP groups
    for c in chunks:  # each chunk planned with the mixture the log has in force for it
        assert c["version"] == max(e["version"] for e in log if e["chunk"] <= c["index"])
    assert len({c["version"] for c in chunks}) > 3

    reference = single_planner(corpus, STEPS)
    for rank in range(2):  # what one planner delivers to each DP group, weights and all
        assert [s["batch"] for s in full[rank]["steps"]] == [
            s["batch"] for s in reference[rank]["steps"]
        ]
        assert_same_plan(full[rank], reference[rank])

    rest = run_ranks(
        corpus, tmp_path / "rest", "--steps", str(STEPS), "--resume-from", str(tmp_path / "st")
    )
    for rank in range(2):
        resumed = half[rank]["steps"] + rest[rank]["steps"]
        assert [s["batch"] for s in resumed] == [s["batch"] for s in full[rank]["steps"]]
        assert [s["weights"] for s in resumed] == [s["weights"] for s in full[rank]["steps"]]
        assert rest[rank]["mixture_log"] == log


@pytest.mark.integration
def test_negative_control_own_change_points_diverge(
    corpus: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    """Each rank applies the same numbers at its own change point: the ranks' mixture logs
    differ (the checks above would fail), so the agreed chunk is what keeps them equal."""
    runs = run_ranks(corpus, tmp_path / "own", "--steps", str(STEPS), "--mode", "own-at")
    with pytest.raises(AssertionError):
        assert_same_plan(runs[0], runs[1])
    own = [[e["chunk"] for e in r["mixture_log"]] for r in runs]
    assert own[0] != own[1]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("diverge", "the ranks run a different mixture"),  # rank 1 changed its mixture alone
        ("other-job", "the ranks run a different job"),  # rank 1 opened another job
        ("subgroup", "takes the feedback of all its ranks"),  # each rank reduces alone
    ],
)
def test_ranks_that_would_plan_apart_are_refused_on_every_rank(
    corpus: tuple[Path, Path, Any], tmp_path: Path, mode: str, error: str
) -> None:
    runs = run_ranks(corpus, tmp_path / mode, "--steps", "4", "--mode", mode)
    for r in runs:
        assert r["steps"] == []
        assert error in r["error"]


# -- Job.feedback(at=) in one process ------------------------------------------------------------
def _proportional(corpus: tuple[Path, Path, Any]) -> Job:
    """A job whose algorithm answers new weights at every step (loss-proportional)."""
    return Job.from_snapshot(JobSnapshot.load(corpus[0].parent / "snap-lp"), corpus[2])


def test_feedback_at_below_the_change_point_is_refused_and_changes_nothing(
    corpus: tuple[Path, Path, Any],
) -> None:
    job = _proportional(corpus)
    loss, count = np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0])
    stream = iter(WindowStream(job, corpus[2], SEQ))
    try:
        list(itertools.islice(stream, 30))  # consumed some chunks
        point = job.change_point()
        assert point > 0
        before = (job.state_dict(), job.feedback_received)
        with pytest.raises(PlanError, match=f"change point is {point}"):
            job.feedback(1, loss, count, at=point - 1)
        assert (job.state_dict(), job.feedback_received) == before
        assert job.feedback(1, loss, count, at=point + 3) == point + 3
        with pytest.raises(PlanError, match=f"latest change applies from chunk {point + 3}"):
            job.feedback(2, loss, count, at=point + 1)
        with pytest.raises(PlanError, match="chunk index"):
            job.feedback(2, loss, count, at=True)
    finally:
        stream.close()  # type: ignore[attr-defined]


def test_feedback_at_a_later_chunk_keeps_the_weights_before_it_and_resumes(
    corpus: tuple[Path, Path, Any],
) -> None:
    job, plain = _proportional(corpus), _proportional(corpus)
    point = job.change_point()
    at = point + 5
    assert job.feedback(1, np.array([9.0, 1.0, 1.0]), np.ones(3), at=at) == at
    entry = job.mixture_log[-1]
    assert (entry["chunk"], entry["step"], entry["cause"]) == (at, 1, "adapt")
    chunks = [job.chunk(k) for k in range(at + 4)]
    assert chunks[:at] == [plain.chunk(k) for k in range(at)]  # planned with the old weights
    assert chunks[at:] != [plain.chunk(k) for k in range(at, at + 4)]
    restored = _proportional(corpus)
    restored.load_state_dict(job.state_dict())
    assert [restored.chunk(k) for k in range(at + 4)] == chunks
