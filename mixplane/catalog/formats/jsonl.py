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

import functools
import gzip
import io
import itertools
import json
import logging
import mmap
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import zstandard

from mixplane.catalog.fields import keys as field_keys
from mixplane.catalog.formats import (
    RESTART,
    ScanBatch,
    ScanRequest,
    arrow_fields_ok,
    arrow_type,
    check_record,
    compatible,
    compression_of,
    dig,
    filter_fields,
    get_path,
    records_table,
    reject_missing,
    take,
)
from mixplane.catalog.properties import PropertyType
from mixplane.catalog.remote_fs import ObjectStoreError, RemotePath, location
from mixplane.catalog.sql import identifier, literal
from mixplane.errors import MalformedRecordError, RegistrationError

log = logging.getLogger(__name__)

BLOCK_BYTES = 32 << 20


#: Read-ahead of a sequential stream of an object in object storage (one ranged GET each).
REMOTE_BUFFER = 8 << 20


def open_stream(path: Path | RemotePath) -> tuple[IO[bytes], IO[bytes]]:
    """(raw file, uncompressed stream) for a possibly compressed file."""
    path = location(path)
    raw: IO[bytes] = (
        io.BufferedReader(path.open("rb"), buffer_size=REMOTE_BUFFER)
        if isinstance(path, RemotePath)
        else path.open("rb")
    )
    return raw, uncompressed(raw, path)


def uncompressed(raw: IO[bytes], path: Path | RemotePath) -> IO[bytes]:
    """The uncompressed stream of ``raw``, by the compression ``path``'s name says."""
    kind = compression_of(path)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if kind == "zstd":
        return _ZstdStream(raw)  # type: ignore[return-value]
    return raw


