"""WebDataset tar shards: a sample is a run of consecutive members sharing a key.

A member ``dir/abc.001.json`` has key ``dir/abc`` and extension ``001.json``. A sample's record is
``{"__key__": key, "<ext>": value}`` where ``json`` members are decoded objects, text members
(``txt``, ``text``, ``md``) strings and other members bytes; property field paths point into it
(``json.language``) and the text field names an extension (default ``txt``).

Scan: tar headers are walked sequentially (one 512-byte header per member, the only per-member
Python work; member data is never copied except the small json/text members). The walk also
proves the archive whole: each header's checksum (1024 headers at a time, with numpy), every member's data and
padding inside the file, the end-of-archive marker (two zero blocks) and only zeros after it. A
broken archive is an error naming the byte where it breaks, or, under ``on_error='skip'``, the
whole shard is skipped (never half-read). A sample's pointer
is the offset of its first header and the byte span of its members, so reading it back is one
seek and one read. A shard in object storage is walked through ``_RemoteBuffer``: blocks of
``REMOTE_BLOCK`` bytes fetched by ranged requests as the walk reaches them, a few kept.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mixplane.catalog.fields import root
from mixplane.catalog.formats.base import (
    RESTART,
    ScanBatch,
    ScanRequest,
    arrow_type,
    check_record,
    dig,
    records_table,
)
from mixplane.catalog.remote_fs import RemoteFile, RemotePath, location
from mixplane.errors import MalformedRecordError, RegistrationError

BATCH_SAMPLES = 8192
TEXT_EXTENSIONS = frozenset({"txt", "text", "md"})
REMOTE_BLOCK = 8 << 20
REMOTE_BLOCKS_KEPT = 4


class _RemoteBuffer:
    """Slices of a remote shard by ranged reads of whole blocks (a sequential walk fetches each
    block once; the last few are kept for members that straddle them)."""

    def __init__(self, file: RemoteFile) -> None:
        self._file = file
        self._size = file.size()
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return self._size

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is None:
            block = self._file.read_at(REMOTE_BLOCK, index * REMOTE_BLOCK)
            self._blocks[index] = block
            while len(self._blocks) > REMOTE_BLOCKS_KEPT:
                self._blocks.popitem(last=False)
        return block

    def __getitem__(self, where: slice) -> bytes:
        start, stop, _ = where.indices(self._size)
        if stop <= start:
            return b""
        first, last = start // REMOTE_BLOCK, (stop - 1) // REMOTE_BLOCK
        if last - first >= REMOTE_BLOCKS_KEPT:  # a large member: one read, not kept
            return self._file.read_at(stop - start, start)
        data = b"".join(self._block(i) for i in range(first, last + 1))
        return data[start - first * REMOTE_BLOCK : stop - first * REMOTE_BLOCK]


Buffer = mmap.mmap | bytes | _RemoteBuffer


class _BrokenArchiveError(Exception):
    """The archive's structure is broken at byte ``offset`` (truncated, corrupt header):
    nothing after it can be trusted, so the whole file is an error (or skipped whole)."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(problem)
        self.offset = offset
        self.problem = problem
        self.pending = 0  # samples read before the break but not yet handed out
        self.seen = 0  # samples handed out before the break


BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)


