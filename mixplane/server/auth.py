"""Who a request is, and whether it may do what it asks: tokens, dashboard sessions, the gate.

**Tokens.** ``mixplane serve --tokens-file F`` reads
``{"tokens": [{"token": "...", "role": "viewer"|"trainer"|"admin", "name": "..."}]}``. The file
must be a regular file that no other user can read or write and no group member can change
(mode ``& 0o027`` zero, e.g. 600 or 640); every entry has exactly those three keys; a token is
16-4096 printable ASCII characters without spaces; names (what the audit log records) are
unique, 1-64 of ``A-Za-z0-9_.@+-``; no two entries hold the same token. Anything else refuses the
start with one line that names the file and the entry, never a token. ``--token-file F`` (one
token, the whole file) is one admin token named ``token-file``.

**Lookup in constant time.** ``Credentials`` holds the SHA-256 digest of each token, never the
token; a presented token is hashed (~1 us) and its digest looked up in a dict, then compared
with ``hmac.compare_digest``. The time a lookup takes can tell an attacker something about the
digest of their guess, which brings them no nearer a valid token; it cannot depend on how much
of a real token a guess has right. O(1) in the number of tokens.

**Sessions.** The dashboard trades a token once (``POST /v1/session`` with
``Authorization: Bearer TOKEN``) for a random session id in an ``HttpOnly; SameSite=Strict``
cookie (``Secure`` under TLS), so no token sits in an address, a browser's history or a proxy's
log. A session has the viewer role whatever the token's, is named after the token's holder,
lasts ``SESSION_SECONDS`` (12 h), lives in the server's memory only (a restart ends it) and at
most ``MAX_SESSIONS`` exist (the oldest end first). Ids are looked up like tokens.

**The gate.** For each request the guard asks ``Gate.decide``: which route it is (Starlette's
own matching over the app's routes, ~100 us, cached per (method, path) for paths of up to 512
characters, 4,096 at most: one dict lookup on the hot path), what ``roles.ROUTES`` says the
route needs, and who sends it (bearer token, else the session cookie); 3-10 us a request in
all (``benchmarks/guard.py``). No or an unknown token is a 401; a role below the route's is a
403 naming the role needed. A path that matches no route needs a token under ``/v1/`` (the router then answers
404 or 405) and nothing elsewhere. Without credentials (a loopback server without a token)
everyone is the admin ``anonymous``, as before roles existed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from mixplane.errors import MixplaneError, ServerConfigError
from mixplane.server.roles import ADMIN, OPEN, ROLES, VIEWER, Access, Role, access_of, allows

MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
MAX_TOKENS = 10_000
MAX_TOKENS_FILE_BYTES = 1 << 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}")
ENTRY_KEYS = frozenset(("token", "role", "name"))
FORBIDDEN_MODE = 0o027  # group write, any access for others
SESSION_COOKIE = "mixplane_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
ROUTE_CACHE = 4096  # (method, path) pairs whose route is remembered...
ROUTE_CACHE_PATH = 512  # ...when the path is at most this long (the cache stays under ~3 MB)

Via = Literal["token", "session", "anonymous"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who sends a request: the token's holder (``name``), its ``role`` and how it came."""

    name: str
    role: Role
    via: Via


ANONYMOUS = Principal(name="anonymous", role="admin", via="anonymous")


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _printable(text: str) -> bool:
    return all(0x21 <= ord(ch) <= 0x7E for ch in text)


class Credentials:
    """The tokens a server accepts, by SHA-256 digest (see the module)."""

    def __init__(self, entries: Iterable[tuple[str, Role, str]]) -> None:
        """``entries``: (token, role, name), already checked (``read_tokens_file``)."""
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        for token, role, name in entries:
            digest = _digest(token.encode())
            self._by_digest[digest] = (digest, Principal(name=name, role=role, via="token"))
        if not self._by_digest:
            msg = "no tokens given"
            raise ServerConfigError(msg)

    @classmethod
    def single(cls, token: str) -> Credentials:
        """``--token-file``: one admin token, named ``token-file``."""
        return cls([(token, "admin", "token-file")])

    def identify(self, presented: bytes) -> Principal | None:
        digest = _digest(presented)
        stored, principal = self._by_digest.get(digest, (b"", None))
        return principal if hmac.compare_digest(stored, digest) else None

    def holders(self) -> list[dict[str, str]]:
        """Each token's name and role (no token): for the start-up log and the audit log."""
        return [{"name": p.name, "role": p.role} for _, p in self._by_digest.values()]

    def __len__(self) -> int:
        return len(self._by_digest)


