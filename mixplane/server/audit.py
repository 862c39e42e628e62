"""The audit log: one JSON line per action that changes what the server holds or reads.

``{home}/server/audit.log`` receives a line for each request to a route whose ``Access`` names
an action (``roles.ROUTES``: ``register``, ``delete``, ``restore``, and ``count-tokens`` or
``add-property`` where the server has them), for a submit that replaces a job (``replace``),
and one ``serve`` line at start (the token holders' names and roles, the data roots, TLS):

    {"time": "2025-01-02T03:04:05.678Z", "name": "alice", "role": "admin", "via": "token",
     "action": "register", "request": "POST /v1/datasets", "status": 200,
     "details": {"dataset": "web", "paths": ["/data/web"], ...}}

``name`` is the token holder's name (``anonymous`` on a server without tokens); never a token.
Requests the gate refuses for their role are logged too (status 403); those without a valid
token (401) are not, since they name nobody. Each line is written with one ``write`` to a
descriptor opened with ``O_APPEND``, so lines from concurrent requests never interleave and a
crash leaves whole lines (at most the last one short); it is then ``fsync``ed, off the event
loop, before the request's answer is sent (the guard writes it when the answer starts). A line is at most ``MAX_LINE`` bytes: long details are cut (``"cut": true``).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path
from typing import Any

import orjson

MAX_LINE = 16 * 1024
MAX_LISTED = 50  # paths (and other lists) shown in a line's details


def _bounded(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) > MAX_LISTED:
        return [*value[:MAX_LISTED], f"... {len(value) - MAX_LISTED} more"]
    if isinstance(value, str) and len(value) > 1024:
        return value[:1024] + "..."
    return value


class AuditLog:
    """Appends audit lines to one file (see the module)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o600)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        action: str,
        name: str,
        role: str | None,
        via: str | None,
        request: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one line (blocking: a write and an fsync; call it off the event loop)."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        entry: dict[str, Any] = {
            "time": now,
            "name": name,
            "role": role,
            "via": via,
            "action": action,
            "request": request,
            "status": status,
            "details": {k: _bounded(v) for k, v in (details or {}).items()},
        }
        line = orjson.dumps(entry, default=str)
        if len(line) >= MAX_LINE:
            entry["details"] = {"cut": True}
            line = orjson.dumps(entry, default=str)
        with self._lock:
            if self._fd < 0:
                return
            os.write(self._fd, line + b"\n")
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """The lines of an audit log, parsed (for tests and tools)."""
    text = Path(path).read_bytes()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]
