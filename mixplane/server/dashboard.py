"""The live dashboard's data: what ``GET /v1/dashboard/jobs`` and ``GET /v1/jobs/ID/dashboard``
answer, and the page (``static/``) draws every 1.5 s.

Per job: the mixture weights over time (the mixture log, evenly thinned to at most ``history``
entries, the first and the last always kept), the samples and tokens planned per component
(the server's metrics), the mean loss per component of the last ``steps`` feedback messages
(``Job.feedback_log``), the scaling laws an ADO job has fitted with their curves
``L(n) = eps + beta * n^-alpha`` over the n the shown losses were trained at, the throughput
(chunks served per second, from the job's ``ServedLog``) and each consumer's position.

Everything is read from memory; nothing waits for the catalog. Locks: the job's lock for the
mixture log and the positions (O(consumers): 4-5 ms for 4096 consumers); the algorithm's
lock for at most ``ALGORITHM_WAIT_S`` (an ADO refit holds it for up to a second or two; then
the laws are read without it, and n may be one step ahead of the losses). An answer for 22
components, 500 log entries and 200 steps is about 420 kB of JSON and takes 10-15 ms.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, TypedDict

import numpy as np

from mixplane.adapt.base import Fit, FitReport, ReportsFits
from mixplane.chunking.assign import Assignment, Topology
from mixplane.server.jobs import JobStore
from mixplane.server.serving import ServerJob

HISTORY = 500  # mixture log entries answered by default (evenly thinned)
HISTORY_MAX = 10_000
STEPS = 200  # feedback messages answered by default (the last ones)
STEPS_MAX = 10_000
CURVE_POINTS = 48  # points of each fitted curve (geometric in n)
CONSUMERS_SHOWN = 256  # consumers whose positions are listed (all are summarized)
THROUGHPUT_WINDOW_S = 10.0  # chunks per second are averaged over this window
ALGORITHM_WAIT_S = 0.05  # how long to wait for the algorithm's lock before reading without it


# -- answers ------------------------------------------------------------------------------------
class JobSummary(TypedDict):
    job_id: str
    selectors: list[str]
    unit: str  # "samples" or "tokens": what the job's budget counts
    algorithm: str | None
    weights: list[float]  # in force for the next chunk planned
    mixture_changes: int  # entries of the mixture log after the first
    feedback: int  # feedback messages received since the job was made or restored
    last_step: int | None
    chunks_planned: int
    chunks_served: int
    chunks_per_s: float  # over the last THROUGHPUT_WINDOW_S
    consumers: int
    ended: bool  # the stream has ended (on_exhausted="stop")


class Overview(TypedDict):
    time: float  # unix seconds
    jobs: list[JobSummary]


class WeightsEntry(TypedDict):
    chunk: int  # the first chunk planned with these weights
    version: int
    step: int | None  # the feedback step that caused the change (adaptive changes)
    cause: str  # "phase", "adapt" or "update"
    weights: list[float]


class Weights(TypedDict):
    current: list[float]
    total: int  # entries in the mixture log
    history: list[WeightsEntry]  # at most `history` of them, evenly spread


class Planned(TypedDict):
    chunks: int
    samples: list[int]  # per component, chunks planned since the server holds the job
    tokens: list[int] | None  # per component (estimated), for jobs budgeted in tokens


class Losses(TypedDict):
    received: int  # feedback messages since the job was made or restored
    steps: list[int]  # the last `steps` of them
    mean: list[list[float | None]]  # [component][step]: loss_sum / token_count (None: no tokens)
    n: list[list[float]] | None  # [component][step]: samples trained (ADO's n), when known


class Fits(TypedDict):
    algorithm: str
    refits: int
    step: int | None  # the last step the algorithm saw
    n: list[float]  # samples trained so far, per component
    components: list[Fit]


class Throughput(TypedDict):
    chunks_served: int
    chunks_per_s: float
    window_s: float
    series: list[list[float]]  # [unix seconds, chunks per second since the sample before]


class ConsumerPosition(TypedDict):
    consumer: int
    dp_group: int
    worker: int
    j: int  # the consumer's chunk (index into its sequence), the slowest of its ranks
    chunk: int  # that chunk's global index


class Consumers(TypedDict):
    count: int
    live_ranks: int  # ranks that have asked for chunks or reported where they consume
    min_j: int
    max_j: int
    mean_j: float
    shown: list[ConsumerPosition]  # the first CONSUMERS_SHOWN consumers


class Dashboard(TypedDict):
    job_id: str
    time: float
    selectors: list[str]
    unit: str
    algorithm: str | None
    weights: Weights
    planned: Planned
    losses: Losses
    fits: Fits | None  # ADO jobs
    throughput: Throughput
    consumers: Consumers


# -- assembly -----------------------------------------------------------------------------------
def overview(store: JobStore) -> Overview:
    """Every job of ``store`` in a line (``GET /v1/dashboard/jobs``)."""
    return Overview(time=time.time(), jobs=[summary(sj) for sj in store])


def summary(sj: ServerJob) -> JobSummary:
    job = sj.job
    progress = job.progress()
    weights = progress.weights.tolist()
    changes = len(progress.mixture_log) - 1
    planned, ended = progress.next_chunk, progress.ended
    log = job.feedback_log
    last_step = log[-1][0] if log else None
    served = throughput(sj)
    return JobSummary(
        job_id=sj.job_id,
        selectors=job.selectors,
        unit=job.spec.unit,
        algorithm=job.spec.algorithm,
        weights=weights,
        mixture_changes=changes,
        feedback=job.feedback_received,
        last_step=last_step,
        chunks_planned=planned,
        chunks_served=served["chunks_served"],
        chunks_per_s=served["chunks_per_s"],
        consumers=job.topology.consumers,
        ended=ended,
    )


def dashboard(
    store: JobStore, job_id: str, *, history: int = HISTORY, steps: int = STEPS
) -> Dashboard:
    """One job's panels (``GET /v1/jobs/ID/dashboard?history=H&steps=S``)."""
    sj = store.get(job_id)
    job = sj.job
    selectors = job.selectors
    k = len(selectors)
    progress = job.progress()
    current, log, chunks = progress.weights.tolist(), progress.mixture_log, progress.next_chunk
    consumers = _consumers(
        job.topology, progress.assignment, progress.positions, progress.live_ranks
    )
    losses, report = _losses(sj, k, steps)
    samples, tokens = store.metrics.planned_by_component(sj.job_id, selectors)
    return Dashboard(
        job_id=sj.job_id,
        time=time.time(),
        selectors=selectors,
        unit=job.spec.unit,
        algorithm=job.spec.algorithm,
        weights=Weights(current=current, total=len(log), history=_thin(log, history, k)),
        planned=Planned(
            chunks=chunks, samples=samples, tokens=tokens if job.spec.unit == "tokens" else None
        ),
        losses=losses,
        fits=None if report is None else _fits(sj, report),
        throughput=throughput(sj),
        consumers=consumers,
    )


