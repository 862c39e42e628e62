"""Arrow IPC files of token ids, as Hugging Face ``datasets.save_to_disk`` writes them.

A file (``*.arrow``, the IPC stream format ``save_to_disk`` writes or the IPC file format) holds
record batches with a token column (``tokens_field``, a list of integers; see
``token_columns``); its other columns are fields properties may name. Registering the folder
``save_to_disk`` wrote takes its ``data-*.arrow`` files (``state.json`` and
``dataset_info.json`` are not data).

One sample per row. The file is memory-mapped and read zero-copy, so each row's ids are a byte
span of the file itself: a sample points at it (``offset``, ``length``), and reading it back is
one slice of a memory map, as for Megatron and token memmaps. Files written with IPC
compression have no such spans and are refused (write them uncompressed, as ``datasets``
does). Cost of a scan: Arrow's zero-copy reader plus one vectorized check of the ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import ipc

from mixplane.catalog.formats.base import (
    ScanBatch,
    ScanRequest,
    filter_fields,
    get_path,
    reject_missing,
)
from mixplane.catalog.formats.token_columns import documents, take, token_column, with_text
from mixplane.catalog.formats.tokenized import DEFAULT_FIELD, local_path, read_spans, scanned_tokens
from mixplane.catalog.remote_fs import RemotePath
from mixplane.errors import MalformedRecordError

FILE_MAGIC = b"ARROW1"


def _batches(path: Path) -> tuple[int, Iterator[pa.RecordBatch], pa.Schema]:
    """The base address of the file's memory map, its record batches and schema."""
    source = pa.memory_map(str(path), "r")
    base = source.read_buffer(source.size()).address if source.size() else 0
    source.seek(0)
    with path.open("rb") as f:
        head = f.read(len(FILE_MAGIC))
    try:
        if head == FILE_MAGIC:
            reader = ipc.open_file(source)
            batches: Iterator[pa.RecordBatch] = (
                reader.get_batch(i) for i in range(reader.num_record_batches)
            )
            return base, batches, reader.schema
        stream = ipc.open_stream(source)
        return base, iter(stream), stream.schema
    except (pa.ArrowInvalid, OSError) as exc:
        msg = f"not a readable Arrow IPC file ({exc}); is it truncated? write it again"
        raise MalformedRecordError(msg, path=str(path)) from exc


def scan(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    local = local_path(path, "Arrow token files")
    where = str(local)
    spec = scanned_tokens(
        request.tokens,
        where,
        "Arrow files are registered as token ids; pass tokens_field= and tokenizer=",
    )
    size = local.stat().st_size
    base, batches, _schema = _batches(local)
    first_row = 0
    number = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as exc:
            msg = (
                f"cannot read record batch {number} ({exc}); the file is truncated or corrupt, "
                "write it again"
            )
            raise MalformedRecordError(msg, path=where) from exc
        number += 1
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        docs = documents(token_column(batch, spec, where), spec, request, where, first_row, "row")
        itemsize = np.dtype(docs.dtype).itemsize
        child = docs.column.values
        buffer = child.buffers()[1]
        origin = (buffer.address - base if buffer is not None else 0) + child.offset * itemsize
        offsets = origin + docs.starts * itemsize
        lengths = docs.lengths * itemsize
        if len(offsets) and (buffer is None or origin < 0 or int((offsets + lengths).max()) > size):
            msg = (
                "the ids are not stored as plain bytes of the file (IPC compression?); write "
                "the file uncompressed, as datasets.save_to_disk does"
            )
            raise MalformedRecordError(msg, path=where)
        kept = table if docs.keep is None else table.filter(pa.array(docs.keep))
        fields = {
            dotted: (v if (v := get_path(kept, dotted)) is not None else pa.nulls(kept.num_rows))
            for dotted in request.fields
        }
        rows = np.arange(first_row, first_row + n)
        rows = rows if docs.keep is None else rows[docs.keep]
        keep = reject_missing(fields, rows, request, where, "row")
        records = None
        if request.want_table:
            records = with_text(kept, docs, spec) if request.want_text else kept
            if keep is not None:
                records = records.filter(pa.array(keep))
        yield ScanBatch(
            fields=filter_fields(fields, keep),
            text_bytes=take(lengths, keep),
            offset=take(offsets, keep),
            length=take(lengths, keep),
            table=records,
            scanned_bytes=int(batch.nbytes),
            tokens=take(docs.tokens, keep),
            token_dtype=docs.dtype,
        )
        first_row += n


def read(
    path: Path | RemotePath, pointers: pa.Table, text_field: str, *, dtype: str | None = None
) -> pa.Table:
    """Records at the given pointers (byte ``offset`` and ``length``), in pointer order: the
    ids as a list column named ``text_field``."""
    local = local_path(path, "Arrow token files")
    if dtype is None:
        schema = _batches(local)[2]
        dtype = schema.field(text_field or DEFAULT_FIELD).type.value_type.to_pandas_dtype().__name__
    return read_spans(local, pointers, str(dtype), text_field or DEFAULT_FIELD)
