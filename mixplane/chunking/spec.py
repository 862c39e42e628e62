"""Chunk descriptors: what a consumer must read for one chunk, and nothing else.

A chunk lists read ranges (component, file id, first ordinal, count) in draw order, plus the
samples (and estimated tokens) per component and the mixture version it was planned under. It is
a few hundred bytes: ranges are four parallel integer arrays, serialized as msgpack lists (never
pickle). ``last`` marks the final chunk of a stream that ends (``on_exhausted='stop'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
import numpy as np

from mixplane.errors import StateError

Unit = Literal["samples", "tokens"]
WIRE_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkSpec:
    index: int
    unit: Unit
    budget: int
    counts: np.ndarray = field(repr=False)  # int64 samples per component
    tokens: np.ndarray = field(repr=False)  # int64 estimated tokens per component
    components: np.ndarray = field(repr=False)  # int32 component of each range
    files: np.ndarray = field(repr=False)  # int32 file id of each range
    starts: np.ndarray = field(repr=False)  # int64 first ordinal of each range
    lengths: np.ndarray = field(repr=False)  # int64 samples in each range
    mixture_version: int = 0
    last: bool = False

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkSpec):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": WIRE_VERSION,
            "index": self.index,
            "unit": self.unit,
            "budget": self.budget,
            "counts": self.counts.tolist(),
            "tokens": self.tokens.tolist(),
            "components": self.components.tolist(),
            "files": self.files.tolist(),
            "starts": self.starts.tolist(),
            "lengths": self.lengths.tolist(),
            "mixture_version": self.mixture_version,
            "last": self.last,
        }

    def to_bytes(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ChunkSpec:
        if data.get("v") != WIRE_VERSION:
            msg = f"chunk descriptor version {data.get('v')!r}, expected {WIRE_VERSION}; upgrade mixplane on both sides"
            raise StateError(msg)
        return cls(
            index=int(data["index"]),
            unit=data["unit"],
            budget=int(data["budget"]),
            counts=np.asarray(data["counts"], dtype=np.int64),
            tokens=np.asarray(data["tokens"], dtype=np.int64),
            components=np.asarray(data["components"], dtype=np.int32),
            files=np.asarray(data["files"], dtype=np.int32),
            starts=np.asarray(data["starts"], dtype=np.int64),
            lengths=np.asarray(data["lengths"], dtype=np.int64),
            mixture_version=int(data["mixture_version"]),
            last=bool(data["last"]),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ChunkSpec:
        return cls.from_wire(msgpack.unpackb(raw, raw=False))
