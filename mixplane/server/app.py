"""The HTTP server: a FastAPI app over a ``JobStore``, speaking ``mixplane.protocol`` version 1.

``create_app`` builds the app; ``serve`` checks the address, opens the catalog, reloads the
jobs, binds the socket and runs uvicorn (uvloop, httptools) in this one process, which owns the
DuckDB catalog file.

Every request passes ``Guard`` (pure ASGI, a few microseconds): who sends it and whether its
role may call the route (``auth.Gate`` over the table ``roles.ROUTES``: 401 without a known
token or session, 403 below the route's role), the protocol header on ``/v1/``, the body limit
(``MAX_BODY_BYTES``, counted as the body streams in, so a missing Content-Length does not get
around it), the latency histogram, and the audit log's line for actions it records
(``audit``). Registration reads only below the data roots (``roots``). Bodies are decoded by their Content-Type (msgpack with
length limits and ``raw=False``, or JSON) and validated by pydantic models before anything acts
on them; answers use the type the Accept header prefers. Work that takes long (catalog calls,
building jobs, feedback, checkpoints) runs in worker threads: catalog work in a small pool (its
calls are serialized anyway), job work (chunks, feedback, state) in another, so chunk answers
never queue behind a registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_type_hints

import anyio
import duckdb
import msgpack
import numpy as np
import orjson
import pyarrow as pa
from pyarrow import ipc

from mixplane.catalog.catalog import Catalog
from mixplane.catalog.formats import FormatName
from mixplane.catalog.token_counts import cpu_count
from mixplane.chunking.assign import Topology
from mixplane.errors import (
    AccessDeniedError,
    DatasetExistsError,
    DatasetNotFoundError,
    DependencyError,
    FileChangedError,
    JobConflictError,
    JobNotFoundError,
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
from mixplane.server.audit import AuditLog
from mixplane.server.auth import (
    SESSION_COOKIE,
    Credentials,
    Decision,
    Gate,
    Principal,
    Sessions,
    cookie_value,
    session_cookie,
)
from mixplane.server.feedback_log import FsyncPolicy
from mixplane.server.jobs import JobStore
from mixplane.server.metrics import CONTENT_TYPE as METRICS_TYPE
from mixplane.server.metrics import Metrics
from mixplane.server.roles import ROUTES, require_declared
from mixplane.server.roots import DataRoots
from mixplane.server.security import Security
from mixplane.tokens.wire import MAX_TOKENIZER_CHARS, tokenizer_from_wire

try:
    import uvicorn
    from fastapi import FastAPI, Query, Request
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import Response
    from pydantic import (
        BaseModel,
        ConfigDict,
        Field,
        ValidationError,
        create_model,
        model_validator,
    )
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
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
DECISION = "mixplane.decision"  # scope key: the gate's Decision for the request
AUDIT = "mixplane.audit"  # scope key: details (and an action) a route adds to its audit line

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
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


#: the JSON forms of the job options that are not plain values, and the options whose 0
#: means "the default" (null on the wire)
_WIRE_FORMS: dict[str, Any] = {
    "mixture": dict[str, Any],
    "schedule": list[PhaseBody],
    "algorithm_options": dict[str, Scalar | list[Scalar]],
}
_ZERO_IS_DEFAULT = ("chunk_size", "read_ahead")


def _spec_body() -> type[_Body]:
    """``POST /v1/jobs``'s job definition (``JobSpec.to_json()``'s form), made from the
    ``JobSpec`` fields themselves: their types, defaults and the limits each declares."""
    hints = get_type_hints(JobSpec)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(JobSpec):
        wire = dict(f.metadata.get("wire", {}))
        annotation = _WIRE_FORMS.get(f.name, hints[f.name])
        if f.name in ("job_id", "mixture"):  # required
            fields[f.name] = (annotation, Field(..., **wire))
        elif f.name in _ZERO_IS_DEFAULT:
            fields[f.name] = (annotation | None, Field(default=None, **wire))
        elif f.name in _WIRE_FORMS:
            empty = list if f.name == "schedule" else dict
            fields[f.name] = (annotation, Field(default_factory=empty, **wire))
        else:
            fields[f.name] = (annotation, Field(default=f.default, **wire))
    model = create_model("SpecBody", __base__=_Body, **fields)
    model.__doc__ = "A job definition: ``JobSpec.to_json()``'s form."
    return model


SpecBody = _spec_body()
if TYPE_CHECKING:  # a model made at run time: statically, some request body
    _SpecBody = _Body
else:
    _SpecBody = SpecBody


class TokenizerBody(_Body):
    """A tokenizer as data (``mixplane/tokens/wire.py``): by name, or its file's text."""

    name: str | None = Field(default=None, max_length=64)
    kind: Literal["hf", "tiktoken"] | None = None
    data: str | None = Field(default=None, max_length=MAX_TOKENIZER_CHARS)
    pattern: str | None = Field(default=None, max_length=4096)
    special_tokens: dict[Annotated[str, Field(max_length=256)], int] | None = Field(
        default=None, max_length=100_000
    )
    normalize: Literal["NFC"] | None = None
    fingerprint: str | None = Field(default=None, max_length=64)


