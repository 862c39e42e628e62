"""Query results: components as compact runs of consecutive ordinals.

Executing a filter with grouping properties yields one *component* per distinct combination of
those properties' values. A component's samples are stored as runs ``(file_id, start, count,
bytes)`` of consecutive ordinals, computed inside DuckDB with the gaps-and-islands trick
(``ordinal - row_number()`` is constant along a run), so a result over 10^8 samples registered
in file order is a few thousand rows, never a Python object per sample.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

#: Schema of the runs table: one row per run of consecutive ordinals of one file.
RUNS_SCHEMA = pa.schema(
    [
        ("component", pa.int32()),
        ("file_id", pa.int32()),
        ("start", pa.int64()),
        ("count", pa.int64()),
        ("bytes", pa.int64()),
    ]
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Component:
    """One combination of grouping-property values and the samples that carry it."""

    index: int
    properties: dict[str, Any]
    samples: int
    bytes: int
    runs: pa.Table = field(repr=False)
    memberships: tuple[bool, ...] = ()  # which of the query's member filters hold (phases)

    @property
    def selector(self) -> str:
        """The component's selector as text, e.g. ``language=en,source=web``."""
        return ",".join(f"{k}={format_value(v)}" for k, v in self.properties.items()) or "*"

    def to_dict(self, *, runs: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "properties": self.properties,
            "samples": self.samples,
            "bytes": self.bytes,
            "runs": self.runs.num_rows,
        }
        if runs:
            out["ranges"] = self.runs.drop_columns(["component"]).to_pylist()
        return out


def format_value(value: Any) -> str:
    """A property value in selector text form."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResult:
    """Components of a query, with the SQL that produced them and a content fingerprint."""

    sql: str
    params: list[Any]
    by: tuple[str, ...]
    components: tuple[Component, ...]
    runs: pa.Table = field(repr=False)
    fingerprint: str

    @property
    def total_samples(self) -> int:
        return sum(c.samples for c in self.components)

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    def to_dict(self, *, runs: bool = False) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "params": self.params,
            "by": list(self.by),
            "components": [c.to_dict(runs=runs) for c in self.components],
            "total_samples": self.total_samples,
            "total_bytes": self.total_bytes,
            "fingerprint": self.fingerprint,
        }


def build_result(
    *,
    sql: str,
    params: list[Any],
    by: tuple[str, ...],
    keys: list[tuple[Any, ...]],
    runs: pa.Table,
    file_fingerprints: dict[int, str],
    memberships: list[tuple[bool, ...]] | None = None,
) -> QueryResult:
    """Assemble components from the per-component keys and the runs table (sorted by component)."""
    runs = runs.cast(RUNS_SCHEMA)
    comp = runs.column("component").to_numpy()
    bounds = np.searchsorted(comp, np.arange(len(keys) + 1), side="left")
    counts = runs.column("count").to_numpy()
    sizes = runs.column("bytes").to_numpy()
    components = []
    for i, key in enumerate(keys):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        components.append(
            Component(
                index=i,
                properties=dict(zip(by, key, strict=True)),
                samples=int(counts[lo:hi].sum()),
                bytes=int(sizes[lo:hi].sum()),
                runs=runs.slice(lo, hi - lo),
                memberships=memberships[i] if memberships else (),
            )
        )
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((by, keys, memberships)).encode())
    for name in RUNS_SCHEMA.names:
        digest.update(np.ascontiguousarray(runs.column(name).to_numpy()).tobytes())
    for file_id in sorted(file_fingerprints):
        digest.update(f"{file_id}:{file_fingerprints[file_id]};".encode())
    return QueryResult(
        sql=sql,
        params=params,
        by=by,
        components=tuple(components),
        runs=runs,
        fingerprint=digest.hexdigest(),
    )


def combine(results: list[QueryResult]) -> QueryResult:
    """One result holding the components of several (a job extended with new files)."""
    if len(results) == 1:
        return results[0]
    components: list[Component] = []
    for r in results:
        for c in r.components:
            components.append(
                Component(
                    index=len(components),
                    properties=c.properties,
                    samples=c.samples,
                    bytes=c.bytes,
                    runs=c.runs,
                    memberships=c.memberships,
                )
            )
    digest = hashlib.blake2b(digest_size=16)
    for r in results:
        digest.update(r.fingerprint.encode())
    runs = pa.concat_tables([r.runs for r in results]) if results else results[0].runs
    return QueryResult(
        sql=results[0].sql,
        params=results[0].params,
        by=results[0].by,
        components=tuple(components),
        runs=runs,
        fingerprint=digest.hexdigest(),
    )


def expand_runs(
    files: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(file id, ordinal) of every sample of runs, in run order (vectorized)."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    ordinals = np.repeat(np.asarray(starts, dtype=np.int64) - offsets, counts) + np.arange(
        int(counts.sum()), dtype=np.int64
    )
    return np.repeat(np.asarray(files, dtype=np.int64), counts), ordinals
