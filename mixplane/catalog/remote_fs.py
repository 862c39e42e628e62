"""Object storage: datasets at URIs (``s3://bucket/prefix``, ``gs://``, any fsspec protocol).

A file's location is a local ``Path`` or a ``RemotePath`` (a URI). A URI resolves to a pyarrow
filesystem: ``s3://`` is built from the environment (below); other schemes go through
``pyarrow.fs.FileSystem.from_uri`` (``gs://``, ``hdfs://``, ``abfs://``), and schemes pyarrow
does not know through fsspec wrapped for pyarrow (``PyFileSystem(FSSpecHandler)``), when fsspec
and the protocol's package are installed.

Environment read for ``s3://`` (mixplane configures nothing else):

- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``: static credentials;
  when unset, the AWS SDK's default chain applies (``AWS_PROFILE`` and the shared files, web
  identity, the instance role).
- ``AWS_REGION``, else ``AWS_DEFAULT_REGION``; with neither, the bucket's region is looked up
  (one request), or ``us-east-1`` with a custom endpoint.
- ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``: an S3-compatible server (MinIO, Ceph,
  moto), e.g. ``http://127.0.0.1:9000``, addressed path-style.
- ``MIXPLANE_REMOTE_CACHE_BYTES``: the bound of the process's range cache (default 256 MiB).

Reads are ranged requests (``RemoteObject.read_at``: one GET of exactly the asked bytes).
Readers of samples go through a ``RangeCache``: an LRU of fetched ranges bounded in bytes, where a
read is served by any cached range of the same object version that contains it (a lookup is a
bisect over that object's cached starts, ~1 us); a range larger than the bound is returned
uncached. Request latency dominates (S3: ~10-50 ms to first byte), so callers batch: JSONL
windows merge lines closer than 64 KiB, Parquet reads whole column chunks.
"""

from __future__ import annotations

import bisect
import io
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from mixplane.errors import CatalogError, DependencyError, RegistrationError

DEFAULT_CACHE_BYTES = 256 << 20
CACHE_ENV = "MIXPLANE_REMOTE_CACHE_BYTES"
#: Environment variables that configure s3:// (a change makes a new filesystem).
S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: A URI after ``pathlib`` collapsed its ``//`` (``Path("s3://b/k")`` is ``s3:/b/k``).
_MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")
_MAGIC = re.compile(r"[*?[]")
_BUCKETS = ("s3", "s3a", "gs", "gcs")  # schemes whose first path part is a bucket


class ObjectStoreError(CatalogError, OSError):
    """Object storage refused a request or could not be reached; names the URI and the fix."""


def is_uri(text: str) -> bool:
    """Whether ``text`` is a URI of a remote filesystem (``file://`` is local)."""
    match = _SCHEME.match(text)
    return match is not None and match.group(1).lower() != "file"


def location(value: str | os.PathLike[str] | RemotePath) -> Path | RemotePath:
    """A local path or a remote one. A ``Path`` made from a stored URI (``Path("s3://b/k")``
    reads ``s3:/b/k``) is recognized: registered local paths are absolute, so a path whose first
    part is ``scheme:`` can only be a URI."""
    if isinstance(value, RemotePath):
        return value
    text = os.fspath(value)
    if text.startswith("/"):
        return value if isinstance(value, Path) else Path(text)
    if is_uri(text):
        return RemotePath(text)
    if text.lower().startswith("file://"):
        return Path(urlsplit(text).path)
    if isinstance(value, PurePath) and (fixed := one_slash(text)):
        return RemotePath(fixed)
    return value if isinstance(value, Path) else Path(text)


def one_slash(text: str) -> str | None:
    """The URI that ``text`` is with its ``//`` collapsed (``s3:/b/k``: ``s3://b/k``), or None."""
    match = _MANGLED.match(text)
    return f"{match.group(1)}://{text[match.end() :]}" if match else None


def canonical(uri: str) -> str:
    """The form a URI is stored in: what survives a round trip through ``pathlib.Path``."""
    fixed = one_slash(str(PurePosixPath(uri)))
    assert fixed is not None, uri
    return fixed


