"""What every sample format shares: the scan request and its batches, and field helpers.

A format module (``jsonl.py``, ``parquet.py``, ``webdataset.py``, ``megatron.py``,
``tokens.py``, ``arrow.py``; the registry is the package, ``formats/__init__.py``) scans a
file with a ``ScanRequest`` (field paths with their expected property types, the text field,
the error policy) into ``ScanBatch`` values, and checks records with the helpers here
(``reject_missing``, ``check_record``, ``compatible``, ``get_path``/``dig`` for dotted paths).
``detect`` and ``compression_of`` read a file's format and compression from its name. Format
modules import this module, never the package, so the registry can import them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixplane.catalog.fields import keys as field_keys
from mixplane.catalog.properties import PropertyType, infer_type
from mixplane.catalog.remote_fs import RemotePath
from mixplane.errors import CatalogError, MalformedRecordError, PropertyError

if TYPE_CHECKING:
    from mixplane.catalog.formats.tokenized import TokenSpec

log = logging.getLogger(__name__)

FormatName = Literal["jsonl", "parquet", "webdataset", "megatron", "tokens", "arrow"]
#: Formats whose samples are token ids (Parquet holds ids when a tokens field is given).
TOKEN_FORMATS: frozenset[str] = frozenset({"megatron", "tokens", "arrow"})
OnError = Literal["raise", "skip"]
#: How many skipped-record messages are kept per file for the report.
KEPT_MESSAGES = 5


@dataclass(slots=True, kw_only=True)
class ScanRequest:
    """What registration needs from a scan: field paths with their expected property types."""

    fields: dict[str, PropertyType | None]  # dotted path -> expected type (None: not known yet)
    text_field: str
    on_error: OnError
    want_table: bool  # a user function needs whole records
    text_lengths: Literal["exact", "metadata"] = "exact"  # Parquet: read text, or estimate
    tokens: TokenSpec | None = None  # pre-tokenized data: the declared tokenizer's facts
    want_text: bool = False  # token records: decode a ``text`` column for the user function
    skipped: int = 0
    messages: list[str] = field(default_factory=list)

    def reject(self, path: str, location: str, problem: str) -> None:
        """Record a malformed record: raise under on_error='raise', count it under 'skip'."""
        if self.on_error == "raise":
            msg = f"{problem}; fix the record or register with on_error='skip'"
            raise MalformedRecordError(msg, path=path, location=location)
        self.skipped += 1
        if len(self.messages) < KEPT_MESSAGES:
            self.messages.append(f"{path}:{location}: {problem}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanBatch:
    """A batch of scanned samples: pointers, text lengths and the requested field values."""

    fields: dict[str, pa.Array]  # dotted path -> values, one per sample (validated types)
    text_bytes: np.ndarray  # int64 UTF-8 length of each sample's text
    offset: np.ndarray | None = None  # int64
    length: np.ndarray | None = None  # int64
    row_group: np.ndarray | None = None  # int32
    row: np.ndarray | None = None  # int32
    table: pa.Table | None = None  # whole records, when ScanRequest.want_table
    scanned_bytes: int = 0  # progress: bytes of the file consumed by this batch
    tokens: np.ndarray | None = None  # int64 exact token count of each sample (token formats)
    token_dtype: str | None = None  # numpy dtype name of the stored ids (token formats)

    @property
    def num_samples(self) -> int:
        return len(self.text_bytes)


#: Yielded by a scan that must start the file over (a fast path gave up after yielding):
#: the consumer drops what it stored for the file so far.
RESTART = ScanBatch(fields={}, text_bytes=np.zeros(0, dtype=np.int64))


class SampleFormat(Protocol):
    """``path`` is a local path or a ``RemotePath`` (object storage); a ``Path`` made from a
    stored URI is recognized too (``remote_fs.location``)."""

    def scan(self, path: Path | RemotePath, request: ScanRequest) -> Iterator[ScanBatch]: ...

    def read(self, path: Path | RemotePath, pointers: pa.Table, text_field: str) -> pa.Table: ...


_SUFFIXES: dict[str, FormatName] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".tar": "webdataset",
    ".idx": "megatron",
    ".npy": "tokens",
    ".arrow": "arrow",
}


def detect(path: PurePath | RemotePath) -> FormatName | None:
    """The format a file name suggests, ignoring a .gz/.zst/.zstd compression suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in {".gz", ".zst", ".zstd"}:
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


def compression_of(path: PurePath | RemotePath) -> Literal["gzip", "zstd"] | None:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return "gzip"
    if suffix in {".zst", ".zstd"}:
        return "zstd"
    return None


