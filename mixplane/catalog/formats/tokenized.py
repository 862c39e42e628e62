"""Pre-tokenized samples: what the token formats (``megatron``, ``tokens``, ``arrow``, Parquet
token columns) share at registration and when their records are read.

A pre-tokenized dataset is registered with the tokenizer its ids belong to (``TokenSpec``: its
fingerprint, the name or path it was loaded from, its EOS id and vocabulary size). A scan
checks every stored id against that vocabulary (``check_ids``: one vectorized min/max pass per
block of 16 M ids, ~10 ms per block; the offending document is located only on the error path)
and the dtype of the ids against the tokenizer (``check_dtype``). Each document becomes one
sample whose exact token count is known for free: its stored ids, less a final EOS
(``content_tokens``), the same count a tokenizer gives for a text (the packer adds the EOS
after every document unless it is already there, so both stream ``count + 1`` tokens).

Reading back (``Catalog.read``, property functions) gives a table with the ids as a list
column named ``TokenSpec.field`` (``input_ids`` by default), and a ``text`` column decoded with
the dataset's tokenizer only for a function marked with ``wants_text``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from mixplane.catalog.remote_fs import RemotePath, location
from mixplane.errors import MalformedRecordError, MixplaneError, RegistrationError
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

#: Integer dtypes token ids may be stored in (Megatron-Core's, OLMo-core's, Arrow's).
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
#: Ids checked per vectorized pass (bounded memory over files of any size).
CHECK_BLOCK = 1 << 24
DEFAULT_FIELD = "input_ids"

_F = TypeVar("_F", bound=Callable[..., Any])

#: Tokenizers declared in this process, by fingerprint (``pretokenized.declare``): decoding for
#: a property function finds a tokenizer given as an object (a trained one has no path to load
#: it from).
DECLARED: dict[str, Tokenizer] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSpec:
    """The declared tokenizer of a pre-tokenized dataset, as a scan needs it (plain values,
    so a Ray worker gets it as is)."""

    tokenizer: str  # fingerprint
    source: str  # the name or path the tokenizer was loaded from
    eos_id: int
    vocab_size: int
    dtype: str | None = None  # declared dtype of the ids (raw token memmaps), else the file's
    field: str = DEFAULT_FIELD  # the token column (Arrow/Parquet); the ids' column when read


def wants_text(function: _F) -> _F:
    """Mark a property function as needing each record's text: over pre-tokenized data its
    records then carry a ``text`` column decoded with the dataset's tokenizer (decoding costs
    about what tokenizing does, so it happens only when asked)."""
    function.wants_text = True  # type: ignore[attr-defined]
    return function


def asks_for_text(function: object) -> bool:
    return bool(getattr(function, "wants_text", False))


def local_path(path: Path | RemotePath, what: str) -> Path:
    """``path`` as a file of this machine: token files are memory-mapped, so ``what`` (the
    format's files, plural) on an object store is refused."""
    path = location(path)
    if isinstance(path, RemotePath):
        msg = f"{path}: {what} are read from a local or shared filesystem; copy them there"
        raise RegistrationError(msg)
    return path


def scanned_tokens(spec: TokenSpec | None, where: str, fix: str) -> TokenSpec:
    """The registration's ``TokenSpec``; a format of token ids scanned without one is refused
    with ``fix``."""
    if spec is None:
        msg = f"{where}: {fix}"
        raise RegistrationError(msg)
    return spec


def check_dtype(dtype: np.dtype[Any] | str, spec: TokenSpec, path: str) -> str:
    """The dtype's name, after checking that it holds token ids of the declared tokenizer."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        msg = (
            f"the ids are stored as {name}, not as integers; token ids are one of {list(DTYPES)}: "
            "write the ids as integers"
        )
        raise MalformedRecordError(msg, path=path)
    if spec.dtype is not None and spec.dtype != name:
        msg = (
            f"the file stores its ids as {name} but token_dtype={spec.dtype!r} was given; drop "
            f"--token-dtype or pass --token-dtype {name}"
        )
        raise MalformedRecordError(msg, path=path)
    top = int(np.iinfo(np.dtype(name)).max)
    if spec.vocab_size - 1 > top:
        msg = (
            f"tokenizer {spec.source!r} has {spec.vocab_size:,} ids, more than {name} holds "
            f"(largest {top:,}); the ids must be of another tokenizer, or stored with a wider "
            "dtype (--token-dtype)"
        )
        raise MalformedRecordError(msg, path=path)
    return name


def check_ids(values: np.ndarray, spec: TokenSpec, path: str, locate: Callable[[int], str]) -> None:
    """Every id in ``values`` lies in the tokenizer's vocabulary; ``locate(i)`` names where
    value i sits (a document, a row) for the error."""
    for start in range(0, len(values), CHECK_BLOCK):
        block = values[start : start + CHECK_BLOCK]
        if not len(block):
            continue
        low, high = int(block.min()), int(block.max())
        if low >= 0 and high < spec.vocab_size:
            continue
        bad = int(np.flatnonzero((block < 0) | (block >= spec.vocab_size))[0])
        value = int(block[bad])
        msg = (
            f"id {value} is beyond the vocabulary of tokenizer {spec.source!r} "
            f"({spec.vocab_size:,} ids); register with the tokenizer the ids belong to "
            "(--tokenizer), or check the dtype of the ids (--token-dtype)"
        )
        raise MalformedRecordError(msg, path=path, location=locate(start + bad))


def content_tokens(lengths: np.ndarray, last: np.ndarray, eos_id: int) -> np.ndarray:
    """Per document: its ids, less a final EOS (the count a tokenizer gives for a text)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return lengths - ((lengths > 0) & (np.asarray(last) == eos_id)).astype(np.int64)


def last_ids(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The last id of each document (ids ``values[starts[i] : starts[i] + lengths[i]]``); -1
    for an empty one."""
    ends = np.asarray(starts, dtype=np.int64) + np.asarray(lengths, dtype=np.int64) - 1
    out = np.full(len(ends), -1, dtype=np.int64)
    full = np.asarray(lengths) > 0
    out[full] = values[ends[full]]
    return out


def sniff_wider(values: np.ndarray, dtype: str, path: str) -> None:
    """Ids that look like wider integers read in halves (uint32 read as uint16: every second
    value 0) are a wrong ``token_dtype``, not data."""
    head = np.asarray(values[: 1 << 16])
    if np.dtype(dtype).itemsize >= 8 or len(head) < 1024:
        return
    odd, even = head[1::2], head[0::2]
    if not odd.any() and even.any():
        wider = np.dtype(f"{np.dtype(dtype).kind}{2 * np.dtype(dtype).itemsize}").name
        msg = (
            f"every second id is 0, as when {wider} ids are read as {dtype}; pass "
            f"--token-dtype {wider}"
        )
        raise MalformedRecordError(msg, path=path)


def ids_table(
    values: np.ndarray,
    offsets: np.ndarray,
    field: str,
    *,
    decode: Callable[[list[list[int]]], list[str]] | None = None,
) -> pa.Table:
    """Records of token documents: ids ``values[offsets[i]:offsets[i + 1]]`` as a list column
    ``field``, and ``text`` when ``decode`` is given."""
    offsets = np.asarray(offsets, dtype=np.int64)
    flat = np.asarray(values[offsets[0] : offsets[-1]]) if len(offsets) else values[:0]
    lists = pa.LargeListArray.from_arrays(pa.array(offsets - offsets[0]), pa.array(flat))
    columns: dict[str, pa.Array] = {field: lists}
    if decode is not None:
        columns["text"] = pa.array(decode(lists.to_pylist()), pa.string())
    return pa.table(columns)


def decoder(source: str, fingerprint: str) -> Callable[[list[list[int]]], list[str]]:
    """The decoding function of the tokenizer at ``source``, checked against ``fingerprint``."""
    known = DECLARED.get(fingerprint)
    if known is not None:  # declared in this process (perhaps as an object, with no path)
        return lambda docs: [known.decode(ids) for ids in docs]  # type: ignore[attr-defined]
    try:
        tokenizer = load_tokenizer(source)
    except MixplaneError as exc:
        msg = f"cannot load tokenizer {source!r} to decode the ids ({exc})"
        raise RegistrationError(msg) from exc
    if tokenizer.fingerprint != fingerprint:
        msg = (
            f"the tokenizer at {source!r} is not the one the dataset was registered with "
            f"(fingerprint {tokenizer.fingerprint} vs {fingerprint}); restore it, or register "
            "the dataset again"
        )
        raise RegistrationError(msg)
    return lambda docs: [tokenizer.decode(ids) for ids in docs]


def read_spans(path: Path, pointers: pa.Table, dtype: str, field: str) -> pa.Table:
    """Records of documents stored as byte spans (``offset``, ``length``) of ``dtype`` ids in
    ``path``, in pointer order (one slice of a memory map each)."""
    size = path.stat().st_size
    raw = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, dtype=np.uint8)
    offsets = pointers.column("offset").to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pointers.column("length").to_numpy(zero_copy_only=False).astype(np.int64)
    if len(offsets) and int((offsets + lengths).max()) > size:
        msg = f"the file is shorter ({size} bytes) than its registered samples; register it again"
        raise MalformedRecordError(msg, path=str(path))
    pieces = [raw[o : o + n] for o, n in zip(offsets.tolist(), lengths.tolist(), strict=True)]
    flat = (np.concatenate(pieces) if pieces else raw[:0]).view(np.dtype(dtype))
    itemsize = np.dtype(dtype).itemsize
    return ids_table(flat, np.concatenate(([0], np.cumsum(lengths // itemsize))), field)
