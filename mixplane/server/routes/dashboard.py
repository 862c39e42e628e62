"""Routes of the dashboard: its page and static files (open: the same bytes for everyone, no
data), the session cookie traded for a token (viewer role), and the panels' data
(``mixplane.server.dashboard``)."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from mixplane.server import dashboard
from mixplane.server.auth import SESSION_COOKIE, Decision, Principal, cookie_value, session_cookie
from mixplane.server.context import context
from mixplane.server.guard import DECISION
from mixplane.server.http import JobId, accepts_msgpack, respond

router = APIRouter()

STATIC = {  # the dashboard's files (mixplane/server/static) and their types; nothing else
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@functools.cache
def asset(name: str) -> bytes:
    """The bytes of one of the dashboard's files (``STATIC``)."""
    return (resources.files("mixplane.server") / "static" / name).read_bytes()


@router.get("/", include_in_schema=False)
async def page() -> Response:  # open: the same bytes for everyone, no data
    return Response(asset("index.html"), media_type=STATIC["index.html"], headers=PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def static(name: Annotated[str, PathParam(max_length=64)]) -> Response:
    if name not in STATIC:
        msg = f"no dashboard file {name!r}; the dashboard has {sorted(STATIC)}"
        raise HTTPException(404, msg)
    return Response(asset(name), media_type=STATIC[name], headers=PAGE_HEADERS)


@router.post(
    "/v1/session",
    summary="Trade the bearer token for a dashboard session cookie (viewer role)",
)
async def open_session(request: Request) -> Response:
    ctx = context(request)
    decision: Decision = request.scope[DECISION]
    holder: Principal | None = decision.principal
    if ctx.gate.credentials is None:
        msg = "this server has no tokens: the dashboard needs no session"
        raise HTTPException(400, msg)
    if holder is None or holder.via != "token":
        msg = "open a session with the token itself: send 'Authorization: Bearer TOKEN'"
        raise HTTPException(400, msg)
    value = ctx.sessions.open(holder)
    seconds = int(ctx.sessions.seconds)
    answer = {"name": holder.name, "role": "viewer", "expires_in": seconds}
    response = respond(answer, as_msgpack=accepts_msgpack(request))
    response.headers["Set-Cookie"] = session_cookie(
        value, secure=ctx.security.tls is not None, max_age=seconds
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.delete("/v1/session", summary="End the dashboard session of the cookie sent")
async def close_session(request: Request) -> Response:
    ctx = context(request)
    sent = cookie_value(request.headers.get("cookie", "").encode("latin-1"), SESSION_COOKIE)
    if sent is not None:
        ctx.sessions.close(sent)
    response = respond({"closed": sent is not None}, as_msgpack=accepts_msgpack(request))
    response.headers["Set-Cookie"] = session_cookie(
        "", secure=ctx.security.tls is not None, max_age=0
    )
    return response


@router.get("/v1/dashboard/jobs", summary="Every job in a line, for the dashboard")
async def dashboard_jobs(request: Request) -> Response:
    ctx = context(request)
    return await ctx.off_loop(request, lambda: dashboard.overview(ctx.store), pool="job")


@router.get("/v1/jobs/{job_id}/dashboard", summary="One job's dashboard panels")
async def job_dashboard(
    request: Request,
    job_id: JobId,
    history: Annotated[int, Query(ge=1, le=dashboard.HISTORY_MAX)] = dashboard.HISTORY,
    steps: Annotated[int, Query(ge=0, le=dashboard.STEPS_MAX)] = dashboard.STEPS,
) -> Response:
    ctx = context(request)
    return await ctx.off_loop(
        request,
        lambda: dashboard.dashboard(ctx.store, job_id, history=history, steps=steps),
        pool="job",
    )
