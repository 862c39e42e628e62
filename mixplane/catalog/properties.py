"""Properties: typed per-sample values that filters and mixtures talk about.

A property has one of five types (``PropertyType``). Its values come from a field path into each
record (``language=meta.language``), a constant per dataset (``source=wiki``), a preset for a
well-known corpus, or a user function over batches of records. Types are inferred from the Arrow
type of the values and checked against what the catalog already holds: int widens to float, any
other difference is an error naming the property and the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa

from mixplane.catalog import fields
from mixplane.errors import PropertyError

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: Column names of the samples table that are not properties and cannot be used as names.
RESERVED = frozenset(
    {"file_id", "ordinal", "offset", "length", "row_group", "row", "bytes", "dataset", "file"}
    # words of the filter language
    | {"and", "or", "not", "in", "is", "null", "between", "contains", "true", "false"}
)


class PropertyType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"
    LIST = "list"  # list of strings

    @property
    def sql(self) -> str:
        return _SQL[self]

    @property
    def arrow(self) -> pa.DataType:
        return _ARROW[self]


_SQL = {
    PropertyType.STRING: "VARCHAR",
    PropertyType.INTEGER: "BIGINT",
    PropertyType.FLOAT: "DOUBLE",
    PropertyType.BOOLEAN: "BOOLEAN",
    PropertyType.LIST: "VARCHAR[]",
}
_ARROW = {
    PropertyType.STRING: pa.string(),
    PropertyType.INTEGER: pa.int64(),
    PropertyType.FLOAT: pa.float64(),
    PropertyType.BOOLEAN: pa.bool_(),
    PropertyType.LIST: pa.list_(pa.string()),
}


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        msg = (
            f"invalid property name {name!r}; use lower-case letters, digits and '_', "
            "starting with a letter or '_'"
        )
        raise PropertyError(msg)
    if name in RESERVED:
        msg = f"property name {name!r} is reserved; reserved names: {sorted(RESERVED)}"
        raise PropertyError(msg)
    return name


def infer_type(dtype: pa.DataType) -> PropertyType | None:
    """The property type for an Arrow type; None when all values are null."""
    if pa.types.is_null(dtype):
        return None
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return PropertyType.STRING
    if pa.types.is_dictionary(dtype):
        return infer_type(dtype.value_type)
    if pa.types.is_boolean(dtype):
        return PropertyType.BOOLEAN
    if pa.types.is_integer(dtype):
        return PropertyType.INTEGER
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return PropertyType.FLOAT
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        inner = dtype.value_type
        if pa.types.is_null(inner) or infer_type(inner) is PropertyType.STRING:
            return PropertyType.LIST
    return None if pa.types.is_null(dtype) else _unsupported(dtype)


def _unsupported(dtype: pa.DataType) -> PropertyType:
    msg = (
        f"values of arrow type {dtype} cannot be a property; supported: string, integer, float, "
        "boolean, list of strings (point the field path at a leaf field)"
    )
    raise PropertyError(msg)


def unify(
    name: str, known: PropertyType | None, found: PropertyType | None, where: str
) -> PropertyType | None:
    """Combine a property's known type with a newly found one; int widens to float."""
    if known is None:
        return found
    if found is None or found is known:
        return known
    if {known, found} == {PropertyType.INTEGER, PropertyType.FLOAT}:
        return PropertyType.FLOAT
    msg = (
        f"property {name!r} is {known.value} but {where} gives {found.value} values; "
        "make the values agree or register it under another property name"
    )
    raise PropertyError(msg)


