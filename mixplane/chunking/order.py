"""The order in which a component's samples are drawn, epoch by epoch.

A component's samples are its runs laid end to end (sample index 0..N-1). Orders:

- ``shuffled`` (default): the index space is cut into blocks of ``block_size`` consecutive samples
  and the blocks are permuted by a generator derived from (seed, component key, epoch); inside a
  block samples stay in stored order, so reads stay sequential within a block.
  A chunk lists the samples it takes as sorted, merged ranges; the consumer emits them in a
  seeded order (generator of (seed, chunk, component)), so samples are mixed across the blocks
  of a chunk while reads stay windowed.
- ``as-stored``: sample index order (for ``sorted`` orders the runs themselves arrive sorted by
  the property, so traversal in stored order is the sorted order).

Mapping positions to samples is vectorized (``searchsorted`` over block and run offsets); one
epoch's permutation costs O(N / block_size) memory and is rebuilt on demand (cached per epoch).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

OrderKind = Literal["shuffled", "as-stored"]
DEFAULT_BLOCK = 256
SPAN_BLOCKS = 8  # spans of up to this many blocks are cut in Python, longer ones with numpy

PURPOSE_ORDER = 1
PURPOSE_SHUFFLE = 3
PURPOSE_WINDOWS = 5  # order of a chunk's windows (client/windows.py)


class _Epoch(NamedTuple):
    perm: np.ndarray  # block index at each block position of the epoch's order
    starts: np.ndarray  # start position of each permuted block
    short_at: int  # block position of the last block of the index space (it may be short)


def key_of(text: str) -> int:
    """A stable 63-bit integer for a component key (never Python's salted hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, purpose: int, *parts: int) -> np.random.Generator:
    """A generator derived from (seed, purpose, parts); no global RNG is touched."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, purpose, *parts])))


@dataclass(slots=True, kw_only=True)
class ComponentOrder:
    """Runs of one component and its per-epoch order of samples."""

    key: str  # stable identity of the component (its selector text)
    files: np.ndarray  # int32, one per run
    starts: np.ndarray  # int64 first ordinal, one per run
    counts: np.ndarray  # int64 samples, one per run
    seed: int
    kind: OrderKind = "shuffled"
    block_size: int = DEFAULT_BLOCK
    sizes: np.ndarray | None = None  # per-sample token estimate, by sample index (token mode)
    run_offsets: np.ndarray = field(init=False)
    _cache: dict[int, _Epoch] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.run_offsets = np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)

    @property
    def total(self) -> int:
        return int(self.run_offsets[-1])

    def _epoch(self, epoch: int) -> _Epoch:
        """The epoch's block permutation, each permuted block's start position, and where the
        last block of the index space (the one that may be short) stands."""
        cached = self._cache.get(epoch)
        if cached is not None:
            return cached
        n = self.total
        blocks = -(-n // self.block_size)
        if self.kind == "shuffled":
            perm = generator(self.seed, PURPOSE_ORDER, key_of(self.key), epoch).permutation(blocks)
        else:
            perm = np.arange(blocks)
        lengths = np.minimum(self.block_size, n - perm * self.block_size)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        short_at = int(np.flatnonzero(perm == blocks - 1)[0]) if blocks else 0
        if len(self._cache) > 2:
            self._cache.clear()
        self._cache[epoch] = _Epoch(perm.astype(np.int64), starts, short_at)
        return self._cache[epoch]

    def samples_at(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Sample indices at the given positions of an epoch's order."""
        perm, starts, _ = self._epoch(epoch)
        j = np.searchsorted(starts, positions, side="right") - 1
        return perm[j] * self.block_size + (positions - starts[j])

    def token_sizes(self, epoch: int, first: int, count: int) -> np.ndarray:
        assert self.sizes is not None
        return self.sizes[self.samples_at(epoch, np.arange(first, first + count))]

    def block_at(self, epoch: int, position: int) -> tuple[int, int]:
        """(block, start position of that block in the epoch's order) at ``position``, in
        O(1): every block holds ``block_size`` samples but the last block of the index space,
        which may be short, wherever the permutation put it."""
        perm, _, short_at = self._epoch(epoch)
        size = self.block_size
        short = self.total - (len(perm) - 1) * size
        if position < short_at * size:
            j = position // size
            start = j * size
        elif position < short_at * size + short:
            j, start = short_at, short_at * size
        else:
            j = short_at + 1 + (position - short_at * size - short) // size
            start = short_at * size + short + (j - short_at - 1) * size
        return int(perm[j]), start

    def spans(self, epoch: int, first: int, count: int) -> tuple[list[int], list[int], list[int]]:
        """``ranges`` as Python lists. A span of a few blocks (the common case: a chunk takes
        fewer samples of a component than a block or two hold) takes a few integer operations
        and a binary search per run edge instead of a dozen small numpy calls."""
        if count <= 0:
            return [], [], []
        if count > SPAN_BLOCKS * self.block_size:
            arrays = self.ranges(epoch, first, count)
            return arrays[0].tolist(), arrays[1].tolist(), arrays[2].tolist()
        size, total = self.block_size, self.total
        pieces = []  # contiguous sample-index spans [lo, hi), one per block touched
        position, last = first, first + count
        while position < last:
            block, start = self.block_at(epoch, position)
            end = start + min(size, total - block * size)  # the block's end position
            lo = block * size + position - start
            stop = min(end, last)
            pieces.append((lo, lo + stop - position))
            position = stop
        if len(pieces) > 1:  # sorted and merged where they touch, as ``ranges``
            pieces.sort()
            merged = [pieces[0]]
            for lo, hi in pieces[1:]:
                if lo == merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
                else:
                    merged.append((lo, hi))
            pieces = merged
        offsets, run_files, run_starts = self.run_offsets, self.files, self.starts
        files: list[int] = []
        ordinals: list[int] = []
        lengths: list[int] = []
        for lo, hi in pieces:  # cut at run edges
            run = int(offsets.searchsorted(lo, side="right")) - 1
            edge = int(offsets[run])
            while edge < hi:
                end = int(offsets[run + 1])
                a = max(edge, lo)
                files.append(int(run_files[run]))
                ordinals.append(int(run_starts[run]) + a - edge)
                lengths.append(min(end, hi) - a)
                run, edge = run + 1, end
        return files, ordinals, lengths

    def ranges(
        self, epoch: int, first: int, count: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read ranges (file, first ordinal, count) for positions [first, first + count), as
        sorted, merged runs of consecutive ordinals (the consumer shuffles inside the chunk).

        Works per block, not per sample: the positions cover permuted blocks, each a contiguous
        span of sample indices, which are sorted, merged and cut at run edges, all in numpy
        (``spans`` takes short spans, where a few integer operations beat numpy's overhead).
        """
        if count <= 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty.astype(np.int32), empty, empty
        perm, starts, _ = self._epoch(epoch)
        last = first + count
        j0, j1 = (np.searchsorted(starts, (first, last - 1), side="right") - 1).tolist()
        blocks = perm[j0 : j1 + 1]
        block_starts = starts[j0 : j1 + 1]
        block_ends = np.minimum(np.append(starts[j0 + 1 : j1 + 1], last), last)
        lo_pos = np.maximum(block_starts, first)
        lo = blocks * self.block_size + (lo_pos - block_starts)
        hi = lo + (block_ends - lo_pos)
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], hi[order]
        if len(lo) > 1:  # merge spans that touch (sorted and disjoint: a group ends at its max)
            keep = np.concatenate(([True], lo[1:] != hi[:-1]))
            if not keep.all():
                hi = np.maximum.reduceat(hi, np.flatnonzero(keep))
                lo = lo[keep]
        # cut spans at run edges
        r_lo = np.searchsorted(self.run_offsets, lo, side="right") - 1
        r_hi = np.searchsorted(self.run_offsets, hi - 1, side="right") - 1
        pieces = r_hi - r_lo + 1
        span = np.repeat(np.arange(len(lo)), pieces)
        run = r_lo[span] + (np.arange(len(span)) - np.repeat(np.cumsum(pieces) - pieces, pieces))
        piece_lo = np.maximum(lo[span], self.run_offsets[run])
        piece_hi = np.minimum(hi[span], self.run_offsets[run + 1])
        ordinals = self.starts[run] + (piece_lo - self.run_offsets[run])
        return (
            self.files[run].astype(np.int32),
            ordinals.astype(np.int64),
            (piece_hi - piece_lo).astype(np.int64),
        )
