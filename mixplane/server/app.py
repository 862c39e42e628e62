"""The HTTP server: a FastAPI app over a ``JobStore``, speaking ``mixplane.protocol`` version 1.

``create_app`` builds the app; ``serve`` checks the address, opens the catalog, reloads the
jobs, binds the socket and runs uvicorn (uvloop, httptools) in this one process, which owns the
DuckDB catalog file.

Every request passes ``Guard`` (pure ASGI, a few microseconds): the bearer token on ``/v1/``,
``/metrics`` and the dashboard (``/``, ``/static/``, which also take it as ``?token=``;
``hmac.compare_digest``), the protocol header on ``/v1/``, the body limit
(``MAX_BODY_BYTES``, counted as the body streams in, so a missing Content-Length does not get
around it), and the latency histogram. Bodies are decoded by their Content-Type (msgpack with
length limits and ``raw=False``, or JSON) and validated by pydantic models before anything acts
on them; answers use the type the Accept header prefers. Work that takes long (catalog calls,
building jobs, feedback, checkpoints) runs in worker threads: catalog work in a small pool (its
calls are serialized anyway), job work (chunks, feedback, state) in another, so chunk answers
never queue behind a registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import ipaddress
import logging
import math
import os
import re
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import msgpack
import numpy as np
import orjson
import pyarrow as pa
from pyarrow import ipc

from mixplane.catalog.catalog import Catalog
from mixplane.chunking.assign import Topology
from mixplane.errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    DependencyError,
    FileChangedError,
    MixplaneError,
    PlanError,
    RegistrationError,
)
from mixplane.job import JobSpec
from mixplane.protocol import (
    ARROW_STREAM,
    JSON,
    MAX_BODY_BYTES,
    MAX_CHUNK_REQUESTS,
    MSGPACK,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
)
from mixplane.server import dashboard
from mixplane.server.jobs import (
    JOB_ID_PATTERN,
    JobConflictError,
    JobNotFoundError,
    JobStore,
)
from mixplane.server.metrics import CONTENT_TYPE as METRICS_TYPE
from mixplane.server.metrics import Metrics

try:
    import uvicorn
    from fastapi import FastAPI, Query, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import Response
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
    from pydantic.json_schema import models_json_schema
    from starlette.exceptions import HTTPException
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - the server extra is installed in development
    msg = "the mixplane server needs FastAPI and uvicorn: pip install 'mixplane[server]'"
    raise DependencyError(msg) from exc

log = logging.getLogger(__name__)

CATALOG_THREADS = 4  # threads that may wait for the catalog (its calls run one at a time)
JOB_THREADS = 32  # threads answering chunks, feedback and state
INLINE_DECODE_BYTES = 64 * 1024  # larger bodies are decoded in a worker thread
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")
LOOPBACK_NAMES = {"localhost": "127.0.0.1"}
MAX_TEXT = 64 * 1024  # characters of a filter or another free-text field
MAX_INT = 2**63 - 1
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
    "Referrer-Policy": "no-referrer",  # the page's address may carry the token
    "Cache-Control": "no-store",
}
_ASSET_LINK = re.compile(r'(src|href)="/static/([A-Za-z0-9_.-]+)"')

M = TypeVar("M", bound=BaseModel)
Scalar = bool | int | float | str | None
JobId = Annotated[str, PathParam(max_length=256, description="A job id")]


# -- request bodies (the protocol's maps, validated) ---------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, value in data.items():
                texts = value if isinstance(value, list) else [value]
                if any(isinstance(t, str) and "\x00" in t for t in texts):
                    msg = f"{key} holds a NUL character"
                    raise ValueError(msg)
        return data


class RegisterBody(_Body):
    """``POST /v1/datasets``: register files the server can read (absolute paths on its
    machine). Properties come from field paths, constants and presets; no code travels."""

    name: str = Field(min_length=1, max_length=256)
    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=100_000
    )
    format: Literal["jsonl", "parquet", "webdataset"] | None = None
    properties: dict[str, Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=1024
    )
    constants: dict[
        str,
        Annotated[str, Field(max_length=MAX_TEXT)]
        | bool
        | int
        | Annotated[float, Field(allow_inf_nan=False)],
    ] = Field(default_factory=dict, max_length=1024)
    preset: str | None = Field(default=None, max_length=64)
    text_field: str | None = Field(default=None, max_length=1024)
    on_error: Literal["raise", "skip"] = "raise"
    replace: bool = False


class ExplainBody(_Body):
    """``POST /v1/explain``: a filter's SQL and components."""

    where: str | None = Field(default=None, max_length=MAX_TEXT)
    by: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=64)
    runs: bool = False


