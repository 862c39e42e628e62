"""Token memmaps as OLMo-core and Dolma write them: one flat array of ids per file.

A file holds token ids one after the other, documents delimited by the tokenizer's EOS (each
document's last id). Dolma names them ``*.npy`` but writes raw ids without a NumPy header, so
the dtype is declared (``token_dtype``: ``uint16`` or ``uint32``, as the tokenizer's vocabulary
needs); a true ``.npy`` (NumPy's header) gives its own dtype and data offset.

Documents come from Dolma's metadata when it lies beside the file (``<name>.csv.gz``, the
name's last suffix replaced; rows ``start,end,id,src,loc`` without a header, ``start`` and
``end`` in ids, as Dolma's ``MemmapFile`` and OLMo-core's ``write_document_indices`` write
them): its ``id``, ``src`` and ``loc`` columns are fields properties may name
(``--property source=src``). Without metadata the documents are the runs of ids up to and
including each EOS (OLMo-core's ``iter_document_indices``); ids after the last EOS mean a
truncated file (or ids of another dtype or tokenizer) and are an error (counted and skipped
under ``on_error="skip"``).

One sample per document, pointed at by its byte span (``offset``, ``length``); reading it is a
slice of a memory map. Checks: the file's size against the dtype, the metadata's spans against
the file (in bounds, in order, not overlapping), every id against the tokenizer's vocabulary,
and ids that look like a wider dtype read in halves. Cost: one vectorized pass over the ids
(EOS positions, min/max), ~1-2 GB/s; the metadata is parsed by Arrow's CSV reader.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mixplane.catalog.formats.base import ScanBatch, ScanRequest
from mixplane.catalog.formats.tokenized import (
    CHECK_BLOCK,
    DEFAULT_FIELD,
    check_dtype,
    check_ids,
    content_tokens,
    decoder,
    ids_table,
    last_ids,
    local_path,
    read_spans,
    scanned_tokens,
    sniff_wider,
)
from mixplane.catalog.remote_fs import RemotePath
from mixplane.errors import MalformedRecordError, RegistrationError

NPY_MAGIC = b"\x93NUMPY"
METADATA_SUFFIX = ".csv.gz"
#: The columns of Dolma's metadata rows, in order (OLMo-core's own files have the first two).
METADATA_COLUMNS = ("start", "end", "id", "src", "loc")
BATCH_DOCUMENTS = 1 << 16


def metadata_path(path: Path) -> Path:
    return path.with_suffix(METADATA_SUFFIX)


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """Where the ids of a file are: their dtype and the byte offset of the first one."""

    dtype: str
    offset: int
    count: int


def layout(path: Path, declared: str | None) -> Layout:
    """The ids' dtype and offset: from a NumPy header, else the declared dtype (raw ids)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(len(NPY_MAGIC))
        if head == NPY_MAGIC:
            f.seek(0)
            try:
                major, _minor = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
            except ValueError as exc:
                msg = f"a corrupt NumPy header ({exc}); write the file again"
                raise MalformedRecordError(msg, path=str(path)) from exc
            if len(shape) != 1 or fortran:
                msg = f"a NumPy array of shape {shape}; token ids are one flat array"
                raise MalformedRecordError(msg, path=str(path))
            offset = f.tell()
            if not dtype.isnative and dtype.itemsize > 1:
                msg = f"ids stored big-endian ({dtype.str}); write them little-endian"
                raise MalformedRecordError(msg, path=str(path))
            name = np.dtype(dtype).name
            if size - offset != shape[0] * dtype.itemsize:
                msg = (
                    f"the NumPy header names {shape[0]} ids of {name} but the file holds "
                    f"{size - offset} bytes after it; the file is truncated, write it again"
                )
                raise MalformedRecordError(msg, path=str(path))
            return Layout(dtype=name, offset=offset, count=int(shape[0]))
    if declared is None:
        msg = (
            "raw token ids (no NumPy header) need their dtype; pass --token-dtype uint16 or "
            "uint32 (token_dtype=), the one they were written with"
        )
        raise MalformedRecordError(msg, path=str(path))
    itemsize = np.dtype(declared).itemsize
    if size % itemsize:
        msg = (
            f"the file's size ({size} bytes) is not a multiple of {itemsize} ({declared} ids): "
            "it is truncated, or its ids are of another --token-dtype"
        )
        raise MalformedRecordError(msg, path=str(path))
    return Layout(dtype=declared, offset=0, count=size // itemsize)


def open_ids(path: Path, found: Layout) -> np.ndarray:
    if found.count == 0:
        return np.zeros(0, dtype=found.dtype)
    return np.memmap(path, dtype=found.dtype, mode="r", offset=found.offset, shape=(found.count,))


@functools.lru_cache(maxsize=8)
def _metadata(path: Path, mtime_ns: int, size: int) -> pa.Table:
    """Dolma's metadata rows of a file (cached by the file's identity)."""
    del mtime_ns, size
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(autogenerate_column_names=True),
            convert_options=pacsv.ConvertOptions(
                column_types={
                    "f0": pa.int64(),
                    "f1": pa.int64(),
                    "f2": pa.string(),
                    "f3": pa.string(),
                    "f4": pa.int64(),
                }
            ),
        )
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        msg = (
            f"cannot read the metadata ({exc}); expected rows 'start,end[,id,src,loc]' (Dolma's "
            "layout): fix or remove it"
        )
        raise MalformedRecordError(msg, path=str(path)) from exc
    if table.num_columns < 2:
        msg = "metadata rows need at least 'start,end'; fix or remove the file"
        raise MalformedRecordError(msg, path=str(path))
    names = [*METADATA_COLUMNS, *(f"f{i}" for i in range(5, table.num_columns))]
    return table.rename_columns(names[: table.num_columns])


