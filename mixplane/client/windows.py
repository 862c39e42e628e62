"""Token windows of one consumer: its chunks, tokenized in batches and packed per component.

``WindowStream(job, tokenizer, seq_len, dp_group=, rank=, worker=)`` takes the consumer's
chunks one at a time (``Stream.rests`` with ``client.documents.DocumentReader``), tokenizes each
chunk's texts with one ``encode_batch`` call (the tokenizer's own thread pool, GIL released),
passes the stored ids of pre-tokenized samples through as they are (memory-mapped, never
decoded; the EOS added unless a document ends with it), feeds the documents in the
chunk's seeded order to a per-component ``Packer`` and yields the windows the chunk completes,
interleaved across components by the same stratified rule as a chunk's samples (seeded by the
chunk): every span of consecutive windows holds each component close to its share.

State, O(components x seq_len): the consumer position at the start of the current chunk, the
packer's state at that point, and how many of the chunk's windows were already yielded; for a
chunk of text also ``replay`` (``client.replay``): the chunk's windows per component and, per
component, the document its next window comes from with its buffer before it. Restoring with
``replay`` re-reads the chunk and tokenizes only what the next windows need, component by
component, in slices; without it (a chunk holding stored token ids, or a state saved before
``replay`` existed) it re-packs the whole chunk and skips the windows already yielded. Either
way the window stream continues exactly. Load the job's state first (``Job.load_state_dict``),
then the window stream's.

Elastic restore (``client.handover``): the stream keeps its place in its job's consumer
position (the packer state at the chunk rest's start and the windows of it yielded per
component, ``taken``), so the job's state says what the stream still owes; a chunk rest an
elastic restore dealt on with a handover is packed as the handover says (the old stream's
unyielded carry, then its documents from the first token not yet yielded).

Prefetch: with ``prefetch=n`` (default ``PREFETCH_CHUNKS``) a background thread reads, tokenizes
and packs up to n chunks ahead of the consumer (a bounded queue: memory is about n chunks of
windows), so training never waits on data while the loader is faster. The producer has its own
cursor; the job sees the consumer's position (the chunk being consumed), so job states and
chunk release follow what was consumed, not what was prefetched. ``prefetch=0`` does the work
in the consumer's thread. For an adaptive job the producer starts a read group only once the
consumer is in the group before it, so planning runs at most one read group ahead of what was
consumed whatever the producer's speed, and a new mixture lands where the job's
``consumed_frontier`` says, with or without prefetch (docs/planning.md "adaptation latency").
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, NotRequired, TypedDict

import numpy as np

from mixplane.client.documents import DocumentReader, Mark, pack_marked
from mixplane.client.handover import WindowPosition, check_taken, pack_handover
from mixplane.client.replay import (
    Replay,
    ReplayState,
    check_replay,
    from_marks,
    replay_chunk,
    window_order,
)
from mixplane.client.stream import ConsumerState, JobHandle, Stream, place
from mixplane.errors import MALFORMED, StateError, shown
from mixplane.tokens.packing import Packer, PackerState, Window
from mixplane.tokens.tokenizer import Tokenizer, TokenizerError

STATE_VERSION = 1


def _default_prefetch() -> int:
    """2 chunks ahead, or none where this process may use one CPU only: a background thread
    cannot overlap anything there and costs 4-10% (benchmarks/stream.py)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 2 if cpus > 1 else 0


PREFETCH_CHUNKS = _default_prefetch()  # chunks read, tokenized and packed ahead by default


class WindowStreamState(TypedDict):
    version: int
    tokenizer: str  # fingerprint
    stream: ConsumerState  # consumer position at the start of the current chunk
    packer: PackerState  # packer state at that point
    windows: int  # windows of the current chunk already yielded
    replay: NotRequired[ReplayState]  # a chunk of text: where each component's next window is
    taken: NotRequired[list[int]]  # per component: windows of the current chunk yielded


class ChunkWindows(NamedTuple):
    """The windows one chunk's rest completes, and where the stream stood before it."""

    start: ConsumerState  # consumer position at the start of the chunk's rest
    packer: PackerState  # packer state at that point
    windows: list[Window]
    marks: list[Mark] | None  # where each window comes from (a chunk of text)


@dataclass(slots=True)
class PrefetchStats:
    """How the background producer kept up: chunks made, and how often the consumer waited."""

    chunks_produced: int = 0
    chunks_consumed: int = 0
    waits: int = 0  # times the consumer found no chunk ready (after the first)