def get_path(table: pa.Table, dotted: str) -> pa.Array | None:
    """The values at a field path (``mixplane.catalog.fields``) of a table of records, or None
    when absent."""
    first, *rest = field_keys(dotted)
    if first not in table.column_names:
        return None
    column: Any = table.column(first).combine_chunks()
    for part in rest:
        if not pa.types.is_struct(column.type) or column.type.get_field_index(part) < 0:
            return None
        column = pc.struct_field(column, part)
    return column  # type: ignore[no-any-return]


def python_type(value: Any) -> PropertyType | None:
    """The property type of one decoded JSON value (slow path), None for null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return PropertyType.BOOLEAN
    if isinstance(value, int):
        return PropertyType.INTEGER
    if isinstance(value, float):
        return PropertyType.FLOAT
    if isinstance(value, str):
        return PropertyType.STRING
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return PropertyType.LIST
    return _OTHER  # type: ignore[no-any-return]


class _Other:
    value = "object"


_OTHER: Any = _Other()


def compatible(expected: PropertyType | None, found: PropertyType | None) -> bool:
    """Whether values of type ``found`` can be stored under ``expected`` (int widens to float)."""
    if expected is None or found is None or expected is found:
        return True
    return {expected, found} == {PropertyType.INTEGER, PropertyType.FLOAT}


def arrow_fields_ok(fields: Mapping[str, pa.Array], request: ScanRequest) -> bool:
    """Whether every requested column of a fast-path batch has a type compatible with the request."""
    for path, values in fields.items():
        try:
            found = infer_type(values.type)
        except PropertyError:
            return False
        if not compatible(request.fields[path], found):
            return False
    return True


def reject_missing(
    fields: dict[str, pa.Array], locations: np.ndarray, request: ScanRequest, path: str, unit: str
) -> np.ndarray | None:
    """Reject samples lacking a requested field (once each, naming the first field missing);
    the keep-mask, or None when all are present."""
    missing: dict[str, np.ndarray] = {
        name: np.asarray(values.is_null().to_numpy(zero_copy_only=False))
        for name, values in fields.items()
        if values.null_count
    }
    if not missing:
        return None
    lacking = np.logical_or.reduce(list(missing.values()))
    for row in np.flatnonzero(lacking).tolist():
        first = next(name for name, mask in missing.items() if mask[row])
        request.reject(path, f"{unit} {locations[row]}", f"missing field {first!r}")
    return np.asarray(~lacking)


def take(values: np.ndarray | None, keep: np.ndarray | None) -> np.ndarray | None:
    return values if values is None or keep is None else values[keep]


def filter_fields(fields: dict[str, pa.Array], keep: np.ndarray | None) -> dict[str, pa.Array]:
    if keep is None:
        return fields
    mask = pa.array(keep)
    return {k: v.filter(mask) for k, v in fields.items()}


def dig(record: dict[str, Any], dotted: str) -> Any:
    """The value at a field path of a decoded record, or None when absent."""
    node: Any = record
    for part in field_keys(dotted):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def check_record(
    record: dict[str, Any], expected: dict[str, PropertyType | None], text_field: str
) -> str | None:
    text = dig(record, text_field)
    if text is None:
        return f"missing field {text_field!r}"
    if not isinstance(text, str):
        return f"field {text_field!r} is {type(text).__name__}, expected a string"
    for dotted, want in expected.items():
        value = dig(record, dotted)
        if value is None:
            return f"missing field {dotted!r}"
        found = python_type(value)
        if not isinstance(found, PropertyType):
            return (
                f"field {dotted!r} holds {type(value).__name__} {value!r:.40}, not a property value"
            )
        if not compatible(want, found):
            assert want is not None
            return f"field {dotted!r} is {found.value} {value!r:.40}, expected {want.value}"
        if want is None or (want is PropertyType.INTEGER and found is PropertyType.FLOAT):
            expected[dotted] = found  # first type seen, or int widened to float
    return None


def records_table(records: list[dict[str, Any]], where: str) -> pa.Table:
    """Decoded records as one Arrow table; records whose fields hold values of mixed types
    (which registration accepts unless a property reads them) are an error naming the file."""
    try:
        return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
        problem = " ".join(str(exc).split())[:300]
        msg = (
            f"{where}: these records have fields of mixed types ({problem}); an Arrow table of "
            "whole records needs one type per field: make the records agree, or read the "
            "text only (the stream's reader does)"
        )
        raise CatalogError(msg) from None


def arrow_type(ptype: PropertyType | None) -> pa.DataType | None:
    return ptype.arrow if ptype is not None else None
