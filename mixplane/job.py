"""Jobs: a filter, a mixture, a seed, a topology and a budget, planned into chunks and streamed.

``Job`` ties the pieces together in one process: it executes the query, builds each component's
seeded order, resolves the mixture into weights, plans chunks sequentially (caching those some
consumer still needs, with the planner state before each), and serves consumer streams
``(dp_group, rank, worker)``. Its state is O(components + consumers): the planner state at the
lowest unfinished chunk, the mixture log, the assignment segment and each consumer's position.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, TypedDict, TypeVar

import numpy as np

from mixplane.adapt.base import MixingAlgorithm, check_feedback, make_algorithm
from mixplane.catalog.catalog import Catalog
from mixplane.chunking.assign import Assignment, Topology
from mixplane.chunking.order import (
    ComponentOrder,
    OrderKind,
    generator,
    key_of,
)
from mixplane.chunking.planner import OnExhausted, Planner, PlannerState
from mixplane.chunking.spec import ChunkSpec, Unit
from mixplane.client.reader import Reader
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.stream import READ_AHEAD_SAMPLES, ConsumerState, Stream
from mixplane.errors import PlanError, StateError
from mixplane.mixture.mixture import Mixture
from mixplane.query.result import QueryResult, combine
from mixplane.tokens.tokenizer import Tokenizer

JOB_STATE_VERSION = 1
PURPOSE_RATIO = 4
RATIO_SAMPLES = 64
DEFAULT_BYTES_PER_TOKEN = 4.0
MILESTONE_EVERY = 256  # planner states kept every this many chunks, to re-plan released chunks
FEEDBACK_LOG_MAX = 100_000  # feedback messages a job keeps in memory (~0.7 kB each at 22 components)
REPLANNED_CACHE = 64  # re-planned chunks kept


ScheduleUnit = Literal["chunks", "samples", "tokens"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """From ``start`` (in the schedule's unit) on: this filter, mixture and exhaustion policy."""

    start: int
    mixture: Mixture
    where: str | None = None
    on_exhausted: OnExhausted = "repeat"

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "where": self.where,
            "mixture": self.mixture.to_json(),
            "on_exhausted": self.on_exhausted,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Phase:
        return cls(
            start=int(data["start"]),
            mixture=Mixture.from_json(data["mixture"]),
            where=data.get("where"),
            on_exhausted=data.get("on_exhausted", "repeat"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """Everything that defines a job's stream (together with the catalog snapshot)."""

    job_id: str
    where: str | None
    mixture: Mixture
    seed: int = 0
    unit: Unit = "samples"
    chunk_size: int = 1000
    on_exhausted: OnExhausted = "repeat"
    order: OrderKind | Literal["sorted"] = "shuffled"
    sort_by: str | None = None
    descending: bool = False
    block_size: int = 256
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN
    schedule: tuple[Phase, ...] = ()  # later phases; the first is (where, mixture, on_exhausted)
    schedule_unit: ScheduleUnit = "chunks"
    tokenizer: str | None = None  # fingerprint of the job's tokenizer (token budgets)
    algorithm: str | None = None  # adaptive mixing: a name from mixplane.adapt.ALGORITHMS
    algorithm_options: tuple[tuple[str, Any], ...] = ()

    @property
    def phases(self) -> tuple[Phase, ...]:
        first = Phase(
            start=0, mixture=self.mixture, where=self.where, on_exhausted=self.on_exhausted
        )
        return (first, *self.schedule)

    def phase_chunks(self) -> list[int]:
        """The chunk index at which each phase takes effect."""
        if self.schedule_unit not in ("chunks", self.unit):
            msg = (
                f"a schedule in {self.schedule_unit} needs a job budgeted in "
                f"{self.schedule_unit}; use schedule_unit='chunks' or '{self.unit}'"
            )
            raise PlanError(msg)
        starts = [p.start for p in self.phases]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            msg = f"schedule phases must start in increasing order after 0, got {starts}"
            raise PlanError(msg)
        per = 1 if self.schedule_unit == "chunks" else self.chunk_size
        return [-(-p // per) for p in starts]

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "where": self.where,
            "mixture": self.mixture.to_json(),
            "seed": self.seed,
            "unit": self.unit,
            "chunk_size": self.chunk_size,
            "on_exhausted": self.on_exhausted,
            "order": self.order,
            "sort_by": self.sort_by,
            "descending": self.descending,
            "block_size": self.block_size,
            "bytes_per_token": self.bytes_per_token,
            "schedule": [p.to_json() for p in self.schedule],
            "schedule_unit": self.schedule_unit,
            "tokenizer": self.tokenizer,
            "algorithm": self.algorithm,
            "algorithm_options": dict(self.algorithm_options),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        """The spec from ``to_json``'s form (a job snapshot, a state file, a server request)."""
        fields = dict(data)
        try:
            fields["mixture"] = Mixture.from_json(fields["mixture"])
            fields["schedule"] = tuple(Phase.from_json(p) for p in fields.get("schedule", ()))
            fields["algorithm_options"] = tuple(
                sorted(dict(fields.get("algorithm_options") or {}).items())
            )
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            msg = f"not a job definition ({exc}); expected the form JobSpec.to_json() writes"
            raise PlanError(msg) from None

    def fingerprint(self) -> str:
        return hashlib.blake2b(
            json.dumps(self.to_json(), sort_keys=True).encode(), digest_size=16
        ).hexdigest()


def make_spec(
    job_id: str,
    *,
    where: Any = None,
    mixture: Mixture | Mapping[str, Any],
    seed: int = 0,
    unit: Unit = "samples",
    chunk_size: int = 1000,
    on_exhausted: OnExhausted = "repeat",
    order: OrderKind | Literal["sorted"] = "shuffled",
    sort_by: str | None = None,
    descending: bool = False,
    block_size: int = 256,
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN,
    schedule: Sequence[Phase] = (),
    schedule_unit: ScheduleUnit = "chunks",
    tokenizer: Tokenizer | None = None,
    algorithm: str | None = None,
    algorithm_options: Mapping[str, Any] | None = None,
) -> JobSpec:
    """A job definition from ``Client.submit``'s arguments (in-process and remote alike)."""
    if not isinstance(mixture, Mixture):
        mixture = Mixture.from_json(mixture)
    return JobSpec(
        job_id=job_id,
        where=str(where) if where is not None else None,
        mixture=mixture,
        seed=seed,
        unit=unit,
        chunk_size=chunk_size,
        on_exhausted=on_exhausted,
        order=order,
        sort_by=sort_by,
        descending=descending,
        block_size=block_size,
        bytes_per_token=bytes_per_token,
        schedule=tuple(schedule),
        schedule_unit=schedule_unit,
        tokenizer=tokenizer.fingerprint if tokenizer is not None else None,
        algorithm=algorithm,
        algorithm_options=tuple(sorted((algorithm_options or {}).items())),
    )


class JobState(TypedDict):
    version: int
    spec: str  # JobSpec fingerprint
    query: str  # QueryResult fingerprint
    planner: PlannerState
    planned: int  # chunks planned so far (later mixture changes apply after them)
    algorithm: dict[str, Any] | None
    extensions: list[dict[str, Any]]
    mixture_log: list[dict[str, Any]]
    topology: dict[str, int]
    frontier: int
    carried: list[list[int]]
    consumers: dict[str, ConsumerState]
    scope: list[int] | None  # the consumers this state holds, when not all (a part of the job)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[Job, _P], _R]) -> Callable[Concatenate[Job, _P], _R]:
    """Run a Job method under the job's lock (prefetch threads plan while training threads
    send feedback or take the state)."""

    @functools.wraps(method)
    def wrapper(self: Job, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Job:
    """A job over an open catalog, or over a ``JobSnapshot`` (no catalog: another process).

    ``local`` limits the consumers (dp_group, worker) this process serves; chunks are then
    kept only for them, and the state holds only their positions (a part of the job, see
    ``merge_states``). The default serves every consumer of the topology."""

    def __init__(
        self,
        catalog: Catalog | None,
        spec: JobSpec,
        topology: Topology,
        tokenizer: Tokenizer | None = None,
        *,
        snapshot: JobSnapshot | None = None,
        local: Collection[tuple[int, int]] | None = None,
    ) -> None:
        if tokenizer is not None and tokenizer.fingerprint != spec.tokenizer:
            msg = "the job's tokenizer does not match spec.tokenizer (its fingerprint)"
            raise PlanError(msg)
        if catalog is None and snapshot is None:
            msg = "a job needs an open catalog or a job snapshot"
            raise PlanError(msg)
        self._lock = threading.RLock()
        self._algorithm_lock = threading.Lock()  # held while the algorithm updates
        #: the last FEEDBACK_LOG_MAX feedback messages (not in the state; ADO keeps its own
        #: series), for the dashboard and ``trace()``; ``feedback_received`` counts them all
        self.feedback_log: deque[tuple[int, np.ndarray, np.ndarray]] = deque(
            maxlen=FEEDBACK_LOG_MAX
        )
        self.feedback_received = 0
        #: the last feedback applied and its answer: an identical message right after it is a
        #: client's retry (its answer was lost) and is answered again, not applied twice
        self._last_feedback: tuple[int, np.ndarray, np.ndarray, int | None] | None = None
        self.catalog = catalog
        self._snapshot = snapshot
        self.local: frozenset[int] | None = None
        self.tokenizer = tokenizer
        self.token_source: dict[str, str] = {}  # component key -> exact | sampled | bytes
        self.spec = spec
        self.topology = topology
        if local is not None:
            self.limit_consumers(local)
        self.phases = spec.phases
        self.phase_starts = spec.phase_chunks()
        self.by: list[str] = []
        for phase in self.phases:
            self.by += [p for p in phase.mixture.properties if p not in self.by]
        if spec.order == "sorted" and spec.sort_by is None:
            msg = "order='sorted' needs sort_by=PROPERTY"
            raise PlanError(msg)
        self.extensions: list[dict[str, Any]] = []
        weights = self._build_base(exclude_files=())
        self.mixture_log: list[dict[str, Any]] = [
            {"chunk": 0, "version": 0, "cause": "phase", "phase": 0, "weights": weights.tolist()}
        ]
        self.assignment = Assignment(topology=topology)
        self._chunks: dict[int, ChunkSpec] = {}
        self._before: dict[int, PlannerState] = {}
        self._milestones: dict[int, PlannerState] = {}  # every MILESTONE_EVERY chunks
        self._replanned: dict[int, ChunkSpec | None] = {}
        self._applied_through = 0  # mixture changes for chunks <= this are in the planner
        self._planned = 0  # how far chunks have been planned (mixture changes apply after)
        self._last: int | None = None
        self._consumers: dict[int, ConsumerState] = {}  # restored positions
        self._ranks: dict[tuple[int, int], ConsumerState] = {}  # live positions per rank
        self._reader: Reader | None = None
        self._pending: dict[int, dict[str, Any]] = {}
        self.algorithm: MixingAlgorithm | None = None
        if spec.algorithm is not None:
            self.algorithm = make_algorithm(spec.algorithm, weights, **dict(spec.algorithm_options))

    # -- components --------------------------------------------------------------------------
    def _build_base(self, *, exclude_files: Sequence[int]) -> np.ndarray:
        """The job's own components (files added by extensions left out) and a fresh planner;
        returns the first phase's weights."""
        self._results = [self._query(exclude_files=exclude_files)]
        self.result = combine(self._results)
        self.orders = [self._order(c.selector, c.runs, 0) for c in self.result.components]
        weights = self._weights(0)
        self._planner = Planner(
            self.orders,
            weights,
            unit=self.spec.unit,
            chunk_size=self.spec.chunk_size,
            on_exhausted=self.phases[0].on_exhausted,
        )
        return weights

    def _query(
        self, *, exclude_files: Sequence[int] = (), include_files: Sequence[int] | None = None
    ) -> QueryResult:
        if self._snapshot is not None:
            return self._snapshot_result(include_files)
        filters = [p.where for p in self.phases]
        members: list[str | None] = filters if len(filters) > 1 else []
        where = (
            None
            if any(f is None for f in filters)
            else (" or ".join(f"({f})" for f in filters) if len(filters) > 1 else filters[0])
        )
        return self._catalog().components(
            where,
            by=self.by,
            sort_by=self.spec.sort_by if self.spec.order == "sorted" else None,
            descending=self.spec.descending,
            members=members,
            exclude_files=exclude_files,
            include_files=include_files,
        )

    def _snapshot_result(self, include_files: Sequence[int] | None) -> QueryResult:
        """The snapshot's answer to a query: the base result, or an extension's."""
        assert self._snapshot is not None
        if include_files is None:
            return self._snapshot.results[0]
        for g, ext in enumerate(self._snapshot.state["extensions"], start=1):
            if sorted(ext["files"]) == sorted(include_files):
                return self._snapshot.results[g]
        msg = (
            "the state names files added to the job after this snapshot was taken; take a new "
            "snapshot (job.snapshot()) where the catalog is open"
        )
        raise StateError(msg)

    def _catalog(self) -> Catalog:
        if self.catalog is None:
            msg = (
                "this job runs from a snapshot, without the catalog; extend it or look for new "
                "files where the catalog is open, then take a new snapshot"
            )
            raise PlanError(msg)
        return self.catalog

    def _order(self, selector: str, runs: Any, generation: int) -> ComponentOrder:
        key = selector if generation == 0 else f"{selector}#{generation}"
        sizes = self._token_sizes(key, runs) if self.spec.unit == "tokens" else None
        kind: OrderKind = "shuffled" if self.spec.order == "shuffled" else "as-stored"
        return ComponentOrder(
            key=key,
            files=runs.column("file_id").to_numpy().astype(np.int32),
            starts=runs.column("start").to_numpy(),
            counts=runs.column("count").to_numpy(),
            seed=self.spec.seed,
            kind=kind,
            block_size=self.spec.block_size,
            sizes=sizes,
        )

    def _token_sizes(self, key: str, runs: Any) -> np.ndarray:
        """Per-sample tokens: exact counts for the job's tokenizer where the catalog has them;
        else byte lengths over a bytes-per-token ratio measured on a seeded sample of the
        component (``RATIO_SAMPLES``); else over ``bytes_per_token``."""
        if self._snapshot is not None:
            sizes = self._snapshot.sizes.get(key)
            if sizes is None:
                msg = f"the job snapshot has no token sizes for component {key!r}; take it again"
                raise StateError(msg)
            self.token_source[key] = self._snapshot.token_source.get(key, "bytes")
            return sizes
        catalog = self._catalog()
        if self.spec.tokenizer is not None:
            exact = catalog.sample_tokens(runs, self.spec.tokenizer)
            if exact is not None:
                self.token_source[key] = "exact"
                return np.maximum(exact, 1)
        raw = catalog.sample_bytes(runs)
        ratio = self.spec.bytes_per_token
        self.token_source[key] = "bytes"
        if self.tokenizer is not None and len(raw):
            rng = generator(self.spec.seed, PURPOSE_RATIO, key_of(key))
            picks = np.sort(rng.choice(len(raw), size=min(RATIO_SAMPLES, len(raw)), replace=False))
            texts = catalog.sample_texts(runs, picks)
            tokens = int(self.tokenizer.count_batch(texts).sum())
            nbytes = sum(len(t.encode()) for t in texts)
            if tokens > 0 and nbytes > 0:
                ratio = nbytes / tokens
                self.token_source[key] = "sampled"
        return np.maximum(np.ceil(raw / ratio), 1).astype(np.int64)

    def _weights(self, phase: int) -> np.ndarray:
        """The phase's mixture resolved over the components that pass its filter."""
        natural = np.array(
            [o.sizes.sum() if o.sizes is not None else o.total for o in self.orders],
            dtype=np.float64,
        )
        if len(self.phases) > 1:
            natural *= np.array([c.memberships[phase] for c in self.result.components], dtype=bool)
        return self.phases[phase].mixture.resolve(self.result, natural)

    def phase_at(self, chunk: int) -> int:
        return max(i for i, start in enumerate(self.phase_starts) if start <= chunk)

    @_locked
    def extend(self) -> int:
        """Add components for samples registered since the job started (new files matching the
        filters); existing cursors are untouched. Returns the chunk from which they are mixed in."""
        self._catalog()
        known = sorted(
            {int(f) for r in self._results for f in r.runs.column("file_id").to_pylist()}
        )
        result = self._query(exclude_files=known)
        at = max(self._planned, self._planner.next_chunk)
        if not result.components:
            return at
        files = sorted({int(f) for f in result.runs.column("file_id").to_pylist()})
        self._add(result)
        self.extensions.append({"chunk": at, "files": files})
        return self._change(self._weights(self.phase_at(at)), cause="extend")

    def _add(self, result: QueryResult) -> None:
        """Append an extension's components to the job, the planner and its saved snapshots."""
        generation = len(self._results)
        self._results.append(result)
        self.result = combine(self._results)
        orders = [self._order(c.selector, c.runs, generation) for c in result.components]
        self.orders += orders
        self._planner.add_components(orders)
        n = len(orders)
        for snapshot in [*self._before.values(), *self._milestones.values()]:
            snapshot["epochs"] = [*snapshot["epochs"], *([0] * n)]
            snapshot["positions"] = [*snapshot["positions"], *([0] * n)]
            snapshot["given"] = [*snapshot["given"], *([0] * n)]
            snapshot["weights"] = [*snapshot["weights"], *([0.0] * n)]
            snapshot["exhausted"] = [*snapshot["exhausted"], *([False] * n)]

    # -- chunks ------------------------------------------------------------------------------
    def _change(self, weights: np.ndarray, *, cause: str, phase: int | None = None) -> int:
        """Log a mixture change; it applies from the first chunk not planned yet (after a
        restore the planner re-plans from an earlier chunk, so such a change waits for the
        chunk the live run had reached). Returns that chunk index."""
        version = len(self.mixture_log)
        at = max(self._planned, self._planner.next_chunk)
        entry: dict[str, Any] = {
            "chunk": at,
            "version": version,
            "cause": cause,
            "weights": np.asarray(weights, dtype=float).tolist(),
        }
        if phase is not None:
            entry["phase"] = phase
        self.mixture_log.append(entry)
        if at > self._planner.next_chunk:
            self._pending[at] = entry
        elif phase is not None:
            self._planner.start_phase(
                weights, version=version, on_exhausted=self.phases[phase].on_exhausted
            )
        else:
            self._planner.set_weights(weights, version=version)
        return at

    def _apply_changes(self, k: int) -> None:
        """Mixture changes due at chunk k: a phase start (once), then a replayed update that
        was made after it (an update made before a phase start at the same chunk is replaced
        by the phase, live and in replay alike)."""
        if k > self._applied_through and k in self.phase_starts:
            phase = self.phase_starts.index(k)
            logged = [e for e in self.mixture_log if e.get("phase") == phase and e["chunk"] == k]
            if logged:  # replaying after a restore: same version as before
                self._planner.start_phase(
                    np.asarray(logged[0]["weights"]),
                    version=logged[0]["version"],
                    on_exhausted=self.phases[phase].on_exhausted,
                )
            else:
                self._change(self._weights(phase), cause="phase", phase=phase)
        self._applied_through = max(self._applied_through, k)
        pending = self._pending.pop(k, None)
        if pending is not None and pending["version"] > self._planner.mixture_version:
            self._planner.set_weights(np.asarray(pending["weights"]), version=pending["version"])

    @_locked
    def chunk(self, index: int) -> ChunkSpec | None:
        """Chunk ``index`` (planning up to it), or None past the end of the stream."""
        while self._planner.next_chunk <= index:
            if self._planner.ended:
                return None
            k = self._planner.next_chunk
            self._apply_changes(k)
            self._before[k] = self._planner.state_dict()
            if k % MILESTONE_EVERY == 0:
                self._milestones[k] = self._before[k]
            spec = self._planner.plan()
            if spec is None:
                return None
            self._chunks[k] = spec
            self._planned = max(self._planned, k + 1)
            if spec.last:
                self._last = k
        if self._last is not None and index > self._last:
            return None
        spec = self._chunks.get(index)
        if spec is None:
            return self._replan(index)
        return spec

    def _replay_to(self, index: int) -> Planner:
        """A planner about to plan chunk ``index`` (its mixture changes applied), replayed
        from the nearest milestone before it and the mixture log."""
        bases = [k for k in self._milestones if k <= index]
        if not bases:
            msg = (
                f"chunk {index} was released and precedes this job's restored state; restore "
                "the job from a state at or before the consumer's"
            )
            raise PlanError(msg)
        base = max(bases)
        planner = Planner(
            self.orders,
            self._planner.weights,
            unit=self.spec.unit,
            chunk_size=self.spec.chunk_size,
            on_exhausted=self.phases[0].on_exhausted,
        )
        planner.load_state_dict(self._milestones[base])
        for k in range(base, index + 1):
            at_k = [e for e in self.mixture_log if e["chunk"] == k]
            for e in at_k:  # a phase start first, then the latest update (as _apply_changes)
                if e["cause"] == "phase" and e["version"] > planner.mixture_version:
                    planner.start_phase(
                        np.asarray(e["weights"]),
                        version=e["version"],
                        on_exhausted=self.phases[e["phase"]].on_exhausted,
                    )
            updates = [e for e in at_k if e["cause"] != "phase"]
            if updates and updates[-1]["version"] > planner.mixture_version:
                last = updates[-1]
                planner.set_weights(np.asarray(last["weights"]), version=last["version"])
            if k < index and planner.plan() is None:
                break
        return planner

    def _replan(self, index: int) -> ChunkSpec | None:
        """A chunk released since it was planned (a consumer restored from an older state):
        planned again from the nearest milestone before it, replaying the mixture log, so it
        is the chunk it was."""
        if index in self._replanned:
            return self._replanned[index]
        planner = self._replay_to(index)
        spec = planner.plan()
        while len(self._replanned) >= REPLANNED_CACHE:
            del self._replanned[next(iter(self._replanned))]
        self._replanned[index] = spec
        return spec

    def consumer_chunk(self, consumer: int, j: int) -> tuple[ChunkSpec | None, int]:
        """The consumer's j-th chunk (None past the end) and the sample offset it starts at."""
        index, start = self.assignment.chunk(consumer, j)
        return self.chunk(index), start

    @property
    def num_components(self) -> int:
        return len(self.orders)

    @property
    def selectors(self) -> list[str]:
        """Each component's selector, by component id."""
        return [c.selector for c in self.result.components]

    def plan(self, count: int) -> Iterator[ChunkSpec]:
        """The first ``count`` chunks in global order (for inspection and the CLI)."""
        for k in range(count):
            spec = self.chunk(k)
            if spec is None:
                return
            yield spec

    def feedback(self, step: int, loss_sum: Any, token_count: Any) -> int | None:
        """Per-component loss sums and token counts of a training step. With an adaptive
        mixture the algorithm may answer new weights; they apply from the next planned chunk,
        whose index is returned (None when the weights did not change).

        The algorithm runs under its own lock, not the job's: planning and chunk serving go on
        while it works (an ADO refit takes up to a second or two); only the weight change
        itself takes the job's lock. A message equal to the one just applied (same step, same
        numbers) is a retry whose answer was lost: it gets the same answer and is not applied
        again."""
        loss, count = check_feedback(len(self.orders), loss_sum, token_count)
        step = int(step)
        with self._algorithm_lock:
            last = self._last_feedback
            if (
                last is not None
                and last[0] == step
                and np.array_equal(last[1], loss)
                and np.array_equal(last[2], count)
            ):
                return last[3]
            with self._lock:
                self.feedback_log.append((step, loss, count))
                self.feedback_received += 1
            at = None
            if self.algorithm is not None:
                weights = self.algorithm.update(step, loss, count)
                if weights is not None:
                    with self._lock:
                        at = self._change(np.asarray(weights, dtype=np.float64), cause="adapt")
                        self.mixture_log[-1]["step"] = step
            self._last_feedback = (step, loss, count, at)
        return at

    def trace(self) -> list[dict[str, Any]]:
        """The feedback this job received (since it was made or restored; the last
        ``FEEDBACK_LOG_MAX`` messages), in the long format replay reads: one row per (step,
        component) with ``step``, ``domain`` (the selector), ``loss_sum`` and ``tokens``."""
        selectors = self.selectors
        return [
            {
                "step": step,
                "domain": selectors[k],
                "loss_sum": float(loss[k]),
                "tokens": float(count[k]),
            }
            for step, loss, count in list(self.feedback_log)
            for k in range(len(selectors))
        ]

    @_locked
    def set_weights(self, weights: np.ndarray | Mapping[str, float]) -> int:
        """New weights in force from the next planned chunk; returns that chunk index."""
        if isinstance(weights, Mapping):
            weights = Mixture.static(weights).resolve(
                self.result, np.array([o.total for o in self.orders], dtype=np.float64)
            )
        return self._change(np.asarray(weights, dtype=np.float64), cause="update")

    # -- consumers ---------------------------------------------------------------------------
    @_locked
    def set_positions(self, positions: Iterable[tuple[int, int, int]]) -> None:
        """Each (consumer, rank, j): that rank of the consumer is at the start of its j-th
        chunk (what remote ranks report; coordinates must be checked by the caller)."""
        ranks = self._ranks
        for consumer, rank, j in positions:
            state = ranks.get((consumer, rank))
            if state is None:
                ranks[(consumer, rank)] = ConsumerState(j=j, offset=0)
            else:
                state["j"], state["offset"] = j, 0

    @_locked
    def stream(self, dp_group: int = 0, rank: int = 0, worker: int = 0) -> Stream:
        """The samples of one consumer for one rank; ranks of a group get identical streams,
        each rank keeping its own position (they are separate processes in training)."""
        consumer = self.topology.consumer(dp_group, worker, rank)
        saved = self._consumers.get(consumer, ConsumerState(j=0, offset=0))
        state = self._ranks.setdefault(
            (consumer, rank), ConsumerState(j=saved["j"], offset=saved["offset"])
        )
        return Stream(self, consumer, state)

    def _positions(self) -> dict[int, ConsumerState]:
        """Each consumer's position: the least advanced of its live ranks (ranks move in
        lockstep), or the restored position of a consumer no rank has opened yet."""
        out = dict(self._consumers)
        live: dict[int, list[ConsumerState]] = {}
        for (consumer, _rank), s in self._ranks.items():
            live.setdefault(consumer, []).append(s)
        for consumer, states in live.items():
            if self.local is None and len(states) < self.topology.ranks_per_group:
                # a rank has not started yet (a limited job serves only the ranks it opens)
                states = [*states, out.get(consumer, ConsumerState(j=0, offset=0))]
            low = min(states, key=lambda s: (s["j"], s["offset"]))
            out[consumer] = ConsumerState(j=low["j"], offset=low["offset"])
        if self.local is not None:
            out = {c: s for c, s in out.items() if c in self.local}
        return out

    def limit_consumers(self, local: Collection[tuple[int, int]]) -> None:
        """Serve only these consumers (dp_group, worker) in this process (see the class)."""
        consumers = frozenset(self.topology.consumer(g, w) for g, w in local)
        if not consumers:
            msg = "limit_consumers needs at least one (dp_group, worker)"
            raise PlanError(msg)
        self.local = consumers

    @property
    def weights(self) -> np.ndarray:
        """The weights in force for the next chunk planned."""
        return self._planner.weights

    @property
    def read_group(self) -> int:
        """How many of its chunks a stream reads together: groups start at fixed positions of
        the consumer's sequence (multiples of this), so how far planning has run ahead at any
        point is a function of what was consumed, live or after a restore."""
        if self.spec.unit != "samples":
            return 1
        return max(1, READ_AHEAD_SAMPLES // self.spec.chunk_size)

    def close(self) -> None:
        """Close the files this job's reader holds open."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def reader(self) -> Reader:
        with self._lock:
            if self._reader is None:
                self._reader = Reader(self._snapshot or self._catalog())
            return self._reader

    @_locked
    def _release(self) -> None:
        """Drop cached chunks and snapshots that no consumer can still need."""
        low = self._lowest_unfinished()
        for k in [k for k in self._chunks if k < low]:
            del self._chunks[k]
        for k in [k for k in self._before if k < low]:
            del self._before[k]

    def _lowest_unfinished(self) -> int:
        """The lowest chunk some consumer has not finished: each consumer's sequence ascends,
        so it is the least of their current chunks (a consumer never opened counts at its
        restored position, or its first chunk)."""
        positions = self._positions()
        served = self.local if self.local is not None else range(self.topology.consumers)
        return min(
            self.assignment.chunk(c, positions[c]["j"] if c in positions else 0)[0] for c in served
        )

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> JobState:
        """Consistent state of the job and all its consumers (O(components + consumers)).
        Locks in the order feedback takes them (algorithm, then job): an update in progress
        finishes first, so the algorithm's state and the mixture log agree."""
        with self._algorithm_lock, self._lock:
            return self._state_dict()

    def _state_dict(self) -> JobState:
        low = min(self._lowest_unfinished(), self._planner.next_chunk)
        if low == self._planner.next_chunk:  # not planned yet: snapshot the planner as it is now
            self._apply_changes(low)
            self._before[low] = self._planner.state_dict()
        if low not in self._before:  # a consumer moved back (restored from an older state)
            self._before[low] = self._replay_to(low).state_dict()
        return JobState(
            version=JOB_STATE_VERSION,
            spec=self.spec.fingerprint(),
            query=self.result.fingerprint,
            planner=self._before[low],
            planned=max(self._planned, self._planner.next_chunk),
            algorithm=self._algorithm_state(),
            extensions=list(self.extensions),
            mixture_log=list(self.mixture_log),
            topology=self.topology.to_json(),
            frontier=self.assignment.frontier,
            carried=[[k, o] for k, o in self.assignment.carried],
            consumers={
                str(c): ConsumerState(j=s["j"], offset=s["offset"])
                for c, s in sorted(self._positions().items())
            },
            scope=sorted(self.local) if self.local is not None else None,
        )

    def _algorithm_state(self) -> dict[str, Any] | None:
        return self.algorithm.state_dict() if self.algorithm is not None else None

    def load_state_dict(self, state: JobState) -> None:
        """Continue from a saved state; the topology may differ (elastic restore)."""
        with self._algorithm_lock, self._lock:
            self._load_state_dict(state)

    def _load_state_dict(self, state: JobState) -> None:
        """Continue from a saved state; the topology may differ (elastic restore)."""
        if state.get("version") != JOB_STATE_VERSION:
            msg = f"job state version {state.get('version')!r}, expected {JOB_STATE_VERSION}"
            raise StateError(msg)
        if state["spec"] != self.spec.fingerprint():
            msg = (
                "job state was saved for a different job definition (filter, mixture, seed, "
                "budget or policy differ); submit the same job to restore it"
            )
            raise StateError(msg)
        if state["extensions"] or self.extensions:
            added = sorted({f for ext in state["extensions"] for f in ext["files"]})
            self._build_base(exclude_files=added)
            for ext in state["extensions"]:
                self._add(self._query(include_files=ext["files"]))
            self.extensions = [dict(e) for e in state["extensions"]]
        if state["query"] != self.result.fingerprint:
            msg = (
                "the query result changed since the state was saved (catalog files or "
                "registrations differ); restore against the same catalog"
            )
            raise StateError(msg)
        self._planner.load_state_dict(state["planner"])
        if self.algorithm is not None and state["algorithm"] is not None:
            self.algorithm.load_state_dict(state["algorithm"])
        self.mixture_log = list(state["mixture_log"])
        # changes made after the snapshot are applied again when re-planning reaches them
        self._pending = {
            e["chunk"]: e
            for e in self.mixture_log
            if e["version"] > self._planner.mixture_version and e["cause"] != "phase"
        }
        start = self._planner.next_chunk
        self._chunks.clear()
        self._before = {start: self._planner.state_dict()}
        self._milestones = {start: self._before[start]}
        self._replanned = {}
        self._applied_through = start
        self._planned = int(state["planned"])
        self._last = None
        saved_topology = Topology(**state["topology"])
        saved = Assignment(
            topology=saved_topology,
            frontier=state["frontier"],
            carried=tuple((k, o) for k, o in state["carried"]),
        )
        consumers = {int(c): s for c, s in state["consumers"].items()}
        scope = state.get("scope")
        if scope is not None:
            if saved_topology != self.topology:
                msg = (
                    f"this state holds only consumers {scope} of the job (saved by one worker or "
                    "rank); to restore under another topology, merge the states of all parts "
                    "first (mixplane.job.merge_states)"
                )
                raise StateError(msg)
            if self.local is None or not self.local <= set(scope):
                msg = (
                    f"this state holds only consumers {scope} of the job (saved by one worker or "
                    "rank); restore it in a job limited to them (job.limit_consumers), or merge "
                    "the states of all parts first (mixplane.job.merge_states)"
                )
                raise StateError(msg)
        self._ranks = {}
        if saved_topology == self.topology:
            self.assignment = saved
            self._consumers = {
                c: ConsumerState(j=s["j"], offset=s["offset"]) for c, s in consumers.items()
            }
            return
        self.assignment, self._consumers = _redeal(saved, consumers, self.topology)

    def end_of_stream(self) -> int | None:
        return self._last

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> JobSnapshot:
        """The job's definition, state and catalog data, to run it in another process
        (``Job.from_snapshot``): DataLoader workers, ranks, tools without the catalog."""
        with self._algorithm_lock, self._lock:  # the order state_dict and feedback take
            return self._snapshot_now()

    def _snapshot_now(self) -> JobSnapshot:
        state = dict(self._state_dict())
        if self._snapshot is not None:
            old = self._snapshot
            rows, pointers = old.file_rows, old.file_pointers
        else:
            catalog = self._catalog()
            files = sorted(
                {int(f) for r in self._results for f in r.runs.column("file_id").to_pylist()}
            )
            rows = catalog.files()
            keep = np.isin(rows.column("file_id").to_numpy(), np.asarray(files, dtype=np.int64))
            rows = rows.filter(keep)
            pointers = {f: catalog.pointers(f) for f in files}
        return JobSnapshot(
            spec=self.spec.to_json(),
            topology=self.topology.to_json(),
            state=state,
            results=tuple(self._results),
            sizes={o.key: o.sizes for o in self.orders},
            token_source=dict(self.token_source),
            file_rows=rows,
            file_pointers=pointers,
        )

    @classmethod
    def from_snapshot(
        cls,
        snapshot: JobSnapshot,
        tokenizer: Tokenizer | None = None,
        *,
        topology: Topology | None = None,
        local: Collection[tuple[int, int]] | None = None,
    ) -> Job:
        """The job of a snapshot, at the snapshot's state, without a catalog. ``topology``
        other than the snapshot's restores elastically; ``local`` limits the consumers served."""
        spec = JobSpec.from_json(snapshot.spec)
        job = cls(
            None,
            spec,
            topology or Topology(**snapshot.topology),
            tokenizer,
            snapshot=snapshot,
            local=local,
        )
        job.load_state_dict(snapshot.state)  # type: ignore[arg-type]
        return job


def merge_states(states: Sequence[JobState]) -> JobState:
    """One state of the whole job from the states of its parts (the workers or ranks that each
    served some consumers, ``Job.limit_consumers``): positions of every part, the planner at the
    lowest part's snapshot. Restore it in any topology."""
    if not states:
        msg = "merge_states needs at least one state"
        raise StateError(msg)
    first = states[0]
    for other in states[1:]:
        for key in ("version", "spec", "query", "topology", "frontier", "carried"):
            if other[key] != first[key]:  # type: ignore[literal-required]
                msg = f"the states to merge differ in {key!r}: they are not parts of one run"
                raise StateError(msg)
    low = min(states, key=lambda s: s["planner"]["next_chunk"])
    consumers: dict[str, ConsumerState] = {}
    for s in states:
        consumers.update(s["consumers"])
    scopes = [s.get("scope") for s in states]
    scope = None
    if all(sc is not None for sc in scopes):
        covered = sorted({c for sc in scopes for c in sc or ()})
        topology = Topology(**first["topology"])
        scope = None if covered == list(range(topology.consumers)) else covered
    longest = max(states, key=lambda s: len(s["mixture_log"]))
    return JobState(
        version=first["version"],
        spec=first["spec"],
        query=first["query"],
        planner=low["planner"],
        planned=max(s["planned"] for s in states),
        algorithm=low["algorithm"],
        extensions=longest["extensions"],
        mixture_log=longest["mixture_log"],
        topology=first["topology"],
        frontier=first["frontier"],
        carried=first["carried"],
        consumers=dict(sorted(consumers.items(), key=lambda kv: int(kv[0]))),
        scope=scope,
    )


def _redeal(
    saved: Assignment, consumers: dict[int, ConsumerState], topology: Topology
) -> tuple[Assignment, dict[int, ConsumerState]]:
    """A new assignment segment for another topology: unfinished chunks are dealt first."""
    current = {c: saved.chunk(c, s["j"]) for c, s in consumers.items()}
    for c in range(saved.topology.consumers):  # consumers that never started
        current.setdefault(c, saved.chunk(c, 0))
    frontier = max(saved.frontier, max(k for k, _ in current.values()) + 1)
    unfinished: list[tuple[int, int]] = []
    for c in range(saved.topology.consumers):
        j = consumers[c]["j"] if c in consumers else 0
        offset = consumers[c]["offset"] if c in consumers else 0
        k, start = saved.chunk(c, j)
        while k < frontier:
            unfinished.append((k, start + offset))
            offset = 0
            j += 1
            k, start = saved.chunk(c, j)
    unfinished.sort()
    return Assignment(topology=topology, frontier=frontier, carried=tuple(unfinished)), {}
