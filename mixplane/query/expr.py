"""Filter expressions: a small boolean algebra over sample properties.

``col("language") == "en"`` builds a predicate node; ``&``, ``|`` and ``~`` combine nodes into a
tree. Nodes are frozen dataclasses, so a filter is a hashable value that can be compared, stored
in sets and written to job state (``to_json``/``expr_from_json``, no pickle, no eval).

Algorithm: ``And``/``Or`` are n-ary and flattened at construction, so ``a & b & c`` is one node
and long chains do not deepen the tree. ``evaluate`` walks the tree once per record using SQL
three-valued (Kleene) logic exactly as DuckDB does: a predicate on a NULL (or missing) property is
``None``; ``False & None`` is False, ``True | None`` is True, ``~None`` is None; ``is_null()`` is
never None; NaN equals NaN and sorts above every number. Cost: O(nodes) per record (O(len(values))
for ``isin``), about 1 µs per node in CPython.

Equality is type-strict (``col("x") == 1`` and ``col("x") == 1.0`` are different filters), since
the compiler accepts them for different property types.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, NoReturn

from mixplane.errors import QueryError

Scalar = str | int | float | bool
CompareOp = Literal["==", "!=", "<", "<=", ">", ">="]

#: Words the filter grammar reserves; a property cannot be named after one of them.
KEYWORDS = frozenset(
    {"and", "or", "not", "in", "is", "null", "between", "contains", "true", "false"}
)
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT64 = (-(2**63), 2**63 - 1)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}  # fmt: skip
_OR, _AND, _NOT, _ATOM = 1, 2, 3, 4  # text-form precedence


def check_value(value: object, where: str) -> Scalar:
    """Return ``value`` if it can be a filter literal, else raise QueryError naming ``where``."""
    if value is None:
        msg = f"{where}: None is not a value; use col(name).is_null() to test for NULL"
        raise QueryError(msg)
    if isinstance(value, float) and not math.isfinite(value):
        msg = f"{where}: {value!r} is not a finite number; use a finite float"
        raise QueryError(msg)
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not (_INT64[0] <= value <= _INT64[1])
    ):
        msg = f"{where}: {value} is outside the 64-bit integer range; use a smaller integer"
        raise QueryError(msg)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            msg = f"{where}: {value!r} is not valid unicode (lone surrogate); fix the string"
            raise QueryError(msg) from None
    if not isinstance(value, str | int | float | bool):
        msg = f"{where}: {value!r} ({type(value).__name__}) is not a str, int, float or bool"
        raise QueryError(msg)
    return value


def check_property(name: object) -> str:
    if not isinstance(name, str) or not IDENT_RE.fullmatch(name):
        msg = f"invalid property name {name!r} in filter; use letters, digits and '_'"
        raise QueryError(msg)
    if name.lower() in KEYWORDS:
        msg = f"property name {name!r} is a filter keyword; rename the property"
        raise QueryError(msg)
    return name


def literal_text(value: Scalar) -> str:
    """The filter-language spelling of a literal; ``parse_filter`` reads it back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    out = []
    for ch in value:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def _typed(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_typed(v) for v in value)
    if isinstance(value, str | int | float):
        return (type(value).__name__, value)
    return value


def _sort_key(value: Any, other: Any) -> tuple[Any, Any]:
    """Both sides as DuckDB compares them: doubles when either is a float, NaN above all."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (value, other))
    if numbers and (isinstance(value, float) or isinstance(other, float)):
        return _double(value), _double(other)
    return value, other


def _double(value: float) -> tuple[bool, float]:
    number = float(value)
    return (True, 0.0) if math.isnan(number) else (False, number)


def _compare(prop: str, value: Any, op: str, literal: Scalar) -> bool:
    left, right = _sort_key(value, literal)
    try:
        return _OPS[op](left, right)
    except TypeError:
        msg = f"cannot evaluate {prop} {op} {literal!r} on value {value!r}; the types differ"
        raise QueryError(msg) from None


class Expr:
    """A boolean filter over sample properties; combine with ``&``, ``|`` and ``~``."""

    __slots__ = ()
    precedence: ClassVar[int] = _ATOM

    def __and__(self, other: object) -> Expr:
        return And(args=(self, _operand(other, "&")))

    def __or__(self, other: object) -> Expr:
        return Or(args=(self, _operand(other, "|")))

    def __invert__(self) -> Expr:
        return Not(arg=self)

    def __bool__(self) -> NoReturn:
        msg = (
            f"filter {self} has no truth value; combine filters with '&', '|', '~' instead of "
            "'and', 'or', 'not', and parenthesize comparisons: (col('a') == 1) & (col('b') == 2)"
        )
        raise QueryError(msg)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def _key(self) -> tuple[Any, ...]:
        return tuple(_typed(getattr(self, f.name)) for f in fields(self))  # type: ignore[arg-type]

    def evaluate(self, record: Mapping[str, Any]) -> bool | None:
        """True, False, or None (SQL NULL) for one record; a missing key counts as NULL."""
        raise NotImplementedError

    def properties(self) -> frozenset[str]:
        """Names of the properties this filter references."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, ``{"node": "comparison", "prop": ...}``; see ``expr_from_json``."""
        out: dict[str, Any] = {"node": type(self).__name__.lower()}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Expr):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = [v.to_json() if isinstance(v, Expr) else v for v in value]
            out[f.name] = value
        return out