class WindowStream:
    def __init__(
        self,
        job: JobHandle,
        tokenizer: Tokenizer,
        seq_len: int,
        *,
        dp_group: int = 0,
        rank: int = 0,
        worker: int = 0,
        bos: bool = False,
        prefetch: int = PREFETCH_CHUNKS,
    ) -> None:
        if not isinstance(prefetch, int) or prefetch < 0:
            msg = f"prefetch must be a number of chunks >= 0, got {prefetch!r}"
            raise ValueError(msg)
        eos = getattr(tokenizer, "eos_id", None)
        if eos is None:
            msg = "the tokenizer has no end-of-sequence token; train or load one with an EOS"
            raise TokenizerError(msg)
        bos_id = getattr(tokenizer, "bos_id", None) if bos else None
        job.use_tokenizer(tokenizer)  # a token job made without one is sized with it now
        self.job = job
        self.tokenizer = tokenizer
        self._stream = job.stream(dp_group, rank, worker)
        self._packer = Packer(seq_len, eos, bos_id, num_components=job.num_components)
        self._start: ConsumerState = self._stream.state_dict()
        self._start_packer: PackerState = self._packer.state_dict()
        self._windows = 0
        # windows of the current chunk yielded per component: with ``_start_packer``, the
        # place the job's state reports (``position``; an elastic restore hands the rest on)
        self._taken: list[int] | None = [0] * job.num_components
        self._stream.report(self)
        self._item: ChunkWindows | None = None  # the chunk being consumed
        self._replay: ReplayState | None = None  # loaded, to resume the chunk from
        self._replaying: Replay | None = None  # the chunk being resumed
        self.prefetch = prefetch
        self.stats = PrefetchStats()
        self._moved = threading.Condition()  # the consumer's position changed
        self._closing = threading.Event()
        self._gated = getattr(job.spec, "algorithm", None) is not None

    def state_dict(self) -> WindowStreamState:
        state = WindowStreamState(
            version=STATE_VERSION,
            tokenizer=self.tokenizer.fingerprint,
            stream=dict(self._start),  # type: ignore[typeddict-item]
            packer=self._start_packer,
            windows=self._windows,
        )
        replay = self._replay_state()
        if replay is not None:
            state["replay"] = replay
        if self._taken is not None:
            state["taken"] = list(self._taken)
        return state

    def position(self) -> WindowPosition | None:
        """Where the stream stands in its chunk rest (``client.handover``); None while the
        windows taken per component are unknown (a state loaded without them)."""
        if self._taken is None:
            return None
        return WindowPosition(
            tokenizer=self.tokenizer.fingerprint, packer=self._start_packer, taken=list(self._taken)
        )

    def _replay_state(self) -> ReplayState | None:
        if self._replaying is not None:
            return self._replaying.state()
        if self._replay is not None:
            return self._replay
        item = self._item
        if item is None or item.marks is None:
            return None
        return from_marks(item.windows, item.marks, self._windows, item.packer, self._packer)

    def load_state_dict(self, state: WindowStreamState | dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s position; a state that does not fit or is corrupt
        raises ``StateError`` and changes nothing."""
        before = self.state_dict()
        try:
            self._load(state)
        except (StateError, *MALFORMED) as exc:
            self._load(before)
            if isinstance(exc, StateError):
                raise
            msg = (
                f"the window stream state is corrupt ({type(exc).__name__}: {shown(str(exc))}); "
                "pass a state saved by WindowStream.state_dict()"
            )
            raise StateError(msg) from None

    def _load(self, state: WindowStreamState | dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            msg = f"window stream state version {state.get('version')!r}, expected {STATE_VERSION}"
            raise StateError(msg)
        if state["tokenizer"] != self.tokenizer.fingerprint:
            msg = "the window stream state was saved with another tokenizer (fingerprints differ)"
            raise StateError(msg)
        self._stream.load_state_dict(state["stream"])
        self._packer.load_state_dict(state["packer"])
        self._start = ConsumerState(j=state["stream"]["j"], offset=state["stream"]["offset"])
        self._start_packer = state["packer"]
        windows = state["windows"]
        if not isinstance(windows, int) or isinstance(windows, bool) or not 0 <= windows < 2**62:
            msg = f"the window stream state's window count is {shown(windows)}, not an int >= 0"
            raise StateError(msg)
        replay = state.get("replay")
        if replay is not None:
            replay = check_replay(replay, self._packer.num_components, windows)
            self._new_packer().load_state_dict(replay["packer"])  # checked now, used later
        taken = state.get("taken")
        if taken is not None:
            taken = list(check_taken(taken, self._packer.num_components, windows))
        self._windows = windows
        self._item, self._replay, self._replaying = None, replay, None
        self._taken = taken
        self._stream.report(self)  # the job's state loaded first may have replaced it

    def _new_packer(self) -> Packer:
        packer = self._packer
        return Packer(
            packer.seq_len, packer.eos_id, packer.bos_id, num_components=packer.num_components
        )

    def __iter__(self) -> Iterator[Window]:
        """The windows from the current position on; iterating again continues."""
        self._closing.clear()
        if self._replaying is not None:  # an earlier iteration stopped inside a resumed chunk
            self._replay, self._replaying = self._replaying.state(), None
        if self._replay is not None:
            yield from self._resume_chunk(self._replay)
        chunks = self._produce(self._start, self._start_packer)
        if self.prefetch > 0:
            chunks = _Prefetch(chunks, self.prefetch, self.stats)
        skip = self._windows
        try:
            for item in chunks:
                self.stats.chunks_consumed += 1
                self._start, self._start_packer, self._windows = item.start, item.packer, skip
                self._item = item
                taken = self._taken = self._counts(item.windows[:skip])
                with self._moved:
                    self._stream.load_state_dict(item.start)  # the job sees the consumed position
                    self._moved.notify_all()
                for window in item.windows[skip:]:
                    self._windows += 1
                    taken[window.component] += 1
                    yield window
                skip = 0
        finally:
            self._closing.set()
            with self._moved:
                self._moved.notify_all()
            if isinstance(chunks, _Prefetch):
                chunks.close()

    def _resume_chunk(self, replay: ReplayState) -> Iterator[Window]:
        """The rest of the chunk a state with ``replay`` was saved in (``client.replay``), in
        this thread; afterwards the position is the next chunk's start."""
        start = ConsumerState(j=self._start["j"], offset=self._start["offset"])
        cursor = Stream(self.job, self._stream.consumer, ConsumerState(**start))
        rest = next(iter(cursor.rests(DocumentReader(self.tokenizer))), None)
        if rest is None or rest.token.any():
            msg = (
                "the window stream state's chunk is not a chunk of text of this job; resume "
                "with the job and catalog it was saved with"
            )
            raise StateError(msg)
        packer = self._new_packer()
        packer.load_state_dict(replay["packer"])
        seed = self.job.spec.seed
        run = replay_chunk(rest, replay, self._windows, packer, self.tokenizer.encode_batch, seed)
        self._replaying, self._replay, self._item = run, None, None
        order = window_order(replay["counts"], seed, rest.chunk)[: self._windows]
        taken = self._taken = np.bincount(order, minlength=packer.num_components).tolist()
        for window in run.windows:
            if self._replaying is not run:  # a later iteration took over
                return
            self._windows += 1
            taken[window.component] += 1
            yield window
        if self._replaying is run:
            self._replaying = None
            self._start = ConsumerState(j=start["j"] + 1, offset=0)
            self._start_packer = packer.state_dict()
            self._windows = 0
            self._taken = [0] * packer.num_components

    def _wait_for_consumer(self, j: int) -> bool:
        """Before the producer asks for chunk j, the first of a read group: wait until the
        consumer is in the group before it; False when the stream is closing."""
        group = self.job.read_group
        needed = (j // group - 1) * group
        with self._moved:
            while self._stream.state_dict()["j"] < needed:
                if self._closing.is_set():
                    return False
                self._moved.wait(timeout=0.05)
        return not self._closing.is_set()

    def _produce(self, start: ConsumerState, packer_state: PackerState) -> Iterator[ChunkWindows]:
        """Each chunk's rest from ``start`` on: read, tokenized in one batch, packed."""
        cursor = Stream(
            self.job,
            self._stream.consumer,
            ConsumerState(**start),
            gate=self._wait_for_consumer if self._gated else None,
        )
        packer = self._new_packer()
        packer.load_state_dict(packer_state)
        encode = self.tokenizer.encode_batch
        consumer = self._stream.consumer
        for rest in cursor.rests(DocumentReader(self.tokenizer)):
            begin = cursor.state_dict()
            before = packer.state_dict()
            handover = self.job.assignment.handover(consumer, begin["j"])
            if handover is None:
                windows, marks = pack_marked(rest, packer, encode)
            elif begin["offset"] == 0:  # a chunk an elastic restore handed over
                fingerprint = self.tokenizer.fingerprint
                windows, marks = pack_handover(rest, handover, packer, encode, fingerprint), None
            else:
                msg = (
                    "a chunk handed over by an elastic restore is resumed only from its start "
                    "(a window stream state); restore the state saved with this stream"
                )
                raise StateError(msg)
            if len(windows) > 1:
                order = self._interleaved(windows, rest.chunk).tolist()
                windows = [windows[i] for i in order]
                marks = [marks[i] for i in order] if marks is not None else None
            self.stats.chunks_produced += 1
            yield ChunkWindows(begin, before, windows, marks)

    def _counts(self, windows: list[Window]) -> list[int]:
        """Windows per component."""
        counts = [0] * self._packer.num_components
        for window in windows:
            counts[window.component] += 1
        return counts

    def _interleaved(self, windows: list[Window], chunk: int) -> np.ndarray:
        """The order of the chunk's windows, stratified across components; each component's
        in order."""
        comps = np.fromiter((w.component for w in windows), dtype=np.int64, count=len(windows))
        counts = np.bincount(comps, minlength=self._packer.num_components)
        sequence = window_order(counts, self.job.spec.seed, chunk)
        return place(sequence, np.argsort(comps, kind="stable"), counts)


_END = object()


class _Failure(NamedTuple):
    error: BaseException


class _Prefetch(Iterator[ChunkWindows]):
    """Runs a chunk producer in a daemon thread, at most ``depth`` chunks ahead."""

    def __init__(self, source: Iterator[ChunkWindows], depth: int, stats: PrefetchStats) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._stats = stats
        self._first = True
        self._thread = threading.Thread(
            target=self._run, args=(source,), name="mixplane-prefetch", daemon=True
        )
        self._thread.start()

    def _run(self, source: Iterator[ChunkWindows]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> ChunkWindows:
        if self._queue.empty() and not self._first:
            self._stats.waits += 1
        self._first = False
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later calls end too
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.error
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the producer and wait for it (it finishes the chunk in hand)."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()
