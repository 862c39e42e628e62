"""Jobs: a filter, a mixture, a seed, a topology and a budget, planned into chunks and streamed.

``Job`` is the facade users, streams and the server see. Its parts, one room each: the
components (``components.py``: the query result, seeded orders, token sizes), the plan
(``plan.py``: planner, chunks kept, milestones, replay, the mixture log), the consumers
(``consumers.py``: assignment, positions, release) and the adaptation (``adaptation.py``:
algorithm, feedback, retries). Its state is O(components + consumers) (``state.py``: its
shape; ``resume.py``: made from the parts and loaded back).

Locks: the job's lock (re-entrant) guards the plan and the consumers; the algorithm's lock is
held while the algorithm updates and is always taken first (``state_dict``, ``snapshot``,
``load_state_dict`` and feedback take both in that order), so an update in progress finishes
before a state is read and the algorithm's state and the mixture log agree.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import (
    Any,
    Concatenate,
    Generic,
    Literal,
    NamedTuple,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

import numpy as np

from mixplane.adapt.base import MixingAlgorithm
from mixplane.catalog.catalog import Catalog
from mixplane.chunking.assign import Assignment, Topology
from mixplane.chunking.order import ComponentOrder
from mixplane.chunking.spec import ChunkSpec
from mixplane.client.reader import Reader
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.stream import ConsumerState, Stream
from mixplane.errors import MALFORMED, PlanError, StateError, shown
from mixplane.job.adaptation import FeedbackResult, Replay
from mixplane.job.components import Components
from mixplane.job.consumers import Consumers
from mixplane.job.explain import explain
from mixplane.job.plan import Planned, Planning
from mixplane.job.resume import load_state, presize, snapshot_of, state_of, undo_of
from mixplane.job.spec import JobSpec
from mixplane.job.state import ComponentSizing, JobState
from mixplane.job.warn import warn_once
from mixplane.mixture.mixture import Mixture
from mixplane.query.result import QueryResult
from mixplane.tokens.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


def _locked(method: Callable[Concatenate[Job, _P], _R]) -> Callable[Concatenate[Job, _P], _R]:
    """Run a Job method under the job's lock (prefetch threads plan while training threads
    send feedback or take the state)."""

    @functools.wraps(method)
    def wrapper(self: Job, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Part(Generic[_T]):
    """A read-only attribute of one of the job's parts: ``result: Part[QueryResult] =
    Part("_components")`` makes ``job.result`` read ``job._components.result``."""

    def __init__(self, part: str, name: str | None = None) -> None:
        self.part = part
        self.name = name

    def __set_name__(self, owner: type, name: str) -> None:
        if self.name is None:
            self.name = name

    @overload
    def __get__(self, job: None, owner: type) -> Part[_T]: ...
    @overload
    def __get__(self, job: object, owner: type) -> _T: ...
    def __get__(self, job: object | None, owner: type) -> Part[_T] | _T:
        if job is None:
            return self
        assert self.name is not None
        return cast(_T, getattr(getattr(job, self.part), self.name))

    def __set__(self, job: object, value: object) -> None:
        msg = f"Job.{self.name} is read-only (it belongs to the job's {self.part[1:]})"
        raise AttributeError(msg)


class Progress(NamedTuple):
    """A consistent read of where a job stands (``Job.progress``), for dashboards."""

    weights: np.ndarray  # the current mixture
    mixture_log: list[dict[str, Any]]
    next_chunk: int  # chunks planned so far
    ended: bool
    positions: dict[int, ConsumerState]  # each served consumer's position
    live_ranks: int  # ranks that opened a stream or reported a position
    assignment: Assignment


class Job(Planned):
    """A job over an open catalog, or over a ``JobSnapshot`` (no catalog: another process).

    ``local`` limits the consumers (dp_group, worker) this process serves; chunks are then
    kept only for them, and the state holds only their positions (a part of the job, see
    ``merge_states``). The default serves every consumer of the topology. ``sizing`` sizes the
    components as a saved run did (or ``"fixed"``: all at the spec's ratio)."""

    def __init__(
        self,
        catalog: Catalog | None,
        spec: JobSpec,
        topology: Topology,
        tokenizer: Tokenizer | None = None,
        *,
        snapshot: JobSnapshot | None = None,
        local: Collection[tuple[int, int]] | None = None,
        sizing: Mapping[str, ComponentSizing] | Literal["fixed"] | None = None,
    ) -> None:
        if tokenizer is not None and tokenizer.fingerprint != spec.tokenizer:
            msg = "the job's tokenizer does not match spec.tokenizer (its fingerprint)"
            raise PlanError(msg)
        self._lock = threading.RLock()
        self.spec = spec
        self.topology = topology
        self.catalog = catalog
        self._snapshot = snapshot
        self._consumers = Consumers(topology, local)
        self._components = Components(
            spec, catalog=catalog, snapshot=snapshot, tokenizer=tokenizer, sizing=sizing
        )
        self._components.build()
        self._planning = Planning(self._components, self._lock)  # made when first needed
        self._reader: Reader | None = None

    # -- what the job is ---------------------------------------------------------------------
    tokenizer: Part[Tokenizer | None] = Part("_components")
    result: Part[QueryResult] = Part("_components")
    orders: Part[list[ComponentOrder]] = Part("_components")
    token_source: Part[dict[str, str]] = Part("_components")
    sizing_note: Part[str | None] = Part("_components")
    extensions: Part[list[dict[str, Any]]] = Part("_components")
    mixture_log: Part[list[dict[str, Any]]] = Part("_plan")
    assignment: Part[Assignment] = Part("_consumers")
    local: Part[frozenset[int] | None] = Part("_consumers")
    feedback_log: Part[Sequence[tuple[int, np.ndarray, np.ndarray]]] = Part("_algorithm", "log")
    feedback_received: Part[int] = Part("_algorithm", "received")

    @property
    def sizing(self) -> dict[str, ComponentSizing]:
        """How each component's token sizes were made, by component key (token jobs)."""
        return self._components.sizing

    @property
    def num_components(self) -> int:
        return self._components.count

    @property
    def selectors(self) -> list[str]:
        """Each component's selector, by component id."""
        return [c.selector for c in self._components.result.components]

    @property
    def weights(self) -> np.ndarray:
        """The job's current mixture: the newest weights of the mixture log (in force from the
        chunk that entry names; chunks planned before it keep the weights they had)."""
        with self._lock:
            return self._plan.latest_weights()

    @property
    def read_group(self) -> int:
        """How many of its chunks a stream reads together (``spec.read_ahead``): groups start
        at fixed positions of the consumer's sequence (multiples of this), so how far planning
        has run ahead at any point is a function of what was consumed, live or after a
        restore."""
        return self.spec.read_ahead

    @_locked
    def use_tokenizer(self, tokenizer: Tokenizer) -> bool:
        """The job is about to be streamed as tokens with ``tokenizer``: size it with that
        tokenizer if it is a token budget made without one (fixed ratio) and nothing has been
        planned, consumed or changed yet. Returns whether the job is sized with
        ``tokenizer`` now; otherwise a ``SizingWarning`` says why and what to do."""
        if self.spec.unit == "tokens" and self.spec.tokenizer == tokenizer.fingerprint:
            return True  # sized with it already (or to be, when first needed)
        untouched = (
            self._planning.untouched()
            and not self._consumers.ranks
            and not self._consumers.restored
        )
        if not self._components.use_tokenizer(tokenizer, untouched=untouched):
            return self.spec.tokenizer == tokenizer.fingerprint and self.spec.unit == "tokens"
        self.spec = self._components.spec
        self._planning.resized()
        return True

    # -- mixture changes ---------------------------------------------------------------------
    @_locked
    def consumed_frontier(self) -> int:
        """For an adaptive job, the first chunk a mixture change made now can apply to, from
        what was consumed: past the read group after the one each served consumer is in (one
        not started is in its first). A stream reads at most one group ahead of its consumer
        (``WindowStream`` waits for it), so chunks below this may be planned and none at or
        past it is: where a change lands depends on the consumers' positions only, never on
        how far a prefetch thread happened to get."""
        return self._consumers.frontier(self.read_group)

    @_locked
    def change_point(self) -> int:
        """Where a change made now applies (``feedback`` without ``at``): the first chunk not
        planned yet; for an adaptive job, the consumed frontier if that is later. Ranks that
        each run the job in-process pass the greatest of theirs as ``at`` (``LossFeedback``)."""
        at = self._plan.frontier
        if self.algorithm is not None:
            at = max(at, self._consumers.frontier(self.read_group))
        return at

    @_locked
    def set_weights(self, weights: np.ndarray | Mapping[str, float]) -> int:
        """New weights in force from the next planned chunk; returns that chunk index."""
        if isinstance(weights, Mapping):
            weights = Mixture.static(weights).resolve(self.result, self._components.natural())
        return self._plan.change(
            np.asarray(weights, dtype=np.float64), cause="update", at=self.change_point()
        )

    @_locked
    def extend(self) -> int:
        """Add components for samples registered since the job started (new files matching the
        filters); existing cursors are untouched. Returns the chunk from which they are mixed in."""
        components = self._components
        components.catalog()
        result = components.query(exclude_files=components.files())
        at = self.change_point()
        if not result.components:
            return at
        files = sorted({int(f) for f in result.runs.column("file_id").to_pylist()})
        self._plan.add_components(components.add(result))
        components.extensions.append({"chunk": at, "files": files})
        phase = max(i for i, start in enumerate(self._plan.phase_starts) if start <= at)
        return self._plan.change(components.weights(phase), cause="extend", at=at)

    def feedback(
        self, step: int, loss_sum: Any, token_count: Any, *, at: int | None = None
    ) -> int | None:
        """Per-component loss sums and token counts of a training step. With an adaptive
        mixture the algorithm may answer new weights, in force from the chunk returned
        (``change_point()``, or ``at``; None: unchanged). A message equal to the one just
        applied (same step, same numbers) is a retry whose answer was lost: it gets the same
        answer and is not applied again. ``at`` below ``change_point()`` or the latest change's
        chunk raises ``PlanError`` and changes nothing; the chunks below it keep the weights in
        force. Ranks that each run the job in-process stay one plan by passing the same numbers
        and the same ``at``, the greatest of their change points (``LossFeedback``)."""
        return self.apply_feedback(step, loss_sum, token_count, at=at).applies_from

    def apply_feedback(
        self, step: int, loss_sum: Any, token_count: Any, *, at: int | Replay | None = None
    ) -> FeedbackResult:
        """``feedback`` with what happened: whether the message was applied (not a retry),
        the mixture version in force when it arrived, the new weights and where they apply.
        ``at=Replay(...)``: the message is one the job answered before (a server's feedback
        log after a restart): the algorithm sees it again, and a change applies from the chunk
        it did then (it must change the weights exactly when it did)."""
        return self._adaptation.apply(
            self.num_components,
            step,
            loss_sum,
            token_count,
            job_lock=self._lock,
            version=lambda: len(self.mixture_log) - 1,
            change=self._plan.adapt,
            point=self.change_point,
            check=self._plan.check_at,
            at=at,
        )

    def trace(self) -> list[dict[str, Any]]:
        """The feedback this job received (since it was made or restored; the last
        ``FEEDBACK_LOG_MAX`` messages), in the long format replay reads: one row per (step,
        component) with ``step``, ``domain`` (the selector), ``loss_sum`` and ``tokens``."""
        return self._adaptation.trace(self.selectors)

    @contextlib.contextmanager
    def algorithm_view(self, timeout: float) -> Iterator[MixingAlgorithm | None]:
        """The algorithm, held still (its lock taken) when that is free within ``timeout``
        seconds, else as it is (a refit in progress): for a read of its state."""
        lock = self._adaptation.lock
        locked = lock.acquire(timeout=timeout)
        try:
            yield self.algorithm
        finally:
            if locked:
                lock.release()

    # -- chunks ------------------------------------------------------------------------------
    @_locked
    def chunk(self, index: int) -> ChunkSpec | None:
        """Chunk ``index`` (planning up to it), or None past the end of the stream. The first
        time it plans, a job sized at a fixed ratio says so (``SizingWarning``)."""
        if self._plan.next_chunk == 0 and self._snapshot is None:
            note = self.sizing_note
            if note is not None:
                warn_once(note)
        return self._plan.chunk(index)

    @_locked
    def plan_next(self, below: int) -> bool:
        """Plan the next chunk if its index is below ``below`` and the stream goes on; whether
        one was planned (a server planning ahead, one chunk per hold of the lock)."""
        k = self._plan.next_chunk
        if k >= below or self._plan.planner.ended:
            return False
        self.chunk(k)
        return True

    @_locked
    def serve(
        self, positions: Iterable[tuple[int, int, int]], indices: Sequence[int]
    ) -> list[ChunkSpec | None]:
        """Record ranks' positions (``set_positions``), then the chunks of ``indices`` (each
        planned if need be), under one hold of the lock: a server's answer to a request."""
        self._consumers.set_positions(positions)
        return [self.chunk(index) for index in indices]

    @property
    def next_chunk(self) -> int:
        """How many chunks have been planned."""
        return self._plan.next_chunk

    @property
    def ended(self) -> bool:
        """Whether the stream has ended (``on_exhausted='stop'`` or all redistributed)."""
        return bool(self._plan.planner.ended)

    def planned_chunk(self, index: int) -> ChunkSpec | None:
        """Chunk ``index`` if it is planned and kept, without planning anything."""
        return self._plan.chunks.get(index)

    def consumer_chunk(self, consumer: int, j: int) -> tuple[ChunkSpec | None, int]:
        """The consumer's j-th chunk (None past the end) and the sample offset it starts at."""
        index, start = self.assignment.chunk(consumer, j)
        return self.chunk(index), start

    def fetch(self, pairs: Sequence[tuple[int, int]]) -> list[tuple[ChunkSpec | None, int]]:
        """(chunk, start) of each (consumer, j): ``consumer_chunk`` of each (as a remote job's
        ``fetch`` answers in one request)."""
        return [self.consumer_chunk(consumer, j) for consumer, j in pairs]

    def plan(self, count: int) -> Iterator[ChunkSpec]:
        """The first ``count`` chunks in global order (for inspection and the CLI)."""
        for k in range(count):
            spec = self.chunk(k)
            if spec is None:
                return
            yield spec

    def end_of_stream(self) -> int | None:
        return self._plan.last

    @_locked
    def explain(self, *, chunks: int | None = None) -> dict[str, Any]:
        """Per component: samples, bytes, tokens and how they were sized, weight; with
        ``chunks``, what the job draws in that many chunks (``explain.py``)."""
        return explain(self, chunks=chunks)

    # -- consumers ---------------------------------------------------------------------------
    @_locked
    def set_positions(self, positions: Iterable[tuple[int, int, int]]) -> None:
        """Each (consumer, rank, j): that rank of the consumer is at the start of its j-th
        chunk (what remote ranks report; coordinates must be checked by the caller)."""
        self._consumers.set_positions(positions)

    @_locked
    def stream(self, dp_group: int = 0, rank: int = 0, worker: int = 0) -> Stream:
        """The samples of one consumer for one rank; ranks of a group get identical streams,
        each rank keeping its own position (they are separate processes in training)."""
        consumer, state = self._consumers.open(dp_group, rank, worker)
        return Stream(self, consumer, state)

    def limit_consumers(self, local: Collection[tuple[int, int]]) -> None:
        """Serve only these consumers (dp_group, worker) in this process (see the class)."""
        self._consumers.limit(local)

    @_locked
    def progress(self) -> Progress:
        """Where the job stands, read consistently (one hold of the lock)."""
        return Progress(
            weights=self._plan.latest_weights(),
            mixture_log=list(self.mixture_log),
            next_chunk=self._plan.next_chunk,
            ended=bool(self._plan.planner.ended),
            positions=self._consumers.positions(),
            live_ranks=len(self._consumers.ranks),
            assignment=self.assignment,
        )

    @_locked
    def release(self) -> None:
        """Drop cached chunks and planner states that no consumer can still need."""
        self._plan.release(self._consumers.lowest_unfinished())

    def close(self) -> None:
        """Close the files this job's reader holds open."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def reader(self) -> Reader:
        with self._lock:
            if self._reader is None:
                self._reader = Reader(self._snapshot or self._components.catalog())
            return self._reader

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> JobState:
        """Consistent state of the job and all its consumers (O(components + consumers)).
        Locks in the order feedback takes them (algorithm, then job): an update in progress
        finishes first, so the algorithm's state and the mixture log agree."""
        with self._adaptation.lock, self._lock:
            return self._state_dict()

    def _state_dict(self) -> JobState:
        return state_of(self.spec, self._components, self._plan, self._adaptation, self._consumers)

    def load_state_dict(self, state: JobState) -> None:
        """Continue from a saved state; the topology may differ (elastic restore). A state
        that does not fit or is corrupt raises ``StateError`` and leaves the job as it was.
        A job not planned yet takes the state's sizing (``resume.presize``)."""
        with self._algorithm.lock, self._lock:
            parts = (self._components, self._planning, self._consumers)
            undo = undo_of(self._state_dict, self._load_state_dict, *parts)
            try:
                if not isinstance(state, Mapping):
                    msg = f"a job state is a JSON object (Job.state_dict()), not {type(state).__name__}"
                    raise StateError(msg)
                self._load_state_dict(state)
            except StateError:
                undo()
                raise
            except (*MALFORMED, PlanError) as exc:
                undo()
                msg = (
                    f"the job state is corrupt ({type(exc).__name__}: {shown(str(exc))}); pass a "
                    "state saved by Job.state_dict() for this job"
                )
                raise StateError(msg) from None

    def _load_state_dict(self, state: JobState) -> None:
        if self._planning.made is None and self._snapshot is None:
            presize(state, self.spec, self._components)
        load_state(
            state,
            self.spec,
            self._components,
            self._plan,
            self._adaptation,
            self._consumers,
            resize=self._snapshot is None,
        )

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> JobSnapshot:
        """The job's definition, state and catalog data, to run it in another process
        (``Job.from_snapshot``): DataLoader workers, ranks, tools without the catalog."""
        with self._adaptation.lock, self._lock:  # the order state_dict and feedback take
            return snapshot_of(self.spec, self.topology, self._components, self._state_dict())

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
        try:  # the snapshot's query results are a document too (JobSnapshot.load checks shapes)
            job = cls(
                None,
                spec,
                topology or Topology(**snapshot.topology),
                tokenizer,
                snapshot=snapshot,
                local=local,
            )
        except MALFORMED as exc:
            msg = (
                f"the job snapshot is corrupt ({type(exc).__name__}: {shown(str(exc))}); take "
                "the snapshot again"
            )
            raise StateError(msg) from None
        job.load_state_dict(snapshot.state)  # type: ignore[arg-type]
        return job
