"""What every route shares: the job store (which owns the catalog), metrics, security,
dashboard sessions, the gate, and the two thread pools (``pool="catalog"``: catalog calls,
which run one at a time anyway; ``pool="job"``: chunks, feedback and state, so chunk answers
never queue behind a registration). ``create_app`` puts one ``ServerContext`` on
``app.state``; a route finds it with ``context(request)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import anyio
from fastapi import Request
from fastapi.responses import Response

from mixplane.catalog.catalog import Catalog
from mixplane.server.auth import Gate, Sessions
from mixplane.server.http import accepts_msgpack, respond
from mixplane.server.jobs import JobStore
from mixplane.server.metrics import Metrics
from mixplane.server.security import Security

CATALOG_THREADS = 4  # threads that may wait for the catalog (its calls run one at a time)
JOB_THREADS = 32  # threads answering chunks, feedback and state

T = TypeVar("T")
Pool = Literal["catalog", "job"]


@dataclasses.dataclass(slots=True, kw_only=True)
class ServerContext:
    store: JobStore
    metrics: Metrics
    security: Security
    sessions: Sessions
    gate: Gate
    #: made when the app starts (a limiter belongs to its event loop); none before: no limit
    limiters: dict[str, anyio.CapacityLimiter] = dataclasses.field(default_factory=dict)

    def start_pools(self) -> None:
        self.limiters["catalog"] = anyio.CapacityLimiter(CATALOG_THREADS)
        self.limiters["job"] = anyio.CapacityLimiter(JOB_THREADS)

    async def off_loop(self, request: Request, work: Callable[[], Any], *, pool: Pool) -> Response:
        """``work()`` in a worker thread of ``pool``, its answer encoded there too."""
        as_msgpack = accepts_msgpack(request)

        def run() -> Response:
            data = work()
            return data if isinstance(data, Response) else respond(data, as_msgpack=as_msgpack)

        return await anyio.to_thread.run_sync(run, limiter=self.limiters.get(pool))

    async def off_loop_value(self, work: Callable[[], T], *, pool: Pool) -> T:
        """``work()`` in a worker thread of ``pool``."""
        return await anyio.to_thread.run_sync(work, limiter=self.limiters.get(pool))

    def with_catalog(self, work: Callable[[Catalog], Any]) -> Callable[[], Any]:
        """``work`` run with the catalog held (``JobStore.catalog_use``)."""
        store = self.store

        def run() -> Any:
            with store.catalog_use() as catalog:
                return work(catalog)

        return run


def context(request: Request) -> ServerContext:
    """The app's ``ServerContext`` (``create_app`` set it)."""
    return cast(ServerContext, request.app.state.mixplane)
