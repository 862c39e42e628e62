"""Reading the samples a chunk names: by pointer, batched per file, never a rescan.

Pointers of a file (offsets and lengths, or row groups and rows) are loaded from the catalog
once per file and kept as numpy arrays (16 bytes per sample), so a chunk of any size costs no
database round trip. JSONL ranges are read as windows of nearby lines (``jsonl.read_lines``: one pread per
window; compressed files are decompressed sequentially once and cached). Parquet row groups are
decoded once and cached (a few at a time). Every file is checked against its registered size,
mtime and fingerprint before its first read.

Objects in object storage (``s3://...``, see ``catalog.remote_fs``) are read by ranged requests
of exactly the windows the pointers name (JSONL), the footer and column chunks of the row groups
named (Parquet), or the whole object (compressed JSONL), through the process's bounded range
cache (``remote_fs.shared_cache``, ``MIXPLANE_REMOTE_CACHE_BYTES``), keyed by the registered
fingerprint. Local files take exactly the paths above.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from mixplane.catalog.fields import keys as field_keys
from mixplane.catalog.files import FileIdentity, check_unchanged
from mixplane.catalog.formats import compression_of, dig, parquet, webdataset
from mixplane.catalog.formats.jsonl import open_stream, parse_line, read_lines, uncompressed
from mixplane.catalog.remote_fs import (
    RangeCache,
    RemoteFile,
    RemoteObject,
    RemotePath,
    location,
    shared_cache,
)
from mixplane.errors import CatalogError

OPEN_FILES = 64  # file descriptors kept open per reader
ROW_GROUP_CACHE = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class FileInfo:
    file_id: int
    path: Path | RemotePath
    format: str
    text_field: str
    dataset: str
    size: int = 0
    fingerprint: str = ""
    token_dtype: str | None = None  # ids of a pre-tokenized file: their dtype
    tokenizer: str | None = None  # ... and the fingerprint of their tokenizer
    tokenizer_source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenFile:
    """A file of token ids as the reader holds it: the ids (a memory map) and each sample's
    first id and id count in it."""

    ids: np.ndarray
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64


class PointerSource(Protocol):
    """Where a reader finds file rows and sample pointers: the catalog, or a job snapshot."""

    def files(self) -> pa.Table: ...

    def pointers(self, file_id: int) -> dict[str, np.ndarray]: ...


class Reader:
    """Reads samples (text and record) of registered files by (file id, ordinal).

    Safe to share between threads (a lock around each read): the window streams of several
    consumers in one process, with their prefetch threads, use one reader. ``cache`` holds
    ranges fetched from object storage (default: the process's shared cache)."""

    def __init__(self, catalog: PointerSource, *, cache: RangeCache | None = None) -> None:
        self._catalog = catalog
        self._cache = cache
        self._objects: OrderedDict[int, RemoteObject] = OrderedDict()
        self._lock = threading.Lock()
        self._files: dict[int, FileInfo] = {}
        self._pointers: dict[int, dict[str, np.ndarray]] = {}
        self._row_groups: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._decompressed: OrderedDict[int, bytes] = OrderedDict()
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._rows: dict[int, dict[str, Any]] = {}
        self._token_files: OrderedDict[int, TokenFile] = OrderedDict()
        self._token_groups: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = (
            OrderedDict()
        )
        self._refresh()

    def _refresh(self) -> None:
        """(Re)load the catalog's file rows: files registered later (a job extended) appear."""
        self._rows = {row["file_id"]: row for row in self._catalog.files().to_pylist()}
        for file_id, row in self._rows.items():
            fmt = row["format"]
            text = row["text_field"] or ("txt" if fmt == "webdataset" else "text")
            self._files[file_id] = FileInfo(
                file_id=file_id,
                path=location(row["path"]),
                format=fmt,
                text_field=text,
                dataset=row["dataset"],
                size=row["size"],
                fingerprint=row["fingerprint"],
                token_dtype=row.get("token_dtype"),
                tokenizer=row.get("tokenizer"),
                tokenizer_source=row.get("tokenizer_source"),
            )

    def _load(self, file_id: int) -> dict[str, np.ndarray]:
        cached = self._pointers.get(file_id)
        if cached is not None:
            return cached
        if file_id not in self._rows:
            self._refresh()
        row = self._rows.get(file_id)
        if row is None:
            msg = f"file id {file_id} is not in the catalog; was its dataset removed?"
            raise CatalogError(msg)
        check_unchanged(
            location(row["path"]),
            FileIdentity(
                size=row["size"], mtime_ns=row["mtime_ns"], fingerprint=row["fingerprint"]
            ),
            row["dataset"],
        )
        self._pointers[file_id] = self._catalog.pointers(file_id)
        return self._pointers[file_id]

    def read(self, file_id: int, ordinals: np.ndarray) -> list[dict[str, Any]]:
        """Records at the ordinals, in the given order."""
        return self.read_with_text(file_id, ordinals)[0]

    def read_with_text(
        self, file_id: int, ordinals: np.ndarray
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Records at the ordinals, in the given order, and the text of each."""
        with self._lock:
            return self._read_with_text(file_id, ordinals)

    def _read_with_text(
        self, file_id: int, ordinals: np.ndarray
    ) -> tuple[list[dict[str, Any]], list[str]]:
        ptr = self._load(file_id)
        info = self._files[file_id]
        if info.token_dtype is not None:  # token ids: records hold them, there is no text
            docs, _ = self._token_documents(info, ptr, ordinals)
            return [{info.text_field: d} for d in docs], [""] * len(docs)
        if info.format == "jsonl":
            lines = self._jsonl_lines(info, ptr, ordinals)
            offsets = ptr["offset"][ordinals].tolist()
            records = []
            for line, offset in zip(lines, offsets, strict=True):
                try:
                    records.append(orjson.loads(line))
                except orjson.JSONDecodeError:  # NaN, Infinity, ...: parse_line's fallback
                    records.append(parse_line(line, str(info.path), offset))
        elif info.format == "parquet":
            records = self._parquet(info, ptr, ordinals)
        else:
            pointers = pa.table(
                {"offset": ptr["offset"][ordinals], "length": ptr["length"][ordinals]}
            )
            if isinstance(info.path, RemotePath):
                shard = RemoteFile(self._remote(info))
                records = webdataset.read_records(shard, pointers, str(info.path))
            else:
                with info.path.open("rb") as f:
                    records = webdataset.read_records(f, pointers, str(info.path))
        keys = field_keys(info.text_field)
        if len(keys) == 1:
            texts = [_as_text(r.get(keys[0])) for r in records]
        else:
            texts = [_as_text(dig(r, info.text_field)) for r in records]
        return records, texts

    def file_info(self, file_id: int) -> FileInfo:
        """What the reader knows of a file (its format, and tokenizer for token ids)."""
        with self._lock:
            if file_id not in self._files:
                self._refresh()
            info = self._files.get(file_id)
        if info is None:
            msg = f"file id {file_id} is not in the catalog; was its dataset removed?"
            raise CatalogError(msg)
        return info

    def token_documents(
        self, file_id: int, ordinals: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The stored ids of the samples at the ordinals of a file of token ids, in the given
        order (views: slices of a memory map, or of a decoded Parquet row group), and the last
        id of each (-1 for an empty one), found in one vectorized gather."""
        with self._lock:
            ptr = self._load(file_id)
            info = self._files[file_id]
            if info.token_dtype is None:
                msg = f"file {info.path} holds text, not token ids"
                raise CatalogError(msg)
            return self._token_documents(info, ptr, ordinals)

    def _token_documents(
        self, info: FileInfo, ptr: dict[str, np.ndarray], ordinals: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        if info.format == "parquet":
            return self._parquet_tokens(info, ptr, ordinals)
        held = self._token_file(info, ptr)
        starts = held.starts[ordinals]
        lengths = held.lengths[ordinals]
        ids = held.ids
        docs = [ids[a : a + n] for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
        last = np.where(lengths > 0, ids[np.maximum(starts + lengths - 1, 0)], -1)
        return docs, last

    def _token_file(self, info: FileInfo, ptr: dict[str, np.ndarray]) -> TokenFile:
        """The file's ids as one memory-mapped array of their dtype, with each sample's span."""
        held = self._token_files.get(info.file_id)
        if held is not None:
            self._token_files.move_to_end(info.file_id)
            return held
        if isinstance(info.path, RemotePath):
            msg = f"{info.path}: token ids are read from a local or shared filesystem; copy them there"
            raise CatalogError(msg)
        assert info.token_dtype is not None
        dtype = np.dtype(info.token_dtype)
        offsets, lengths = ptr["offset"].astype(np.int64), ptr["length"].astype(np.int64)
        shift = int(offsets[0]) % dtype.itemsize if len(offsets) else 0
        if ((offsets - shift) % dtype.itemsize).any() or (lengths % dtype.itemsize).any():
            msg = f"file {info.path}: sample spans are not whole {dtype.name} ids; register it again"
            raise CatalogError(msg)
        size = info.path.stat().st_size
        if len(offsets) and int((offsets + lengths).max()) > size:
            msg = f"file {info.path} is shorter than its registered samples; register it again"
            raise CatalogError(msg)
        raw = np.memmap(info.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        ids = np.frombuffer(raw, dtype=dtype, offset=shift, count=(size - shift) // dtype.itemsize)
        held = TokenFile(
            ids=ids, starts=(offsets - shift) // dtype.itemsize, lengths=lengths // dtype.itemsize
        )
        self._token_files[info.file_id] = held
        while len(self._token_files) > OPEN_FILES:
            self._token_files.popitem(last=False)  # views handed out keep their map alive
        return held

    def _parquet_tokens(
        self, info: FileInfo, ptr: dict[str, np.ndarray], ordinals: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray]:
        groups = ptr["row_group"][ordinals]
        rows = ptr["row"][ordinals]
        docs: list[np.ndarray] = [np.zeros(0, np.int32)] * len(ordinals)
        last = np.full(len(ordinals), -1, dtype=np.int64)
        for g in np.unique(groups).tolist():
            key = (info.file_id, g)
            held = self._token_groups.get(key)
            if held is None:
                source = (
                    RemoteFile(self._remote(info))
                    if isinstance(info.path, RemotePath)
                    else info.path
                )
                column = (
                    pq.ParquetFile(source)
                    .read_row_group(g, columns=[info.text_field])
                    .column(info.text_field)
                    .combine_chunks()
                )
                held = (
                    column.values.to_numpy(zero_copy_only=False),
                    column.offsets.to_numpy(zero_copy_only=False).astype(np.int64),
                )
                self._token_groups[key] = held
                while len(self._token_groups) > ROW_GROUP_CACHE:
                    self._token_groups.popitem(last=False)
            values, offsets = held
            where = np.flatnonzero(groups == g)
            begin = offsets[rows[where]]
            stop = offsets[rows[where] + 1]
            for i, a, b in zip(where.tolist(), begin.tolist(), stop.tolist(), strict=True):
                docs[i] = values[a:b]
            last[where] = np.where(stop > begin, values[np.maximum(stop - 1, 0)], -1)
        return docs, last

    def _fd(self, info: FileInfo) -> int:
        fd = self._fds.get(info.file_id)
        if fd is None:
            assert isinstance(info.path, Path)
            fd = os.open(info.path, os.O_RDONLY)
            self._fds[info.file_id] = fd
            while len(self._fds) > OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        return fd

    def _remote(self, info: FileInfo) -> RemoteObject:
        """The object of a remote file, read through the cache under its registered version."""
        obj = self._objects.get(info.file_id)
        if obj is None:
            assert isinstance(info.path, RemotePath)
            if self._cache is None:
                self._cache = shared_cache()
            obj = RemoteObject(
                info.path, size=info.size, cache=self._cache, version=info.fingerprint
            )
            self._objects[info.file_id] = obj
            while len(self._objects) > OPEN_FILES:
                self._objects.popitem(last=False)[1].close()
        return obj

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            for obj in self._objects.values():
                obj.close()
            self._objects.clear()
            self._token_files.clear()
            self._token_groups.clear()

    def _jsonl_lines(
        self, info: FileInfo, ptr: dict[str, np.ndarray], ordinals: np.ndarray
    ) -> list[bytes]:
        offsets = ptr["offset"][ordinals]
        lengths = ptr["length"][ordinals]
        if compression_of(info.path) is not None:
            data = self._whole(info)
            return [
                data[o : o + n] for o, n in zip(offsets.tolist(), lengths.tolist(), strict=True)
            ]
        if isinstance(info.path, RemotePath):
            return read_lines(self._remote(info).read_at, offsets, lengths)
        return read_lines(self._fd(info), offsets, lengths)

    def _whole(self, info: FileInfo) -> bytes:
        data = self._decompressed.get(info.file_id)
        if data is None:
            if isinstance(info.path, RemotePath):  # the whole object, one request
                packed = self._remote(info).read_at(info.size, 0)
                data = uncompressed(io.BytesIO(packed), info.path).read()
            else:
                raw, stream = open_stream(info.path)
                with raw:
                    data = stream.read()
            self._decompressed[info.file_id] = data
            while len(self._decompressed) > 2:
                self._decompressed.popitem(last=False)
        return data

    def _parquet(
        self, info: FileInfo, ptr: dict[str, np.ndarray], ordinals: np.ndarray
    ) -> list[dict[str, Any]]:
        groups = ptr["row_group"][ordinals]
        rows = ptr["row"][ordinals]
        out: list[dict[str, Any]] = [{}] * len(ordinals)
        for g in np.unique(groups).tolist():
            key = (info.file_id, g)
            table = self._row_groups.get(key)
            if table is None:
                source = (
                    RemoteFile(self._remote(info))
                    if isinstance(info.path, RemotePath)
                    else info.path
                )
                table = parquet.read_row_group(pq.ParquetFile(source), g, info.path)
                self._row_groups[key] = table
                while len(self._row_groups) > ROW_GROUP_CACHE:
                    self._row_groups.popitem(last=False)
            where = np.flatnonzero(groups == g)
            for i, rec in zip(
                where.tolist(), table.take(pa.array(rows[where])).to_pylist(), strict=True
            ):
                out[i] = rec
        return out


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""
