"""The server's routes, one module per resource, each an ``APIRouter`` with its request models
beside it: ``health`` (liveness, metrics), ``datasets`` (the catalog), ``jobs``, ``chunks``,
``feedback`` and ``dashboard``. ``create_app`` includes ``ROUTERS`` in this order; every route
needs its role in ``roles.ROUTES``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from mixplane.server.routes import chunks, dashboard, datasets, feedback, health, jobs

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    datasets.router,
    jobs.router,
    chunks.router,
    feedback.router,
    dashboard.router,
)

#: request bodies that routes decode themselves (JSON or msgpack), described in the OpenAPI
BODIES: tuple[type[BaseModel], ...] = (
    datasets.RegisterBody,
    datasets.CountTokensBody,
    datasets.ExplainBody,
    jobs.SubmitBody,
    chunks.ChunksBody,
    feedback.FeedbackBody,
    jobs.StateBody,
    jobs.WeightsBody,
)
