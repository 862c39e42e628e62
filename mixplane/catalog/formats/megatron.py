"""Megatron-Core indexed datasets: a ``.bin`` of token ids and its ``.idx`` index.

The index (``MMIDIDX``, version 1, as Megatron-Core's ``_IndexWriter`` writes it), all
little-endian: the 9-byte header ``MMIDIDX\\0\\0``, the version (u64, 1), the dtype code of the
ids (u8: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16), the
sequence count S (u64) and the document-index count D (u64, one more than the documents); then
S sequence lengths (i32, in ids), S sequence pointers (i64, byte offsets into ``.bin``), D
document indices (i64: document i is sequences ``[d[i], d[i + 1])``), and, for multimodal
datasets, S sequence modes (i8, ignored). 34 + 12 S + 8 D (+ S) bytes in all.

One sample per document: its ids are its sequences, which the writer puts one after the other,
so a sample is one byte span of ``.bin`` (``offset``, ``length``) and reading it is one slice of
a memory map. The registered file is the ``.bin`` (what is read, so what is checked for changes
before reading); registering an ``.idx`` or a directory finds the ``.bin`` beside each index.

Checks at registration, each an error naming the file and the fix: the header, version and
dtype (integers only), the index's size against its counts (a truncated or corrupt index),
document indices that run from 0 to S without going back, each document's sequences contiguous
and inside ``.bin``, the ``.bin``'s size against what the index names (a size mismatch
between them), and every id against the declared tokenizer's vocabulary. Cost: the index is
memory-mapped (~12 bytes a sequence); the ids are read once, vectorized (~2 GB/s).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mixplane.catalog.formats.base import ScanBatch, ScanRequest
from mixplane.catalog.formats.tokenized import (
    DEFAULT_FIELD,
    check_dtype,
    check_ids,
    content_tokens,
    decoder,
    ids_table,
    last_ids,
    local_path,
    read_spans,
    scanned_tokens,
)
from mixplane.catalog.remote_fs import RemotePath
from mixplane.errors import MalformedRecordError, RegistrationError

HEADER = b"MMIDIDX\x00\x00"
PREAMBLE = 34  # header 9 + version 8 + dtype 1 + sequence count 8 + document-index count 8
#: Megatron-Core's dtype codes (``indexed_dataset.DType``).
DTYPE_CODES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float64",
    7: "float32",
    8: "uint16",
}
BATCH_DOCUMENTS = 1 << 16
_REBUILD = "rebuild the dataset with Megatron-Core's IndexedDatasetBuilder, or remove it"


def data_path(path: Path) -> Path:
    """The ``.bin`` a registration path names (an ``.idx`` or the ``.bin`` itself)."""
    return path.with_suffix(".bin") if path.suffix.lower() == ".idx" else path


def index_path(path: Path) -> Path:
    return path.with_suffix(".idx")


@dataclass(frozen=True, slots=True, kw_only=True)
class Index:
    """A checked index: the ids' dtype and each document's byte span in ``.bin``."""

    dtype: str
    offsets: np.ndarray  # int64 byte offset of each document
    lengths: np.ndarray  # int64 ids of each document


def read_index(idx: Path, bin_size: int) -> Index:
    """Parse and check an ``.idx`` (see the module) against its ``.bin`` of ``bin_size`` bytes."""
    where = str(idx)
    try:
        raw = np.memmap(idx, dtype=np.uint8, mode="r") if idx.stat().st_size else np.zeros(0)
    except FileNotFoundError:
        msg = f"no index {idx.name} beside the data file; register the .idx/.bin pair together"
        raise MalformedRecordError(msg, path=str(idx.with_suffix(".bin"))) from None
    size = len(raw)
    if size < PREAMBLE:
        msg = f"the index is truncated ({size} bytes, the preamble alone is {PREAMBLE}); {_REBUILD}"
        raise MalformedRecordError(msg, path=where)
    head = bytes(raw[:PREAMBLE])
    if head[:9] != HEADER:
        msg = f"not a Megatron-Core index (header {head[:9]!r}, expected {HEADER!r}); {_REBUILD}"
        raise MalformedRecordError(msg, path=where)
    (version,) = struct.unpack("<Q", head[9:17])
    if version != 1:
        msg = f"index version {version}; only version 1 (MMIDIDX) is read. {_REBUILD}"
        raise MalformedRecordError(msg, path=where)
    code = head[17]
    if code not in DTYPE_CODES:
        msg = f"unknown dtype code {code} (known: {DTYPE_CODES}); the index is corrupt. {_REBUILD}"
        raise MalformedRecordError(msg, path=where)
    dtype = DTYPE_CODES[code]
    if dtype.startswith("float"):
        msg = f"the index declares {dtype} values, not token ids (integers); {_REBUILD}"
        raise MalformedRecordError(msg, path=where)
    sequences, documents = struct.unpack("<QQ", head[18:34])
    expected = PREAMBLE + 12 * sequences + 8 * documents
    if size not in (expected, expected + sequences):  # + S bytes of modes: multimodal
        msg = (
            f"the index is truncated or corrupt: {size} bytes, expected {expected} for "
            f"{sequences} sequences and {documents} document indices; {_REBUILD}"
        )
        raise MalformedRecordError(msg, path=where)
    at = PREAMBLE
    seq_lengths = np.frombuffer(raw, dtype="<i4", count=sequences, offset=at).astype(np.int64)
    at += 4 * sequences
    pointers = np.frombuffer(raw, dtype="<i8", count=sequences, offset=at)
    at += 8 * sequences
    bounds = np.frombuffer(raw, dtype="<i8", count=documents, offset=at)
    if (
        documents < 1
        or bounds[0] != 0
        or bounds[-1] != sequences
        or (np.diff(bounds) < 0).any()
        or (seq_lengths < 0).any()
    ):
        msg = f"the document indices or sequence lengths are corrupt; {_REBUILD}"
        raise MalformedRecordError(msg, path=where)
    itemsize = np.dtype(dtype).itemsize
    ends = pointers + seq_lengths * itemsize
    first = bounds[:-1]
    inner = np.ones(sequences, dtype=bool)
    inner[first[first < sequences]] = False  # the first sequence of each document
    if sequences and (
        (pointers < 0).any() or (pointers[1:][inner[1:]] != ends[:-1][inner[1:]]).any()
    ):
        msg = f"a document's sequences are not contiguous in the data file; {_REBUILD}"
        raise MalformedRecordError(msg, path=where)
    named = int(ends.max()) if sequences else 0
    if named != bin_size:
        msg = (
            f"size mismatch between {idx.name} and {idx.with_suffix('.bin').name}: the index "
            f"names {named} bytes of {dtype} ids, the data file holds {bin_size}; one of them is "
            f"truncated or they are not a pair. {_REBUILD}"
        )
        raise MalformedRecordError(msg, path=where)
    cumulative = np.concatenate(([0], np.cumsum(seq_lengths)))
    lengths = cumulative[bounds[1:]] - cumulative[bounds[:-1]]
    padded = np.append(pointers, named)
    offsets = np.where(lengths > 0, padded[bounds[:-1]], 0).astype(np.int64)
    return Index(dtype=dtype, offsets=offsets, lengths=lengths.astype(np.int64))


def scan(path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]:
    local = local_path(path, "Megatron datasets")
    where = str(local)
    spec = scanned_tokens(
        request.tokens,
        where,
        "Megatron datasets are token ids; register them with tokenizer=NAME|PATH",
    )
    bin_size = local.stat().st_size
    index = read_index(index_path(local), bin_size)
    dtype = check_dtype(index.dtype, spec, where)
    itemsize = np.dtype(dtype).itemsize
    ids = np.memmap(local, dtype=dtype, mode="r") if bin_size else np.zeros(0, dtype=dtype)
    starts = index.offsets // itemsize
    order = np.argsort(starts, kind="stable")

    def locate(i: int) -> str:
        doc = int(order[np.searchsorted(starts[order], i, side="right") - 1])
        return f"document {doc}"

    check_ids(ids, spec, where, locate)
    last = last_ids(ids, starts, index.lengths)
    counts = content_tokens(index.lengths, last, spec.eos_id)
    total = len(index.lengths)
    if request.fields:
        msg = (
            f"{where}: Megatron documents have no fields to read {sorted(request.fields)} from; "
            "give properties as constants or path patterns"
        )
        raise RegistrationError(msg)
    decode = decoder(spec.source, spec.tokenizer) if request.want_text else None
    total = len(index.lengths)
    for first in range(0, total, BATCH_DOCUMENTS):
        stop = min(first + BATCH_DOCUMENTS, total)
        lengths = index.lengths[first:stop]
        yield ScanBatch(
            fields={},
            text_bytes=lengths * itemsize,
            offset=index.offsets[first:stop],
            length=lengths * itemsize,
            table=_records(ids, starts[first:stop], lengths, spec.field, decode)
            if request.want_table
            else None,
            scanned_bytes=int(lengths.sum()) * itemsize,
            tokens=counts[first:stop],
            token_dtype=dtype,
        )


def _records(
    ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, field: str, decode: object
) -> pa.Table:
    """Records of documents that may lie anywhere in ``ids``: gathered into one array first."""
    pieces = [ids[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
    flat = np.concatenate(pieces) if pieces else ids[:0]
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    return ids_table(flat, offsets, field, decode=decode)  # type: ignore[arg-type]


def read(
    path: Path | RemotePath, pointers: pa.Table, text_field: str, *, dtype: str | None = None
) -> pa.Table:
    """Records at the given pointers (byte ``offset`` and ``length``), in pointer order: the
    ids as a list column named ``text_field`` (the dataset's token field)."""
    local = local_path(path, "Megatron datasets")
    if dtype is None:
        dtype = read_index(index_path(local), local.stat().st_size).dtype
    return read_spans(local, pointers, dtype, text_field or DEFAULT_FIELD)
