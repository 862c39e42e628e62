"""Routes of jobs: submit (the job definition's body is made from ``JobSpec``'s own fields),
list, show, delete, explain, and the job's state, checkpoint, weights, manifest and trace."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, create_model, model_validator

from mixplane.chunking.assign import Topology
from mixplane.errors import MixplaneError, PlanError
from mixplane.job import JobSpec
from mixplane.server.context import context
from mixplane.server.guard import AUDIT
from mixplane.server.http import (
    MAX_INT,
    MAX_TEXT,
    Body,
    JobId,
    Scalar,
    TokenizerBody,
    accepts_msgpack,
    body_doc,
    parse,
    respond,
)

router = APIRouter()


class TopologyBody(Body):
    dp_groups: int = Field(default=1, ge=1, le=65_536)
    ranks_per_group: int = Field(default=1, ge=1, le=65_536)
    workers: int = Field(default=1, ge=1, le=1024)

    @model_validator(mode="after")
    def _size(self) -> TopologyBody:
        if self.dp_groups * self.workers > 2**20 or self.dp_groups * self.ranks_per_group > 2**22:
            msg = "topology too large: at most 2**20 consumers and 2**22 ranks"
            raise ValueError(msg)
        return self


class PhaseBody(Body):
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


def _spec_body() -> type[Body]:
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
    model = create_model("SpecBody", __base__=Body, **fields)
    model.__doc__ = "A job definition: ``JobSpec.to_json()``'s form."
    return model


SpecBody = _spec_body()
if TYPE_CHECKING:  # a model made at run time: statically, some request body
    _SpecBody = Body
else:
    _SpecBody = SpecBody


class SubmitBody(Body):
    """``POST /v1/jobs``: a job definition and its topology; the same again returns the
    existing job, another definition under a taken id is a 409 unless ``replace``. A job that
    names a tokenizer (``spec.tokenizer``, its fingerprint) is sized with ``tokenizer`` (the
    tokenizer as data) unless the catalog has its token counts."""

    spec: _SpecBody
    topology: TopologyBody = Field(default_factory=TopologyBody)
    replace: bool = False
    tokenizer: TokenizerBody | None = None


class WeightsBody(Body):
    """``POST /v1/jobs/ID/weights``: new mixture weights, one per component (in component
    order) or by selector (``{"language=en": 0.7, ...}``)."""

    weights: (
        list[Annotated[float, Field(allow_inf_nan=False)]]
        | dict[
            Annotated[str, Field(max_length=MAX_TEXT)],
            Annotated[float, Field(allow_inf_nan=False)],
        ]
    ) = Field(max_length=1 << 20)


class StateBody(Body):
    """``POST /v1/jobs/ID/state``: a state from ``GET /v1/jobs/ID/state``."""

    state: dict[str, Any]


def spec_of(body: BaseModel) -> JobSpec:
    """The ``JobSpec`` of a validated spec body (a mixture that does not parse is a 400)."""
    try:
        return JobSpec.from_json(body.model_dump())
    except MixplaneError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        msg = f"invalid job spec ({type(exc).__name__}: {exc}); see JobSpec.to_json()"
        raise PlanError(msg) from None


@router.post(
    "/v1/jobs",
    summary="Submit a job (the same definition again returns the existing job)",
    openapi_extra=body_doc(SubmitBody),
)
async def submit(request: Request) -> Response:
    ctx = context(request)
    body = await parse(request, SubmitBody)
    spec = spec_of(body.spec)
    if body.replace:  # starts an existing job over: in the audit log
        request.scope[AUDIT] = {"action": "replace", "job_id": spec.job_id}
    topology = Topology(**body.topology.model_dump())

    sent = body.tokenizer.model_dump(exclude_none=True) if body.tokenizer else None

    def work() -> Any:
        sj, _ = ctx.store.submit(spec, topology, replace=body.replace, tokenizer=sent)
        return sj.info()

    return await ctx.off_loop(request, work, pool="catalog")


@router.get("/v1/jobs", summary="The server's jobs")
async def jobs(request: Request) -> Response:
    ctx = context(request)
    return respond([sj.info() for sj in ctx.store], as_msgpack=accepts_msgpack(request))


@router.get("/v1/jobs/{job_id}", summary="One job")
async def job_info(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    return respond(ctx.store.get(job_id).info(), as_msgpack=accepts_msgpack(request))


@router.delete("/v1/jobs/{job_id}", summary="Delete a job and its checkpoint")
async def delete_job(request: Request, job_id: JobId) -> Response:
    ctx = context(request)

    def work() -> Any:
        ctx.store.delete(job_id)
        return {"job_id": job_id, "deleted": True}

    return await ctx.off_loop(request, work, pool="job")


@router.get("/v1/jobs/{job_id}/explain", summary="What the job draws from each component")
async def job_explain(
    request: Request,
    job_id: JobId,
    chunks: Annotated[int | None, Query(ge=1, le=10**12)] = None,
) -> Response:
    ctx = context(request)
    return await ctx.off_loop(request, lambda: ctx.store.explain(job_id, chunks), pool="job")


@router.get("/v1/jobs/{job_id}/state", summary="A consistent checkpoint of the job")
async def get_state(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    return await ctx.off_loop(request, lambda: ctx.store.state(job_id), pool="job")


@router.post(
    "/v1/jobs/{job_id}/state",
    summary="Restore the job from a state",
    openapi_extra=body_doc(StateBody),
)
async def post_state(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    body = await parse(request, StateBody)
    ctx.store.get(job_id)

    def work() -> Any:
        ctx.store.restore(job_id, body.state)
        return ctx.store.get(job_id).info()

    return await ctx.off_loop(request, work, pool="catalog")


@router.post("/v1/jobs/{job_id}/checkpoint", summary="Write the job's checkpoint file now")
async def checkpoint(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    sj = ctx.store.get(job_id)
    return await ctx.off_loop(request, lambda: {"path": str(ctx.store.checkpoint(sj))}, pool="job")


@router.post(
    "/v1/jobs/{job_id}/weights",
    summary="Set the job's mixture weights (in force from the chunk answered)",
    openapi_extra=body_doc(WeightsBody),
)
async def set_weights(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    body = await parse(request, WeightsBody)
    request.scope[AUDIT] = {"job_id": job_id}
    ctx.store.get(job_id)

    def work() -> Any:
        return {"applies_from": ctx.store.set_weights(job_id, body.weights)}

    return await ctx.off_loop(request, work, pool="job")


@router.get("/v1/jobs/{job_id}/weights", summary="Current weights and the mixture log")
async def weights(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    return await ctx.off_loop(request, lambda: ctx.store.weights(job_id), pool="job")


@router.get(
    "/v1/jobs/{job_id}/manifest",
    summary="Requested vs delivered token shares and the mixture versions (feedback log)",
)
async def manifest(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    return await ctx.off_loop(request, lambda: ctx.store.manifest(job_id), pool="job")


@router.get("/v1/jobs/{job_id}/trace", summary="The job's logged feedback, every step")
async def trace(
    request: Request,
    job_id: JobId,
    start: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Response:
    ctx = context(request)
    return await ctx.off_loop(request, lambda: ctx.store.trace(job_id, start, limit), pool="job")
