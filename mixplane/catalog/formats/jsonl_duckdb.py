"""JSON Lines, the fast path of a scan: DuckDB's JSON reader, with line spans beside it.

DuckDB parses the file (multi-threaded; only the requested fields are materialized, typed by
a probe of the first ``PROBE_ROWS`` rows when their property types are not known yet) while a
background thread finds the line spans (``LineSpans`` over ``lines.line_blocks``: the newline
pass over a memory map, or over the uncompressed blocks of a compressed file), paired with
DuckDB's rows in order. Anything this path cannot vouch for (values of several types, a text that may not be
a string, fewer lines than rows) raises ``FastPathError`` and the scan starts over block by
block (``jsonl.py``), which names the offending line. Cost: DuckDB's parse on all cores, with
the newline pass overlapping it in one thread.
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mixplane.catalog.fields import keys as field_keys
from mixplane.catalog.formats.base import (
    ScanBatch,
    ScanRequest,
    compatible,
    dig,
    filter_fields,
    reject_missing,
    take,
)
from mixplane.catalog.formats.lines import line_blocks
from mixplane.catalog.properties import PropertyType
from mixplane.catalog.sql import identifier, literal


class FastPathError(Exception):
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


def scan_duckdb(path: Path, request: ScanRequest) -> Iterator[ScanBatch]:
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
    closing: list[LineSpans] = []
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
                    raise FastPathError(f"field {f!r} has values of several types")
                merged = (
                    PropertyType.FLOAT if PropertyType.FLOAT in kinds else next(iter(kinds), None)
                )
                if types[f] is None:
                    types[f] = merged
                elif not compatible(types[f], merged):
                    raise FastPathError(f"field {f!r} does not match its property type")
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
        spans = LineSpans(path)
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
                    raise FastPathError(f"field {f!r} has values of another type")
                out[f] = batch.column(f"v{i}")
            if text_rest:
                kinds = set(pc.unique(batch.column("text_type")).to_pylist()) - {None, "NULL"}
                if not kinds <= {"VARCHAR"}:
                    raise FastPathError("the text field holds values that are not strings")
            else:
                check = np.flatnonzero(
                    batch.column("text_check").fill_null(False).to_numpy(zero_copy_only=False)
                )
                if len(check) and not spans.texts_are_strings(check, request.text_field):
                    raise FastPathError("the text field holds values that are not strings")
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
            raise FastPathError("line count differs from the parsed record count")
    finally:
        for spans_ in closing:
            spans_.close()
        con.close()


class LineSpans:
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
            for item in line_blocks(path):
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
                raise FastPathError("fewer lines than parsed records")
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
