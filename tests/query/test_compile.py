"""Compiling filters to DuckDB SQL: type checks, and agreement with ``Expr.evaluate``."""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixplane.catalog.properties import PropertyType
from mixplane.errors import FilterSyntaxError, QueryError
from mixplane.query import Column, Expr, col, compile_filter, expr_from_json, parse_filter

TYPES = {
    "s": PropertyType.STRING,
    "i": PropertyType.INTEGER,
    "f": PropertyType.FLOAT,
    "b": PropertyType.BOOLEAN,
    "l": PropertyType.LIST,
}
COLUMNS = {name: Column(sql=f's."{name}"', type=t) for name, t in TYPES.items()}


def test_none_selects_everything() -> None:
    assert compile_filter(None, COLUMNS) == ("TRUE", [])


def test_simple_filter() -> None:
    sql, params = compile_filter((col("s") == "en") & ~col("i").isin([1, 2]), COLUMNS)
    assert sql == '((s."s" = ?) AND (NOT (s."i" IN (?, ?))))'
    assert params == ["en", 1, 2]


def test_text_is_parsed() -> None:
    assert compile_filter("s == 'en' or l contains 'x'", COLUMNS) == (
        '((s."s" = ?) OR list_contains(s."l", ?))',
        ["en", "x"],
    )
    with pytest.raises(FilterSyntaxError, match="column"):
        compile_filter("s ==", COLUMNS)


def test_values_are_bound_never_interpolated() -> None:
    evil = "x'); DROP TABLE t; --"
    sql, params = compile_filter(col("s") == evil, COLUMNS)
    assert evil not in sql
    assert params == [evil]


def test_float_properties_bind_floats() -> None:
    assert compile_filter(col("f").isin([1, 2.5]), COLUMNS)[1] == [1.0, 2.5]


def test_empty_isin_is_false() -> None:
    assert compile_filter(col("s").isin([]), COLUMNS) == ("FALSE", [])
    assert compile_filter(~col("s").isin([]), COLUMNS) == ("(NOT FALSE)", [])


def test_unknown_property() -> None:
    columns = {"language": COLUMNS["s"], "source": COLUMNS["s"]}
    with pytest.raises(QueryError) as info:
        compile_filter(col("lang") == "en", columns)
    assert str(info.value) == "unknown property 'lang' in filter; known: ['language', 'source']"


def test_unknown_property_even_in_empty_isin() -> None:
    with pytest.raises(QueryError, match="unknown property 'zz'"):
        compile_filter(col("zz").isin([]), COLUMNS)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (col("s") == 1, "property 's' is string but '==' compares it with 1 (int); use a string"),
        (col("s").isin(["a", 2]), "'in' compares it with 2 (int); use a string"),
        (col("i") == 1.5, "property 'i' is integer but '==' compares it with 1.5 (float)"),
        (col("i") == True, "compares it with True (bool); use an integer"),  # noqa: E712
        (col("i").between(0, "9"), "'between' compares it with '9' (str); use an integer"),
        (col("f") < False, "property 'f' is float but '<' compares it with False (bool); use a"),
        (col("b") == 1, "property 'b' is boolean but '==' compares it with 1 (int); use true"),
        (
            col("b") < True,
            "operator '<' does not apply to property 'b' (boolean) with value True; "
            "boolean properties allow: ==, !=, in, is null",
        ),
        (col("b").between(False, True), "operator 'between' does not apply to property 'b'"),
        (
            col("l") == "x",
            "operator '==' does not apply to property 'l' (list) with value 'x'; "
            "list properties allow: contains, is null",
        ),
        (col("l").isin(["x"]), "operator 'in' does not apply to property 'l' (list)"),
        (col("l").isin([]), "operator 'in' does not apply to property 'l' (list)"),
        (col("s").contains("x"), "operator 'contains' does not apply to property 's' (string)"),
        (col("i").contains("x"), "integer properties allow: ==, !=, <, <=, >, >=, in, between"),
    ],
)
def test_type_mismatch(expr: Expr, message: str) -> None:
    with pytest.raises(QueryError) as info:
        compile_filter(expr, COLUMNS)
    assert message in str(info.value)


def test_rejects_other_objects() -> None:
    with pytest.raises(QueryError, match="must be an Expr, a str or None"):
        compile_filter(42, COLUMNS)  # type: ignore[arg-type]