class TopologyBody(_Body):
    dp_groups: int = Field(default=1, ge=1, le=65_536)
    ranks_per_group: int = Field(default=1, ge=1, le=65_536)
    workers: int = Field(default=1, ge=1, le=1024)

    @model_validator(mode="after")
    def _size(self) -> TopologyBody:
        if self.dp_groups * self.workers > 2**20 or self.dp_groups * self.ranks_per_group > 2**22:
            msg = "topology too large: at most 2**20 consumers and 2**22 ranks"
            raise ValueError(msg)
        return self


class PhaseBody(_Body):
    start: int = Field(ge=0, le=MAX_INT)
    where: str | None = Field(default=None, max_length=MAX_TEXT)
    mixture: dict[str, Any] = Field(max_length=10_000)
    on_exhausted: Literal["repeat", "stop", "redistribute"] = "repeat"


class SpecBody(_Body):
    """A job definition: ``JobSpec.to_json()``'s form."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    where: str | None = Field(default=None, max_length=MAX_TEXT)
    mixture: dict[str, Any] = Field(max_length=10_000)
    seed: int = Field(default=0, ge=0, le=MAX_INT)
    unit: Literal["samples", "tokens"] = "samples"
    chunk_size: int = Field(default=1000, ge=1, le=100_000_000)
    on_exhausted: Literal["repeat", "stop", "redistribute"] = "repeat"
    order: Literal["shuffled", "as-stored", "sorted"] = "shuffled"
    sort_by: str | None = Field(default=None, max_length=256)
    descending: bool = False
    block_size: int = Field(default=256, ge=1, le=1 << 24)
    bytes_per_token: float = Field(default=4.0, gt=0, le=1e6, allow_inf_nan=False)
    schedule: list[PhaseBody] = Field(default_factory=list, max_length=10_000)
    schedule_unit: Literal["chunks", "samples", "tokens"] = "chunks"
    tokenizer: str | None = Field(default=None, max_length=512)
    algorithm: str | None = Field(default=None, max_length=128)
    algorithm_options: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict, max_length=64)


class SubmitBody(_Body):
    """``POST /v1/jobs``: a job definition and its topology; the same again returns the
    existing job, another definition under a taken id is a 409 unless ``replace``."""

    spec: SpecBody
    topology: TopologyBody = Field(default_factory=TopologyBody)
    replace: bool = False


class _Numbers(BaseModel):
    """Items holding only numbers: strict and closed, no text to check (they come by the
    thousand in a chunk request)."""

    model_config = ConfigDict(strict=True, extra="forbid")


CONSUMER_MAX = 2**31 - 1
J_MAX = 2**40


class ChunkRequest(_Numbers):
    consumer: int = Field(ge=0, le=CONSUMER_MAX)
    j: int = Field(ge=0, le=J_MAX)


class ConsumedPosition(_Numbers):
    consumer: int = Field(ge=0, le=CONSUMER_MAX)
    rank: int = Field(ge=0, le=CONSUMER_MAX)
    j: int = Field(ge=0, le=J_MAX)


class ChunksBody(_Body):
    """``POST /v1/jobs/ID/chunks``: which chunks to answer, and where local ranks consume."""

    requests: list[ChunkRequest] = Field(max_length=MAX_CHUNK_REQUESTS)
    consumed: list[ConsumedPosition] = Field(default_factory=list, max_length=MAX_CHUNK_REQUESTS)


class FeedbackBody(_Body):
    """``POST /v1/jobs/ID/feedback``: per-component loss sums and token counts of a step."""

    step: int = Field(ge=0, le=MAX_INT)
    loss_sum: list[float] = Field(max_length=1 << 20)
    token_count: list[float] = Field(max_length=1 << 20)


class StateBody(_Body):
    """``POST /v1/jobs/ID/state``: a state from ``GET /v1/jobs/ID/state``."""

    state: dict[str, Any]


BODIES: tuple[type[BaseModel], ...] = (
    RegisterBody,
    ExplainBody,
    SubmitBody,
    ChunksBody,
    FeedbackBody,
    StateBody,
)


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that decodes its body itself (JSON is described;
    msgpack is accepted too)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "description": "JSON, or the same map as msgpack (Content-Type application/msgpack).",
            "content": {JSON: {"schema": ref}},
        }
    }


# -- encoding -----------------------------------------------------------------------------------
def wants_msgpack(accept: str | None) -> bool:
    """Whether an Accept header prefers msgpack to JSON (highest q, then first named)."""
    if not accept:
        return False
    best: tuple[tuple[float, int], str] | None = None
    for position, part in enumerate(accept.split(",")):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in MSGPACK_TYPES:
            kind = "msgpack"
        elif media in (JSON, "application/*", "*/*") or media.endswith("+json"):
            kind = "json"
        else:
            continue
        if not math.isfinite(q) or q <= 0:
            continue
        key_ = (q, -position)
        if best is None or key_ > best[0]:
            best = (key_, kind)
    return best is not None and best[1] == "msgpack"


def _plain(obj: Any) -> Any:
    """What the encoders cannot write themselves: numpy values, sets, anything else as text."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def encode(data: Any, *, as_msgpack: bool) -> tuple[bytes, str]:
    if as_msgpack:
        return msgpack.packb(data, use_bin_type=True, default=_plain), MSGPACK
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    return orjson.dumps(data, default=_plain, option=option), JSON


