"""Files of a dataset: finding them, fingerprinting them, and noticing when they change.

A file's identity at registration is (size, mtime in ns, fingerprint); the fingerprint is a
BLAKE2b digest of the size and the first and last 64 KiB (two reads, ~0.1 ms per file), so a
change anywhere in size, time or the file's ends is caught before a reader returns garbage.

Files may also be objects in object storage (``s3://bucket/prefix``, see ``remote_fs``): a
prefix is listed recursively, a glob matched against the listing. An object's fingerprint digests
the same bytes (two ranged reads, one when it is under 128 KiB) plus its ETag where the store
reports one, so a rewrite anywhere in the object is caught; its mtime is the store's (S3: whole
seconds). Identifying one costs two HEAD requests and one or two ranged GETs.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from mixplane.catalog import remote_fs
from mixplane.catalog.formats import TOKEN_FORMATS, FormatName, detect
from mixplane.catalog.remote_fs import RemotePath, location
from mixplane.errors import FileChangedError, RegistrationError

EDGE_BYTES = 64 << 10

#: Where a registered file lives: a local path or an object in object storage.
Location = Path | RemotePath


@dataclass(frozen=True, slots=True, kw_only=True)
class FileIdentity:
    size: int
    mtime_ns: int
    fingerprint: str


def identify(path: Location) -> FileIdentity:
    if isinstance(path, RemotePath):
        return _identify_remote(path)
    st = path.stat()
    digest = hashlib.blake2b(str(st.st_size).encode(), digest_size=16)
    with path.open("rb") as f:
        digest.update(f.read(EDGE_BYTES))
        if st.st_size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
            digest.update(f.read(EDGE_BYTES))
    return FileIdentity(size=st.st_size, mtime_ns=st.st_mtime_ns, fingerprint=digest.hexdigest())


def _identify_remote(path: RemotePath) -> FileIdentity:
    info = path.info()
    obj = remote_fs.RemoteObject(path)
    try:
        size = obj.size
        digest = hashlib.blake2b(str(size).encode(), digest_size=16)
        if size <= 2 * EDGE_BYTES:  # the same bytes as the two local reads, in one request
            digest.update(obj.read_at(size, 0))
        else:
            digest.update(obj.read_at(EDGE_BYTES, 0))
            digest.update(obj.read_at(EDGE_BYTES, size - EDGE_BYTES))
        etag = obj.etag()
    finally:
        obj.close()
    if etag:
        digest.update(b"etag:" + etag.encode())
    return FileIdentity(size=size, mtime_ns=info.mtime_ns or 0, fingerprint=digest.hexdigest())


def check_unchanged(path: Location | PurePath, registered: FileIdentity, dataset: str) -> None:
    """Raise FileChangedError when a registered file is gone or differs from registration."""
    path = location(path)
    fix = f"re-register the dataset ({dataset!r}) with replace=True, or restore the file"
    try:
        now = identify(path)
    except FileNotFoundError:
        msg = f"file {path} of dataset {dataset!r} was removed after registration; {fix}"
        raise FileChangedError(msg) from None
    changes = [
        f"{what} {before} -> {after}"
        for what, before, after in (
            ("size", registered.size, now.size),
            ("mtime_ns", registered.mtime_ns, now.mtime_ns),
            ("fingerprint", registered.fingerprint, now.fingerprint),
        )
        if before != after
    ]
    if changes:
        msg = f"file {path} of dataset {dataset!r} changed after registration ({', '.join(changes)}); {fix}"
        raise FileChangedError(msg)


def discover(
    paths: Sequence[str | os.PathLike[str]], fmt: FormatName | None
) -> list[tuple[Location, FormatName]]:
    """Expand files, directories (recursively) and globs into sorted (file, format) pairs;
    URIs (``s3://bucket/prefix``) into the objects below them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Location] = []
    for item in paths:
        text = os.fspath(item)
        where = location(item)
        if isinstance(where, RemotePath):
            found.extend(_discover_remote(where.uri, fmt))
            continue
        fixed = remote_fs.one_slash(text)
        if fixed and not Path(text).exists():
            msg = f"{text!r} is not a URI (one slash after the scheme); write {fixed!r}"
            raise RegistrationError(msg)
        path = Path(text).expanduser()
        if path.is_dir():
            inside = [p for p in sorted(path.rglob("*")) if p.is_file() and _known(p, fmt)]
            found.extend(_without_saved_dataset_files(inside))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(text):
            matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(text), recursive=True))]
            found.extend(p for p in matches if p.is_file())
            if not matches:
                msg = f"no files match {text!r}; check the pattern"
                raise RegistrationError(msg)
        else:
            msg = f"path {text!r} does not exist; pass existing files, directories or globs"
            raise RegistrationError(msg)
    if not found:
        msg = f"no data files found under {[os.fspath(p) for p in paths]}; pass format= or check the paths"
        raise RegistrationError(msg)
    result: list[tuple[Location, FormatName]] = []
    for where in _unique(found):
        detected = fmt or detect(where)
        if detected is None:
            msg = f"cannot tell the format of {where} from its name; pass format='jsonl', 'parquet' or 'webdataset'"
            raise RegistrationError(msg)
        if detected == "megatron" and isinstance(where, Path):  # the .bin is the data file
            where = where.with_suffix(".bin") if where.suffix.lower() == ".idx" else where
        result.append((where.resolve(), detected))
    return list(dict.fromkeys(result))  # an .idx and its .bin name one file


def _discover_remote(uri: str, fmt: FormatName | None) -> list[RemotePath]:
    if glob.has_magic(uri):
        matches = remote_fs.glob(uri)
        if not matches:
            msg = f"no objects match {uri!r}; check the pattern"
            raise RegistrationError(msg)
        return matches
    single, listed = remote_fs.expand(uri)
    return listed if single else [p for p in listed if _known(p, fmt)]


def _known(path: Location, fmt: FormatName | None) -> bool:
    detected = detect(path)
    if fmt is None:
        return detected is not None
    if fmt in TOKEN_FORMATS:  # data beside sidecars (.csv.gz metadata, .json, .bin)
        return detected == fmt or (fmt == "megatron" and path.suffix.lower() == ".bin")
    return detected in (fmt, None) and not path.name.startswith(".")


#: The files ``datasets.save_to_disk`` writes beside its ``.arrow`` data.
SAVED_DATASET_FILES = ("dataset_info.json", "state.json")


def _without_saved_dataset_files(paths: Sequence[Location]) -> list[Location]:
    """A folder written by ``datasets.save_to_disk``: its Arrow files, not its JSON metadata."""
    folders = {
        p.parent
        for p in paths
        if p.name == "state.json"
        and isinstance(p, Path)
        and (p.parent / "dataset_info.json").exists()
    }
    return [
        p
        for p in paths
        if not (isinstance(p, Path) and p.parent in folders and p.name in SAVED_DATASET_FILES)
    ]


def _unique(paths: Iterable[Location]) -> list[Location]:
    seen: set[Location] = set()
    out = []
    for p in paths:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            out.append(p)
    return out