@dataclass(frozen=True, slots=True)
class RemoteStat:
    st_size: int
    st_mtime_ns: int


@dataclass(frozen=True, slots=True)
class RemotePath:
    """A file in object storage, by URI; the parts of ``pathlib.Path`` that mixplane uses."""

    uri: str
    size: int | None = field(default=None, compare=False, repr=False)  # from a listing

    def __str__(self) -> str:
        return self.uri

    @property
    def _key(self) -> PurePosixPath:
        return PurePosixPath(self.uri.split("://", 1)[1])

    @property
    def name(self) -> str:
        return self._key.name

    @property
    def suffix(self) -> str:
        return self._key.suffix

    @property
    def suffixes(self) -> list[str]:
        return self._key.suffixes

    def resolve(self) -> RemotePath:
        return self

    def store(self) -> Store:
        return store_for(self.uri)

    def info(self) -> Any:
        """The object's ``pyarrow.fs.FileInfo``; FileNotFoundError when it is gone."""
        store = self.store()
        try:
            info = store.fs.get_file_info(store.path_of(self.uri))
        except OSError as exc:
            raise_storage_error(exc, self.uri, "look up")
        if info.type != pafs.FileType.File:
            msg = f"object {self.uri} does not exist"
            raise FileNotFoundError(msg)
        return info

    def stat(self) -> RemoteStat:
        """Size and mtime (one HEAD request); the listing's size when the path came from one
        (sizing a progress bar needs no request; ``files.identify`` always asks)."""
        if self.size is not None:
            return RemoteStat(st_size=self.size, st_mtime_ns=0)
        info = self.info()
        return RemoteStat(st_size=info.size, st_mtime_ns=info.mtime_ns or 0)

    def open(self, mode: str = "rb") -> RemoteFile:
        """The object for reading: sequential reads and seeks are ranged requests (wrap it in
        ``io.BufferedReader`` for many small reads); ``read_at`` too."""
        if mode != "rb":
            msg = f"object storage is read-only here; cannot open {self.uri} with mode {mode!r}"
            raise ValueError(msg)
        return RemoteFile(RemoteObject(self), owner=True)


# -- filesystems -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Store:
    """A filesystem and how its paths map to URIs."""

    fs: Any  # pyarrow.fs.FileSystem
    prefix: str  # pyarrow: uri = prefix + path
    where: str  # for messages: the endpoint or scheme
    fsspec: Any = None  # the fsspec filesystem behind ``fs``, when wrapped

    def path_of(self, uri: str) -> str:
        if self.fsspec is not None:
            from fsspec.core import strip_protocol  # type: ignore[import-untyped]

            return str(strip_protocol(uri)).rstrip("/") or "/"
        return uri[len(self.prefix) :].rstrip("/")

    def uri_of(self, path: str) -> str:
        if self.fsspec is not None:
            return str(self.fsspec.unstrip_protocol(path))
        return self.prefix + path


_stores: dict[tuple[str, ...], Store] = {}
_stores_lock = threading.Lock()