def respond(data: Any, *, as_msgpack: bool, status: int = 200) -> Response:
    body, media_type = encode(data, as_msgpack=as_msgpack)
    return Response(body, status_code=status, media_type=media_type)


def _error(request_headers: Mapping[str, str], status: int, message: str) -> Response:
    return respond(
        {"error": message}, as_msgpack=wants_msgpack(request_headers.get("accept")), status=status
    )


def unpack(raw: bytes) -> Any:
    """A msgpack body: text as str (``raw=False``), string map keys, no extension types, and
    every length bounded by the body limit (a forged length cannot allocate more)."""
    return msgpack.unpackb(
        raw,
        raw=False,
        strict_map_key=True,
        max_str_len=MAX_BODY_BYTES,
        max_bin_len=MAX_BODY_BYTES,
        max_array_len=MAX_BODY_BYTES,
        max_map_len=MAX_BODY_BYTES // 2,
        max_ext_len=0,
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    text = "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return text[:2000]


async def parse(request: Request, model: type[M]) -> M:
    """The request body decoded by its Content-Type and validated as ``model``."""
    return validate(model, await read_body(request, model))


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, _describe(exc)) from None


ChunkItems = tuple[list[tuple[int, int]], list[tuple[int, int, int]]]


def chunk_items(data: Any) -> ChunkItems:
    """The (consumer, j) requests and (consumer, rank, j) positions of a ``ChunksBody``.

    A well-formed body (the common case: hundreds of items a request) is read by a plain loop
    checking exactly what the model checks; anything else goes through the model, whose error
    names the field."""
    fast = _chunk_items(data)
    if fast is not None:
        return fast
    body = validate(ChunksBody, data)
    return (
        [(r.consumer, r.j) for r in body.requests],
        [(c.consumer, c.rank, c.j) for c in body.consumed],
    )


