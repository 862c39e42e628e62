"""Data roots: the only places registration through the server may read.

``mixplane serve --data-root DIR`` (repeatable; ``--data-root s3://bucket/prefix`` for object
storage). A server without roots refuses registration (403) unless it runs on loopback without
a token, where it registers whatever its user can read, as before roots existed (``serve``
warns). The roots themselves are resolved once at start (symlinks followed) and must exist.

Every path a client names is checked before anything is read, with the rules below; a path
outside the roots is a 403 that names the roots and never what the path points at (nor whether
it exists).

- **Local paths** (``file://`` URIs too) are resolved with ``os.path.realpath`` (symlinks
  followed, ``..`` collapsed) and must lie under a root. A directory or a glob is expanded
  exactly as registration expands it (``catalog.files.discover``) and every file found,
  resolved, must lie under a root: a symlink below a root that leads out of it is refused. For a
  glob (a path that does not exist and holds ``*``, ``?`` or ``[``), the part before its first
  wildcard component must also lie under a root, so ``/data/../*`` or ``/d*`` is refused
  whatever it matches today. The server then registers the files it checked (resolved: what the
  catalog records anyway), so a file or link that appears between the check and the scan is not
  read. What remains is a race on the checked files themselves, which needs write access below a
  root: roots must not be writable by anyone the server does not trust.
- **URIs** must have a root's scheme and authority (the bucket) and a key under its prefix at a
  ``/`` boundary (``s3://b/data`` admits ``s3://b/data/x`` and not ``s3://b/database``); ``..``
  segments are refused; for a glob, the part before the first wildcard must lie under a root.
  Object stores have no links, so the listing is left to registration.

Cost: one ``realpath`` per path and per file found (a few system calls each) plus the directory
listing, which registration then repeats on the explicit files: about 10 us per file.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mixplane.catalog import remote_fs
from mixplane.catalog.files import discover
from mixplane.catalog.formats import FormatName
from mixplane.catalog.remote_fs import RemotePath
from mixplane.errors import AccessDeniedError, RegistrationError, ServerConfigError


@dataclass(frozen=True, slots=True)
class Registration:
    """What to register after the check: the paths (checked files and URIs) and the format
    (the one every checked file has, when the client named none)."""

    paths: list[str]
    format: FormatName | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRoots:
    """Resolved local roots and canonical URI prefixes (no trailing slash)."""

    local: tuple[Path, ...] = ()
    remote: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: Sequence[str]) -> DataRoots:
        """The roots of ``--data-root`` values; a missing directory or a bad URI is a
        ``ServerConfigError`` naming it."""
        local: list[Path] = []
        remote: list[str] = []
        for value in values:
            if remote_fs.is_uri(value):
                remote.append(_root_uri(value))
                continue
            text = urlsplit(value).path if value.lower().startswith("file://") else value
            path = Path(text).expanduser()
            resolved = Path(os.path.realpath(path))
            if not resolved.is_dir():
                msg = (
                    f"data root {value!r} is not a directory (or does not exist); create it or "
                    "fix --data-root"
                )
                raise ServerConfigError(msg)
            if resolved not in local:
                local.append(resolved)
        return cls(local=tuple(local), remote=tuple(dict.fromkeys(remote)))

    def __bool__(self) -> bool:
        return bool(self.local or self.remote)

    def describe(self) -> str:
        shown = [str(p) for p in self.local] + list(self.remote)
        return ", ".join(repr(s) for s in shown) if shown else "none"

    def confine(self, paths: Sequence[str], fmt: FormatName | None) -> Registration:
        """Check every path (see the module) and return what to register; a path outside the
        roots raises ``AccessDeniedError``, one that does not exist below them the catalog's
        ``RegistrationError``."""
        if not self:
            msg = (
                "registration through this server is off: it has no data roots; start it with "
                "--data-root DIR (repeatable; s3://bucket/prefix for object storage)"
            )
            raise AccessDeniedError(msg)
        out: list[str] = []
        formats: set[FormatName | None] = set()  # of what is registered (None: not known here)
        for text in paths:
            where = remote_fs.location(text)
            if isinstance(where, RemotePath):
                self._check_uri(text)
                out.append(text)
                formats.add(fmt)
                continue
            local = os.path.expanduser(str(where))
            if not os.path.isabs(local):
                msg = f"path {text!r} is relative; give an absolute path on the server's machine"
                raise RegistrationError(msg)
            self._check_local(text, local)
            for file, detected in discover([local], fmt):
                assert isinstance(file, Path)
                self._check_local(text, str(file), found=True)
                out.append(str(file))
                formats.add(detected)
        only = next(iter(formats)) if len(formats) == 1 else None
        return Registration(paths=out, format=fmt or only)

    def _outside(self, text: str, *, found: bool = False) -> AccessDeniedError:
        what = f"{text!r} reaches a file" if found else f"path {text!r} is"
        msg = (
            f"{what} outside the data roots ({self.describe()}); this server registers only "
            "files below them"
        )
        return AccessDeniedError(msg)

    def _under(self, resolved: str) -> bool:
        path = Path(resolved)
        return any(path.is_relative_to(root) for root in self.local)

    def _check_local(self, text: str, path: str, *, found: bool = False) -> None:
        if not found and not os.path.exists(path) and glob.has_magic(path):
            parts = Path(path).parts
            first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            path = os.path.join(*parts[:first])  # the part before the first wildcard
        if not self._under(os.path.realpath(path)):
            raise self._outside(text, found=found)

    def _check_uri(self, text: str) -> None:
        scheme, segments = _split_uri(text)
        if segments is None:
            raise self._outside(text)
        first = next((i for i, s in enumerate(segments) if _MAGIC.search(s)), None)
        if first is not None:
            segments = segments[:first]  # the part before the first wildcard
        uri = f"{scheme}://{'/'.join(segments)}"
        if not any(uri == root or uri.startswith(root + "/") for root in self.remote):
            raise self._outside(text)


_MAGIC = re.compile(r"[*?[]")


def _split_uri(text: str) -> tuple[str, list[str] | None]:
    """(lower-case scheme, authority and key segments without empty or '.' ones); segments
    None when one is '..'."""
    scheme, _, rest = text.partition("://")
    segments = [s for s in rest.split("/") if s not in ("", ".")]
    return scheme.lower(), None if ".." in segments else segments


def _root_uri(value: str) -> str:
    scheme, segments = _split_uri(value)
    if not segments or _MAGIC.search(value.partition("://")[2]):
        msg = (
            f"data root {value!r} must name a bucket and an optional prefix, without '..' or "
            "wildcards (s3://bucket/prefix)"
        )
        raise ServerConfigError(msg)
    return f"{scheme}://{'/'.join(segments)}"
