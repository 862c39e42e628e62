"""Route of consumers' chunk descriptors. A chunk request holds hundreds of items, so a
well-formed body is read by a plain loop (``chunk_items``) that accepts exactly what
``ChunksBody`` accepts; anything else goes through the model, whose error names the field.
Answers are encoded in the worker thread, each chunk's msgpack bytes once for its group."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from mixplane.protocol import MAX_CHUNK_REQUESTS, MSGPACK
from mixplane.server.context import context
from mixplane.server.http import (
    Body,
    JobId,
    accepts_msgpack,
    body_doc,
    read_body,
    respond,
    validate,
)

router = APIRouter()


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


class ChunksBody(Body):
    """``POST /v1/jobs/ID/chunks``: which chunks to answer, and where local ranks consume."""

    requests: list[ChunkRequest] = Field(max_length=MAX_CHUNK_REQUESTS)
    consumed: list[ConsumedPosition] = Field(default_factory=list, max_length=MAX_CHUNK_REQUESTS)


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


@router.post(
    "/v1/jobs/{job_id}/chunks",
    summary="Consumers' chunk descriptors",
    openapi_extra=body_doc(ChunksBody),
)
async def chunks(request: Request, job_id: JobId) -> Response:
    ctx = context(request)
    wanted, consumed = chunk_items(await read_body(request, ChunksBody))
    sj = ctx.store.get(job_id)
    as_msgpack = accepts_msgpack(request)

    def answer() -> Response:
        with sj.in_flight.answering():
            answers = sj.chunks(wanted, consumed)
            if as_msgpack:  # each chunk's bytes made once for its group's ranks
                return Response(sj.encode_msgpack(answers), media_type=MSGPACK)
            return respond(sj.to_json(answers), as_msgpack=False)

    return await ctx.off_loop(request, answer, pool="job")
