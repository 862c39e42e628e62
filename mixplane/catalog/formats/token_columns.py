"""Token columns of Arrow and Parquet tables: one document per row, its ids a list of integers.

A table of documents (an Arrow IPC record batch, a Parquet row group) holds the ids in a
``list`` or ``large_list`` column of an integer type (``tokens_field``, ``input_ids`` by default,
as Hugging Face ``datasets`` writes them); its other columns are fields properties may name, as
for text tables. ``documents`` checks one such column without a Python step per row: the
column's type, rows without ids (rejected, as a missing field), nulls inside a list (an error),
every id against the declared tokenizer's vocabulary (one min/max over the flat values), and
gives each row's ids (the list offsets), exact token count and the dtype of the ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mixplane.catalog.formats.base import (
    ScanBatch,
    ScanRequest,
    filter_fields,
    get_path,
    reject_missing,
)
from mixplane.catalog.formats.tokenized import (
    TokenSpec,
    check_dtype,
    check_ids,
    content_tokens,
    decoder,
    ids_table,
    last_ids,
)
from mixplane.catalog.remote_fs import ObjectStoreError, RemotePath
from mixplane.errors import MalformedRecordError

if TYPE_CHECKING:
    import pyarrow.parquet as pq


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnDocuments:
    """The documents of one table's token column (rows kept by ``keep``, None: all)."""

    keep: np.ndarray | None
    column: pa.Array  # the list column as the table holds it (rows without ids too)
    values: np.ndarray  # the column's flat ids (its values array)
    starts: np.ndarray  # int64 index of each kept row's first id in ``values``
    lengths: np.ndarray  # int64 ids per kept row
    tokens: np.ndarray  # int64 exact token count per kept row
    dtype: str

    def records(
        self, field: str, decode: Callable[[list[list[int]]], list[str]] | None
    ) -> pa.Table:
        """The kept rows' ids as a list column (and ``text``, decoded, when ``decode``)."""
        pieces = [
            self.values[a : a + n]
            for a, n in zip(self.starts.tolist(), self.lengths.tolist(), strict=True)
        ]
        flat = np.concatenate(pieces) if pieces else self.values[:0]
        offsets = np.concatenate(([0], np.cumsum(self.lengths)))
        return ids_table(flat, offsets, field, decode=decode)


def token_column(table: pa.Table | pa.RecordBatch, spec: TokenSpec, path: str) -> pa.Array:
    """The table's token column (its own buffers where it is a top-level column), checked to
    be a list of integers."""
    column: Any
    if spec.field in table.schema.names:
        column = table.column(spec.field)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
    else:
        column = get_path(
            pa.table(table) if isinstance(table, pa.RecordBatch) else table, spec.field
        )
    if column is None:
        msg = (
            f"no token column {spec.field!r}; the columns are {table.schema.names}: pass "
            "--tokens-field naming the column of ids"
        )
        raise MalformedRecordError(msg, path=path)
    kind: Any = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(
        kind.value_type
    ):
        msg = (
            f"token column {spec.field!r} has type {kind}, expected a list of integers; pass "
            "--tokens-field naming the column of ids"
        )
        raise MalformedRecordError(msg, path=path)
    return column


def documents(
    column: pa.Array, spec: TokenSpec, request: ScanRequest, path: str, first_row: int, unit: str
) -> ColumnDocuments:
    """Check a token column and describe its rows as documents (see the module)."""
    keep = None
    if column.null_count:
        missing = np.asarray(column.is_null().to_numpy(zero_copy_only=False))
        for row in np.flatnonzero(missing).tolist():
            request.reject(path, f"{unit} {first_row + row}", f"missing field {spec.field!r}")
        keep = ~missing
    dtype = check_dtype(column.type.value_type.to_pandas_dtype(), spec, path)
    # the column's own buffers, not a copy: an Arrow file's rows point into the file
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values_array = column.values
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if keep is not None:
        starts, lengths = starts[keep], lengths[keep]
    rows = np.flatnonzero(keep) if keep is not None else np.arange(len(starts))
    low, high = int(offsets[0]), int(offsets[-1])

    def locate(i: int) -> str:
        row = int(np.searchsorted(starts, i, side="right") - 1)
        return f"{unit} {first_row + int(rows[max(row, 0)])}"

    if values_array.null_count:
        flat_nulls = np.asarray(values_array.is_null().to_numpy(zero_copy_only=False))
        inside = np.flatnonzero(flat_nulls[low:high])
        if len(inside):
            msg = f"a null inside the ids of {spec.field!r}; write the ids without nulls"
            raise MalformedRecordError(msg, path=path, location=locate(int(inside[0]) + low))
    values = values_array.to_numpy(zero_copy_only=False)
    check_ids(values[low:high], spec, path, lambda i: locate(i + low))
    tokens = content_tokens(lengths, last_ids(values, starts, lengths), spec.eos_id)
    return ColumnDocuments(
        keep=keep,
        column=column,
        values=values,
        starts=starts,
        lengths=lengths,
        tokens=tokens,
        dtype=dtype,
    )


def with_text(records: pa.Table, docs: ColumnDocuments, spec: TokenSpec) -> pa.Table:
    """Records with a ``text`` column: each row's ids decoded with the dataset's tokenizer."""
    decode = decoder(spec.source, spec.tokenizer)
    return records.append_column("text", docs.records(spec.field, decode).column("text"))


def scan_parquet(
    pf: pq.ParquetFile, path: Path | RemotePath, request: ScanRequest
) -> Iterator[ScanBatch]:
    """Parquet with a token column: row group by row group, reading only the token column and
    the columns of requested fields; pointers are (row group, row), as for text Parquet."""
    spec = request.tokens
    assert spec is not None
    where = str(path)
    top = {f.split(".")[0] for f in [*request.fields, spec.field]}
    columns = None if request.want_table else sorted(top & set(pf.schema_arrow.names))
    meta = pf.metadata
    first_row = 0
    for group in range(meta.num_row_groups):
        try:
            table = pf.read_row_group(group, columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            if isinstance(exc, ObjectStoreError):
                raise
            msg = (
                f"cannot read row group {group} ({exc}); the file is corrupt, replace or remove it"
            )
            raise MalformedRecordError(msg, path=where) from exc
        n = table.num_rows
        docs = documents(token_column(table, spec, where), spec, request, where, first_row, "row")
        rows = np.arange(n, dtype=np.int32)
        if docs.keep is not None:
            table, rows = table.filter(pa.array(docs.keep)), rows[docs.keep]
        fields = {
            dotted: (v if (v := get_path(table, dotted)) is not None else pa.nulls(len(rows)))
            for dotted in request.fields
        }
        keep = reject_missing(fields, first_row + rows, request, where, "row")
        itemsize = np.dtype(docs.dtype).itemsize
        records = None
        if request.want_table:
            records = with_text(table, docs, spec) if request.want_text else table
            if keep is not None:
                records = records.filter(pa.array(keep))
        yield ScanBatch(
            fields=filter_fields(fields, keep),
            text_bytes=take(docs.lengths * itemsize, keep),
            row_group=np.full(len(rows) if keep is None else int(keep.sum()), group, np.int32),
            row=rows if keep is None else rows[keep],
            table=records,
            scanned_bytes=meta.row_group(group).total_byte_size,
            tokens=take(docs.tokens, keep),
            token_dtype=docs.dtype,
        )
        first_row += n


def take(values: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    return values.astype(np.int64) if keep is None else values[keep].astype(np.int64)
