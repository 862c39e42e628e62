"""An adaptive job end to end: feedback moves weight, a resumed run replays weights and chunks,
the job's trace replays to the same weights, and ``mixplane replay`` writes them."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixplane.adapt.replay import replay, write_trace
from mixplane.client import Client
from mixplane.job import Job
from tests.conftest import run_cli

MIX = {"language=en": 1 / 3, "language=de": 1 / 3, "language=fr": 1 / 3}
OPTIONS = {
    "start_step": 40,
    "refit_interval": 40,
    "ignore_steps": 5,
    "subsample": 2,
    "savgol_window": 11,
    "seq_len": 64,
}
PER_STEP = 10  # samples a step trains on


def submit(client: Client) -> Job:
    return client.submit(
        "ado",
        unit="samples",
        mixture=MIX,
        chunk_size=20,
        seed=11,
        algorithm="ado",
        algorithm_options=OPTIONS,
    )


def losses(job: Job, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The improving component keeps learning (2 + 5 n^-0.3); the others have plateaued."""
    improving = job.selectors.index("language=de")
    n = step * PER_STEP * 4.0
    mean = np.full(job.num_components, 3.0) + 0.001 * np.sin(step)
    mean[improving] = 2.0 + 5.0 * n**-0.3
    tokens = np.full(job.num_components, 100.0)
    return mean * tokens, tokens


def train(job: Job, stream: Any, steps: range) -> list[tuple[int, int, int]]:
    seen = []
    for step in steps:
        seen += [(s.file_id, s.ordinal, s.chunk) for s in itertools.islice(stream, PER_STEP)]
        job.feedback(step, *losses(job, step))
    return seen


def test_weight_moves_to_the_improving_component_and_resume_replays(client: Client) -> None:
    job = submit(client)
    stream = iter(job.stream())
    seen = train(job, stream, range(1, 301))
    de = job.selectors.index("language=de")
    assert job.weights[de] > 0.45 > 1 / 3  # from a third toward the improving component
    assert [e["cause"] for e in job.mixture_log].count("adapt") >= 100
    # stop at step 150, restore in a new job, continue: same samples, same mixture log
    first = submit(client)
    s1 = iter(first.stream())
    head = train(first, s1, range(1, 151))
    state = first.state_dict()
    again = submit(client)
    again.load_state_dict(state)
    s2 = iter(again.stream())
    tail = train(again, s2, range(151, 301))
    assert head + tail == seen
    assert again.mixture_log == job.mixture_log


def test_the_jobs_trace_replays_to_its_weights(client: Client, tmp_path: Path) -> None:
    job = submit(client)
    stream = iter(job.stream())
    train(job, stream, range(1, 121))
    table = replay(
        "ado", job.trace(), prior=dict(zip(job.selectors, [1 / 3] * 3, strict=True)), params=OPTIONS
    )
    steps = table.column("step").to_pylist()
    for entry in [e for e in job.mixture_log if e["cause"] == "adapt"][:20]:
        row = steps.index(entry["step"])
        got = [table.column(sel)[row].as_py() for sel in job.selectors]
        assert np.allclose(got, entry["weights"])
    # the same through the command line
    trace = tmp_path / "trace.csv"
    write_trace(pa.Table.from_pylist(job.trace()), trace)
    params = [f"--param={k}={v}" for k, v in OPTIONS.items()]
    out = tmp_path / "w.csv"
    run_cli(
        tmp_path / "h",
        "replay",
        "--algorithm",
        "ado",
        "--losses",
        str(trace),
        *params,
        "--out",
        str(out),
    )
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120
    last = [float(rows[-1][sel]) for sel in job.selectors]
    assert np.allclose(last, [table.column(sel)[119].as_py() for sel in job.selectors])


def test_the_feedback_log_keeps_the_last_messages(client: Client, monkeypatch: Any) -> None:
    """Memory does not grow with the run: the job keeps the last FEEDBACK_LOG_MAX messages
    (the dashboard and ``trace()`` read them) and counts every one."""
    import mixplane.job.adaptation

    monkeypatch.setattr(mixplane.job.adaptation, "FEEDBACK_LOG_MAX", 4)
    job = submit(client)
    for step in range(1, 11):
        job.feedback(step, *losses(job, step))
    assert job.feedback_received == 10
    assert [s for s, _, _ in job.feedback_log] == [7, 8, 9, 10]
    assert sorted({row["step"] for row in job.trace()}) == [7, 8, 9, 10]


def test_a_retried_feedback_message_is_answered_not_applied_twice(client: Client) -> None:
    """A client that lost the answer sends the same message again: same answer, applied once
    (the algorithm's state, the mixture log and the trace hold it once); a new message for the
    same step with other numbers is applied."""
    job = submit(client)
    step, at = 0, None
    while at is None:  # up to the first weight change
        step += 1
        at = job.feedback(step, *losses(job, step))
    state = job.state_dict()["algorithm"]
    log = list(job.mixture_log)
    assert job.feedback(step, *losses(job, step)) == at  # the retry
    assert job.state_dict()["algorithm"] == state and job.mixture_log == log
    assert job.feedback_received == step
    assert [row["step"] for row in job.trace()].count(step) == job.num_components
    loss, tokens = losses(job, step)
    job.feedback(step, loss * 1.01, tokens)  # other numbers: applied
    assert job.feedback_received == step + 1