def _chunk_items(data: Any) -> ChunkItems | None:
    if type(data) is not dict or "requests" not in data or not data.keys() <= _CHUNKS_KEYS:
        return None
    requests, consumed = data["requests"], data.get("consumed", [])
    if type(requests) is not list or type(consumed) is not list:
        return None
    if len(requests) > MAX_CHUNK_REQUESTS or len(consumed) > MAX_CHUNK_REQUESTS:
        return None
    wanted = []
    for item in requests:
        if type(item) is not dict or len(item) != 2:
            return None
        consumer, j = item.get("consumer"), item.get("j")
        if type(consumer) is not int or type(j) is not int:
            return None
        if not (0 <= consumer <= CONSUMER_MAX and 0 <= j <= J_MAX):
            return None
        wanted.append((consumer, j))
    positions = []
    for item in consumed:
        if type(item) is not dict or len(item) != 3:
            return None
        consumer, rank, j = item.get("consumer"), item.get("rank"), item.get("j")
        if type(consumer) is not int or type(rank) is not int or type(j) is not int:
            return None
        if not (0 <= consumer <= CONSUMER_MAX and 0 <= rank <= CONSUMER_MAX and 0 <= j <= J_MAX):
            return None
        positions.append((consumer, rank, j))
    return wanted, positions


_CHUNKS_KEYS = frozenset(("requests", "consumed"))


