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
from typing import Any, NamedTuple, TypedDict

import numpy as np

from mixplane.adapt.ado import ADO, law_loss
from mixplane.chunking.assign import Assignment, Topology
from mixplane.server.jobs import JobStore, ServerJob
from mixplane.server.metrics import Metrics

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


class Law(TypedDict):
    eps: float
    beta: float
    alpha: float


class Curve(TypedDict):
    n: list[float]
    loss: list[float]


class Fit(TypedDict):
    law: Law | None  # None: not fitted yet
    curve: Curve | None  # over the n of the shown losses


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
    with job._lock:
        weights = job.weights.tolist()
        changes = len(job.mixture_log) - 1
        planned = job._planner.next_chunk
        ended = bool(job._planner.ended)
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
    with job._lock:
        current = job.weights.tolist()
        log = list(job.mixture_log)
        chunks = job._planner.next_chunk
        positions = job._positions()
        live = len(job._ranks)
        assignment = job.assignment  # frozen: read it outside the lock
    consumers = _consumers(job.topology, assignment, positions, live)
    ado = _read_ado(sj)
    losses, n_by_step = _losses(sj, k, steps, ado)
    samples, tokens = _planned(store.metrics, sj.job_id, selectors, unit=job.spec.unit)
    return Dashboard(
        job_id=sj.job_id,
        time=time.time(),
        selectors=selectors,
        unit=job.spec.unit,
        algorithm=job.spec.algorithm,
        weights=Weights(current=current, total=len(log), history=_thin(log, history, k)),
        planned=Planned(chunks=chunks, samples=samples, tokens=tokens),
        losses=losses,
        fits=None if ado is None else _fits(sj, k, ado, n_by_step),
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


def _planned(
    metrics: Metrics, job_id: str, selectors: list[str], *, unit: str
) -> tuple[list[int], list[int] | None]:
    """Samples and (token-budgeted jobs) tokens planned per component, from the metrics."""
    with metrics._lock:
        samples = [metrics._samples.get((job_id, s), 0) for s in selectors]
        tokens = [metrics._tokens.get((job_id, s), 0) for s in selectors]
    return samples, tokens if unit == "tokens" else None


class _ADOView(NamedTuple):
    """What the dashboard reads of an ADO: samples trained per component, the last step it
    saw, its laws (log beta, log eps, alpha) and how many refits it made."""

    algorithm: ADO
    n: np.ndarray
    step: int | None
    laws: np.ndarray | None
    refits: int


def _read_ado(sj: ServerJob) -> _ADOView | None:
    """The job's ADO as it is now (None for other algorithms), read under the job's algorithm
    lock when that is free within ``ALGORITHM_WAIT_S`` (else during a refit, without it)."""
    algorithm = sj.job.algorithm
    if not isinstance(algorithm, ADO):
        return None
    lock = sj.job._algorithm_lock
    locked = lock.acquire(timeout=ALGORITHM_WAIT_S)
    try:
        laws = algorithm.laws
        return _ADOView(
            algorithm=algorithm,
            n=algorithm.n.copy(),
            step=algorithm.step,
            laws=None if laws is None else laws.copy(),
            refits=algorithm.fits,
        )
    finally:
        if locked:
            lock.release()


def _losses(
    sj: ServerJob, k: int, steps: int, ado: _ADOView | None
) -> tuple[Losses, np.ndarray | None]:
    """The mean loss per component of the last ``steps`` feedback messages, and (ADO) the n
    each was trained at (T x K)."""
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
    n = _trained(ado, numbers, count) if ado is not None and t else None
    answer = Losses(
        received=received,
        steps=numbers,
        mean=[[None if np.isnan(v) else float(v) for v in mean[:, c]] for c in range(k)],
        n=None if n is None else [n[:, c].tolist() for c in range(k)],
    )
    return answer, n


def _trained(ado: _ADOView, steps: list[int], count: np.ndarray) -> np.ndarray:
    """Samples trained at each of ``steps`` (T x K): the ADO's n now, less what each later
    step added, plus what steps it has not seen yet (feedback in flight) will add."""
    algorithm = ado.algorithm
    k = count.shape[1]
    total = count.sum(axis=1, keepdims=True)
    if algorithm.sample_count == "step":
        added = np.repeat(total, k, axis=1) / algorithm.seq_len
    else:
        added = count / algorithm.seq_len
    added = np.where(total > 0, added, 0.0)  # ADO skips a step without tokens
    if ado.step is None:
        seen = -1  # it has seen none of them
    elif ado.step in steps:
        seen = len(steps) - 1 - steps[::-1].index(ado.step)
    else:
        seen = len(steps) - 1
    cumulative = np.cumsum(added, axis=0)
    at_seen = cumulative[seen] if seen >= 0 else np.zeros(k)
    n_now = np.zeros(k)
    n_now[: min(k, len(ado.n))] = ado.n[:k]
    return np.asarray(n_now[None, :] + cumulative - at_seen[None, :])


def _fits(sj: ServerJob, k: int, ado: _ADOView, n_by_step: np.ndarray | None) -> Fits:
    """The ADO's laws, each with its curve over the n of the shown losses."""
    components = []
    for c in range(k):
        row = ado.laws[c] if ado.laws is not None and c < len(ado.laws) else None
        if row is None or not np.isfinite(row).all():
            components.append(Fit(law=None, curve=None))
            continue
        law = Law(eps=float(np.exp(row[1])), beta=float(np.exp(row[0])), alpha=float(row[2]))
        curve = None
        if n_by_step is not None:
            seen = n_by_step[:, c][n_by_step[:, c] > 0]
            if len(seen) >= 2 and seen.max() > seen.min():
                n = np.geomspace(seen.min(), seen.max(), CURVE_POINTS)
                curve = Curve(n=n.tolist(), loss=law_loss(row[None, :], n).tolist())
        components.append(Fit(law=law, curve=curve))
    return Fits(
        algorithm=str(sj.job.spec.algorithm),
        refits=ado.refits,
        step=ado.step,
        n=ado.n[:k].tolist(),
        components=components,
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
