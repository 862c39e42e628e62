"""Consumer streams: one consumer's samples, read in groups of chunks, in each chunk's order.

A stream walks its consumer's chunk sequence (``Assignment``), reads its chunks in groups of
the job's ``read_ahead`` chunks at fixed positions of the sequence (one batched read per file
for the group), and yields each chunk's samples in the chunk's seeded order: components
interleaved by stratified keys, each component's samples in random-key order (``shuffled``) or
range order. Its position (chunk number j in the sequence, sample offset) advances only as
samples are consumed, so ``state_dict`` is exact at any point. Cost per sample: one JSON parse,
a tuple, a generator step; per chunk: one generator, two sorts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, NotRequired, Protocol, Self, TypedDict, TypeVar

import numpy as np

from mixplane.chunking.assign import Assignment
from mixplane.chunking.order import PURPOSE_SHUFFLE, generator
from mixplane.chunking.spec import ChunkSpec
from mixplane.client.reader import Reader
from mixplane.errors import StateError, shown
from mixplane.query.result import expand_runs


class _Sliceable(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Self: ...


_Rest = TypeVar("_Rest", bound=_Sliceable)


class ChunkReader(Protocol[_Rest]):
    """Reads a group of chunks: one sliceable rest per chunk, in the chunk's order."""

    def __call__(
        self, reader: Reader, specs: list[ChunkSpec], seed: int, *, shuffle: bool
    ) -> list[_Rest]: ...


class ConsumerState(TypedDict):
    j: int  # index into the consumer's chunk sequence
    offset: int  # samples already read from that chunk
    # a window stream's place inside that chunk rest: live, a ``client.handover.Placed``;
    # in a job state, its ``WindowPosition`` (what an elastic restore hands over)
    window: NotRequired[Any]


class JobHandle(Protocol):
    """What consumer streams need of a job: an in-process ``Job`` or a ``RemoteJob`` (server)."""

    @property
    def spec(self) -> Any: ...  # JobSpec: seed, order

    @property
    def read_group(self) -> int: ...

    @property
    def assignment(self) -> Assignment: ...  # who reads which chunk (and handovers)

    @property
    def num_components(self) -> int: ...

    def consumer_chunk(self, consumer: int, j: int) -> tuple[ChunkSpec | None, int]: ...

    def reader(self) -> Reader: ...

    def stream(self, dp_group: int = 0, rank: int = 0, worker: int = 0) -> Stream: ...

    def use_tokenizer(self, tokenizer: Any) -> bool: ...

    def release(self) -> None: ...


class Sample(NamedTuple):
    """One sample as a consumer receives it (a named tuple: cheap to make, immutable)."""

    text: str
    record: dict[str, Any]
    component: int
    file_id: int
    ordinal: int
    chunk: int


