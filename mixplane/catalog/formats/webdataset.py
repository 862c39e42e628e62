"""WebDataset tar shards: a sample is a run of consecutive members sharing a key.

A member ``dir/abc.001.json`` has key ``dir/abc`` and extension ``001.json``. A sample's record is
``{"__key__": key, "<ext>": value}`` where ``json`` members are decoded objects, text members
(``txt``, ``text``, ``md``) strings and other members bytes; property field paths point into it
(``json.language``) and the text field names an extension (default ``txt``).

Scan: tar headers are walked sequentially (one 512-byte header per member, the only per-member
Python work; member data is never copied except the small json/text members). A sample's pointer
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

from mixplane.catalog.formats import ScanBatch, ScanRequest, arrow_type, check_record, dig
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


def _members(buf: Buffer, path: str) -> Iterator[tuple[str, int, int, int]]:
    """(name, header offset, data offset, data size) of each regular file member; the header
    offset is that of the first extended header (GNU ``L``, PAX ``x``) naming the member, so a
    span read back from it carries the full name."""
    pos, long_name, first_header = 0, None, None
    end = len(buf)
    while pos + 512 <= end:
        header = buf[pos : pos + 512]
        if header == b"\0" * 512:
            return
        try:
            size = int(header[124:136].rstrip(b"\0 ").decode("ascii") or "0", 8)
        except ValueError as exc:
            msg = "corrupt tar header; is the file a tar archive? replace or remove it"
            raise MalformedRecordError(msg, path=path, location=f"byte {pos}") from exc
        kind = header[156:157]
        name = header[345:500].rstrip(b"\0") + b"/" if header[345:346] != b"\0" else b""
        name += header[0:100].rstrip(b"\0")
        data = pos + 512
        if data + size > end:
            msg = f"member {name.decode(errors='replace')!r} is truncated (tar cut short)"
            raise MalformedRecordError(msg, path=path, location=f"byte {pos}")
        if kind in (b"L", b"x", b"g") and first_header is None:
            first_header = pos
        if kind == b"L":
            long_name = bytes(buf[data : data + size]).rstrip(b"\0")
        elif kind == b"x":
            for line in bytes(buf[data : data + size]).split(b"\n"):
                if b" path=" in line:
                    long_name = line.split(b" path=", 1)[1]
        elif kind in (b"0", b"\0"):
            full = long_name if long_name is not None else name
            yield (
                full.decode("utf-8", errors="replace"),
                first_header if first_header is not None else pos,
                data,
                size,
            )
            long_name, first_header = None, None
        pos = data + (size + 511) // 512 * 512


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


def _groups(buf: Buffer, path: str) -> Iterator[tuple[str, int, int, dict[str, tuple[int, int]]]]:
    """(key, span offset, span length, {ext: (data offset, size)}) per sample."""
    key: str | None = None
    start = stop = 0
    members: dict[str, tuple[int, int]] = {}
    for name, header, data, size in _members(buf, path):
        member_key, ext = _split(name)
        if member_key != key:
            if key is not None:
                yield key, start, stop - start, members
            key, start, members = member_key, header, {}
        members[ext] = (data, size)
        stop = data + (size + 511) // 512 * 512
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
    text_ext = "txt" if request.text_field == "text" else request.text_field
    needed = {f.split(".")[0] for f in request.fields} | {text_ext}
    expected = request.fields
    records: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    last_end = 0
    for key, offset, length, members in _groups(buf, where):
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
    texts = pa.array([r[text_ext] for r in records], type=pa.string())
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
    """Records at the given pointers of an open shard: one seek and one read each."""
    records = []
    for offset, length in zip(
        pointers.column("offset").to_pylist(),
        pointers.column("length").to_pylist(),
        strict=True,
    ):
        file.seek(offset)
        span = file.read(length)
        for key, _, _, members in _groups(span + b"\0" * 1024, where):
            records.append(_record(span, key, members))
    return pa.Table.from_pylist(records)
