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
from typing import Literal

import numpy as np

OrderKind = Literal["shuffled", "as-stored"]
DEFAULT_BLOCK = 256

PURPOSE_ORDER = 1
PURPOSE_INTERLEAVE = 2
PURPOSE_SHUFFLE = 3


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
    _cache: dict[int, tuple[np.ndarray, np.ndarray]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.run_offsets = np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)

    @property
    def total(self) -> int:
        return int(self.run_offsets[-1])

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(block index per position-block, start position of each permuted block)."""
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
        if len(self._cache) > 2:
            self._cache.clear()
        self._cache[epoch] = (perm.astype(np.int64), starts)
        return self._cache[epoch]

    def samples_at(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Sample indices at the given positions of an epoch's order."""
        perm, starts = self._epoch(epoch)
        j = np.searchsorted(starts, positions, side="right") - 1
        return perm[j] * self.block_size + (positions - starts[j])

    def token_sizes(self, epoch: int, first: int, count: int) -> np.ndarray:
        assert self.sizes is not None
        return self.sizes[self.samples_at(epoch, np.arange(first, first + count))]

    def ranges(
        self, epoch: int, first: int, count: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read ranges (file, first ordinal, count) for positions [first, first + count)."""
        if count <= 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty.astype(np.int32), empty, empty
        # the chunk's samples as a set in storage order (the consumer shuffles inside the chunk)
        idx = np.sort(self.samples_at(epoch, np.arange(first, first + count, dtype=np.int64)))
        # split wherever consecutive positions are not consecutive samples or cross a run
        run = np.searchsorted(self.run_offsets, idx, side="right") - 1
        breaks = np.flatnonzero((np.diff(idx) != 1) | (np.diff(run) != 0)) + 1
        seg_starts = np.concatenate(([0], breaks))
        seg_counts = np.diff(np.concatenate((seg_starts, [len(idx)])))
        first_idx = idx[seg_starts]
        first_run = run[seg_starts]
        ordinals = self.starts[first_run] + (first_idx - self.run_offsets[first_run])
        return (
            self.files[first_run].astype(np.int32),
            ordinals.astype(np.int64),
            seg_counts.astype(np.int64),
        )
