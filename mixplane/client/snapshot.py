"""Job snapshots: everything a job needs from the catalog, frozen, so other processes can run it.

Only one process may open the catalog's DuckDB file, but a job runs in many: dataloader workers,
the ranks of a distributed run. A ``JobSnapshot`` (``job.snapshot()``) holds the job's
definition, its state at the time, its query results (components as runs), the per-sample token
sizes its planner uses, the rows of its files and their sample pointers. ``Job.from_snapshot``
runs the job from it with no catalog: the same chunks, in the same order, read from the same
files (each still checked against its registered size, mtime and fingerprint before its first
read).

On disk (``save`` / ``load``) a snapshot is a folder: ``snapshot.json`` (definition, state,
components, file rows) and three Arrow IPC files (runs, token sizes, pointers), memory-mapped on
load so processes on one machine share the pointer pages. Written to a temporary folder and
renamed, so a reader never sees half a snapshot. No pickle: JSON and Arrow only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyarrow import ipc

from mixplane.errors import MALFORMED, StateError, shown
from mixplane.query.result import RUNS_SCHEMA, Component, QueryResult

SNAPSHOT_VERSION = 1
POINTER_COLUMNS = ("offset", "length", "row_group", "row")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSnapshot:
    """A job's definition, state and catalog data (see the module)."""

    spec: dict[str, Any]  # JobSpec.to_json()
    topology: dict[str, int]
    state: dict[str, Any]  # Job.state_dict() when the snapshot was taken
    results: tuple[QueryResult, ...]  # the base query, then one per extension
    sizes: dict[str, np.ndarray | None]  # per component key: token size per sample (token jobs)
    token_source: dict[str, str]
    file_rows: pa.Table  # the catalog's file rows for the files the job reads
    file_pointers: dict[int, dict[str, np.ndarray]] = field(repr=False)  # per file, by ordinal

    # -- what a Reader asks its source (the catalog's method names) --------------------------
    def files(self) -> pa.Table:
        return self.file_rows

    def pointers(self, file_id: int) -> dict[str, np.ndarray]:
        try:
            return self.file_pointers[file_id]
        except KeyError:
            msg = f"file id {file_id} is not in this job snapshot; take a new snapshot"
            raise StateError(msg) from None

    # -- disk --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the snapshot as a folder at ``path`` (replacing one there), atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self._write(scratch)
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                scratch.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return target

    def _write(self, folder: Path) -> None:
        runs = pa.concat_tables(
            [
                r.runs.cast(RUNS_SCHEMA).append_column(
                    "generation", pa.array(np.full(r.runs.num_rows, g, dtype=np.int32))
                )
                for g, r in enumerate(self.results)
            ]
        )
        _write_table(folder / "runs.arrow", runs)
        keys = sorted(self.sizes)
        size_bounds: dict[str, list[int] | None] = {}
        parts: list[np.ndarray] = []
        at = 0
        for key in keys:
            sizes = self.sizes[key]
            if sizes is None:
                size_bounds[key] = None
                continue
            parts.append(np.asarray(sizes, dtype=np.int64))
            size_bounds[key] = [at, at + len(sizes)]
            at += len(sizes)
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        _write_table(folder / "sizes.arrow", pa.table({"size": flat}))
        pointer_bounds: dict[str, list[Any]] = {}
        columns: dict[str, list[np.ndarray]] = {name: [] for name in POINTER_COLUMNS}
        at = 0
        for file_id in sorted(self.file_pointers):
            ptr = self.file_pointers[file_id]
            n = len(next(iter(ptr.values()))) if ptr else 0
            pointer_bounds[str(file_id)] = [at, at + n, sorted(ptr)]
            for name in POINTER_COLUMNS:
                columns[name].append(
                    np.asarray(ptr[name], dtype=np.int64) if name in ptr else np.zeros(n, np.int64)
                )
            at += n
        _write_table(
            folder / "pointers.arrow",
            pa.table(
                {
                    name: np.concatenate(parts) if parts else np.zeros(0, np.int64)
                    for name, parts in columns.items()
                }
            ),
        )
        _write_table(folder / "files.arrow", self.file_rows)
        meta = {
            "version": SNAPSHOT_VERSION,
            "spec": self.spec,
            "topology": self.topology,
            "state": self.state,
            "token_source": self.token_source,
            "results": [
                {
                    "sql": r.sql,
                    "params": r.params,
                    "by": list(r.by),
                    "fingerprint": r.fingerprint,
                    "components": [
                        {
                            "properties": c.properties,
                            "samples": c.samples,
                            "bytes": c.bytes,
                            "memberships": list(c.memberships),
                        }
                        for c in r.components
                    ],
                }
                for r in self.results
            ],
            "sizes": size_bounds,
            "pointers": pointer_bounds,
        }
        (folder / "snapshot.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> JobSnapshot:
        """Read a snapshot folder written by ``save`` (Arrow files memory-mapped)."""
        folder = Path(path)
        try:
            meta = json.loads((folder / "snapshot.json").read_bytes())
        except FileNotFoundError:
            msg = f"{folder} is not a job snapshot (no snapshot.json); write one with job.snapshot().save(path)"
            raise StateError(msg) from None
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON
            msg = f"{folder / 'snapshot.json'} is not valid JSON ({exc}); write the snapshot again"
            raise StateError(msg) from None
        if not isinstance(meta, dict):
            msg = f"{folder / 'snapshot.json'} is not a job snapshot; write the snapshot again"
            raise StateError(msg)
        try:
            return cls._from_parts(folder, meta)
        except (pa.ArrowException, *MALFORMED) as exc:
            msg = (
                f"{folder} is a corrupt job snapshot ({type(exc).__name__}: {shown(str(exc))}); "
                "write the snapshot again"
            )
            raise StateError(msg) from None

    @classmethod
    def _from_parts(cls, folder: Path, meta: dict[str, Any]) -> JobSnapshot:
        if meta.get("version") != SNAPSHOT_VERSION:
            msg = (
                f"{folder} is a job snapshot of version {meta.get('version')!r}; this mixplane "
                f"reads version {SNAPSHOT_VERSION}: take the snapshot again with this version"
            )
            raise StateError(msg)
        runs = _read_table(folder / "runs.arrow")
        generation = runs.column("generation").to_numpy()
        results = []
        for g, r in enumerate(meta["results"]):
            mine = runs.filter(pa.array(generation == g)).drop_columns(["generation"])
            comp = mine.column("component").to_numpy()
            bounds = np.searchsorted(comp, np.arange(len(r["components"]) + 1), side="left")
            components = tuple(
                Component(
                    index=i,
                    properties=c["properties"],
                    samples=c["samples"],
                    bytes=c["bytes"],
                    runs=mine.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])),
                    memberships=tuple(c["memberships"]),
                )
                for i, c in enumerate(r["components"])
            )
            results.append(
                QueryResult(
                    sql=r["sql"],
                    params=r["params"],
                    by=tuple(r["by"]),
                    components=components,
                    runs=mine,
                    fingerprint=r["fingerprint"],
                )
            )
        flat = _read_table(folder / "sizes.arrow").column("size").to_numpy()
        sizes = {
            key: (None if b is None else flat[b[0] : b[1]]) for key, b in meta["sizes"].items()
        }
        table = _read_table(folder / "pointers.arrow")
        arrays = {name: table.column(name).to_numpy() for name in POINTER_COLUMNS}
        pointers = {
            int(file_id): {name: arrays[name][lo:hi] for name in present}
            for file_id, (lo, hi, present) in meta["pointers"].items()
        }
        return cls(
            spec=meta["spec"],
            topology=meta["topology"],
            state=meta["state"],
            results=tuple(results),
            sizes=sizes,
            token_source=meta["token_source"],
            file_rows=_read_table(folder / "files.arrow"),
            file_pointers=pointers,
        )


def _write_table(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_table(path: Path) -> pa.Table:
    try:
        source = pa.memory_map(str(path), "r")
    except FileNotFoundError:
        msg = f"{path} is missing from the job snapshot; write the snapshot again"
        raise StateError(msg) from None
    return ipc.open_file(source).read_all()