def metadata(data: Path) -> pa.Table | None:
    """The metadata beside ``data``, or None."""
    meta = metadata_path(data)
    try:
        st = meta.stat()
    except FileNotFoundError:
        return None
    return _metadata(meta, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class Documents:
    starts: np.ndarray  # int64 index of each document's first id
    lengths: np.ndarray  # int64 ids per document
    fields: pa.Table | None  # metadata columns, one row per document


def documents(path: Path, ids: np.ndarray, eos_id: int, request: ScanRequest) -> Documents:
    """The documents of a file: from its metadata, else split after each EOS."""
    meta = metadata(path)
    where = str(path)
    if meta is not None:
        starts = meta.column("start").to_numpy(zero_copy_only=False)
        ends = meta.column("end").to_numpy(zero_copy_only=False)
        if meta.column("start").null_count or meta.column("end").null_count:
            bad = int(
                np.flatnonzero(
                    pc.or_(meta.column("start").is_null(), meta.column("end").is_null())
                )[0]
            )
            msg = "a metadata row without start or end; fix or remove the metadata"
            raise MalformedRecordError(
                msg, path=str(metadata_path(path)), location=f"line {bad + 1}"
            )
        previous = np.concatenate(([0], ends[:-1]))
        wrong = (starts < previous) | (ends < starts) | (ends > len(ids))
        if wrong.any():
            line = int(np.flatnonzero(wrong)[0])
            msg = (
                f"metadata span [{starts[line]}, {ends[line]}) is out of order or beyond the "
                f"{len(ids)} ids of {path.name}; the metadata is not this file's (or the ids are "
                "of another --token-dtype): fix or remove it"
            )
            raise MalformedRecordError(
                msg, path=str(metadata_path(path)), location=f"line {line + 1}"
            )
        return Documents(
            starts=starts.astype(np.int64), lengths=(ends - starts).astype(np.int64), fields=meta
        )
    bounds = [
        np.flatnonzero(ids[s : s + CHECK_BLOCK] == eos_id) + s
        for s in range(0, len(ids), CHECK_BLOCK)
    ]
    eos = np.concatenate(bounds) if bounds else np.zeros(0, dtype=np.int64)
    ends = eos.astype(np.int64) + 1
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    tail = len(ids) - (int(ends[-1]) if len(ends) else 0)
    if tail:
        request.reject(
            where,
            f"ids {len(ids) - tail}..{len(ids) - 1}",
            f"the last {tail} ids follow the last EOS id {eos_id}: the file is truncated, or its "
            "documents are not delimited by this tokenizer's EOS (check --tokenizer and "
            "--token-dtype, or give Dolma's metadata beside it)",
        )
    return Documents(starts=starts, lengths=ends - starts, fields=None)


def scan(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    local = local_path(path, "token memmaps")
    where = str(local)
    spec = scanned_tokens(
        request.tokens, where, "token memmaps are token ids; register them with tokenizer=NAME|PATH"
    )
    found = layout(local, spec.dtype)
    dtype = check_dtype(found.dtype, spec, where)
    itemsize = np.dtype(dtype).itemsize
    ids = open_ids(local, found)
    if found.offset == 0:
        sniff_wider(ids, dtype, where)
    docs = documents(local, ids, spec.eos_id, request)
    order = np.argsort(docs.starts, kind="stable")

    def locate(i: int) -> str:
        at = np.searchsorted(docs.starts[order], i, side="right") - 1
        return f"document {int(order[max(int(at), 0)])} (id {i})"

    check_ids(ids, spec, where, locate)
    counts = content_tokens(docs.lengths, last_ids(ids, docs.starts, docs.lengths), spec.eos_id)
    if docs.fields is None and request.fields:
        msg = (
            f"{where}: no metadata ({metadata_path(local).name}) beside the file to read fields "
            f"{sorted(request.fields)} from; give properties as constants or path patterns"
        )
        raise RegistrationError(msg)
    if docs.fields is not None:
        unknown = sorted(set(request.fields) - set(docs.fields.column_names))
        if unknown:
            msg = (
                f"{where}: the metadata has no fields {unknown}; it has "
                f"{docs.fields.column_names[2:]}"
            )
            raise RegistrationError(msg)
    decode = decoder(spec.source, spec.tokenizer) if request.want_text else None
    total = len(docs.lengths)
    for first in range(0, total, BATCH_DOCUMENTS):
        stop = min(first + BATCH_DOCUMENTS, total)
        lengths = docs.lengths[first:stop]
        starts = docs.starts[first:stop]
        fields = {}
        if docs.fields is not None:
            part = docs.fields.slice(first, stop - first)
            fields = {name: part.column(name).combine_chunks() for name in request.fields}
        table = None
        if request.want_table:
            pieces = [
                ids[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)
            ]
            flat = np.concatenate(pieces) if pieces else ids[:0]
            table = ids_table(
                flat, np.concatenate(([0], np.cumsum(lengths))), spec.field, decode=decode
            )
            if docs.fields is not None:
                for name in docs.fields.column_names[2:]:
                    table = table.append_column(
                        name, docs.fields.column(name).slice(first, stop - first)
                    )
        yield ScanBatch(
            fields=fields,
            text_bytes=lengths * itemsize,
            offset=found.offset + starts * itemsize,
            length=lengths * itemsize,
            table=table,
            scanned_bytes=int(lengths.sum()) * itemsize,
            tokens=counts[first:stop],
            token_dtype=dtype,
        )


def read(
    path: Path | RemotePath, pointers: pa.Table, text_field: str, *, dtype: str | None = None
) -> pa.Table:
    """Records at the given pointers (byte ``offset`` and ``length``), in pointer order: the
    ids as a list column named ``text_field``, and the metadata's columns when present (by the
    pointers' ``ordinal``). Raw ids need their ``dtype`` (the catalog passes the registered one)."""
    local = local_path(path, "token memmaps")
    found = layout(local, dtype)
    table = read_spans(local, pointers, found.dtype, text_field or DEFAULT_FIELD)
    meta = metadata(local)
    if meta is not None and "ordinal" in pointers.column_names and meta.num_columns > 2:
        rows = meta.take(pointers.column("ordinal"))
        for name in meta.column_names[2:]:
            table = table.append_column(name, rows.column(name))
    return table
