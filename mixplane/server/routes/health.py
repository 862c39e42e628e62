"""Open routes: liveness with the protocol version, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mixplane.protocol import PROTOCOL_VERSION
from mixplane.server.context import context
from mixplane.server.http import accepts_msgpack, respond
from mixplane.server.metrics import CONTENT_TYPE as METRICS_TYPE

router = APIRouter()


@router.get("/healthz", summary="Liveness and protocol version (no token needed)")
async def healthz(request: Request) -> Response:
    return respond(
        {"status": "ok", "protocol": PROTOCOL_VERSION}, as_msgpack=accepts_msgpack(request)
    )


@router.get("/metrics", summary="Prometheus metrics (text format)")
async def get_metrics(request: Request) -> Response:
    ctx = context(request)
    return Response(ctx.metrics.render(jobs=len(ctx.store)), media_type=METRICS_TYPE)
