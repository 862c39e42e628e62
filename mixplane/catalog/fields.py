"""Field paths: where a property's value (or the text) lies inside a record.

A field path is keys separated by dots: ``meta.language`` is the ``language`` key of the
``meta`` object (for WebDataset, the first key is a member's extension: ``json.language``). A
key made only of letters (any script), digits, ``_`` and ``-`` is written as it is; any other
key (holding a dot, a space, a quote, a slash, or empty) is written as a JSON string:
``meta."lang.code"``, ``"first name"``, ``extra."say \\"hi\\""``. A path holds at most
``MAX_KEYS`` keys and ``MAX_CHARS`` characters; no key may hold NUL.

Paths are checked where they enter (``Catalog.register``: properties, presets, ``text_field``)
so a malformed one is an error naming the property before any file is read; the formats then
use ``keys`` (parsed once, cached), never ``str.split``. Cost: one regex match per key.
"""

from __future__ import annotations

import functools
import json
import re

from mixplane.errors import PropertyError

MAX_KEYS = 32
MAX_CHARS = 1024
_BARE = re.compile(r"[\w-]+")
_FIX = (
    "write keys of letters, digits, '_' and '-' separated by '.', and a key holding other "
    'characters as a JSON string, e.g. meta."lang.code"'
)


def check(path: object, what: str) -> str:
    """``path`` if it is a valid field path, else a ``PropertyError`` naming ``what`` (e.g.
    ``property 'language'``) and the fix."""
    if not isinstance(path, str):
        msg = f"the field path of {what} must be text, got {type(path).__name__}"
        raise PropertyError(msg)
    try:
        keys(path)
    except PropertyError as exc:
        msg = f"invalid field path {path[:80]!r} for {what}: {exc}"
        raise PropertyError(msg) from None
    return path


@functools.lru_cache(maxsize=4096)
def keys(path: str) -> tuple[str, ...]:
    """The keys of a field path: ``'meta."a.b"'`` -> ``("meta", "a.b")``."""
    if not path:
        msg = f"the path is empty; {_FIX}"
        raise PropertyError(msg)
    if len(path) > MAX_CHARS:
        msg = f"the path has {len(path)} characters, at most {MAX_CHARS} are allowed"
        raise PropertyError(msg)
    out: list[str] = []
    i = 0
    while True:
        if path.startswith('"', i):
            try:
                key, i = json.decoder.scanstring(path, i + 1)  # type: ignore[attr-defined]
            except json.JSONDecodeError as exc:
                msg = f"the quoted key at character {i} is not a JSON string ({exc.msg}); {_FIX}"
                raise PropertyError(msg) from None
        else:
            match = _BARE.match(path, i)
            if match is None:
                shown = repr(path[i]) if i < len(path) else "the end"
                msg = f"{shown} at character {i} cannot start a key; {_FIX}"
                raise PropertyError(msg)
            key, i = match.group(), match.end()
        if "\x00" in key:
            msg = "a key holds a NUL character; remove it"
            raise PropertyError(msg)
        out.append(key)
        if len(out) > MAX_KEYS:
            msg = f"the path has more than {MAX_KEYS} keys"
            raise PropertyError(msg)
        if i == len(path):
            return tuple(out)
        if path[i] != ".":
            msg = f"{path[i]!r} at character {i} follows a key; keys are separated by '.'; {_FIX}"
            raise PropertyError(msg)
        i += 1


def text(parts: tuple[str, ...]) -> str:
    """The canonical field path of ``parts`` (keys that are not bare are JSON strings)."""
    return ".".join(p if _BARE.fullmatch(p) else json.dumps(p, ensure_ascii=False) for p in parts)


def root(path: str) -> str:
    """The first key: the top-level field (a column, or a WebDataset member's extension)."""
    return keys(path)[0]