def to_type(values: pa.Array | pa.ChunkedArray, ptype: PropertyType) -> pa.Array | pa.ChunkedArray:
    """Cast a column to the storage type of ``ptype``."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return values.cast(ptype.arrow)


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSource:
    """A property read from a (dotted) field path of each record, e.g. ``meta.language``."""

    name: str
    path: str  # a field path (mixplane.catalog.fields): checked here, where it enters

    def __post_init__(self) -> None:
        fields.check(self.path, f"property {self.name!r}")

    @property
    def parts(self) -> tuple[str, ...]:
        return fields.keys(self.path)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstantSource:
    """The same value for every sample of a dataset, e.g. ``source=wiki``."""

    name: str
    value: str | int | float | bool

    @property
    def type(self) -> PropertyType:
        if isinstance(self.value, bool):
            return PropertyType.BOOLEAN
        if isinstance(self.value, int):
            return PropertyType.INTEGER
        if isinstance(self.value, float):
            return PropertyType.FLOAT
        return PropertyType.STRING


@dataclass(frozen=True, slots=True, kw_only=True)
class PathPattern:
    """Properties from each file's path: a regular expression whose named groups are property
    names, searched in the file's path (``/(?P<source>[^/]+)/[^/]+\\.idx$`` gives each file's
    directory name as ``source``). A value of digits only is an integer."""

    pattern: str

    def compiled(self) -> re.Pattern[str]:
        try:
            regex = re.compile(self.pattern)
        except re.error as exc:
            msg = f"path pattern {self.pattern!r} is not a regular expression ({exc})"
            raise PropertyError(msg) from exc
        if not regex.groupindex:
            msg = (
                f"path pattern {self.pattern!r} names no property; use named groups, e.g. "
                "'/(?P<source>[^/]+)/[^/]+$'"
            )
            raise PropertyError(msg)
        for name in regex.groupindex:
            check_name(name)
        return regex

    @property
    def names(self) -> list[str]:
        return list(self.compiled().groupindex)

    def values(self, path: str) -> list[ConstantSource]:
        """The properties of one file (constants for its samples)."""
        found = self.compiled().search(path)
        if found is None:
            msg = f"path pattern {self.pattern!r} does not match file {path}; fix the pattern"
            raise PropertyError(msg)
        out = []
        for name, value in found.groupdict().items():
            if value is None:
                msg = f"path pattern {self.pattern!r} gives no {name!r} for file {path}"
                raise PropertyError(msg)
            out.append(ConstantSource(name=name, value=int(value) if value.isdigit() else value))
        return out


#: A user function over a batch of records (an Arrow table with the records' fields) that returns
#: a mapping from property name to one value per record.
BatchFunction = Callable[[pa.Table], Mapping[str, Sequence[Any] | pa.Array]]

PRESETS: dict[str, dict[str, str]] = {
    # SlimPajama and RedPajama carry the sub-corpus in meta.redpajama_set_name.
    "slimpajama": {"source": "meta.redpajama_set_name"},
    "redpajama": {"source": "meta.redpajama_set_name"},
    # The Pile carries it in meta.pile_set_name.
    "pile": {"source": "meta.pile_set_name"},
    # FineWeb (and FineWeb-2) records: top-level dump, language and its score.
    "fineweb": {"dump": "dump", "language": "language", "language_score": "language_score"},
    # FineWeb-Edu adds the educational quality score.
    "fineweb-edu": {"dump": "dump", "language": "language", "quality": "score"},
}


def preset_sources(preset: str) -> list[FieldSource]:
    try:
        fields = PRESETS[preset]
    except KeyError:
        msg = f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}"
        raise PropertyError(msg) from None
    return [FieldSource(name=n, path=p) for n, p in fields.items()]


def as_column(name: str, values: Any, rows: int, where: str) -> pa.Array:
    """A user function's values for one property as an Arrow array of ``rows`` values."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        try:
            values = pa.array(values if isinstance(values, np.ndarray) else list(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            msg = f"values of property {name!r} have mixed or unsupported types ({exc}); return one type"
            raise PropertyError(msg) from exc
    if len(values) != rows:
        msg = (
            f"the function for {name!r} returned {len(values)} values for {rows} records of "
            f"{where}; return one value per record"
        )
        raise PropertyError(msg)
    return values


def parse_constant(text: str) -> str | int | float | bool:
    """Parse a CLI constant: ``true``/``false``, integers and floats keep their type."""
    low = text.lower()
    if low in {"true", "false"}:
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_assignment(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        msg = f"expected {what} as PROP=VALUE, got {text!r}"
        raise PropertyError(msg)
    return check_name(name.strip()), value.strip()
