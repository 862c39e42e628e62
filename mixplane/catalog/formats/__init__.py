"""Sample formats: how a file is scanned at registration and read back by pointer.

Each format module exposes ``scan(path, request)`` yielding ``ScanBatch`` values (large batches,
vectorized parsing) and ``read(path, pointers)`` returning records in pointer order. The registry
(this package) maps a format name to its module; ``detect`` picks a format from a file name.
What the formats share (``ScanRequest``, ``ScanBatch``, record checks) is in ``base.py``.

Pre-tokenized formats (``megatron``, ``tokens``, ``arrow``, and Parquet with a token column)
scan with ``ScanRequest.tokens`` set (the declared tokenizer's facts) and yield batches whose
pointers are byte spans of ids (``offset``, ``length``) or rows, with each sample's exact token
count (``ScanBatch.tokens``) and the dtype of its ids (``ScanBatch.token_dtype``); see
``formats.tokenized``.
"""

from __future__ import annotations

from mixplane.catalog.formats import arrow, jsonl, megatron, parquet, tokens, webdataset
from mixplane.catalog.formats.base import (
    KEPT_MESSAGES,
    RESTART,
    TOKEN_FORMATS,
    FormatName,
    OnError,
    SampleFormat,
    ScanBatch,
    ScanRequest,
    arrow_fields_ok,
    arrow_type,
    check_record,
    compatible,
    compression_of,
    detect,
    dig,
    filter_fields,
    get_path,
    python_type,
    records_table,
    reject_missing,
    take,
)
from mixplane.errors import RegistrationError

#: The format modules by name.
FORMATS: dict[str, SampleFormat] = {
    "jsonl": jsonl,  # type: ignore[dict-item]
    "parquet": parquet,  # type: ignore[dict-item]
    "webdataset": webdataset,  # type: ignore[dict-item]
    "megatron": megatron,  # type: ignore[dict-item]
    "tokens": tokens,  # type: ignore[dict-item]
    "arrow": arrow,  # type: ignore[dict-item]
}


def get_format(name: str) -> SampleFormat:
    """The module of format ``name``."""
    try:
        return FORMATS[name]
    except KeyError:
        msg = f"unknown format {name!r}; known formats: {sorted(FORMATS)}"
        raise RegistrationError(msg) from None


__all__ = [
    "FORMATS",
    "KEPT_MESSAGES",
    "RESTART",
    "TOKEN_FORMATS",
    "FormatName",
    "OnError",
    "SampleFormat",
    "ScanBatch",
    "ScanRequest",
    "arrow_fields_ok",
    "arrow_type",
    "check_record",
    "compatible",
    "compression_of",
    "detect",
    "dig",
    "filter_fields",
    "get_format",
    "get_path",
    "python_type",
    "records_table",
    "reject_missing",
    "take",
]