# --- property tests: compiled SQL selects what evaluate() selects ------------------------------

STRINGS = st.sampled_from(["", "a", "b", "B", "ab", "é", "😀", "a'b", 'q"', "\\", "\n"]) | st.text(
    max_size=3
)
INTS = st.integers(-3, 3) | st.sampled_from([-(2**63), 2**63 - 1, 2**53 + 1])
FINITE = st.sampled_from([-1.5, -0.0, 0.0, 0.5, 1.0, 2.0, 1e300]) | st.floats(
    -3, 3, allow_nan=False
)
FLOATS = FINITE | st.sampled_from([math.nan, math.inf, -math.inf])
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "s": STRINGS,
    "i": INTS,
    "f": FLOATS,
    "b": st.booleans(),
    "l": st.lists(STRINGS | st.none(), max_size=3),
}
RECORDS = st.lists(
    st.fixed_dictionaries({}, optional={k: v | st.none() for k, v in VALUES.items()}), max_size=8
)
#: Appended to every generated table so each expression meets the NULL and float corner cases.
EDGES: list[dict[str, Any]] = [
    {},
    {"s": "", "i": 0, "f": math.nan, "b": False, "l": []},
    {"s": "a", "i": -(2**63), "f": math.inf, "b": True, "l": [None]},
    {"s": "B", "i": 2**63 - 1, "f": -math.inf, "l": ["a", None]},
    {"s": "é", "i": 1, "f": -0.0, "l": ["", "b"]},
]


def _predicates(name: str, literal: st.SearchStrategy[Any], *, ordered: bool) -> list[Any]:
    c = col(name)
    ops: list[Callable[[Any, Any], Any]] = [operator.eq, operator.ne]
    ops += [operator.lt, operator.le, operator.gt, operator.ge] if ordered else []
    out = [
        st.builds(lambda op, v: op(c, v), st.sampled_from(ops), literal),
        st.lists(literal, max_size=3).map(c.isin),
        st.just(c.is_null()),
    ]
    if ordered:
        out.append(st.builds(c.between, literal, literal))
    return out


LEAVES = st.one_of(
    *_predicates("s", STRINGS, ordered=True),
    *_predicates("i", INTS, ordered=True),
    *_predicates("f", FINITE | st.integers(-3, 3), ordered=True),
    *_predicates("b", st.booleans(), ordered=False),
    STRINGS.map(col("l").contains),
    st.just(col("l").is_null()),
)


def _exprs(depth: int) -> st.SearchStrategy[Expr]:
    if depth == 0:
        return LEAVES
    sub = _exprs(depth - 1)
    return st.one_of(
        LEAVES,
        st.builds(lambda x, y: x & y, sub, sub),
        st.builds(lambda x, y: x | y, sub, sub),
        sub.map(lambda x: ~x),
    )


EXPRS = _exprs(4)
SCHEMA = pa.schema([("id", pa.int64())] + [(name, t.arrow) for name, t in TYPES.items()])


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect() as connection:  # one per module: connecting costs ~25 ms
        yield connection


@settings(max_examples=200, deadline=None)
@given(records=RECORDS, exprs=st.lists(EXPRS, min_size=1, max_size=4))
def test_sql_selects_what_evaluate_selects(
    con: duckdb.DuckDBPyConnection, records: list[dict[str, Any]], exprs: list[Expr]
) -> None:
    records = records + EDGES
    rows = [{"id": i, **{k: r.get(k) for k in TYPES}} for i, r in enumerate(records)]
    con.register("src", pa.Table.from_pylist(rows, schema=SCHEMA))
    con.execute("CREATE OR REPLACE TABLE t AS SELECT * FROM src")
    for expr in exprs:
        sql, params = compile_filter(expr, COLUMNS)
        selected = con.execute(f"SELECT id FROM t AS s WHERE {sql}", params).fetchall()
        want = {i for i, r in enumerate(records) if expr.evaluate(r) is True}
        assert {row[0] for row in selected} == want, (str(expr), sql, params)


@settings(max_examples=200, deadline=None)
@given(expr=EXPRS)
def test_text_and_json_round_trip(expr: Expr) -> None:
    assert parse_filter(str(expr)) == expr
    assert expr_from_json(json.loads(json.dumps(expr.to_json()))) == expr
    assert compile_filter(str(expr), COLUMNS) == compile_filter(expr, COLUMNS)
