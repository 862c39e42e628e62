"""Files of a dataset: finding them, fingerprinting them, and noticing when they change.

A file's identity at registration is (size, mtime in ns, fingerprint); the fingerprint is a
BLAKE2b digest of the size and the first and last 64 KiB (two reads, ~0.1 ms per file), so a
change anywhere in size, time or the file's ends is caught before a reader returns garbage.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mixplane.catalog.formats import FormatName, detect
from mixplane.errors import FileChangedError, RegistrationError

EDGE_BYTES = 64 << 10


@dataclass(frozen=True, slots=True, kw_only=True)
class FileIdentity:
    size: int
    mtime_ns: int
    fingerprint: str


def identify(path: Path) -> FileIdentity:
    st = path.stat()
    digest = hashlib.blake2b(str(st.st_size).encode(), digest_size=16)
    with path.open("rb") as f:
        digest.update(f.read(EDGE_BYTES))
        if st.st_size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
            digest.update(f.read(EDGE_BYTES))
    return FileIdentity(size=st.st_size, mtime_ns=st.st_mtime_ns, fingerprint=digest.hexdigest())


def check_unchanged(path: Path, registered: FileIdentity, dataset: str) -> None:
    """Raise FileChangedError when a registered file is gone or differs from registration."""
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
) -> list[tuple[Path, FormatName]]:
    """Expand files, directories (recursively) and globs into sorted (file, format) pairs."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file() and _known(p, fmt))
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
    result = []
    for path in _unique(found):
        detected = fmt or detect(path)
        if detected is None:
            msg = f"cannot tell the format of {path} from its name; pass format='jsonl', 'parquet' or 'webdataset'"
            raise RegistrationError(msg)
        result.append((path.resolve(), detected))
    return result


def _known(path: Path, fmt: FormatName | None) -> bool:
    detected = detect(path)
    if fmt is None:
        return detected is not None
    return detected in (fmt, None) and not path.name.startswith(".")


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            out.append(p)
    return out
