"""The server's HTTP plumbing: request bodies decoded and validated, answers encoded, errors.

Bodies come as msgpack (length limits, ``raw=False``, string keys) or JSON, by Content-Type
(``read_body``; bodies over 64 KiB are decoded in a worker thread), and are validated by
pydantic models (``Body``: strict, closed, no NUL in any text) before anything acts on them;
answers use the type the Accept header prefers (``respond``). Errors are ``{"error": message,
"type": class}`` with the status of their ``MixplaneError`` class (``status_of``), so a remote
client raises the class raised in-process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import anyio
import msgpack
import numpy as np
import orjson
from fastapi import Path as PathParam
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException

from mixplane.errors import (
    AccessDeniedError,
    DatasetExistsError,
    DatasetNotFoundError,
    FileChangedError,
    JobConflictError,
    JobNotFoundError,
    MixplaneError,
)
from mixplane.protocol import JSON, MAX_BODY_BYTES, MSGPACK
from mixplane.tokens.wire import MAX_TOKENIZER_CHARS

INLINE_DECODE_BYTES = 64 * 1024  # larger bodies are decoded in a worker thread
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")
MAX_TEXT = 64 * 1024  # characters of a filter or another free-text field
MAX_INT = 2**63 - 1

M = TypeVar("M", bound=BaseModel)
Scalar = bool | int | float | str | None
JobId = Annotated[str, PathParam(max_length=256, description="A job id")]


# -- request bodies -------------------------------------------------------------------------------
class Body(BaseModel):
    """A request body: strict, closed, and no NUL character in any text."""

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


class TokenizerBody(Body):
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


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
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


# -- encoding -------------------------------------------------------------------------------------
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


def error_response(
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


def describe(exc: ValidationError) -> str:
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
        raise HTTPException(422, describe(exc)) from None


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


def accepts_msgpack(request: Request) -> bool:
    return wants_msgpack(request.headers.get("accept"))


def status_of(exc: MixplaneError) -> int:
    if isinstance(exc, AccessDeniedError):
        return 403
    if isinstance(exc, (JobNotFoundError, DatasetNotFoundError)):
        return 404
    if isinstance(exc, (JobConflictError, DatasetExistsError, FileChangedError)):
        return 409
    return 400
