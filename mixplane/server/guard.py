"""The guard every request passes (pure ASGI, a few microseconds): who sends it and whether its
role may call the route (``auth.Gate`` over the table ``roles.ROUTES``: 401 without a known
token or session, 403 below the route's role), the protocol header on ``/v1/``, the body limit
(``MAX_BODY_BYTES``, counted as the body streams in, so a missing Content-Length does not get
around it), the latency histogram, and the audit log's line for actions it records
(``audit``), written before the answer leaves.

Routes read the gate's ``Decision`` from ``scope[DECISION]`` and add details (and an action)
to their audit line under ``scope[AUDIT]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mixplane.protocol import MAX_BODY_BYTES, PROTOCOL_HEADER, PROTOCOL_VERSION
from mixplane.server.audit import AuditLog
from mixplane.server.auth import Decision, Gate
from mixplane.server.http import error_response
from mixplane.server.metrics import Metrics

DECISION = "mixplane.decision"  # scope key: the gate's Decision for the request
AUDIT = "mixplane.audit"  # scope key: details (and an action) a route adds to its audit line

log = logging.getLogger(__name__)


class BodyTooLargeError(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, f"request body larger than {MAX_BODY_BYTES} bytes")


class Guard:
    """Access (``auth.Gate``), protocol header, body limit, latency metrics and audit lines for
    every request."""

    def __init__(
        self, app: ASGIApp, *, gate: Gate, metrics: Metrics, audit: AuditLog | None
    ) -> None:
        self.app = app
        self.gate = gate
        self.metrics = metrics
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        decision: Decision | None = None
        audited = False

        async def send_status(message: Message) -> None:
            nonlocal status, audited
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if decision is not None and not audited:  # on disk before the answer leaves
                    audited = True
                    await self._audit(scope, decision, status)
            await send(message)

        try:
            decision, problem = self._check(scope)
            scope[DECISION] = decision
            if problem is not None:
                code, message, extra = problem
                headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                }
                response = error_response(headers, code, message)
                response.headers.update(extra)
                await response(scope, receive, send_status)
                return
            await self.app(scope, self._limited(receive), send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            endpoint = f"{scope['method']} {path}" if path else "unmatched"
            self.metrics.request(endpoint, status, time.perf_counter() - started)
            if decision is not None and not audited:  # no answer went through send_status
                await self._audit(scope, decision, status)

    def _check(self, scope: Scope) -> tuple[Decision, tuple[int, str, dict[str, str]] | None]:
        headers: dict[bytes, bytes] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.lower(), v)
        decision = self.gate.decide(scope, headers)
        if decision.refusal is not None:
            return decision, decision.refusal
        path: str = scope["path"]
        if path.startswith("/v1/") or path == "/v1":
            got = headers.get(PROTOCOL_HEADER.lower().encode())
            if got is None or got.strip() != str(PROTOCOL_VERSION).encode():
                shown = "none" if got is None else repr(got.decode("latin-1")[:40])
                message = (
                    f"this server speaks protocol {PROTOCOL_VERSION} (header {PROTOCOL_HEADER}: "
                    f"{PROTOCOL_VERSION}), got {shown}; run the same mixplane version on both sides"
                )
                return decision, (400, message, {})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > MAX_BODY_BYTES
            except ValueError:
                return decision, (400, "invalid Content-Length", {})
            if too_large:
                return decision, (413, BodyTooLargeError().detail, {})
        return decision, None

    async def _audit(self, scope: Scope, decision: Decision, status: int) -> None:
        """The request's audit line, when its route or the route's handler names an action
        and someone known sent it (a 401 names nobody)."""
        noted: dict[str, Any] = scope.get(AUDIT) or {}
        action = noted.get("action") or decision.access.action
        who = decision.principal
        if action is None or who is None or self.audit is None:
            return
        details = {k: v for k, v in noted.items() if k != "action"}
        audit = self.audit
        assert audit is not None
        request = f"{scope['method']} {scope['path'][:1024]}"

        def write() -> None:
            try:
                audit.record(
                    action=action,
                    name=who.name,
                    role=who.role,
                    via=who.via,
                    request=request,
                    status=status,
                    details=details,
                )
            except OSError:
                log.exception("cannot write the audit log %s", audit.path)

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(write)

    @staticmethod
    def _limited(receive: Receive) -> Receive:
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise BodyTooLargeError
            return message

        return limited
