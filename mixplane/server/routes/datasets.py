"""Routes of the catalog: the datasets (list, register files the server can read), exact token
counts, a filter's SQL and components, the files and their sample pointers."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any, Literal

import duckdb
import pyarrow as pa
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pyarrow import ipc
from pydantic import Field
from starlette.exceptions import HTTPException

from mixplane.catalog.catalog import Catalog
from mixplane.catalog.formats import FormatName
from mixplane.catalog.token_counts import cpu_count
from mixplane.errors import MixplaneError, PlanError, RegistrationError
from mixplane.protocol import ARROW_STREAM
from mixplane.server.context import context
from mixplane.server.guard import AUDIT
from mixplane.server.http import MAX_TEXT, Body, TokenizerBody, body_doc, parse
from mixplane.tokens.wire import tokenizer_from_wire

log = logging.getLogger(__name__)
router = APIRouter()


class RegisterBody(Body):
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


class ExplainBody(Body):
    """``POST /v1/explain``: a filter's SQL and components."""

    where: str | None = Field(default=None, max_length=MAX_TEXT)
    by: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=64)
    runs: bool = False


class CountTokensBody(Body):
    """``POST /v1/token-counts``: count and store exact token counts with ``tokenizer`` (a
    name the server knows, or the text of a ``tokenizer.json`` / rank file: data, parsed,
    never run, never a path on the server)."""

    tokenizer: TokenizerBody
    datasets: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=100_000
    )
    workers: int | None = Field(default=None, ge=1, le=1024)
    on_changed: Literal["error", "skip"] = "error"


@router.get("/v1/datasets", summary="Registered datasets")
async def datasets(request: Request) -> Response:
    ctx = context(request)
    return await ctx.off_loop(
        request,
        ctx.with_catalog(lambda c: [d.to_dict() for d in c.datasets()]),
        pool="catalog",
    )


@router.post(
    "/v1/datasets",
    summary="Register files the server can read",
    openapi_extra=body_doc(RegisterBody),
)
async def register(request: Request) -> Response:
    ctx = context(request)
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
    roots = ctx.security.roots
    if roots is not None:  # the files below the data roots, checked (403 otherwise)
        confined = await ctx.off_loop_value(lambda: roots.confine(paths, fmt), pool="catalog")
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

    return await ctx.off_loop(request, ctx.with_catalog(work), pool="catalog")


@router.post(
    "/v1/token-counts",
    summary="Count and ctx.store exact token counts (cached per tokenizer and file)",
    openapi_extra=body_doc(CountTokensBody),
)
async def count_tokens(request: Request) -> Response:
    ctx = context(request)
    body = await parse(request, CountTokensBody)
    sent = body.tokenizer.model_dump(exclude_none=True)
    request.scope[AUDIT] = {
        "tokenizer": sent.get("name") or sent.get("fingerprint") or sent.get("kind"),
        "datasets": body.datasets,
    }

    def work() -> Any:
        tokenizer = tokenizer_from_wire(sent)
        try:  # the catalog lock is held only while the catalog is used, not while counting
            report = ctx.store.catalog.count_tokens(
                tokenizer,
                datasets=body.datasets,
                workers=min(body.workers, cpu_count()) if body.workers else None,
                on_changed=body.on_changed,
                progress=False,
                lock=ctx.store.catalog_lock,
            )
        except duckdb.Error as exc:
            log.warning("catalog error", exc_info=True)
            msg = f"the catalog could not run this request ({type(exc).__name__}: {exc})"
            raise PlanError(msg) from None
        return report.to_dict()

    return await ctx.off_loop(request, work, pool="catalog")


@router.post(
    "/v1/explain", summary="A filter's SQL and components", openapi_extra=body_doc(ExplainBody)
)
async def explain(request: Request) -> Response:
    ctx = context(request)
    body = await parse(request, ExplainBody)
    return await ctx.off_loop(
        request,
        ctx.with_catalog(lambda c: c.explain(body.where, by=body.by).to_dict(runs=body.runs)),
        pool="catalog",
    )


@router.get("/v1/files", summary="Registered files")
async def files(request: Request) -> Response:
    ctx = context(request)
    return await ctx.off_loop(
        request, ctx.with_catalog(lambda c: c.files().to_pylist()), pool="catalog"
    )


@router.get(
    "/v1/files/{file_id}/pointers",
    summary="Sample pointers of one file (Arrow IPC stream)",
    response_class=Response,
    responses={200: {"content": {ARROW_STREAM: {}}}},
)
async def pointers(
    request: Request, file_id: Annotated[int, PathParam(ge=0, le=2**31 - 1)]
) -> Response:
    ctx = context(request)

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

    return await ctx.off_loop(request, ctx.with_catalog(work), pool="catalog")
