"""The HTTP server: a FastAPI app over a ``JobStore``, speaking ``mixplane.protocol`` version 1.

``create_app`` builds the app: one ``ServerContext`` (``context.py``) on ``app.state``, the
routers of ``routes/`` (one module per resource), the ``Guard`` middleware (``guard.py``:
access, protocol header, body limit, metrics, audit), the error handlers (``http.py``:
``{"error", "type"}`` with the status of the error's class) and the OpenAPI schema. ``serve``
checks the address, opens the catalog, reloads the jobs, binds the socket and runs uvicorn
(uvloop, httptools) in this one process, which owns the DuckDB catalog file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from mixplane.catalog.catalog import Catalog
from mixplane.errors import DependencyError, MixplaneError
from mixplane.protocol import JSON, PROTOCOL_HEADER, PROTOCOL_VERSION
from mixplane.server.audit import AuditLog
from mixplane.server.auth import SESSION_COOKIE, Credentials, Gate, Sessions
from mixplane.server.feedback_log import FsyncPolicy
from mixplane.server.jobs import JobStore
from mixplane.server.metrics import Metrics
from mixplane.server.roles import ROUTES, require_declared
from mixplane.server.roots import DataRoots
from mixplane.server.security import Security

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import Response
    from pydantic.json_schema import models_json_schema
    from starlette.exceptions import HTTPException

    from mixplane.server.context import ServerContext
    from mixplane.server.guard import Guard
    from mixplane.server.http import error_response, status_of
    from mixplane.server.routes import BODIES, ROUTERS
except ImportError as exc:  # pragma: no cover - the server extra is installed in development
    msg = "the mixplane server needs FastAPI and uvicorn: pip install 'mixplane[server]'"
    raise DependencyError(msg) from exc

log = logging.getLogger(__name__)
LOOPBACK_NAMES = {"localhost": "127.0.0.1"}


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
    sessions = Sessions()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.start_pools()
        job_pool = ctx.limiters["job"]

        async def periodic() -> None:
            while True:
                await asyncio.sleep(checkpoint_every)
                try:
                    await anyio.to_thread.run_sync(store.checkpoint_all, limiter=job_pool)
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
    ctx = ServerContext(
        store=store, metrics=metrics, security=security, sessions=sessions, gate=gate
    )
    app.state.mixplane = ctx
    app.add_middleware(Guard, gate=gate, metrics=metrics, audit=audit)
    app.add_exception_handler(MixplaneError, _mixplane_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    for router in ROUTERS:  # the routes themselves, in one flat table: the gate, the metrics'
        app.router.routes.extend(router.routes)  # labels and roles.ROUTES match on them
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    require_declared(
        (method, str(getattr(route, "path", "")))
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    )
    return app


# -- errors ---------------------------------------------------------------------------------------
async def _mixplane_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MixplaneError)
    return error_response(request.headers, status_of(exc), str(exc), type(exc).__name__)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_response(request.headers, exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
        for e in list(exc.errors())[:5]
    ]
    return error_response(request.headers, 422, "invalid request: " + "; ".join(parts))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request.headers, 500, "internal server error; see the server's log")


# -- OpenAPI --------------------------------------------------------------------------------------
def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema: bodies the routes decode themselves, the error shape, the
    protocol header and each operation's role (``roles.ROUTES``); made once."""
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
