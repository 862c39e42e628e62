"""Filter expressions: construction, Kleene evaluation, equality, JSON form."""

from __future__ import annotations

import json
import math

import pytest

from mixplane.errors import QueryError
from mixplane.query import Expr, col, expr_from_json
from mixplane.query.expr import And, Comparison, IsIn, Not, Or

T = col("t") == 1  # true on REC
F = col("f") == 1  # false on REC
N = col("n") == 1  # NULL on REC
REC = {"t": 1, "f": 0, "n": None}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (T, True),
        (F, False),
        (N, None),
        (~T, False),
        (~N, None),
        (F & N, False),
        (N & F, False),
        (T & N, None),
        (T & T, True),
        (T | N, True),
        (N | T, True),
        (F | N, None),
        (F | F, False),
        (~(F | N), None),
        (~(F & N), True),
    ],
)
def test_kleene_logic(expr: Expr, expected: bool | None) -> None:
    assert expr.evaluate(REC) is expected


@pytest.mark.parametrize(
    ("expr", "record", "expected"),
    [
        (col("x") != 1, {}, None),  # a missing key is NULL
        (col("x") < 2, {"x": 1}, True),
        (col("x") >= 2.5, {"x": 2}, False),
        (col("x").isin([1, 2]), {"x": 2}, True),
        (col("x").isin([1, 2]), {"x": 3}, False),
        (col("x").isin([1, 2]), {"x": None}, None),
        (col("x").isin([]), {"x": None}, False),  # SQL: NULL IN () is false
        (~col("x").isin([]), {"x": None}, True),
        (col("x").between(1, 3), {"x": 3}, True),
        (col("x").between(1, 3), {"x": 4}, False),
        (col("x").between(3, 1), {"x": 2}, False),
        (col("x").between(1, 3), {}, None),
        (col("x").is_null(), {}, True),
        (col("x").is_null(), {"x": 0}, False),
        (~col("x").is_null(), {"x": None}, False),
        (col("l").contains("a"), {"l": ["b", "a"]}, True),
        (col("l").contains("a"), {"l": ["b", None]}, False),  # NULL elements never match
        (col("l").contains("a"), {"l": []}, False),
        (col("l").contains("a"), {"l": None}, None),
        (col("s") < "a", {"s": "B"}, True),  # byte order, like DuckDB
        (col("s") > "z", {"s": "é"}, True),
    ],
)
def test_predicates(expr: Expr, record: dict[str, object], expected: bool | None) -> None:
    assert expr.evaluate(record) is expected


def test_nan_is_equal_to_itself_and_above_every_number() -> None:
    nan = {"x": math.nan}
    assert (col("x") > 1e308).evaluate(nan) is True
    assert (col("x") == 1.0).evaluate(nan) is False
    assert col("x").between(0, 1e308).evaluate(nan) is False
    assert (col("x") < 1).evaluate({"x": -math.inf}) is True


@pytest.mark.parametrize("use", [lambda e: e and e, lambda e: e or e, lambda e: not e, bool])
def test_python_boolean_operators_raise(use: object) -> None:
    with pytest.raises(QueryError, match=r"use '&'|instead of 'and', 'or', 'not'"):
        use(col("a") == 1)  # type: ignore[operator]


def test_chained_python_comparison_raises() -> None:
    with pytest.raises(QueryError, match="no truth value"):
        _ = 1 < col("a") < 3


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda: col("a") == None, r"col\('a'\)\.is_null\(\)"),  # noqa: E711
        (lambda: col("a") != None, r"is_null\(\) negated with ~"),  # noqa: E711
        (lambda: col("a").isin([1, None]), r"is_null"),  # type: ignore[list-item]
        (lambda: col("a") > math.inf, "finite"),
        (lambda: col("a") == 2**63, "64-bit"),
        (lambda: col("a") == [1], "not a str, int, float or bool"),
        (lambda: col("a").isin("abc"), "list of values"),
        (lambda: col("a").contains(1), "lists hold strings"),  # type: ignore[arg-type]
        (lambda: col("a b"), "invalid property name 'a b'"),
        (lambda: col("AND"), "is a filter keyword; rename"),
        (lambda: (col("a") == 1) & True, "both sides must be filters"),
    ],
)
def test_invalid_construction(make: object, fix: str) -> None:
    with pytest.raises(QueryError, match=fix):
        make()  # type: ignore[operator]


def test_nodes_are_values() -> None:
    a, b, c = col("a") == 1, col("b") == 2, col("c") == 3
    assert (a & b) & c == a & (b & c) == And(args=(a, b, c))  # flattened
    assert len({a & b, (col("a") == 1) & (col("b") == 2)}) == 1
    assert (a | b) != (a & b)
    assert (col("x") == 1) != (col("x") == 1.0)  # type-strict
    assert (col("x") == 1) != (col("x") == True)  # noqa: E712
    assert col("x").isin([1, 2]) == IsIn(prop="x", values=(1, 2))
    assert Not(arg=a) == ~a
    assert Or(args=(a, b)).args == (a, b)
    with pytest.raises(AttributeError):
        a.prop = "b"  # type: ignore[attr-defined]


def test_properties() -> None:
    expr = ((col("a") == 1) | col("b").is_null()) & ~col("c").contains("x") & (col("a") > 0)
    assert expr.properties() == frozenset({"a", "b", "c"})


def test_json_round_trip() -> None:
    expr = (col("a") == 1.0) & ~(col("b").isin(["x", True]) | col("c").between(-1, 2.5))
    data = json.loads(json.dumps(expr.to_json()))
    assert data["node"] == "and"
    assert expr_from_json(data) == expr


@pytest.mark.parametrize(
    ("data", "fix"),
    [
        ({"node": "eval", "prop": "a"}, "expected a dict with 'node'"),
        ({"node": "comparison", "prop": "a", "op": "=="}, "needs exactly the keys"),
        ({"node": "comparison", "prop": "a", "op": "~=", "value": 1}, "unknown comparison"),
        ({"node": "comparison", "prop": "a;", "op": "==", "value": 1}, "invalid property"),
        ({"node": "isin", "prop": "a", "values": "ab"}, "must be a list"),
        ({"node": "isin", "prop": "a", "values": [None]}, "is_null"),
        ({"node": "and", "args": [{"node": "isnull", "prop": "a"}]}, "at least two"),
        ({"node": "not", "arg": 1}, "not a filter in JSON form"),
    ],
)
def test_json_rejects_malformed(data: dict[str, object], fix: str) -> None:
    with pytest.raises(QueryError, match=fix):
        expr_from_json(data)


def test_comparison_direct_construction_validates() -> None:
    with pytest.raises(QueryError, match="not a finite number"):
        Comparison(prop="a", op="==", value=math.nan)