def _operand(other: object, op: str) -> Expr:
    if isinstance(other, Expr):
        return other
    msg = f"cannot combine a filter with {other!r} using {op!r}; both sides must be filters"
    raise QueryError(msg)


def _wrap(expr: Expr, precedence: int) -> str:
    return f"({expr})" if expr.precedence < precedence else str(expr)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class _Predicate(Expr):
    """A test of one property; NULL (or missing) in, NULL out, unless a subclass says otherwise."""

    prop: str

    def __post_init__(self) -> None:
        check_property(self.prop)
        self._validate()

    def _validate(self) -> None:
        pass

    def _test(self, value: Any) -> bool:
        raise NotImplementedError

    def evaluate(self, record: Mapping[str, Any]) -> bool | None:
        value = record.get(self.prop)
        return None if value is None else self._test(value)

    def properties(self) -> frozenset[str]:
        return frozenset({self.prop})


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Comparison(_Predicate):
    op: CompareOp
    value: Scalar

    def _validate(self) -> None:
        if self.op not in _OPS:
            msg = f"unknown comparison {self.op!r}; use one of {list(_OPS)}"
            raise QueryError(msg)
        check_value(self.value, f"{self.prop} {self.op}")

    def _test(self, value: Any) -> bool:
        return _compare(self.prop, value, self.op, self.value)

    def __str__(self) -> str:
        return f"{self.prop} {self.op} {literal_text(self.value)}"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class IsIn(_Predicate):
    values: tuple[Scalar, ...]

    def _validate(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))  # any iterable, stored as a tuple
        for v in self.values:
            check_value(v, f"{self.prop} in [...]")

    def evaluate(self, record: Mapping[str, Any]) -> bool | None:
        # SQL: x IN () is false even for a NULL x (the compiler emits FALSE).
        return _Predicate.evaluate(self, record) if self.values else False

    def _test(self, value: Any) -> bool:
        return any(_compare(self.prop, value, "==", v) for v in self.values)

    def __str__(self) -> str:
        return f"{self.prop} in [{', '.join(literal_text(v) for v in self.values)}]"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Between(_Predicate):
    """``lo <= prop <= hi``, inclusive, as SQL ``BETWEEN``."""

    lo: Scalar
    hi: Scalar

    def _validate(self) -> None:
        check_value(self.lo, f"{self.prop} between")
        check_value(self.hi, f"{self.prop} between")

    def _test(self, value: Any) -> bool:
        low = _compare(self.prop, value, ">=", self.lo)
        return low and _compare(self.prop, value, "<=", self.hi)

    def __str__(self) -> str:
        return f"{self.prop} between {literal_text(self.lo)} and {literal_text(self.hi)}"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class IsNull(_Predicate):
    def evaluate(self, record: Mapping[str, Any]) -> bool | None:
        return record.get(self.prop) is None

    def __str__(self) -> str:
        return f"{self.prop} is null"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Contains(_Predicate):
    """Membership of ``value`` in a list-of-strings property; NULL elements never match."""

    value: str

    def _validate(self) -> None:
        if not isinstance(self.value, str):
            msg = f"{self.prop} contains {self.value!r}: lists hold strings; use a string"
            raise QueryError(msg)
        check_value(self.value, f"{self.prop} contains")

    def _test(self, value: Any) -> bool:
        if isinstance(value, str):
            msg = f"property {self.prop!r} holds the string {value!r}, not a list of strings"
            raise QueryError(msg)
        return self.value in value

    def __str__(self) -> str:
        return f"{self.prop} contains {literal_text(self.value)}"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Not(Expr):
    precedence: ClassVar[int] = _NOT
    arg: Expr

    def __post_init__(self) -> None:
        _operand(self.arg, "~")

    def evaluate(self, record: Mapping[str, Any]) -> bool | None:
        value = self.arg.evaluate(record)
        return None if value is None else not value

    def properties(self) -> frozenset[str]:
        return self.arg.properties()

    def __str__(self) -> str:
        arg = self.arg
        if isinstance(arg, IsIn | Between):
            prop, _, rest = str(arg).partition(" ")
            return f"{prop} not {rest}"
        if isinstance(arg, IsNull):
            return f"{arg.prop} is not null"
        return f"not {_wrap(arg, _NOT)}"


