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

from mixplane.catalog.files import FileIdentity, check_unchanged
from mixplane.catalog.formats import compression_of, dig, webdataset
from mixplane.catalog.formats.jsonl import open_stream, read_lines, uncompressed
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
        if info.format == "jsonl":
            records = [orjson.loads(line) for line in self._jsonl_lines(info, ptr, ordinals)]
        elif info.format == "parquet":
            records = self._parquet(info, ptr, ordinals)
        else:
            pointers = pa.table(
                {"offset": ptr["offset"][ordinals], "length": ptr["length"][ordinals]}
            )
            if isinstance(info.path, RemotePath):
                shard = RemoteFile(self._remote(info))
                records = webdataset.read_spans(shard, pointers, str(info.path)).to_pylist()
            else:
                records = webdataset.read(info.path, pointers, info.text_field).to_pylist()
        field = info.text_field
        if "." not in field:
            texts = [_as_text(r.get(field)) for r in records]
        else:
            texts = [_as_text(dig(r, field)) for r in records]
        return records, texts

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
                table = pq.ParquetFile(source).read_row_group(g)
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