def _size(field: bytes, pos: int) -> int:
    """A header's size field: octal text, or GNU base-256 (first byte 0x80) for huge members."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.rstrip(b"\0 ").decode("ascii") or "0", 8)
    except (ValueError, UnicodeDecodeError):
        raise _BrokenArchiveError(
            pos, "corrupt tar header (size field); is the file a tar archive?"
        ) from None


#: Headers whose checksums are verified together (numpy, well under a microsecond a header
#: instead of several for ``sum`` on each); members are handed out once their batch holds.
CHECKSUM_BATCH = 1024


def _first_bad_checksum(headers: list[bytes]) -> int | None:
    """The index of the first header whose checksum fails (the sum of its bytes with the
    checksum field read as spaces; some writers sum signed bytes), or None."""
    if not headers:
        return None
    block = np.frombuffer(b"".join(headers), dtype=np.uint8).reshape(-1, BLOCK)
    field = block[:, 148:156]
    unsigned = block.sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * 32
    stored = _octal(field)
    for row in np.flatnonzero(stored != unsigned).tolist():  # rare: signed sums, or damage
        body = np.frombuffer(headers[row], dtype=np.int8).astype(np.int64)
        if stored[row] != body.sum() - body[148:156].sum() + 8 * 32:
            return row
    return None


def _octal(fields: np.ndarray) -> np.ndarray:
    """The octal numbers of tar header fields (rows of ASCII digits, padded with spaces and
    NUL before or after), parsed for all rows at once; a field without digits reads as -1."""
    value = np.zeros(len(fields), dtype=np.int64)
    started = np.zeros(len(fields), dtype=bool)
    done = np.zeros(len(fields), dtype=bool)
    for k in range(fields.shape[1]):
        column = fields[:, k].astype(np.int64)
        digit = (column >= 48) & (column <= 55)
        take = digit & ~done
        value = np.where(take, value * 8 + column - 48, value)
        started |= digit
        done |= started & ~digit  # the number ends at the first byte after its digits
    return np.where(started, value, -1)


def _members(buf: Buffer) -> Iterator[tuple[str, int, int, int]]:
    """(name, header offset, data offset, data size) of each regular file member (``_walk``),
    handed out once the checksums of their batch of headers hold. A header whose checksum fails
    raises ``_BrokenArchiveError`` at its offset, also where the walk broke later because of it."""
    headers: list[bytes] = []
    offsets: list[int] = []
    pending: list[tuple[str, int, int, int]] = []

    def verified(limit: int | None = None) -> Iterator[tuple[str, int, int, int]]:
        """The pending members before the first bad header (and before ``limit``)."""
        bad = _first_bad_checksum(headers)
        stop = offsets[bad] if bad is not None else limit
        for member in pending:
            if stop is not None and member[2] - BLOCK >= stop:
                break
            yield member
        if bad is not None:
            msg = "corrupt tar header (checksum mismatch); is the file a tar archive?"
            raise _BrokenArchiveError(offsets[bad], msg)
        headers.clear()
        offsets.clear()
        pending.clear()

    try:
        for header, pos, member in _walk(buf):
            headers.append(header)
            offsets.append(pos)
            if member is not None:
                pending.append(member)
            if len(headers) >= CHECKSUM_BATCH:
                yield from verified()
    except _BrokenArchiveError as exc:
        yield from verified(limit=exc.offset)  # raises for a bad header before the break
        raise
    yield from verified()


def _walk(buf: Buffer) -> Iterator[tuple[bytes, int, tuple[str, int, int, int] | None]]:
    """(header, its offset, member or None) for each header; a member is (name, header offset,
    data offset, data size) of a regular file, the header offset that of the first extended
    header (GNU ``L``, PAX ``x``) naming it, so a span read back from it carries the full name.

    The archive must be whole: a size that is not a multiple of 512, a member whose data or
    padding runs past the end, a missing end-of-archive marker (two zero blocks) or data after
    it raises ``_BrokenArchiveError`` with the byte offset where the archive breaks (checksums:
    ``_members``).
    """
    pos, long_name, first_header = 0, None, None
    end = len(buf)
    while pos + BLOCK <= end:
        header = bytes(buf[pos : pos + BLOCK])
        if header == _ZERO_BLOCK:
            if bytes(buf[pos + BLOCK : pos + 2 * BLOCK]) != _ZERO_BLOCK:
                msg = "incomplete end-of-archive marker (one zero block, not two; tar cut short?)"
                raise _BrokenArchiveError(pos, msg)
            if end % BLOCK:
                msg = (
                    f"the size {end} is not a multiple of 512 (bytes after the end of the archive)"
                )
                raise _BrokenArchiveError(end - end % BLOCK, msg)
            at = _first_data(buf, pos + 2 * BLOCK, end)  # writers pad with zeros to a record
            if at is not None:
                msg = (
                    f"the end-of-archive marker is followed by data at byte {at} (a damaged "
                    "header, or archives joined)"
                )
                raise _BrokenArchiveError(pos, msg)
            return
        size = _size(header[124:136], pos)
        kind = header[156:157]
        name = header[345:500].rstrip(b"\0") + b"/" if header[345:346] != b"\0" else b""
        name += header[0:100].rstrip(b"\0")
        data = pos + BLOCK
        padded = data + (size + BLOCK - 1) // BLOCK * BLOCK
        if padded > end:
            shown = name.decode(errors="replace")
            raise _BrokenArchiveError(
                pos, f"member {shown!r} runs past the end of the file (tar cut short)"
            )
        if kind in (b"L", b"x", b"g") and first_header is None:
            first_header = pos
        if kind == b"L":
            long_name = bytes(buf[data : data + size]).rstrip(b"\0")
        elif kind == b"x":
            for line in bytes(buf[data : data + size]).split(b"\n"):
                if b" path=" in line:
                    long_name = line.split(b" path=", 1)[1]
        member = None
        if kind in (b"0", b"\0"):
            full = long_name if long_name is not None else name
            member = (
                full.decode("utf-8", errors="replace"),
                first_header if first_header is not None else pos,
                data,
                size,
            )
            long_name, first_header = None, None
        yield header, pos, member
        pos = padded
    if pos < end:
        msg = (
            f"the file ends {end - pos} bytes into a header: its size {end} is not a multiple "
            "of 512 (tar cut short)"
        )
        raise _BrokenArchiveError(pos, msg)
    raise _BrokenArchiveError(pos, "no end-of-archive marker (tar cut short at a member boundary)")


def _first_data(buf: Buffer, start: int, end: int) -> int | None:
    """The offset of the first byte that is not zero in ``buf[start:end]``, read 1 MiB at a
    time (the padding after the end-of-archive marker is a few KiB; junk may be large)."""
    for at in range(start, end, 1 << 20):
        window = bytes(buf[at : min(at + (1 << 20), end)])
        stripped = window.lstrip(b"\0")
        if stripped:
            return at + len(window) - len(stripped)
    return None


def _split(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext


def _decode(ext: str, raw: bytes) -> Any:
    last = ext.rsplit(".", 1)[-1]
    if last == "json":
        return orjson.loads(raw)
    if last in TEXT_EXTENSIONS:
        return raw.decode("utf-8")
    return raw


def _groups(buf: Buffer) -> Iterator[tuple[str, int, int, dict[str, tuple[int, int]]]]:
    """(key, span offset, span length, {ext: (data offset, size)}) per sample."""
    key: str | None = None
    start = stop = 0
    members: dict[str, tuple[int, int]] = {}
    try:
        for name, header, data, size in _members(buf):
            member_key, ext = _split(name)
            if member_key != key:
                if key is not None:
                    yield key, start, stop - start, members
                key, start, members = member_key, header, {}
            members[ext] = (data, size)
            stop = data + (size + 511) // 512 * 512
    except _BrokenArchiveError as exc:
        exc.pending = int(key is not None)
        raise
    if key is not None:
        yield key, start, stop - start, members


def _record(buf: Buffer, key: str, members: dict[str, tuple[int, int]]) -> dict[str, Any]:
    record: dict[str, Any] = {"__key__": key}
    for ext, (data, size) in members.items():
        record[ext] = _decode(ext, bytes(buf[data : data + size]))
    return record


def scan(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    path = location(path)
    if isinstance(path, RemotePath):
        with path.open("rb") as remote:
            if remote.size():
                yield from _scan_buffer(_RemoteBuffer(remote), str(path), request)
        return
    with path.open("rb") as f:
        if path.stat().st_size == 0:
            return
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield from _scan_buffer(buf, str(path), request)
        finally:
            buf.close()


def _scan_buffer(buf: Buffer, where: str, request: ScanRequest) -> Iterator[ScanBatch]:
    """The file's batches. A broken archive (``_BrokenArchiveError``) raises under ``on_error='raise'``;
    under ``'skip'`` the whole file is skipped: what was yielded is taken back (``RESTART``)
    and the file counts the samples found before the break (at least one) as skipped."""
    yielded = False
    try:
        for batch in _scan_samples(buf, where, request):
            yielded = True
            yield batch
    except _BrokenArchiveError as exc:
        problem = f"{exc.problem}; replace the file (a download cut short?) or remove it"
        if request.on_error == "raise":
            msg = f"{problem}, or register with on_error='skip' to skip the whole file"
            raise MalformedRecordError(msg, path=where, location=f"byte {exc.offset}") from None
        if yielded:
            yield RESTART
        found = max(exc.pending + exc.seen, 1)
        request.skipped = found
        request.messages = [f"{where}:byte {exc.offset}: {problem}; file skipped ({found} samples)"]


def _scan_samples(buf: Buffer, where: str, request: ScanRequest) -> Iterator[ScanBatch]:
    """Batches of the accepted samples; a broken archive raises ``_BrokenArchiveError`` with
    ``seen`` set to the samples handed out before the break."""
    text_ext = "txt" if request.text_field == "text" else request.text_field
    needed = {root(f) for f in request.fields} | {root(text_ext)}
    expected = request.fields
    records: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    last_end = 0
    seen = 0
    try:
        for key, offset, length, members in _groups(buf):
            seen += 1
            sample = f"sample {key!r}"
            missing = sorted(needed - members.keys())
            if missing:
                request.reject(where, sample, f"missing member(s) {missing}; has {sorted(members)}")
                continue
            try:
                chosen = {ext: members[ext] for ext in needed}
                record = _record(buf, key, members if request.want_table else chosen)
            except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
                request.reject(where, sample, f"undecodable member ({exc})")
                continue
            problem = check_record(record, expected, text_ext)
            if problem:
                request.reject(where, sample, problem)
                continue
            records.append(record)
            spans.append((offset, length))
            if len(records) >= BATCH_SAMPLES:
                end = offset + length
                yield _batch(records, spans, request, text_ext, end - last_end)
                records, spans, last_end = [], [], end
    except _BrokenArchiveError as exc:
        exc.seen = seen
        raise
    if records:
        yield _batch(records, spans, request, text_ext, len(buf) - last_end)


def _batch(
    records: list[dict[str, Any]],
    spans: list[tuple[int, int]],
    request: ScanRequest,
    text_ext: str,
    consumed: int,
) -> ScanBatch:
    fields = {
        dotted: pa.array([dig(r, dotted) for r in records], type=arrow_type(request.fields[dotted]))
        for dotted in request.fields
    }
    texts = pa.array([dig(r, text_ext) for r in records], type=pa.string())
    table = None
    if request.want_table:
        try:
            table = pa.Table.from_pylist(records)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            msg = f"records have members of mixed types ({exc}); a property function needs consistent records"
            raise RegistrationError(msg) from exc
    span = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return ScanBatch(
        fields=fields,
        text_bytes=pc.binary_length(texts).to_numpy(zero_copy_only=False).astype(np.int64),
        offset=span[:, 0],
        length=span[:, 1],
        table=table,
        scanned_bytes=consumed,
    )


def read(path: Path | RemotePath, pointers: pa.Table, text_field: str) -> pa.Table:
    """Records at the given pointers (columns ``offset``, ``length``), in pointer order."""
    del text_field
    path = location(path)
    with path.open("rb") as f:
        return read_spans(f, pointers, str(path))


def read_spans(file: IO[bytes] | RemoteFile, pointers: pa.Table, where: str) -> pa.Table:
    """Records at the given pointers of an open shard as one table (``records_table``)."""
    return records_table(read_records(file, pointers, where), where)


def read_records(
    file: IO[bytes] | RemoteFile, pointers: pa.Table, where: str
) -> list[dict[str, Any]]:
    """Records at the given pointers of an open shard: one seek and one read each. Records
    whose members differ in type are fine here (the stream's reader); only a table needs one
    type per field."""
    records = []
    for offset, length in zip(
        pointers.column("offset").to_pylist(),
        pointers.column("length").to_pylist(),
        strict=True,
    ):
        file.seek(offset)
        span = file.read(length)
        try:
            for key, _, _, members in _groups(span + _ZERO_BLOCK * 2):
                records.append(_record(span, key, members))
        except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            msg = f"a member of the sample at byte {offset} cannot be decoded ({exc})"
            raise MalformedRecordError(msg, path=where, location=f"byte {offset}") from None
        except _BrokenArchiveError as exc:
            msg = f"the sample at byte {offset} is not a whole tar span ({exc.problem}); the file changed?"
            raise MalformedRecordError(
                msg, path=where, location=f"byte {offset + exc.offset}"
            ) from None
    return records