class _Junction(Expr):
    """Shared code of ``And`` and ``Or``: n-ary, flattened, at least two arguments."""

    __slots__ = ()
    word: ClassVar[str]
    args: tuple[Expr, ...]

    def __post_init__(self) -> None:
        flat: list[Expr] = []
        for arg in self.args:
            _operand(arg, self.word)
            flat.extend(arg.args if type(arg) is type(self) else (arg,))
        if len(flat) < 2:
            msg = f"{self.word} needs at least two filters, got {len(flat)}"
            raise QueryError(msg)
        object.__setattr__(self, "args", tuple(flat))

    def properties(self) -> frozenset[str]:
        return frozenset().union(*(a.properties() for a in self.args))

    def __str__(self) -> str:
        return f" {self.word} ".join(_wrap(a, self.precedence + 1) for a in self.args)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class And(_Junction):
    precedence: ClassVar[int] = _AND
    word: ClassVar[str] = "and"
    args: tuple[Expr, ...]

    def evaluate(self, record: Mapping[str, Any]) -> bool | None:
        result: bool | None = True
        for arg in self.args:
            value = arg.evaluate(record)
            if value is False:
                return False
            if value is None:
                result = None
        return result


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Or(_Junction):
    precedence: ClassVar[int] = _OR
    word: ClassVar[str] = "or"
    args: tuple[Expr, ...]

    def evaluate(self, record: Mapping[str, Any]) -> bool | None:
        result: bool | None = False
        for arg in self.args:
            value = arg.evaluate(record)
            if value is True:
                return True
            if value is None:
                result = None
        return result


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Col:
    """A property reference; comparing it builds a filter (``col("year") >= 2020``)."""

    name: str

    def __post_init__(self) -> None:
        check_property(self.name)

    def _cmp(self, op: CompareOp, value: object) -> Expr:
        if value is None:
            fix = "is_null()" if op == "==" else "is_null() negated with ~"
            msg = f"cannot compare col({self.name!r}) {op} None; use col({self.name!r}).{fix}"
            raise QueryError(msg)
        return Comparison(prop=self.name, op=op, value=check_value(value, f"{self.name} {op}"))

    def __eq__(self, value: object) -> Expr:  # type: ignore[override]
        return self._cmp("==", value)

    def __ne__(self, value: object) -> Expr:  # type: ignore[override]
        return self._cmp("!=", value)

    def __lt__(self, value: object) -> Expr:
        return self._cmp("<", value)

    def __le__(self, value: object) -> Expr:
        return self._cmp("<=", value)

    def __gt__(self, value: object) -> Expr:
        return self._cmp(">", value)

    def __ge__(self, value: object) -> Expr:
        return self._cmp(">=", value)

    __hash__ = None  # type: ignore[assignment]  # == builds a filter, so a Col is no key

    def __bool__(self) -> NoReturn:
        msg = f"col({self.name!r}) is not a filter; compare it, e.g. col({self.name!r}) == value"
        raise QueryError(msg)

    def isin(self, values: Iterable[Scalar]) -> Expr:
        if isinstance(values, str):
            msg = f"col({self.name!r}).isin() takes a list of values, not the string {values!r}"
            raise QueryError(msg)
        return IsIn(prop=self.name, values=tuple(values))

    def between(self, lo: Scalar, hi: Scalar) -> Expr:
        """``lo <= value <= hi`` (inclusive)."""
        return Between(prop=self.name, lo=lo, hi=hi)

    def is_null(self) -> Expr:
        return IsNull(prop=self.name)

    def contains(self, value: str) -> Expr:
        """Membership of ``value`` in a list-of-strings property."""
        return Contains(prop=self.name, value=value)


def col(name: str) -> Col:
    """Refer to the property ``name`` in a filter."""
    return Col(name=name)


_NODES: dict[str, type[Expr]] = {
    cls.__name__.lower(): cls for cls in (Comparison, IsIn, Between, IsNull, Contains, Not, And, Or)
}


def expr_from_json(data: Mapping[str, Any]) -> Expr:
    """Rebuild a filter from ``Expr.to_json()`` output; every value is validated again."""
    if not isinstance(data, Mapping) or data.get("node") not in _NODES:
        msg = f"not a filter in JSON form: {data!r}; expected a dict with 'node' in {list(_NODES)}"
        raise QueryError(msg)
    cls = _NODES[data["node"]]
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if set(data) - {"node"} != names:
        msg = f"filter node {data!r} needs exactly the keys {sorted(names | {'node'})}"
        raise QueryError(msg)
    kwargs: dict[str, Any] = {}
    for name in names:
        value = data[name]
        if name in {"args", "values"} and not isinstance(value, list):
            msg = f"{data['node']} {name!r} must be a list, got {value!r}"
            raise QueryError(msg)
        if name == "arg":
            value = expr_from_json(value)
        elif name == "args":
            value = tuple(expr_from_json(v) for v in value)
        elif name == "values":
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