def read_token(path: str | Path) -> str:
    """The bearer token in a file (``--token-file``; surrounding whitespace stripped)."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        msg = f"token file {path} is empty; write a secret into it (e.g. secrets.token_urlsafe(32))"
        raise MixplaneError(msg)
    if not _printable(token):
        msg = f"the token in {path} must be printable ASCII without spaces"
        raise MixplaneError(msg)
    return token


def read_tokens_file(path: str | Path) -> Credentials:
    """The tokens of a ``--tokens-file`` (format and checks in the module docstring)."""
    where = Path(path)
    try:
        info = where.stat()
    except OSError as exc:
        msg = f"cannot read tokens file {where}: {exc.strerror or exc}"
        raise ServerConfigError(msg) from None
    if not stat.S_ISREG(info.st_mode):
        msg = f"tokens file {where} is not a regular file"
        raise ServerConfigError(msg)
    if os.name == "posix" and info.st_mode & FORBIDDEN_MODE:
        mode = stat.S_IMODE(info.st_mode)
        msg = (
            f"tokens file {where} has mode {mode:04o}: other users could read or change it; "
            f"chmod 600 {where}"
        )
        raise ServerConfigError(msg)
    if info.st_size > MAX_TOKENS_FILE_BYTES:
        msg = f"tokens file {where} is larger than {MAX_TOKENS_FILE_BYTES} bytes"
        raise ServerConfigError(msg)
    try:
        data = json.loads(where.read_bytes())
    except json.JSONDecodeError as exc:
        msg = (
            f"tokens file {where} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            'write {"tokens": [{"token": "...", "role": "viewer", "name": "..."}]}'
        )
        raise ServerConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read tokens file {where}: {exc}"
        raise ServerConfigError(msg) from None
    return Credentials(parse_tokens(data, str(where)))


def parse_tokens(data: Any, where: str) -> list[tuple[str, Role, str]]:
    """(token, role, name) of each entry of a tokens file's content, checked."""
    if not isinstance(data, dict) or set(data) != {"tokens"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        msg = f'tokens file {where} must hold one object {{"tokens": [...]}}, got {keys}'
        raise ServerConfigError(msg)
    entries = data["tokens"]
    if not isinstance(entries, list) or not entries or len(entries) > MAX_TOKENS:
        msg = f"tokens file {where}: 'tokens' must be a list of 1 to {MAX_TOKENS} entries"
        raise ServerConfigError(msg)
    out: list[tuple[str, Role, str]] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for i, entry in enumerate(entries):
        at = f"tokens file {where}: tokens[{i}]"
        if not isinstance(entry, dict):
            msg = f'{at} must be an object {{"token", "role", "name"}}'
            raise ServerConfigError(msg)
        name = entry.get("name")
        if isinstance(name, str) and NAME.fullmatch(name):
            at += f" ({name!r})"
        if set(entry) != ENTRY_KEYS:
            missing, extra = sorted(ENTRY_KEYS - set(entry)), sorted(set(entry) - ENTRY_KEYS)
            msg = f"{at} must have exactly the keys token, role, name (missing {missing}, unknown {extra})"
            raise ServerConfigError(msg)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            msg = f"{at}: name {name!r} must be 1-64 of A-Za-z0-9_.@+- (starting with a letter or digit)"
            raise ServerConfigError(msg)
        role = entry["role"]
        if role not in ROLES:
            msg = f"{at}: unknown role {role!r}; roles: {', '.join(ROLES)}"
            raise ServerConfigError(msg)
        token = entry["token"]
        if not isinstance(token, str) or not _printable(token):
            msg = f"{at}: the token must be a string of printable ASCII without spaces"
            raise ServerConfigError(msg)
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
            msg = (
                f"{at}: the token has {len(token)} characters; use {MIN_TOKEN_CHARS} to "
                f"{MAX_TOKEN_CHARS} (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
            raise ServerConfigError(msg)
        if name in names:
            msg = f"{at}: name {name!r} is also tokens[{names[name]}]'s; give each holder its own name"
            raise ServerConfigError(msg)
        digest = _digest(token.encode())
        if digest in digests:
            first = digests[digest]
            msg = (
                f"{at} holds the same token as tokens[{first}] ({entries[first]['name']!r}); "
                "give each holder its own token"
            )
            raise ServerConfigError(msg)
        names[name], digests[digest] = i, i
        out.append((token, role, name))
    return out


class Sessions:
    """Dashboard sessions (see the module): random ids, viewer role, in memory."""

    def __init__(
        self,
        *,
        seconds: float = SESSION_SECONDS,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self._limit = limit
        self._clock = clock
        self._open: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def open(self, holder: Principal) -> str:
        """A new session of ``holder`` (viewer role); returns the cookie's value."""
        now = self._clock()
        while self._open:  # expired ones first (they are in opening order), then the oldest
            first = next(iter(self._open.values()))
            if first[1] > now and len(self._open) < self._limit:
                break
            self._open.popitem(last=False)
        value = secrets.token_urlsafe(32)
        principal = Principal(name=holder.name, role="viewer", via="session")
        self._open[_digest(value.encode())] = (principal, now + self.seconds)
        return value

    def identify(self, value: bytes) -> Principal | None:
        digest = _digest(value)
        found = self._open.get(digest)
        if found is None:
            return None
        principal, expires = found
        if expires <= self._clock():
            del self._open[digest]
            return None
        return principal

    def close(self, value: bytes) -> None:
        self._open.pop(_digest(value), None)

    def __len__(self) -> int:
        return len(self._open)


def session_cookie(value: str, *, secure: bool, max_age: int) -> str:
    """The ``Set-Cookie`` value that holds (``max_age`` > 0) or clears a session."""
    flags = "; Secure" if secure else ""
    return f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{flags}"


def cookie_value(header: bytes, name: str = SESSION_COOKIE) -> bytes | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    key = name.encode()
    for part in header.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == key:
            return v.strip()
    return None


# -- the gate -----------------------------------------------------------------------------------
Refusal = tuple[int, str, dict[str, str]]


class Decision(NamedTuple):
    """What the gate decided: the route's template (None: no route matched), what it needs,
    who sends it (None: an open route without credentials) and the refusal, if any. (A named
    tuple: one is made per request, ten times faster than a frozen dataclass.)"""

    route: tuple[str, str] | None
    access: Access
    principal: Principal | None
    refusal: Refusal | None


class Gate:
    """Authentication and authorization of requests (see the module)."""

    def __init__(
        self,
        credentials: Credentials | None,
        sessions: Sessions,
        routes: Callable[[], Sequence[Any]],
    ) -> None:
        """``routes()``: the app's routes (Starlette routes: ``matches(scope)`` and ``path``),
        read when a path is first seen."""
        self.credentials = credentials
        self.sessions = sessions
        self._routes = routes
        self._cache: dict[tuple[str, str], tuple[tuple[str, str] | None, Access]] = {}

    def route_of(self, scope: MutableMapping[str, Any]) -> tuple[tuple[str, str] | None, Access]:
        """(method, path template) of the route that serves ``scope`` (None if none does
        fully: an unknown path, or a known one with another method) and what it needs: its
        table entry; without a route, a token under ``/v1/`` and nothing elsewhere; a route
        the table lacks (``create_app`` prevents it), admin."""
        key = (scope["method"], scope["path"])
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        from starlette.routing import Match

        route = None
        for candidate in self._routes():
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = (key[0], str(candidate.path))
                break
        if route is not None:
            access = access_of(*route) or ADMIN
        else:
            api = key[1] == "/v1" or key[1].startswith("/v1/")
            access = VIEWER if api else OPEN
        if len(key[1]) <= ROUTE_CACHE_PATH:
            if len(self._cache) >= ROUTE_CACHE:
                self._cache.clear()
            self._cache[key] = (route, access)
        return route, access

    def decide(self, scope: MutableMapping[str, Any], headers: dict[bytes, bytes]) -> Decision:
        route, access = self.route_of(scope)
        principal, refusal = self._who(headers)
        if access.role is None:
            return Decision(route=route, access=access, principal=principal, refusal=None)
        if refusal is not None or principal is None:
            return Decision(route=route, access=access, principal=None, refusal=refusal)
        if not allows(principal.role, access.role):
            what = f"{route[0]} {route[1]}" if route is not None else "this request"
            held = (
                f"the dashboard session of {principal.name!r} has role 'viewer'"
                if principal.via == "session"
                else f"the token of {principal.name!r} has role {principal.role!r}"
            )
            msg = f"{what} needs role {access.role!r}; {held}"
            return Decision(route=route, access=access, principal=principal, refusal=(403, msg, {}))
        return Decision(route=route, access=access, principal=principal, refusal=None)

    def _who(self, headers: dict[bytes, bytes]) -> tuple[Principal | None, Refusal | None]:
        """Who sends the request, or the 401 to answer (credentials given but unknown, or
        none where the server has tokens)."""
        if self.credentials is None:
            return ANONYMOUS, None
        authorization = headers.get(b"authorization")
        if authorization is not None:
            scheme, _, presented = authorization.partition(b" ")
            if scheme.lower() == b"bearer":
                found = self.credentials.identify(presented.strip())
                if found is not None:
                    return found, None
            return None, _unauthorized()
        cookies = headers.get(b"cookie")
        session = cookie_value(cookies) if cookies is not None else None
        if session is not None:
            found = self.sessions.identify(session)
            if found is not None:
                return found, None
            msg = "the dashboard session has ended; open the dashboard again and give a token"
            return None, (401, msg, {"WWW-Authenticate": "Bearer"})
        return None, _unauthorized()


def _unauthorized() -> Refusal:
    msg = "missing or wrong bearer token; send 'Authorization: Bearer TOKEN'"
    return 401, msg, {"WWW-Authenticate": "Bearer"}
