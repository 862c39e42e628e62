"""Registration: scan a dataset's files and store samples and properties in one transaction.

For each file, the format's scanner yields large batches (pointers, text byte lengths, requested
field values); properties are derived per batch (field paths, constants, a user batch function),
their types inferred and unified with the catalog's, and each batch is appended to ``samples``
with one Arrow-backed INSERT. Everything happens inside one DuckDB transaction: any error rolls
back, so the catalog is exactly as before. Cost is dominated by the format's parser (JSONL: Arrow's
JSON reader; Parquet: decoding only the needed columns).

Scanning a file (``scan.scan_file``: the format's scan and the property function) needs no
catalog, so an engine (``mixplane.catalog.engines``) may run it here or on Ray workers; the owner
of the catalog stores what comes back, file by file in order, in its one transaction (here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa

from mixplane.catalog import pretokenized
from mixplane.catalog.engines import Engine, LocalEngine
from mixplane.catalog.files import Location
from mixplane.catalog.formats import RESTART, FormatName, OnError, compression_of
from mixplane.catalog.formats.tokenized import TokenSpec
from mixplane.catalog.properties import (
    BatchFunction,
    ConstantSource,
    FieldSource,
    PathPattern,
    PropertyType,
    infer_type,
    unify,
)
from mixplane.catalog.scan import FileEnd, ScanJob, Scanned
from mixplane.catalog.sql import identifier
from mixplane.errors import PropertyError, RegistrationError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileReport:
    path: str
    samples: int
    skipped: int
    messages: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetInfo:
    """What the catalog holds about one dataset."""

    name: str
    format: str
    files: int
    samples: int
    skipped: int
    bytes: int
    properties: tuple[str, ...] = ()
    file_reports: tuple[FileReport, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "files": self.files,
            "samples": self.samples,
            "skipped": self.skipped,
            "bytes": self.bytes,
            "properties": list(self.properties),
            "skipped_by_file": {r.path: r.skipped for r in self.file_reports if r.skipped},
        }


@dataclass(slots=True, kw_only=True)
class PropertyTypes:
    """Property types during a registration: known from the catalog, or found in this dataset."""

    con: duckdb.DuckDBPyConnection
    types: dict[str, PropertyType | None]  # catalog types merged with what this dataset holds
    columns: set[str]
    found: dict[str, PropertyType | None] = field(default_factory=dict)  # this dataset only

    def accept(self, name: str, values: pa.Array, where: str) -> pa.Array:
        found = infer_type(values.type)
        self.found[name] = unify(name, self.found.get(name), found, where)
        known = self.types.get(name)
        merged = unify(name, known, found, where)
        self.types[name] = merged
        if merged is None:
            return values
        if name not in self.columns:
            self.con.execute(f"ALTER TABLE samples ADD COLUMN {identifier(name)} {merged.sql}")
            self.columns.add(name)
        elif known is not None and merged is not known:
            self.con.execute(
                f"ALTER TABLE samples ALTER COLUMN {identifier(name)} TYPE {merged.sql}"
            )
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        return values.cast(merged.arrow)


def register_files(
    con: duckdb.DuckDBPyConnection,
    *,
    dataset_id: int,
    files: Sequence[tuple[Location, FormatName]],
    fields: Sequence[FieldSource],
    constants: Sequence[ConstantSource],
    function: BatchFunction | None,
    text_field: str | None,
    on_error: OnError,
    progress: Callable[[int], object],
    text_lengths: Literal["exact", "metadata"] = "exact",
    engine: Engine | None = None,
    tokens: TokenSpec | None = None,
    path_pattern: PathPattern | None = None,
) -> list[FileReport]:
    """Insert a dataset's samples; the caller owns the transaction and the dataset row.

    ``engine`` scans the files (``scan_file``, here or on workers) and hands back their batches
    in file order; only this function writes to the catalog. ``tokens``: the files hold token
    ids of that tokenizer (their exact counts and token file rows are stored too, see
    ``catalog.pretokenized``). ``path_pattern``: properties from each file's path.
    """
    known = {
        r[0]: PropertyType(r[1])
        for r in con.execute("SELECT name, type FROM properties").fetchall()
    }
    columns = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'samples'"
        ).fetchall()
    }
    types = PropertyTypes(con=con, types=dict(known), columns=columns)
    job = ScanJob(
        fields=tuple(fields),
        constants=tuple(constants),
        function=function,
        text_field=text_field,
        on_error=on_error,
        text_lengths=text_lengths,
        tokens=tokens,
    )
    reports = []
    scans = (engine or LocalEngine()).scan(job, files, lambda: types.found)
    with closing(scans):
        for path, fmt, events in scans:
            file_id = int(con.execute("SELECT nextval('file_ids')").fetchall()[0][0])
            count = 0
            dtype: str | None = None
            end: FileEnd | None = None
            per_file = [*constants, *(path_pattern.values(str(path)) if path_pattern else [])]
            for event in events:
                if isinstance(event, FileEnd):
                    end = event
                    continue
                if event.batch is RESTART:
                    con.execute("DELETE FROM samples WHERE file_id = ?", [file_id])
                    count = 0
                    continue
                rows = _rows(event, file_id, count, fields, per_file, types, str(path))
                if rows.num_rows:
                    con.register("_mixplane_batch", rows)
                    con.execute("INSERT INTO samples BY NAME SELECT * FROM _mixplane_batch")
                    con.unregister("_mixplane_batch")
                if tokens is not None:
                    if event.batch.tokens is None:
                        msg = f"{path}: format {fmt!r} does not hold token ids; drop tokenizer="
                        raise RegistrationError(msg)
                    pretokenized.store_counts(con, tokens, file_id, count, event.batch.tokens)
                    dtype = dtype or event.batch.token_dtype
                count += rows.num_rows
                progress(event.batch.scanned_bytes)
            assert end is not None, "a file's scan ends with a FileEnd"
            con.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    file_id,
                    dataset_id,
                    str(path),
                    fmt,
                    compression_of(path),
                    end.identity.size,
                    end.identity.mtime_ns,
                    end.identity.fingerprint,
                    count,
                    end.skipped,
                ],
            )
            if tokens is not None:
                pretokenized.store_file(con, tokens, file_id, dtype)
            reports.append(
                FileReport(
                    path=str(path), samples=count, skipped=end.skipped, messages=end.messages
                )
            )
            for message in end.messages:
                log.warning("skipped: %s", message)
    unresolved = [n for n, t in types.types.items() if t is None]
    if unresolved:
        msg = f"properties {unresolved} hold only null values; their type cannot be inferred"
        raise PropertyError(msg)
    for prop, ptype in types.types.items():
        assert ptype is not None
        con.execute(
            "INSERT INTO properties VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET type = excluded.type",
            [prop, ptype.value],
        )
    return reports


def _rows(
    scanned: Scanned,
    file_id: int,
    first: int,
    fields: Sequence[FieldSource],
    constants: Sequence[ConstantSource],
    types: PropertyTypes,
    where: str,
) -> pa.Table:
    batch = scanned.batch
    n = batch.num_samples
    columns: dict[str, pa.Array] = {
        "file_id": pa.array(np.full(n, file_id, dtype=np.int32)),
        "ordinal": pa.array(np.arange(first, first + n, dtype=np.int64)),
        "bytes": pa.array(batch.text_bytes.astype(np.int64)),
    }
    for col, values in (
        ("offset", batch.offset),
        ("length", batch.length),
        ("row_group", batch.row_group),
        ("row", batch.row),
    ):
        if values is not None:
            columns[col] = pa.array(values)
    for f in fields:
        columns[f.name] = types.accept(f.name, batch.fields[f.path], f"file {where}")
    for c in constants:
        columns[c.name] = types.accept(
            c.name, pa.array([c.value] * n, c.type.arrow), f"file {where}"
        )
    for prop, values in scanned.outputs.items():
        columns[prop] = types.accept(prop, values, f"the property function on file {where}")
    return pa.table(columns)
