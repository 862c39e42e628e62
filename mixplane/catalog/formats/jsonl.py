"""JSON Lines (plain, .gz, .zst): one JSON object per line.

Scan: the file is read in blocks of ``BLOCK_BYTES`` of the uncompressed stream, cut at the last
newline. Line starts come from one vectorized newline search (numpy, ~1.5 GB/s); the block is
parsed by Arrow's multi-threaded JSON reader (an explicit schema of only the requested fields
after the first block). A block that Arrow rejects (bad JSON, invalid UTF-8, a value of the wrong
type, a missing field) is parsed again line by line with orjson to name the offending line and
apply the error policy; only such blocks pay the per-line cost.

A sample's pointer is the byte offset and length of its line in the uncompressed stream; reading
it back seeks there (plain files) or decompresses up to it (compressed files).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from mixplane.catalog.fields import keys as field_keys
from mixplane.catalog.formats.base import (
    RESTART,
    ScanBatch,
    ScanRequest,
    arrow_fields_ok,
    arrow_type,
    check_record,
    compression_of,
    dig,
    filter_fields,
    get_path,
    records_table,
    reject_missing,
    take,
)
from mixplane.catalog.formats.jsonl_duckdb import FastPathError, scan_duckdb
from mixplane.catalog.formats.lines import (
    BLOCK_BYTES,
    blocks,
    line_spans,
    open_stream,
    read_lines,
    uncompressed,
)
from mixplane.catalog.remote_fs import RemotePath, location
from mixplane.errors import MalformedRecordError, RegistrationError

log = logging.getLogger(__name__)

#: What ``client/reader.py`` reads JSONL lines with (``lines.py``), also importable from here.
__all__ = ["open_stream", "parse_line", "read", "read_lines", "scan", "scan_blocks", "uncompressed"]


def scan(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    """Scan with DuckDB's JSON reader; on any problem, restart with the block-wise path.
    Objects in object storage take the block-wise path (one streamed pass; DuckDB would read
    the object a second time for the line offsets)."""
    path = location(path)
    yielded = False
    if not request.want_table and isinstance(path, Path):
        try:
            for batch in scan_duckdb(path, request):
                yielded = True
                yield batch
            return
        except (FastPathError, duckdb.Error) as exc:
            log.debug("%s: fast JSON path gave up (%s); scanning block by block", path, exc)
    if yielded:
        request.skipped, request.messages = 0, []
        yield RESTART
    yield from scan_blocks(path, request)


def scan_blocks(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    lines_before = 0
    schema: pa.Schema | None = None
    for start, block, consumed in blocks(path):
        starts, lengths, numbers, lines = line_spans(np.frombuffer(block, np.uint8), lines_before)
        lines_before += lines
        batch = _fast(block, starts, lengths, numbers, request, schema, path)
        if batch is None:
            batch = _slow(block, starts, lengths, numbers, request, path)
        elif schema is None and not request.want_table:
            schema = _explicit_schema(batch, request)
        yield ScanBatch(
            fields=batch.fields,
            text_bytes=batch.text_bytes,
            offset=batch.offset + start if batch.offset is not None else None,
            length=batch.length,
            table=batch.table,
            scanned_bytes=consumed,
        )


def _explicit_schema(batch: ScanBatch, request: ScanRequest) -> pa.Schema:
    """A parse schema holding only the requested fields, typed as the first block found them."""
    tree: dict[str, Any] = {}
    for dotted, values in [*batch.fields.items(), (request.text_field, pa.array([], pa.string()))]:
        node = tree
        *parents, leaf = field_keys(dotted)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = values.type

    def build(node: dict[str, Any]) -> list[pa.Field]:
        return [
            pa.field(k, pa.struct(build(v)) if isinstance(v, dict) else v) for k, v in node.items()
        ]

    return pa.schema(build(tree))


def _fast(
    block: bytes,
    starts: np.ndarray,
    lengths: np.ndarray,
    numbers: np.ndarray,
    request: ScanRequest,
    schema: pa.Schema | None,
    path: Path | RemotePath,
) -> ScanBatch | None:
    """Parse a block with Arrow; None when the block needs the line-by-line path."""
    if len(starts) == 0:
        return None
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    table = None
    read_options = pj.ReadOptions(block_size=max(4 << 20, int(lengths.max()) + 2))
    for explicit in ([schema] if schema is not None else []) + [None]:
        parse = (
            pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="ignore")
            if explicit is not None
            else pj.ParseOptions()
        )
        try:
            table = pj.read_json(io.BytesIO(block), read_options=read_options, parse_options=parse)
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    if table is None or table.num_rows != len(starts):
        return None
    fields: dict[str, pa.Array] = {}
    for dotted in request.fields:
        values = get_path(table, dotted)
        fields[dotted] = values if values is not None else pa.nulls(table.num_rows)
    text = get_path(table, request.text_field)
    if text is None or not (pa.types.is_string(text.type) or pa.types.is_null(text.type)):
        return None
    if not arrow_fields_ok(fields, request):
        return None
    fields[request.text_field] = text
    keep = reject_missing(fields, numbers, request, str(path), "line")
    del fields[request.text_field]
    text_bytes = pc.binary_length(text).to_numpy(zero_copy_only=False)
    if keep is not None:
        table = table.filter(pa.array(keep))
    return ScanBatch(
        fields=filter_fields(fields, keep),
        text_bytes=np.asarray(take(text_bytes, keep), dtype=np.int64),
        offset=take(starts, keep),
        length=take(lengths, keep),
        table=table if request.want_table else None,
    )


def _slow(
    block: bytes,
    starts: np.ndarray,
    lengths: np.ndarray,
    numbers: np.ndarray,
    request: ScanRequest,
    path: Path | RemotePath,
) -> ScanBatch:
    """Parse a block line by line, naming each malformed line (error policy applies)."""
    where = str(path)
    expected = dict(request.fields)
    records: list[dict[str, Any]] = []
    kept: list[int] = []
    for i, (s, n, number) in enumerate(
        zip(starts.tolist(), lengths.tolist(), numbers.tolist(), strict=True)
    ):
        line = block[s : s + n]
        location = f"line {number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            request.reject(where, location, f"invalid utf-8 at byte {exc.start} of the line")
            continue
        if not text.strip():
            continue
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            try:  # what the reader also accepts (parse_line): NaN, Infinity, ...
                record = json.loads(text)
            except (ValueError, RecursionError):
                request.reject(where, location, f"invalid JSON ({exc}); is the line truncated?")
                continue
        if not isinstance(record, dict):
            request.reject(where, location, f"expected a JSON object, got {type(record).__name__}")
            continue
        problem = check_record(record, expected, request.text_field)
        if problem:
            request.reject(where, location, problem)
            continue
        records.append(record)
        kept.append(i)
    index = np.asarray(kept, dtype=np.int64)
    fields = {
        dotted: pa.array([dig(r, dotted) for r in records], type=arrow_type(expected[dotted]))
        for dotted in request.fields
    }
    texts = pa.array([dig(r, request.text_field) for r in records], type=pa.string())
    table = None
    if request.want_table:
        try:
            table = pa.Table.from_pylist(records)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            msg = f"{where}: records have fields of mixed types ({exc}); a property function needs consistent records"
            raise RegistrationError(msg) from exc
    return ScanBatch(
        fields=fields,
        text_bytes=pc.binary_length(texts).to_numpy(zero_copy_only=False).astype(np.int64),
        offset=starts[index],
        length=lengths[index],
        table=table,
    )


def read(path: Path | RemotePath, pointers: pa.Table, text_field: str) -> pa.Table:
    """Records at the given pointers (columns ``offset``, ``length``), in pointer order."""
    path = location(path)
    if pointers.column("offset").null_count:
        msg = f"{path}: asked for samples the file does not hold"
        raise RegistrationError(msg)
    offsets = pointers.column("offset").to_numpy()
    lengths = pointers.column("length").to_numpy()
    unique, inverse = np.unique(offsets, return_inverse=True)
    if len(unique) < len(offsets):  # read each line once, then repeat it where asked
        first = np.zeros(len(unique), dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(offsets))[::-1]
        once = read(path, pointers.take(pa.array(first)), text_field)
        return once.take(pa.array(inverse))
    if compression_of(path) is None and isinstance(path, RemotePath):
        with path.open("rb") as remote:
            lines = read_lines(remote.read_at, offsets, lengths)
    elif compression_of(path) is None and isinstance(path, Path):
        fd = os.open(path, os.O_RDONLY)
        try:
            lines = read_lines(fd, offsets, lengths)
        finally:
            os.close(fd)
    else:
        order = np.argsort(offsets, kind="stable")
        lines = [b""] * len(offsets)
        raw, stream = open_stream(path)
        with raw:
            pos = 0
            for i in order.tolist():
                skip = int(offsets[i]) - pos
                while skip > 0:
                    got = len(stream.read(min(skip, BLOCK_BYTES)))
                    if not got:
                        msg = f"{path}: stream ended before byte {offsets[i]}; the file changed?"
                        raise RegistrationError(msg)
                    skip -= got
                lines[i] = stream.read(int(lengths[i]))
                pos = int(offsets[i]) + int(lengths[i])
    data = b"\n".join(lines) + b"\n"
    try:
        return pj.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. a field of mixed types
        pass
    records = [parse_line(line, str(path), int(o)) for line, o in zip(lines, offsets, strict=True)]
    return records_table(records, str(path))


def parse_line(line: bytes, where: str, offset: int) -> Any:
    """A registered line, decoded: orjson, or Python's json for what orjson refuses and the
    registration's parsers accept (NaN, Infinity, a byte-order mark, a lone surrogate escape).
    The rare syntax only DuckDB accepts (a trailing comma) and nesting deeper than ~1000
    levels register but cannot be read: an error naming the file and byte."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:
        problem = " ".join(str(exc).split())[:200]
        msg = (
            f"the registered line cannot be read back as JSON ({problem}); rewrite the line "
            "as standard JSON (no trailing commas, nesting under 1000 levels) and register again"
        )
        raise MalformedRecordError(msg, path=where, location=f"byte {offset}") from None