def store_for(uri: str) -> Store:
    """The filesystem of a URI, built once per (scheme, authority, environment)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    env = tuple(os.environ.get(k, "") for k in S3_ENV) if scheme in ("s3", "s3a") else ()
    key = (scheme, parts.netloc, *env)
    with _stores_lock:
        store = _stores.get(key)
    if store is None:
        store = _open_store(uri, scheme, parts.netloc)
        with _stores_lock:
            _stores[key] = store
    return store


def _open_store(uri: str, scheme: str, netloc: str) -> Store:
    if not netloc and scheme in _BUCKETS:
        msg = f"URI {uri!r} names no bucket; write {scheme}://BUCKET/PREFIX"
        raise RegistrationError(msg)
    if scheme in ("s3", "s3a"):
        return _s3_store(netloc, scheme)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" not in str(exc):
            msg = f"cannot open a filesystem for {uri!r} ({_first_line(exc)}); check the URI"
            raise RegistrationError(msg) from exc
        return _fsspec_store(uri, scheme)
    except (OSError, pa.ArrowException) as exc:
        msg = f"cannot open a filesystem for {uri!r} ({_first_line(exc)}); check the URI and its client setup"
        raise RegistrationError(msg) from exc
    stem, path = uri.split("?", 1)[0].rstrip("/"), path.rstrip("/")
    prefix = stem[: len(stem) - len(path)] if path and stem.endswith(path) else f"{scheme}://"
    return Store(fs=fs, prefix=prefix, where=f"{scheme}://")


def _s3_store(bucket: str, scheme: str) -> Store:
    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        present, absent = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if key
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        msg = f"{present} is set but {absent} is not; set both (or neither, to use AWS_PROFILE or an instance role)"
        raise ObjectStoreError(msg)
    kwargs: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parts.netloc:
            msg = f"AWS_ENDPOINT_URL(_S3) {endpoint!r} is not a URL; write http(s)://HOST:PORT"
            raise ObjectStoreError(msg)
        kwargs.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region and not endpoint:
        try:
            region = pafs.resolve_s3_region(bucket)
        except (OSError, pa.ArrowException) as exc:
            raise_storage_error(exc, f"{scheme}://{bucket}", "find the region of")
    if key:
        kwargs.update(access_key=key, secret_key=secret)
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    fs = pafs.S3FileSystem(region=region or "us-east-1", **kwargs)
    return Store(fs=fs, prefix=f"{scheme}://", where=endpoint or "AWS S3")


def _fsspec_store(uri: str, scheme: str) -> Store:
    try:
        import fsspec  # type: ignore[import-untyped]
    except ImportError:
        msg = f"pyarrow has no filesystem for {scheme}://; install fsspec (and the package for {scheme}://) to read {uri!r}"
        raise DependencyError(msg) from None
    try:
        fs, _ = fsspec.core.url_to_fs(uri)
    except ValueError:
        msg = f"unknown scheme {scheme!r} in {uri!r}; use s3://, gs://, a protocol fsspec knows, or a local path"
        raise RegistrationError(msg) from None
    except ImportError as exc:
        msg = f"{scheme}:// needs a package that is not installed ({exc}); install it"
        raise DependencyError(msg) from None
    return Store(
        fs=pafs.PyFileSystem(pafs.FSSpecHandler(fs)), prefix="", where=f"{scheme}://", fsspec=fs
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_DENIED = (
    "ACCESS_DENIED",
    "ACCESSDENIED",
    "INVALID_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH",
    "EXPIRED_TOKEN",
    "HTTP STATUS 403",
    "HTTP STATUS 401",
    "FORBIDDEN",
    "UNAUTHORIZED",
    "PERMISSION",
    "CREDENTIAL",
)
_UNREACHABLE = ("NETWORK_CONNECTION", "COULD NOT RESOLVE", "COULDN'T CONNECT", "TIMED OUT")


def raise_storage_error(exc: BaseException, uri: str, doing: str) -> NoReturn:
    """Raise a one-line ObjectStoreError for a failed request, naming the URI and the likely
    fix (a missing object stays a FileNotFoundError)."""
    if isinstance(exc, (FileNotFoundError, ObjectStoreError)):
        raise exc
    text = _first_line(exc)
    upper = text.upper()
    scheme = urlsplit(uri).scheme.lower()
    s3 = scheme in ("s3", "s3a")
    if any(s in upper for s in _DENIED):
        if s3 and not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")):
            fix = "no AWS credentials in the environment: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        elif s3:
            fix = "the server refused the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE); check them and their access to the bucket"
        elif scheme in ("gs", "gcs"):
            fix = (
                "set GOOGLE_APPLICATION_CREDENTIALS or run 'gcloud auth application-default login'"
            )
        else:
            fix = f"check the credentials for {scheme}://"
    elif "NO_SUCH_BUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
        fix = "the bucket does not exist; check the URI" + (
            " and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL" if s3 else ""
        )
    elif any(s in upper for s in _UNREACHABLE):
        fix = "the server cannot be reached; check the network" + (
            " and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL" if s3 else ""
        )
    else:
        fix = "check the URI, the credentials and the network"
    raise ObjectStoreError(f"cannot {doing} {uri} ({text}); {fix}") from exc


# -- finding objects ---------------------------------------------------------------------------


def expand(uri: str) -> tuple[bool, list[RemotePath]]:
    """(is a single object, the objects): the object at ``uri``, or every object below it."""
    store = store_for(uri)
    path = store.path_of(uri)
    try:
        info = store.fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return True, [RemotePath(_stored(store, info.path, uri), size=info.size)]
        if info.type == pafs.FileType.NotFound:
            scheme = urlsplit(uri).scheme.lower()
            bucket = path.split("/", 1)[0]
            if scheme in _BUCKETS and store.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                hint = (
                    " and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL" if scheme in ("s3", "s3a") else ""
                )
                msg = f"bucket {bucket!r} of {uri!r} does not exist at {store.where}; check the URI{hint}"
                raise RegistrationError(msg)
            msg = f"nothing at {uri!r}; pass existing objects, prefixes or globs"
            raise RegistrationError(msg)
        listing = store.fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise_storage_error(exc, uri, "look up")
    files = sorted((i for i in listing if i.type == pafs.FileType.File), key=lambda i: str(i.path))
    return False, [RemotePath(_stored(store, i.path, uri), size=i.size) for i in files]


def glob(pattern: str) -> list[RemotePath]:
    """Objects matching a glob (``*`` and ``?`` within a name, ``**`` across names)."""
    first = _MAGIC.search(pattern)
    assert first is not None, pattern
    base = pattern[: pattern.rfind("/", 0, first.start()) + 1]
    try:
        _, listed = expand(base)
    except RegistrationError:
        return []
    store = store_for(pattern)
    regex = re.compile(_translate(store.path_of(pattern)))
    return [p for p in listed if regex.fullmatch(store.path_of(p.uri))]


def _translate(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _stored(store: Store, path: str, asked: str) -> str:
    """The URI stored for an object; refuses keys that a stored path cannot hold."""
    uri = canonical(store.uri_of(path))
    if store.path_of(uri) != path.rstrip("/"):
        msg = (
            f"object {store.uri_of(path)!r} (under {asked!r}) has an empty or '.' segment in its "
            "key, which a stored path cannot hold; rename the object"
        )
        raise RegistrationError(msg)
    return uri


# -- reading -----------------------------------------------------------------------------------


class RemoteObject:
    """One object opened for ranged reads, optionally through a cache; not thread-safe."""

    def __init__(
        self,
        path: RemotePath,
        *,
        size: int | None = None,
        cache: RangeCache | None = None,
        version: str = "",
    ) -> None:
        self.path = path
        self._size = size
        self._cache = cache
        self._key = f"{path.uri}#{version}"
        self._file: Any = None

    def _native(self) -> Any:
        if self._file is None:
            store = self.path.store()
            try:
                self._file = store.fs.open_input_file(store.path_of(self.path.uri))
            except OSError as exc:
                raise_storage_error(exc, self.path.uri, "open")
        return self._file

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = int(self._native().size())
        return self._size

    def etag(self) -> str:
        """The object's ETag where the store reports one (S3, GCS), else ''."""
        meta = self._native().metadata() or {}
        value = meta.get("ETag") or meta.get("etag") or b""
        return value.decode() if isinstance(value, bytes) else str(value)

    def read_at(self, nbytes: int, offset: int) -> bytes:
        nbytes = max(0, min(nbytes, self.size - offset))
        if nbytes == 0:
            return b""
        if self._cache is None:
            return self._fetch(nbytes, offset)
        return self._cache.read(self._key, offset, nbytes, self._fetch)

    def _fetch(self, nbytes: int, offset: int) -> bytes:
        try:
            data = self._native().read_at(nbytes, offset)
        except OSError as exc:
            raise_storage_error(exc, self.path.uri, "read")
        return bytes(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RemoteFile(io.RawIOBase):
    """A file object over a RemoteObject (for gzip, zstd, pyarrow's Parquet reader): each read
    is one ranged request. Closes the object only when it owns it."""

    def __init__(self, obj: RemoteObject, *, owner: bool = False) -> None:
        super().__init__()
        self._obj = obj
        self._owner = owner
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._obj.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._obj.size

    def read_at(self, nbytes: int, offset: int) -> bytes:
        return self._obj.read_at(nbytes, offset)

    def read(self, size: int | None = -1) -> bytes:
        n = self._obj.size - self._pos if size is None or size < 0 else size
        data = self._obj.read_at(n, self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._owner and not self.closed:
            self._obj.close()
        super().close()


class RangeCache:
    """An LRU of fetched byte ranges, bounded by ``max_bytes`` held; thread-safe.

    Keys name an object version (URI and registered fingerprint), so a re-registered object
    never meets its old bytes. ``hits``, ``misses`` and ``fetched_bytes`` count its traffic.
    """

    #: Cached ranges looked at per lookup (those starting at or before the asked offset).
    SCAN = 64

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            msg = f"cache bound must be >= 0 bytes, got {max_bytes}"
            raise ValueError(msg)
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.hits = 0
        self.misses = 0
        self.fetched_bytes = 0
        self._lock = threading.Lock()
        self._ranges: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._starts: dict[str, list[int]] = {}
        self._longest: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ranges)

    def sizes(self) -> Iterable[int]:
        """The length of every cached range (their sum is ``held_bytes``)."""
        with self._lock:
            return [len(v) for v in self._ranges.values()]

    def read(self, key: str, offset: int, nbytes: int, fetch: Callable[[int, int], bytes]) -> bytes:
        """Bytes ``[offset, offset + nbytes)`` of object ``key``: from a cached range holding
        them, else ``fetch(nbytes, offset)`` (then cached)."""
        with self._lock:
            found = self._find(key, offset, nbytes)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
        data = fetch(nbytes, offset)
        with self._lock:
            self.fetched_bytes += len(data)
            self._insert(key, offset, data)
        return data

    def _find(self, key: str, offset: int, nbytes: int) -> bytes | None:
        starts = self._starts.get(key)
        if not starts:
            return None
        longest = self._longest[key]
        i = bisect.bisect_right(starts, offset) - 1
        for j in range(i, max(i - self.SCAN, -1), -1):
            start = starts[j]
            if start + longest <= offset:
                break
            data = self._ranges[key, start]
            if start + len(data) >= offset + nbytes:
                self._ranges.move_to_end((key, start))
                return data[offset - start : offset - start + nbytes]
        return None

    def _insert(self, key: str, offset: int, data: bytes) -> None:
        if len(data) > self.max_bytes or not data:
            return
        old = self._ranges.get((key, offset))
        if old is not None:
            if len(old) >= len(data):
                self._ranges.move_to_end((key, offset))
                return
            self._remove(key, offset)
        self._ranges[key, offset] = data
        bisect.insort(self._starts.setdefault(key, []), offset)
        self._longest[key] = max(self._longest.get(key, 0), len(data))
        self.held_bytes += len(data)
        while self.held_bytes > self.max_bytes:
            (old_key, old_offset), _ = next(iter(self._ranges.items()))
            self._remove(old_key, old_offset)

    def _remove(self, key: str, offset: int) -> None:
        data = self._ranges.pop((key, offset))
        self.held_bytes -= len(data)
        starts = self._starts[key]
        del starts[bisect.bisect_left(starts, offset)]
        if not starts:
            del self._starts[key], self._longest[key]

    def clear(self) -> None:
        with self._lock:
            self._ranges.clear()
            self._starts.clear()
            self._longest.clear()
            self.held_bytes = 0


_shared: RangeCache | None = None


def shared_cache() -> RangeCache:
    """The process's range cache, bounded by ``MIXPLANE_REMOTE_CACHE_BYTES`` (default 256 MiB)."""
    global _shared  # noqa: PLW0603
    if _shared is None:
        text = os.environ.get(CACHE_ENV, "").strip()
        try:
            bound = int(text) if text else DEFAULT_CACHE_BYTES
        except ValueError:
            msg = f"{CACHE_ENV} must be a number of bytes, got {text!r}"
            raise CatalogError(msg) from None
        _shared = RangeCache(bound)
    return _shared