def _thin(log: list[dict[str, Any]], history: int, k: int) -> list[WeightsEntry]:
    """At most ``history`` entries of the mixture log, evenly spread, first and last kept;
    weights padded with 0.0 to ``k`` (components added later had none)."""
    if len(log) > history:
        picks = np.unique(np.linspace(0, len(log) - 1, max(history, 2)).round().astype(int))
        log = [log[int(i)] for i in picks[:history]] if history > 1 else [log[-1]]
    out = []
    for entry in log:
        weights = [float(w) for w in entry["weights"]]
        out.append(
            WeightsEntry(
                chunk=int(entry["chunk"]),
                version=int(entry["version"]),
                step=entry.get("step"),
                cause=str(entry.get("cause", "")),
                weights=weights + [0.0] * (k - len(weights)),
            )
        )
    return out


def _losses(sj: ServerJob, k: int, steps: int) -> tuple[Losses, FitReport | None]:
    """The mean loss per component of the last ``steps`` feedback messages, and the report of
    an algorithm that fits laws (``ReportsFits``): its laws and the n each step was trained at,
    read under its lock when that is free within ``ALGORITHM_WAIT_S`` (else during a refit,
    without it)."""
    job = sj.job
    received = job.feedback_received
    log = list(job.feedback_log)[-steps:] if steps else []  # a copy: feedback may arrive
    t = len(log)
    loss = np.zeros((t, k))
    count = np.zeros((t, k))
    for i, (_, ls, cs) in enumerate(log):
        loss[i, : len(ls)] = ls[:k]
        count[i, : len(cs)] = cs[:k]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(count > 0, loss / count, np.nan)
    numbers = [int(s) for s, _, _ in log]
    report = None
    with job.algorithm_view(ALGORITHM_WAIT_S) as algorithm:
        if isinstance(algorithm, ReportsFits):
            report = algorithm.fit_report(numbers, count, curve_points=CURVE_POINTS)
    answer = Losses(
        received=received,
        steps=numbers,
        mean=[[None if np.isnan(v) else float(v) for v in mean[:, c]] for c in range(k)],
        n=None if report is None else report["n_by_step"],
    )
    return answer, report


def _fits(sj: ServerJob, report: FitReport) -> Fits:
    """The algorithm's laws, each with its curve over the n of the shown losses."""
    return Fits(
        algorithm=str(sj.job.spec.algorithm),
        refits=report["refits"],
        step=report["step"],
        n=report["n"],
        components=report["components"],
    )


def throughput(sj: ServerJob) -> Throughput:
    """Chunks served per second over the last ``THROUGHPUT_WINDOW_S`` and between the samples
    of the job's ``ServedLog`` (times in unix seconds)."""
    now, total, samples = sj.served.read()
    wall = time.time()
    start_t, start_n = samples[0]
    for t, served in samples:
        if t > now - THROUGHPUT_WINDOW_S:
            break
        start_t, start_n = t, served
    rate = (total - start_n) / (now - start_t) if now - start_t > 1e-3 else 0.0
    series = [
        [wall - (now - t1), (n1 - n0) / (t1 - t0)]
        for (t0, n0), (t1, n1) in itertools.pairwise(samples)
        if t1 - t0 > 1e-3
    ]
    return Throughput(
        chunks_served=total, chunks_per_s=rate, window_s=THROUGHPUT_WINDOW_S, series=series
    )


def _consumers(
    topology: Topology, assignment: Assignment, positions: dict[int, Any], live: int
) -> Consumers:
    """Each consumer's position (its slowest rank's chunk) and where that chunk lies."""
    count = topology.consumers
    js = [positions[c]["j"] if c in positions else 0 for c in range(count)]
    shown = [
        ConsumerPosition(
            consumer=c,
            dp_group=c % topology.dp_groups,
            worker=c // topology.dp_groups,
            j=js[c],
            chunk=assignment.chunk(c, js[c])[0],
        )
        for c in range(min(count, CONSUMERS_SHOWN))
    ]
    return Consumers(
        count=count,
        live_ranks=live,
        min_j=min(js),
        max_j=max(js),
        mean_j=sum(js) / count,
        shown=shown,
    )