class _ZstdStream:
    """Reads concatenated zstd frames; a frame cut short raises instead of ending quietly
    (zstandard's stream reader returns end-of-stream for a truncated frame)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._obj = zstandard.ZstdDecompressor().decompressobj()
        self._parts: list[bytes] = []
        self._size = 0
        self._in_frame = False

    def read(self, n: int = -1) -> bytes:
        while n < 0 or self._size < n:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    msg = "zstd stream ends inside a frame (file truncated)"
                    raise zstandard.ZstdError(msg)
                break
            while chunk:
                self._in_frame = True
                out = self._obj.decompress(chunk)
                self._parts.append(out)
                self._size += len(out)
                if self._obj.eof:
                    chunk = self._obj.unused_data
                    self._obj = zstandard.ZstdDecompressor().decompressobj()
                    self._in_frame = False
                else:
                    chunk = b""
        data = b"".join(self._parts)
        cut = len(data) if n < 0 else min(n, len(data))
        rest = data[cut:]
        self._parts = [rest] if rest else []
        self._size = len(rest)
        return data[:cut]


def _blocks(path: Path | RemotePath) -> Iterator[tuple[int, bytes, int]]:
    """(uncompressed offset, block of whole lines, raw bytes consumed) for each block."""
    raw, stream = open_stream(path)
    carry, pos, raw_pos = b"", 0, 0
    try:
        with raw:
            while True:
                chunk = stream.read(BLOCK_BYTES)
                if not chunk:
                    break
                buf = carry + chunk if carry else chunk
                cut = buf.rfind(b"\n")
                if cut < 0:
                    carry = buf
                    continue
                new_raw = raw.tell()
                yield pos, buf[: cut + 1], new_raw - raw_pos
                raw_pos = new_raw
                pos += cut + 1
                carry = buf[cut + 1 :]
            if carry:
                yield pos, carry, raw.tell() - raw_pos
    except (zstandard.ZstdError, zlib.error, EOFError, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, ObjectStoreError)):
            raise
        problem = " ".join(str(exc).split())[:300]
        msg = (
            f"cannot decompress ({problem}); the file is corrupt or truncated, replace or remove it"
        )
        raise MalformedRecordError(msg, path=str(path), location=f"byte {pos}") from exc


def scan(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    """Scan with DuckDB's JSON reader; on any problem, restart with the block-wise path.
    Objects in object storage take the block-wise path (one streamed pass; DuckDB would read
    the object a second time for the line offsets)."""
    path = location(path)
    yielded = False
    if not request.want_table and isinstance(path, Path):
        try:
            for batch in _scan_duckdb(path, request):
                yielded = True
                yield batch
            return
        except (_FastPathError, duckdb.Error) as exc:
            log.debug("%s: fast JSON path gave up (%s); scanning block by block", path, exc)
    if yielded:
        request.skipped, request.messages = 0, []
        yield RESTART
    yield from _scan_blocks(path, request)


class _FastPathError(Exception):
    """The fast path cannot handle this file; the block-wise path will name the problem."""


#: DuckDB's json_type names and the property type each maps to.
_JSON_TYPES = {
    "VARCHAR": PropertyType.STRING,
    "BIGINT": PropertyType.INTEGER,
    "UBIGINT": PropertyType.INTEGER,
    "DOUBLE": PropertyType.FLOAT,
    "BOOLEAN": PropertyType.BOOLEAN,
    "ARRAY": PropertyType.LIST,
}
PROBE_ROWS = 20_000
DUCKDB_BATCH = 131_072
#: The texts DuckDB makes of JSON values that are not strings, when it reads them into a
#: VARCHAR column: a number (its JSON text; NaN and Infinity as such), an object or a list
#: (its JSON text), true, false.
#: A text column row matching this may have been such a value; its line is checked with orjson.
_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"


def _maybe_not_string(column: str) -> str:
    """SQL true where the VARCHAR ``column`` (quoted) could hold a converted non-string."""
    return (
        f"(regexp_full_match({column}, {literal(_NUMBER)}) "
        f"OR (starts_with({column}, '{{') AND ends_with({column}, '}}')) "
        f"OR (starts_with({column}, '[') AND ends_with({column}, ']')) "
        f"OR {column} IN ('true', 'false', 'NaN', 'Infinity', '-Infinity'))"
    )


def _extract(ptype: PropertyType, root: str, pointer: str) -> str:
    """SQL reading a property's value of type ``ptype`` at JSON ``pointer`` of column ``root``
    (both already quoted)."""
    if ptype is PropertyType.STRING:
        return f"{root}->>{pointer}"
    if ptype is PropertyType.LIST:
        return f"TRY_CAST({root}->{pointer} AS VARCHAR[])"
    return f"TRY_CAST({root}->>{pointer} AS {ptype.sql})"


def _locate(dotted: str) -> tuple[str, str]:
    """(quoted column, quoted JSON path) of a field path: the root key is the column, the
    rest a JSON pointer (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``), which can address any key."""
    root, *rest = field_keys(dotted)
    pointer = "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in rest)
    return identifier(root), literal(pointer or "$")


def _scan_duckdb(path: Path, request: ScanRequest) -> Iterator[ScanBatch]:
    """The fast path: DuckDB parses (multi-threaded, only requested fields are materialized);
    line offsets come from a separate vectorized newline pass, paired row by row.

    A top-level text field is read as VARCHAR (reading it as JSON and decoding it costs ~2.5x
    the whole scan), so DuckDB turns a number or an object there into its JSON text; rows whose
    text could be such a value (``_maybe_not_string``: a whole JSON number, ``{...}``, ``[...]``,
    true, false) are checked on their line
    with orjson, and a text that is not a string sends the file to the block-wise path, which
    names the line. A nested text field is typed by ``json_type`` like the properties."""
    fields = list(request.fields)
    roots = {field_keys(f)[0] for f in fields}
    text_root, *text_rest = field_keys(request.text_field)
    columns = {r: "JSON" for r in sorted(roots)}
    if text_root not in columns:
        columns[text_root] = "VARCHAR" if not text_rest else "JSON"
    spec = "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in columns.items()) + "}"
    source = (
        f"read_json({literal(str(path))}, format='newline_delimited', records='true', "
        f"columns={spec}, compression='auto_detect')"
    )
    con = duckdb.connect()
    closing: list[_Spans] = []
    try:
        types = dict(request.fields)
        if any(t is None for t in types.values()):
            probe = ", ".join(
                f"list_distinct(list(json_type({root}, {pointer})))"
                for root, pointer in map(_locate, fields)
            )
            found = con.sql(
                f"SELECT {probe} FROM (SELECT * FROM {source} LIMIT {PROBE_ROWS:d})"
            ).fetchall()[0]
            for f, listed in zip(fields, found, strict=True):
                kinds = {_JSON_TYPES.get(k) for k in listed or [] if k not in (None, "NULL")}
                if (
                    None in kinds
                    or len(kinds - {PropertyType.INTEGER} if PropertyType.FLOAT in kinds else kinds)
                    > 1
                ):
                    raise _FastPathError(f"field {f!r} has values of several types")
                merged = (
                    PropertyType.FLOAT if PropertyType.FLOAT in kinds else next(iter(kinds), None)
                )
                if types[f] is None:
                    types[f] = merged
                elif not compatible(types[f], merged):
                    raise _FastPathError(f"field {f!r} does not match its property type")
        select = []
        for i, f in enumerate(fields):
            root, pointer = _locate(f)
            select.append(f"{_extract(types[f] or PropertyType.STRING, root, pointer)} AS v{i:d}")
            select.append(f"json_type({root}, {pointer}) AS t{i:d}")
        root, pointer = _locate(request.text_field)
        if text_rest:
            select.append(f"strlen({root}->>{pointer}) AS text_bytes")
            select.append(f"json_type({root}, {pointer}) AS text_type")
        else:
            select.append(f"strlen({root}) AS text_bytes")
            select.append(f"{_maybe_not_string(root)} AS text_check")
        reader = con.sql(f"SELECT {', '.join(select)} FROM {source}").to_arrow_reader(DUCKDB_BATCH)
        spans = _Spans(path)
        closing.append(spans)
        for batch in reader:
            n = batch.num_rows
            starts, lengths, numbers, consumed = spans.take(n)
            out: dict[str, pa.Array] = {}
            for i, f in enumerate(fields):
                allowed = {
                    k
                    for k, t in _JSON_TYPES.items()
                    if compatible(types[f], t)
                    and (types[f] is not PropertyType.INTEGER or t is PropertyType.INTEGER)
                }
                kinds = set(pc.unique(batch.column(f"t{i}")).to_pylist()) - {None, "NULL"}
                if not kinds <= allowed:
                    raise _FastPathError(f"field {f!r} has values of another type")
                out[f] = batch.column(f"v{i}")
            if text_rest:
                kinds = set(pc.unique(batch.column("text_type")).to_pylist()) - {None, "NULL"}
                if not kinds <= {"VARCHAR"}:
                    raise _FastPathError("the text field holds values that are not strings")
            else:
                check = np.flatnonzero(
                    batch.column("text_check").fill_null(False).to_numpy(zero_copy_only=False)
                )
                if len(check) and not spans.texts_are_strings(check, request.text_field):
                    raise _FastPathError("the text field holds values that are not strings")
            text_bytes = batch.column("text_bytes")
            checked = {**out, request.text_field: text_bytes}
            keep = reject_missing(checked, numbers, request, str(path), "line")
            yield ScanBatch(
                fields=filter_fields(out, keep),
                text_bytes=np.asarray(
                    take(text_bytes.to_numpy(zero_copy_only=False), keep), dtype=np.int64
                ),
                offset=take(starts, keep),
                length=take(lengths, keep),
                scanned_bytes=consumed,
            )
        if not spans.exhausted():
            raise _FastPathError("line count differs from the parsed record count")
    finally:
        for spans_ in closing:
            spans_.close()
        con.close()


class _Spans:
    """Non-blank line spans of a file, handed out in the order DuckDB returns rows.

    The newline pass runs in a background thread (numpy releases the GIL) while DuckDB parses,
    a few blocks ahead at most. The lines of the rows last handed out stay readable
    (``texts_are_strings``): a plain file through its memory map, a compressed one through the
    uncompressed blocks that hold them.
    """

    _DONE = object()

    def __init__(self, path: Path) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(path,), daemon=True)
        self._thread.start()
        # (starts, lengths, numbers, block id) per part; blocks by id: (first byte, bytes)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._blocks: dict[int, tuple[int, bytes | mmap.mmap]] = {}
        self._taken: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._available = 0
        self._consumed = 0
        self._done = False

    def _produce(self, path: Path) -> None:
        try:
            for item in _line_blocks(path):
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._DONE)
        except BaseException as exc:  # handed to the consumer
            self._queue.put(exc)

    def _next(self) -> bool:
        if self._done:
            return False
        item = self._queue.get()
        if item is self._DONE:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        starts, lengths, numbers, consumed, block_id, block = item
        if block_id not in self._blocks:
            self._blocks[block_id] = block
        ids = np.full(len(starts), block_id, dtype=np.int64)
        self._parts.append((starts, lengths, numbers, ids))
        self._available += len(starts)
        self._consumed += consumed
        return True

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        while self._available < n:
            if not self._next():
                raise _FastPathError("fewer lines than parsed records")
        cols = [np.concatenate([p[j] for p in self._parts]) for j in range(4)]
        self._parts = [(cols[0][n:], cols[1][n:], cols[2][n:], cols[3][n:])]
        self._available -= n
        self._taken = (cols[0][:n], cols[1][:n], cols[3][:n])
        if len(cols[3]):  # keep the blocks of these rows and later ones (ids only grow)
            first = int(cols[3][0])
            self._blocks = {k: v for k, v in self._blocks.items() if k >= first}
        consumed, self._consumed = self._consumed, 0
        return cols[0][:n], cols[1][:n], cols[2][:n], consumed

    def texts_are_strings(self, rows: np.ndarray, text_field: str) -> bool:
        """Whether the text field of each of ``rows`` (indices into the rows last taken) is a
        JSON string on its line; False also for a line orjson cannot read."""
        assert self._taken is not None
        starts, lengths, ids = self._taken
        for row in rows.tolist():
            first, data = self._blocks[int(ids[row])]
            at = int(starts[row]) - first
            try:
                record = orjson.loads(data[at : at + int(lengths[row])])
            except orjson.JSONDecodeError:
                return False
            if not isinstance(record, dict) or not isinstance(dig(record, text_field), str):
                return False
        return True

    def exhausted(self) -> bool:
        while self._available == 0 and self._next():
            pass
        return self._available == 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._blocks.clear()
        self._taken = None


def _line_blocks(
    path: Path,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int, int, tuple[int, bytes | mmap.mmap]]]:
    """(absolute start, length, 1-based line number, raw bytes consumed, block id, (first
    byte, data)) of the non-blank lines of each block; ``data[start - first:]`` is a line.

    Plain files are memory-mapped and scanned in place (no copy; one id for the whole map);
    compressed ones are streamed.
    """
    lines_before = 0
    if compression_of(path) is None:
        size = path.stat().st_size
        if size == 0:
            return
        with path.open("rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        data = np.frombuffer(mm, np.uint8)
        pos = 0
        while pos < size:
            stop = min(pos + BLOCK_BYTES, size)
            if stop < size:
                cut = mm.rfind(b"\n", pos, stop)
                stop = cut + 1 if cut >= 0 else (mm.find(b"\n", stop) + 1 or size)
            starts, lengths, numbers, lines = _spans(data[pos:stop], lines_before)
            lines_before += lines
            yield starts + pos, lengths, numbers, stop - pos, 0, (0, mm)
            pos = stop
        del data  # the map closes when the consumer drops it
        return
    for block_id, (start, block, consumed) in enumerate(_blocks(path)):
        starts, lengths, numbers, lines = _spans(np.frombuffer(block, np.uint8), lines_before)
        lines_before += lines
        yield starts + start, lengths, numbers, consumed, block_id, (start, block)


def _spans(arr: np.ndarray, lines_before: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Start, length (without \\r\\n) and line number of each non-blank line of a block, and
    the block's number of lines."""
    ends = np.flatnonzero(arr == 10)
    if len(arr) and arr[-1] != 10:
        ends = np.append(ends, len(arr))
    starts = np.empty(len(ends), dtype=np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    has_cr = lengths > 0
    has_cr[has_cr] = arr[ends[has_cr] - 1] == 13
    lengths -= has_cr
    numbers = lines_before + np.arange(1, len(ends) + 1, dtype=np.int64)
    nonblank = lengths > 0
    if nonblank.all():
        return starts, lengths, numbers, len(ends)
    return starts[nonblank], lengths[nonblank], numbers[nonblank], len(ends)


def _scan_blocks(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    lines_before = 0
    schema: pa.Schema | None = None
    for start, block, consumed in _blocks(path):
        starts, lengths, numbers, lines = _spans(np.frombuffer(block, np.uint8), lines_before)
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


#: Reads of lines closer than this are merged into one read of the span between them.
WINDOW_GAP = 64 << 10


def read_lines(
    source: int | Callable[[int, int], bytes], offsets: np.ndarray, lengths: np.ndarray
) -> list[bytes]:
    """The lines at ``offsets`` of an uncompressed file, in the given order: sorted, merged into
    windows (gaps under ``WINDOW_GAP``), one read per window: ``pread`` on a file descriptor,
    or ``source(nbytes, offset)`` (a ranged request of exactly the window)."""
    out: list[bytes] = [b""] * len(offsets)
    if len(offsets) == 0:
        return out
    pread = functools.partial(os.pread, source) if isinstance(source, int) else source
    order = np.argsort(offsets, kind="stable")
    so, sl = offsets[order], lengths[order]
    ends = so + sl
    cuts = np.flatnonzero(so[1:] - ends[:-1] > WINDOW_GAP) + 1
    bounds = np.concatenate(([0], cuts, [len(so)])).tolist()
    order_list, so_list, sl_list = order.tolist(), so.tolist(), sl.tolist()
    for a, b in itertools.pairwise(bounds):
        start = so_list[a]
        window = pread(int(ends[a:b].max()) - start, start)
        for idx in range(a, b):
            o = so_list[idx] - start
            out[order_list[idx]] = window[o : o + sl_list[idx]]
    return out


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
