"""Route of loss feedback: a training step's per-component loss sums and token counts, and
where the ranks sending it consume (the job's consumed frontier)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from mixplane.protocol import MAX_CHUNK_REQUESTS
from mixplane.server.context import context
from mixplane.server.http import MAX_INT, Body, JobId, body_doc, parse
from mixplane.server.routes.chunks import ConsumedPosition

router = APIRouter()


class FeedbackBody(Body):
    """``POST /v1/jobs/ID/feedback``: per-component loss sums and token counts of a step."""

    step: int = Field(ge=0, le=MAX_INT)
    loss_sum: list[float] = Field(max_length=1 << 20)
    token_count: list[float] = Field(max_length=1 << 20)
    consumed: list[ConsumedPosition] = Field(default_factory=list, max_length=MAX_CHUNK_REQUESTS)


@router.post(
    "/v1/jobs/{job_id}/feedback",
    summary="Per-component loss of a training step",
    openapi_extra=body_doc(FeedbackBody),
)
async def feedback(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    body = await parse(request, FeedbackBody)
    ctx.store.get(job_id)

    consumed = [(c.consumer, c.rank, c.j) for c in body.consumed]

    def work() -> Any:
        at = ctx.store.feedback(
            job_id, body.step, body.loss_sum, body.token_count, consumed=consumed
        )
        return {"applies_from": at}

    return await ctx.off_loop(request, work, pool="job")