def _position(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


class Stream:
    """One consumer's samples, in order; ``state_dict`` is its position."""

    def __init__(
        self,
        job: JobHandle,
        consumer: int,
        state: ConsumerState,
        *,
        gate: Callable[[int], bool] | None = None,
    ) -> None:
        self.job = job
        self.consumer = consumer
        self._state = state
        #: called with j before the first chunk of each read group past the first is asked
        #: for; may wait (a prefetch cursor waits for its consumer); False ends the stream
        self._gate = gate

    def state_dict(self) -> ConsumerState:
        return ConsumerState(j=self._state["j"], offset=self._state["offset"])

    def load_state_dict(self, state: ConsumerState) -> None:
        """Move this rank's position (the job's state must be loaded first)."""
        j = state.get("j") if isinstance(state, dict) else None
        offset = state.get("offset") if isinstance(state, dict) else None
        if not (_position(j) and _position(offset)):
            msg = f"a consumer position is {{j: int >= 0, offset: int >= 0}}, got {shown(state)}"
            raise StateError(msg)
        self._state["j"], self._state["offset"] = int(state["j"]), int(state["offset"])

    def report(self, place: Any) -> None:
        """Keep a window stream's live place (``client.handover.Placed``) with this
        rank's position: the job's state then says what the stream still owes of its chunk."""
        self._state["window"] = place

    def chunks(self) -> Iterator[tuple[ChunkSpec, int, int]]:
        """(chunk, first sample offset, j) for this consumer from its current position on (the
        position itself advances only as samples are consumed)."""
        j = self._state["j"]
        first, group = j, self.job.read_group
        while True:
            if self._gate is not None and j != first and j % group == 0 and not self._gate(j):
                return
            spec, start = self.job.consumer_chunk(self.consumer, j)
            if spec is None:
                return
            yield spec, start, j
            j += 1

    def __iter__(self) -> Iterator[Sample]:
        for samples in self._chunk_rests(read_chunks):
            state = self._state
            begin = state["offset"]
            for i in range(len(samples)):
                state["offset"] = begin + i + 1
                yield samples[i]

    def chunk_rests(self) -> Iterator[list[Sample]]:
        """The unread rest of each chunk, one list per chunk. Right after a list is returned
        the position is that list's start; it moves past the list when the next is asked."""
        return self.rests(read_chunks)

    def rests(self, read: ChunkReader[_Rest]) -> Iterator[_Rest]:
        """``chunk_rests`` with another reader of a group of chunks (``read_chunks``' form):
        the window stream's reads stored token ids as arrays (``client.documents``)."""
        for samples in self._chunk_rests(read):
            yield samples
            self._state["offset"] += len(samples)

    def _chunk_rests(self, read: ChunkReader[_Rest]) -> Iterator[_Rest]:
        reader = self.job.reader()
        shuffle = self.job.spec.order == "shuffled"
        ahead: list[tuple[ChunkSpec, int]] = []
        ready: list[_Rest] = []
        chunks = self.chunks()
        group = self.job.read_group
        while True:
            if not ready:  # read the rest of this group of chunks together
                ahead = []
                for spec, start, j in chunks:
                    ahead.append((spec, start))
                    if (j + 1) % group == 0:
                        break
                if not ahead:
                    return
                ready = read(reader, [s for s, _ in ahead], self.job.spec.seed, shuffle=shuffle)
            spec, start = ahead.pop(0)
            samples = ready.pop(0)
            yield samples[start + self._state["offset"] :]
            self._state["j"] += 1
            self._state["offset"] = 0
            if not ahead:
                self.job.release()


def interleave(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Component of each position of a chunk: stratified, so every span holds each component
    close to its share. Component c's i-th sample sits at key (i + u_c) / n_c with u_c drawn
    from ``rng``; positions are the sorted keys."""
    counts = np.asarray(counts, dtype=np.int64)
    jitter = np.zeros(len(counts))
    present = counts > 0  # draws only for components in the chunk: the order does not depend
    jitter[present] = rng.random(int(present.sum()))  # on components added later with 0 samples
    comps = np.repeat(np.arange(len(counts)), counts)
    if len(comps) == 0:
        return comps
    within = np.arange(len(comps)) - np.repeat(np.cumsum(counts) - counts, counts)
    keys = (within + jitter[comps]) / counts[comps]
    return comps[np.lexsort((comps, keys))]


def chunk_order(spec: ChunkSpec, seed: int, *, shuffle: bool) -> np.ndarray:
    """For each output position of a chunk, the index of its sample in range order.

    One generator of (seed, chunk) drives everything: first the interleave of components, then
    (with ``shuffle``) one random key per sample, which orders each component's samples.
    """
    rng = generator(seed, PURPOSE_SHUFFLE, spec.index)
    sequence = interleave(spec.counts, rng)
    component_of = np.repeat(spec.components, spec.lengths)
    if shuffle:  # by component, in random-key order inside
        grouped = np.lexsort((rng.random(len(component_of)), component_of))
    else:  # by component, range order inside
        grouped = np.argsort(component_of, kind="stable")
    return place(sequence, grouped, spec.counts)


def place(sequence: np.ndarray, grouped: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Items in interleaved order: ``sequence`` names the component of each position,
    ``grouped`` lists item indices component by component (``counts`` each, each component's
    in its order); position i gets the next unused item of component ``sequence[i]``."""
    counts = np.asarray(counts, dtype=np.int64)
    firsts = np.cumsum(counts) - counts
    by_position = np.argsort(sequence, kind="stable")
    rank = np.empty(len(sequence), dtype=np.int64)
    rank[by_position] = np.arange(len(sequence)) - firsts[sequence[by_position]]
    return grouped[firsts[sequence] + rank]


def read_chunks(
    reader: Reader, specs: list[ChunkSpec], seed: int, *, shuffle: bool
) -> list[list[Sample]]:
    """The samples of several chunks, each in its seeded order. The reads of all of them are
    batched per file (one pass over each file's pointers), so small chunks cost little more
    per sample than large ones."""
    file_of, ordinals = expand_runs(
        np.concatenate([s.files for s in specs]),
        np.concatenate([s.starts for s in specs]),
        np.concatenate([s.lengths for s in specs]),
    )
    total = len(ordinals)
    # one read per file; then where each sample (in range order) sits in the fetched lists
    by_file = np.argsort(file_of, kind="stable")
    sorted_files = file_of[by_file]
    bounds = np.flatnonzero(np.diff(sorted_files)) + 1
    records: list[dict[str, Any]] = []
    texts: list[str] = []
    for group in np.split(by_file, bounds):
        if len(group):
            recs, txts = reader.read_with_text(int(file_of[group[0]]), ordinals[group])
            records += recs
            texts += txts
    where = np.empty(total, dtype=np.int64)
    where[by_file] = np.arange(total)
    out = []
    first = 0
    file_list, ordinal_list = file_of.tolist(), ordinals.tolist()
    for spec in specs:
        n = int(spec.lengths.sum())
        comps = np.repeat(spec.components, spec.lengths).tolist()
        picks = (chunk_order(spec, seed, shuffle=shuffle) + first).tolist()
        at = where[picks].tolist() if picks else []
        index = spec.index
        out.append(
            [
                Sample(texts[a], records[a], comps[p - first], file_list[p], ordinal_list[p], index)
                for p, a in zip(picks, at, strict=True)
            ]
        )
        first += n
    return out


def read_chunk(reader: Reader, spec: ChunkSpec, seed: int, *, shuffle: bool) -> list[Sample]:
    """All samples of one chunk in its seeded order."""
    return read_chunks(reader, [spec], seed, shuffle=shuffle)[0]