async def read_body(request: Request, model: type[BaseModel]) -> Any:
    """The request body decoded by its Content-Type (to be validated as ``model``)."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    media = content_type.partition(";")[0].strip().lower()
    if not raw:
        msg = f"this request needs a body ({model.__name__}) as JSON or msgpack"
        raise HTTPException(400, msg)
    decode: Callable[[bytes], Any]
    if media in MSGPACK_TYPES:
        decode, what = unpack, "msgpack"
    elif media == JSON or (media.startswith("application/") and media.endswith("+json")):
        decode, what = orjson.loads, "JSON"
    else:
        msg = f"unsupported content type {content_type!r}; send {JSON} or {MSGPACK}"
        raise HTTPException(415, msg)
    try:
        if len(raw) <= INLINE_DECODE_BYTES:
            data = decode(raw)
        else:
            data = await anyio.to_thread.run_sync(decode, raw)
    except Exception as exc:  # the decoders fail in many ways on bad bytes; all are the client's
        msg = f"the body is not valid {what} ({str(exc) or type(exc).__name__})"
        raise HTTPException(400, msg) from None
    return data


def spec_of(body: SpecBody) -> JobSpec:
    """The ``JobSpec`` of a validated spec body (a mixture that does not parse is a 400)."""
    try:
        return JobSpec.from_json(body.model_dump())
    except MixplaneError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        msg = f"invalid job spec ({type(exc).__name__}: {exc}); see JobSpec.to_json()"
        raise PlanError(msg) from None


def status_of(exc: MixplaneError) -> int:
    if isinstance(exc, (JobNotFoundError, DatasetNotFoundError)):
        return 404
    if isinstance(exc, (JobConflictError, DatasetExistsError, FileChangedError)):
        return 409
    return 400


# -- the guard ----------------------------------------------------------------------------------
class BodyTooLargeError(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, f"request body larger than {MAX_BODY_BYTES} bytes")


class Guard:
    """Token, protocol header, body limit and latency metrics for every request."""

    def __init__(self, app: ASGIApp, *, token: str | None, metrics: Metrics) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            problem = self._check(scope)
            if problem is not None:
                code, message, extra = problem
                headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                }
                response = _error(headers, code, message)
                response.headers.update(extra)
                await response(scope, receive, send_status)
                return
            await self.app(scope, self._limited(receive), send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            endpoint = f"{scope['method']} {path}" if path else "unmatched"
            self.metrics.request(endpoint, status, time.perf_counter() - started)

    def _check(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        path: str = scope["path"]
        api = path.startswith("/v1/") or path == "/v1"
        page = path == "/" or path.startswith("/static/")  # the dashboard
        if not (api or page or path == "/metrics"):
            return None
        headers: dict[bytes, bytes] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.lower(), v)
        if self.token is not None:
            scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
            bearer = scheme.lower() == b"bearer" and hmac.compare_digest(
                credentials.strip(), self.token
            )
            if not bearer and not (page and self._query_token(scope)):
                message = "missing or wrong bearer token; send 'Authorization: Bearer TOKEN'"
                if page:
                    message = "missing or wrong token; open the dashboard as /?token=TOKEN"
                return 401, message, {"WWW-Authenticate": "Bearer"}
        if api:
            got = headers.get(PROTOCOL_HEADER.lower().encode())
            if got is None or got.strip() != str(PROTOCOL_VERSION).encode():
                shown = "none" if got is None else repr(got.decode("latin-1")[:40])
                message = (
                    f"this server speaks protocol {PROTOCOL_VERSION} (header {PROTOCOL_HEADER}: "
                    f"{PROTOCOL_VERSION}), got {shown}; run the same mixplane version on both sides"
                )
                return 400, message, {}
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > MAX_BODY_BYTES
            except ValueError:
                return 400, "invalid Content-Length", {}
            if too_large:
                return 413, BodyTooLargeError().detail, {}
        return None

    def _query_token(self, scope: Scope) -> bool:
        """Whether the query string carries the token (``?token=``; the dashboard's page and
        files, which a browser loads without headers)."""
        assert self.token is not None
        query = scope.get("query_string", b"").decode("latin-1")
        given = urllib.parse.parse_qs(query).get("token", [])
        return any(hmac.compare_digest(t.encode("utf-8"), self.token) for t in given[:1])

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


# -- the app ------------------------------------------------------------------------------------
def create_app(
    store: JobStore, *, token: str | None, checkpoint_every: float, metrics: Metrics
) -> FastAPI:
    """The server's app over ``store`` (which owns the open catalog). ``token`` None serves
    without authentication (loopback only: ``serve`` enforces it); ``checkpoint_every``
    seconds between checkpoints of changed jobs (0: only on request, feedback and shutdown)."""
    limiters: dict[str, anyio.CapacityLimiter] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiters["catalog"] = anyio.CapacityLimiter(CATALOG_THREADS)
        limiters["job"] = anyio.CapacityLimiter(JOB_THREADS)

        async def periodic() -> None:
            while True:
                await asyncio.sleep(checkpoint_every)
                try:
                    await anyio.to_thread.run_sync(store.checkpoint_all, limiter=limiters["job"])
                except Exception:  # keep checkpointing; the next round may succeed
                    log.exception("periodic checkpoint failed")

        task = asyncio.create_task(periodic()) if checkpoint_every > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(store.close)

    app = FastAPI(
        title="mixplane",
        version=str(PROTOCOL_VERSION),
        description=(
            "The mixplane server (wire protocol in mixplane/protocol.py). Every /v1/ request "
            f"carries {PROTOCOL_HEADER}: {PROTOCOL_VERSION}; bodies are JSON or msgpack."
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(Guard, token=token, metrics=metrics)

    async def _mixplane_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MixplaneError)
        return _error(request.headers, status_of(exc), str(exc))

    async def _http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = _error(request.headers, exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def _validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in list(exc.errors())[:5]
        ]
        return _error(request.headers, 422, "invalid request: " + "; ".join(parts))

    async def _internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(request.headers, 500, "internal server error; see the server's log")

    app.add_exception_handler(MixplaneError, _mixplane_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    def accepts_msgpack(request: Request) -> bool:
        return wants_msgpack(request.headers.get("accept"))

    async def off_loop(request: Request, work: Callable[[], Any], *, pool: str) -> Response:
        """``work()`` in a worker thread of ``pool``, its answer encoded there too."""
        as_msgpack = accepts_msgpack(request)

        def run() -> Response:
            data = work()
            return data if isinstance(data, Response) else respond(data, as_msgpack=as_msgpack)

        return await anyio.to_thread.run_sync(run, limiter=limiters.get(pool))

    def with_catalog(work: Callable[[Catalog], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with store.catalog_use() as catalog:
                return work(catalog)

        return run

    # -- open ---------------------------------------------------------------------------------
    @app.get("/healthz", summary="Liveness and protocol version (no token needed)")
    async def healthz(request: Request) -> Response:
        return respond(
            {"status": "ok", "protocol": PROTOCOL_VERSION}, as_msgpack=accepts_msgpack(request)
        )

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def get_metrics() -> Response:
        return Response(metrics.render(jobs=len(store)), media_type=METRICS_TYPE)

    # -- catalog ------------------------------------------------------------------------------
    @app.get("/v1/datasets", summary="Registered datasets")
    async def datasets(request: Request) -> Response:
        return await off_loop(
            request,
            with_catalog(lambda c: [d.to_dict() for d in c.datasets()]),
            pool="catalog",
        )

    @app.post(
        "/v1/datasets",
        summary="Register files the server can read",
        openapi_extra=_body_doc(RegisterBody),
    )
    async def register(request: Request) -> Response:
        body = await parse(request, RegisterBody)
        relative = [
            p for p in body.paths if "://" not in p and not os.path.isabs(os.path.expanduser(p))
        ]
        if relative:
            msg = (
                f"paths {relative[:3]} are relative; give absolute paths on the server's machine "
                "or object-store URIs (s3://bucket/prefix)"
            )
            raise RegistrationError(msg)

        def work(catalog: Catalog) -> Any:
            try:
                info = catalog.register(
                    body.name,
                    list(body.paths),
                    format=body.format,
                    properties=body.properties,
                    constants=body.constants,
                    preset=body.preset,
                    text_field=body.text_field,
                    on_error=body.on_error,
                    replace=body.replace,
                    progress=False,
                )
            except MixplaneError:
                raise
            except OSError as exc:
                msg = f"cannot register {body.name!r}: {exc}"
                raise RegistrationError(msg) from None
            report = info.to_dict()
            report["messages"] = [m for r in info.file_reports for m in r.messages][:1000]
            return report

        return await off_loop(request, with_catalog(work), pool="catalog")

    @app.post(
        "/v1/explain", summary="A filter's SQL and components", openapi_extra=_body_doc(ExplainBody)
    )
    async def explain(request: Request) -> Response:
        body = await parse(request, ExplainBody)
        return await off_loop(
            request,
            with_catalog(lambda c: c.explain(body.where, by=body.by).to_dict(runs=body.runs)),
            pool="catalog",
        )

    @app.get("/v1/files", summary="Registered files")
    async def files(request: Request) -> Response:
        return await off_loop(
            request, with_catalog(lambda c: c.files().to_pylist()), pool="catalog"
        )

    @app.get(
        "/v1/files/{file_id}/pointers",
        summary="Sample pointers of one file (Arrow IPC stream)",
        response_class=Response,
        responses={200: {"content": {ARROW_STREAM: {}}}},
    )
    async def pointers(
        request: Request, file_id: Annotated[int, PathParam(ge=0, le=2**31 - 1)]
    ) -> Response:
        def work(catalog: Catalog) -> Response:
            known = catalog.files().column("file_id").to_pylist()
            if file_id not in known:
                msg = f"unknown file id {file_id}; GET /v1/files lists the registered files"
                raise HTTPException(404, msg)
            table = pa.table(catalog.pointers(file_id))
            sink = pa.BufferOutputStream()
            with ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return Response(sink.getvalue().to_pybytes(), media_type=ARROW_STREAM)

        return await off_loop(request, with_catalog(work), pool="catalog")

    # -- jobs ---------------------------------------------------------------------------------
    @app.post(
        "/v1/jobs",
        summary="Submit a job (the same definition again returns the existing job)",
        openapi_extra=_body_doc(SubmitBody),
    )
    async def submit(request: Request) -> Response:
        body = await parse(request, SubmitBody)
        spec = spec_of(body.spec)
        topology = Topology(**body.topology.model_dump())

        def work() -> Any:
            sj, _ = store.submit(spec, topology, replace=body.replace)
            return sj.info()

        return await off_loop(request, work, pool="catalog")

    @app.get("/v1/jobs", summary="The server's jobs")
    async def jobs(request: Request) -> Response:
        return respond([sj.info() for sj in store], as_msgpack=accepts_msgpack(request))

    @app.get("/v1/jobs/{job_id}", summary="One job")
    async def job_info(request: Request, job_id: JobId) -> Response:
        return respond(store.get(job_id).info(), as_msgpack=accepts_msgpack(request))

    @app.delete("/v1/jobs/{job_id}", summary="Delete a job and its checkpoint")
    async def delete_job(request: Request, job_id: JobId) -> Response:
        def work() -> Any:
            store.delete(job_id)
            return {"job_id": job_id, "deleted": True}

        return await off_loop(request, work, pool="job")

    @app.get("/v1/jobs/{job_id}/explain", summary="What the job draws from each component")
    async def job_explain(
        request: Request,
        job_id: JobId,
        chunks: Annotated[int | None, Query(ge=1, le=10**12)] = None,
    ) -> Response:
        return await off_loop(request, lambda: store.explain(job_id, chunks), pool="job")

    @app.post(
        "/v1/jobs/{job_id}/chunks",
        summary="Consumers' chunk descriptors",
        openapi_extra=_body_doc(ChunksBody),
    )
    async def chunks(request: Request, job_id: JobId) -> Response:
        wanted, consumed = chunk_items(await read_body(request, ChunksBody))
        sj = store.get(job_id)
        as_msgpack = accepts_msgpack(request)

        def answer() -> Response:
            with sj.in_flight.answering():
                answers = sj.chunks(wanted, consumed)
                if as_msgpack:  # each chunk's bytes made once for its group's ranks
                    return Response(sj.encode_msgpack(answers), media_type=MSGPACK)
                return respond(sj.to_json(answers), as_msgpack=False)

        return await off_loop(request, answer, pool="job")

    @app.post(
        "/v1/jobs/{job_id}/feedback",
        summary="Per-component loss of a training step",
        openapi_extra=_body_doc(FeedbackBody),
    )
    async def feedback(request: Request, job_id: JobId) -> Response:
        body = await parse(request, FeedbackBody)
        store.get(job_id)

        def work() -> Any:
            at = store.feedback(job_id, body.step, body.loss_sum, body.token_count)
            return {"applies_from": at}

        return await off_loop(request, work, pool="job")

    @app.get("/v1/jobs/{job_id}/state", summary="A consistent checkpoint of the job")
    async def get_state(request: Request, job_id: JobId) -> Response:
        return await off_loop(request, lambda: store.state(job_id), pool="job")

    @app.post(
        "/v1/jobs/{job_id}/state",
        summary="Restore the job from a state",
        openapi_extra=_body_doc(StateBody),
    )
    async def post_state(request: Request, job_id: JobId) -> Response:
        body = await parse(request, StateBody)
        store.get(job_id)

        def work() -> Any:
            store.restore(job_id, body.state)
            return store.get(job_id).info()

        return await off_loop(request, work, pool="catalog")

    @app.post("/v1/jobs/{job_id}/checkpoint", summary="Write the job's checkpoint file now")
    async def checkpoint(request: Request, job_id: JobId) -> Response:
        sj = store.get(job_id)
        return await off_loop(request, lambda: {"path": str(store.checkpoint(sj))}, pool="job")

    @app.get("/v1/jobs/{job_id}/weights", summary="Current weights and the mixture log")
    async def weights(request: Request, job_id: JobId) -> Response:
        return await off_loop(request, lambda: store.weights(job_id), pool="job")

    # -- dashboard ----------------------------------------------------------------------------
    folder = resources.files("mixplane.server") / "static"
    assets = {name: (folder / name).read_bytes() for name in STATIC}

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        html = assets["index.html"].decode("utf-8")
        token = request.query_params.get("token")
        if token is not None:  # the Guard checked it: the page's files need it too
            quoted = urllib.parse.quote(token, safe="")
            html = _ASSET_LINK.sub(rf'\1="/static/\2?token={quoted}"', html)
        return Response(html, media_type=STATIC["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: Annotated[str, PathParam(max_length=64)]) -> Response:
        if name not in STATIC:
            msg = f"no dashboard file {name!r}; the dashboard has {sorted(STATIC)}"
            raise HTTPException(404, msg)
        return Response(assets[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    @app.get("/v1/dashboard/jobs", summary="Every job in a line, for the dashboard")
    async def dashboard_jobs(request: Request) -> Response:
        return await off_loop(request, lambda: dashboard.overview(store), pool="job")

    @app.get("/v1/jobs/{job_id}/dashboard", summary="One job's dashboard panels")
    async def job_dashboard(
        request: Request,
        job_id: JobId,
        history: Annotated[int, Query(ge=1, le=dashboard.HISTORY_MAX)] = dashboard.HISTORY,
        steps: Annotated[int, Query(ge=0, le=dashboard.STEPS_MAX)] = dashboard.STEPS,
    ) -> Response:
        return await off_loop(
            request,
            lambda: dashboard.dashboard(store, job_id, history=history, steps=steps),
            pool="job",
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [(m, "validation") for m in BODIES], ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs.get("$defs", {}))
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        header = {
            "name": PROTOCOL_HEADER,
            "in": "header",
            "required": True,
            "description": "The wire protocol version.",
            "schema": {"type": "string", "enum": [str(PROTOCOL_VERSION)]},
        }
        schemas = components["schemas"]
        for name in ("HTTPValidationError", "ValidationError"):  # errors are {"error": text}
            schemas.pop(name, None)
        schemas["Error"] = {
            "type": "object",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        }
        error = {
            "description": "The request was refused; the message says why.",
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = error
                if path.startswith("/v1/"):
                    operation.setdefault("parameters", []).append(dict(header))
                if path.startswith("/v1/") or path == "/metrics":
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# -- serving ------------------------------------------------------------------------------------
def bind_address(host: str, *, token: str | None) -> tuple[socket.AddressFamily, str]:
    """The address family and numeric address to bind for ``host``; anything but loopback
    without a token is refused."""
    name = host.strip().strip("[]")
    name = LOOPBACK_NAMES.get(name.lower(), name)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            msg = f"cannot resolve host {host!r} ({exc}); pass an address such as 127.0.0.1"
            raise MixplaneError(msg) from None
        address = ipaddress.ip_address(infos[0][4][0])
    if not address.is_loopback and token is None:
        msg = (
            f"refusing to listen on {host} (not a loopback address) without a token; pass "
            "--token-file FILE (or set MIXPLANE_TOKEN_FILE) holding a secret, or bind 127.0.0.1"
        )
        raise MixplaneError(msg)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return family, str(address)


def read_token(path: str | Path) -> str:
    """The bearer token in a file (surrounding whitespace stripped)."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        msg = f"token file {path} is empty; write a secret into it (e.g. secrets.token_urlsafe(32))"
        raise MixplaneError(msg)
    if not all(0x21 <= ord(ch) <= 0x7E for ch in token):
        msg = f"the token in {path} must be printable ASCII without spaces"
        raise MixplaneError(msg)
    return token