class CountTokensBody(_Body):
    """``POST /v1/token-counts``: count and store exact token counts with ``tokenizer`` (a
    name the server knows, or the text of a ``tokenizer.json`` / rank file: data, parsed,
    never run, never a path on the server)."""

    tokenizer: TokenizerBody
    datasets: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=100_000
    )
    workers: int | None = Field(default=None, ge=1, le=1024)
    on_changed: Literal["error", "skip"] = "error"


class SubmitBody(_Body):
    """``POST /v1/jobs``: a job definition and its topology; the same again returns the
    existing job, another definition under a taken id is a 409 unless ``replace``. A job that
    names a tokenizer (``spec.tokenizer``, its fingerprint) is sized with ``tokenizer`` (the
    tokenizer as data) unless the catalog has its token counts."""

    spec: _SpecBody
    topology: TopologyBody = Field(default_factory=TopologyBody)
    replace: bool = False
    tokenizer: TokenizerBody | None = None


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
    consumed: list[ConsumedPosition] = Field(default_factory=list, max_length=MAX_CHUNK_REQUESTS)


class StateBody(_Body):
    """``POST /v1/jobs/ID/state``: a state from ``GET /v1/jobs/ID/state``."""

    state: dict[str, Any]


BODIES: tuple[type[BaseModel], ...] = (
    RegisterBody,
    CountTokensBody,
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


def _error(
    request_headers: Mapping[str, str], status: int, message: str, kind: str | None = None
) -> Response:
    """``{"error": message}`` (and ``"type"``: the ``MixplaneError`` class raised, so a
    remote client raises the same class as in-process)."""
    body = {"error": message} if kind is None else {"error": message, "type": kind}
    return respond(body, as_msgpack=wants_msgpack(request_headers.get("accept")), status=status)


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


def spec_of(body: BaseModel) -> JobSpec:
    """The ``JobSpec`` of a validated spec body (a mixture that does not parse is a 400)."""
    try:
        return JobSpec.from_json(body.model_dump())
    except MixplaneError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        msg = f"invalid job spec ({type(exc).__name__}: {exc}); see JobSpec.to_json()"
        raise PlanError(msg) from None


def status_of(exc: MixplaneError) -> int:
    if isinstance(exc, AccessDeniedError):
        return 403
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


# -- the app ------------------------------------------------------------------------------------
def create_app(
    store: JobStore,
    *,
    checkpoint_every: float,
    metrics: Metrics,
    token: str | None = None,
    security: Security | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The server's app over ``store`` (which owns the open catalog). ``security``: tokens,
    data roots and TLS (``Security.configure``); ``token`` is shorthand for one admin token
    and no data roots; neither serves without authentication (loopback only: ``serve``
    enforces it). ``audit`` receives the audit lines. ``checkpoint_every`` seconds between
    checkpoints of changed jobs (0: only on request, feedback and shutdown). Every route must
    have its role in ``roles.ROUTES``, else ``UnguardedRouteError``."""
    if security is None:
        credentials = Credentials.single(token) if token is not None else None
        security = Security(credentials=credentials, roots=None if token is None else DataRoots())
    roots = security.roots
    sessions = Sessions()
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
    gate = Gate(security.credentials, sessions, routes=lambda: app.router.routes)
    app.add_middleware(Guard, gate=gate, metrics=metrics, audit=audit)

    async def _mixplane_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MixplaneError)
        return _error(request.headers, status_of(exc), str(exc), type(exc).__name__)

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

    async def off_loop_value(work: Callable[[], T], *, pool: str) -> T:
        """``work()`` in a worker thread of ``pool``."""
        return await anyio.to_thread.run_sync(work, limiter=limiters.get(pool))

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
        request.scope[AUDIT] = {"dataset": body.name, "paths": body.paths}
        relative = [
            p for p in body.paths if "://" not in p and not os.path.isabs(os.path.expanduser(p))
        ]
        if relative:
            msg = (
                f"paths {relative[:3]} are relative; give absolute paths on the server's machine "
                "or object-store URIs (s3://bucket/prefix)"
            )
            raise RegistrationError(msg)
        paths = list(body.paths)
        fmt: FormatName | None = body.format
        if roots is not None:  # the files below the data roots, checked (403 otherwise)
            confined = await off_loop_value(lambda: roots.confine(paths, fmt), pool="catalog")
            paths, fmt = confined.paths, confined.format

        def work(catalog: Catalog) -> Any:
            try:
                info = catalog.register(
                    body.name,
                    paths,
                    format=fmt,
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
        "/v1/token-counts",
        summary="Count and store exact token counts (cached per tokenizer and file)",
        openapi_extra=_body_doc(CountTokensBody),
    )
    async def count_tokens(request: Request) -> Response:
        body = await parse(request, CountTokensBody)
        sent = body.tokenizer.model_dump(exclude_none=True)
        request.scope[AUDIT] = {
            "tokenizer": sent.get("name") or sent.get("fingerprint") or sent.get("kind"),
            "datasets": body.datasets,
        }

        def work() -> Any:
            tokenizer = tokenizer_from_wire(sent)
            try:  # the catalog lock is held only while the catalog is used, not while counting
                report = store.catalog.count_tokens(
                    tokenizer,
                    datasets=body.datasets,
                    workers=min(body.workers, cpu_count()) if body.workers else None,
                    on_changed=body.on_changed,
                    progress=False,
                    lock=store.catalog_lock,
                )
            except duckdb.Error as exc:
                log.warning("catalog error", exc_info=True)
                msg = f"the catalog could not run this request ({type(exc).__name__}: {exc})"
                raise PlanError(msg) from None
            return report.to_dict()

        return await off_loop(request, work, pool="catalog")

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
        if body.replace:  # starts an existing job over: in the audit log
            request.scope[AUDIT] = {"action": "replace", "job_id": spec.job_id}
        topology = Topology(**body.topology.model_dump())

        sent = body.tokenizer.model_dump(exclude_none=True) if body.tokenizer else None

        def work() -> Any:
            sj, _ = store.submit(spec, topology, replace=body.replace, tokenizer=sent)
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

        consumed = [(c.consumer, c.rank, c.j) for c in body.consumed]

        def work() -> Any:
            at = store.feedback(
                job_id, body.step, body.loss_sum, body.token_count, consumed=consumed
            )
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

    @app.get(
        "/v1/jobs/{job_id}/manifest",
        summary="Requested vs delivered token shares and the mixture versions (feedback log)",
    )
    async def manifest(request: Request, job_id: JobId) -> Response:
        return await off_loop(request, lambda: store.manifest(job_id), pool="job")

    @app.get("/v1/jobs/{job_id}/trace", summary="The job's logged feedback, every step")
    async def trace(
        request: Request,
        job_id: JobId,
        start: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> Response:
        return await off_loop(request, lambda: store.trace(job_id, start, limit), pool="job")

    # -- dashboard ----------------------------------------------------------------------------
    folder = resources.files("mixplane.server") / "static"
    assets = {name: (folder / name).read_bytes() for name in STATIC}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:  # open: the same bytes for everyone, no data
        return Response(assets["index.html"], media_type=STATIC["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: Annotated[str, PathParam(max_length=64)]) -> Response:
        if name not in STATIC:
            msg = f"no dashboard file {name!r}; the dashboard has {sorted(STATIC)}"
            raise HTTPException(404, msg)
        return Response(assets[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    @app.post(
        "/v1/session",
        summary="Trade the bearer token for a dashboard session cookie (viewer role)",
    )
    async def open_session(request: Request) -> Response:
        decision: Decision = request.scope[DECISION]
        holder: Principal | None = decision.principal
        if gate.credentials is None:
            msg = "this server has no tokens: the dashboard needs no session"
            raise HTTPException(400, msg)
        if holder is None or holder.via != "token":
            msg = "open a session with the token itself: send 'Authorization: Bearer TOKEN'"
            raise HTTPException(400, msg)
        value = sessions.open(holder)
        seconds = int(sessions.seconds)
        answer = {"name": holder.name, "role": "viewer", "expires_in": seconds}
        response = respond(answer, as_msgpack=accepts_msgpack(request))
        response.headers["Set-Cookie"] = session_cookie(
            value, secure=security.tls is not None, max_age=seconds
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.delete("/v1/session", summary="End the dashboard session of the cookie sent")
    async def close_session(request: Request) -> Response:
        sent = cookie_value(request.headers.get("cookie", "").encode("latin-1"), SESSION_COOKIE)
        if sent is not None:
            sessions.close(sent)
        response = respond({"closed": sent is not None}, as_msgpack=accepts_msgpack(request))
        response.headers["Set-Cookie"] = session_cookie(
            "", secure=security.tls is not None, max_age=0
        )
        return response

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
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
        }
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
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = error
                if path.startswith("/v1/"):
                    operation.setdefault("parameters", []).append(dict(header))
                access = ROUTES.get((method.upper(), path))
                role = access.role if access is not None else "admin"
                operation["x-mixplane-role"] = role
                if role is not None:  # a session (the dashboard's cookie) is a viewer
                    schemes: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
                    schemes = schemes[: 2 if role == "viewer" else 1]
                    operation["security"] = schemes
                    operation["description"] = (
                        f"{operation.get('description', '')}\n\nNeeds role `{role}`."
                    ).strip()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    require_declared(
        (method, str(getattr(route, "path", "")))
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    )
    return app


# -- serving ------------------------------------------------------------------------------------
def bind_address(host: str, *, authenticated: bool) -> tuple[socket.AddressFamily, str]:
    """The address family and numeric address to bind for ``host``; anything but loopback
    without tokens (``authenticated`` False) is refused."""
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
    if not address.is_loopback and not authenticated:
        msg = (
            f"refusing to listen on {host} (not a loopback address) without a token; pass "
            "--tokens-file FILE (tokens with roles) or --token-file FILE (one admin token, or "
            "set MIXPLANE_TOKEN_FILE), or bind 127.0.0.1"
        )
        raise MixplaneError(msg)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return family, str(address)


def serve(
    home: str | Path | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8411,
    token: str | None = None,
    security: Security | None = None,
    checkpoint_every: float = 30.0,
    feedback_fsync: FsyncPolicy = "group",
    announce: Callable[[str], None] = print,
) -> None:
    """Run the server until it is stopped (SIGINT/SIGTERM): check the address, open the
    catalog, reload the jobs, bind, serve; ``announce`` gets ``mixplane server listening on
    URL`` (``https://`` under TLS) once connections are accepted. ``security``: tokens, data
    roots and TLS (``Security.configure``); ``token`` is shorthand for one admin token."""
    if security is None:
        credentials = Credentials.single(token) if token is not None else None
        security = Security(credentials=credentials, roots=None if token is None else DataRoots())
    family, address = bind_address(host, authenticated=security.credentials is not None)
    for warning in security.warnings(host=host, loopback=ipaddress.ip_address(address).is_loopback):
        log.warning("%s", warning)
    catalog = Catalog.open(home)
    metrics = Metrics()
    store = JobStore(
        catalog, catalog.home / "server" / "jobs", metrics, feedback_fsync=feedback_fsync
    )
    audit: AuditLog | None = None
    sock: socket.socket | None = None
    try:
        audit = AuditLog(catalog.home / "server" / "audit.log")
        store.load()
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(2048)
        bound_port = sock.getsockname()[1]
        shown = f"[{address}]" if family == socket.AF_INET6 else address
        url = f"{'https' if security.tls else 'http'}://{shown}:{bound_port}"
        app = create_app(
            store,
            security=security,
            audit=audit,
            checkpoint_every=checkpoint_every,
            metrics=metrics,
        )
        holders = security.credentials.holders() if security.credentials is not None else []
        roots = security.roots
        audit.record(
            action="serve",
            name="server",
            role=None,
            via=None,
            details={
                "url": url,
                "tokens": holders,
                "data_roots": None if roots is None else roots.describe(),
                "tls": security.tls is not None,
            },
        )
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
            ssl_certfile=security.tls.cert if security.tls else None,
            ssl_keyfile=security.tls.key if security.tls else None,
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
        if audit is not None:
            audit.close()
        if sock is not None:
            sock.close()


def _run_loop(main: Callable[[], Awaitable[None]], config: Any) -> None:
    factory = config.get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())  # type: ignore[arg-type]