def serve(
    home: str | Path | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8411,
    token: str | None = None,
    checkpoint_every: float = 30.0,
    announce: Callable[[str], None] = print,
) -> None:
    """Run the server until it is stopped (SIGINT/SIGTERM): check the address, open the
    catalog, reload the jobs, bind, serve; ``announce`` gets ``mixplane server listening on
    URL`` once connections are accepted."""
    family, address = bind_address(host, token=token)
    catalog = Catalog.open(home)
    metrics = Metrics()
    store = JobStore(catalog, catalog.home / "server" / "jobs", metrics)
    sock: socket.socket | None = None
    try:
        store.load()
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(2048)
        bound_port = sock.getsockname()[1]
        shown = f"[{address}]" if family == socket.AF_INET6 else address
        url = f"http://{shown}:{bound_port}"
        app = create_app(store, token=token, checkpoint_every=checkpoint_every, metrics=metrics)
        # chunk answers allocate many short-lived objects: fewer full collections (each one
        # pauses every request; benchmarks/serve.py measured 21-31 per run at the defaults)
        gc.set_threshold(100_000, 50, 100)
        config = uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=10,
            backlog=2048,
        )
        server = uvicorn.Server(config)

        async def run() -> None:
            task = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            if server.started:
                announce(f"mixplane server listening on {url}")
            await task

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: shut down quietly
            _run_loop(run, config)
    finally:
        store.close()
        if sock is not None:
            sock.close()


def _run_loop(main: Callable[[], Awaitable[None]], config: Any) -> None:
    factory = config.get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())  # type: ignore[arg-type]
