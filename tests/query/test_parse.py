"""The filter text language: every construct, precedence, literals, error messages."""

from __future__ import annotations

import pytest

from mixplane.errors import FilterSyntaxError, QueryError
from mixplane.query import Expr, col, parse_filter

a1, b2, c3 = col("a") == 1, col("b") == 2, col("c") == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("language == 'en'", col("language") == "en"),
        ('language = "en"', col("language") == "en"),
        ("x != 1", col("x") != 1),
        ("x < 1.5", col("x") < 1.5),
        ("x <= -2", col("x") <= -2),
        ("x > -2.5e-3", col("x") > -0.0025),
        ("x >= 1E3", col("x") >= 1000.0),
        ("x == .5", col("x") == 0.5),
        ("flag == true", col("flag") == True),  # noqa: E712
        ("flag != FALSE", col("flag") != False),  # noqa: E712
        ("x in [1, 2, 3]", col("x").isin([1, 2, 3])),
        ("x IN ('a', \"b\",)", col("x").isin(["a", "b"])),
        ("x in []", col("x").isin([])),
        ("x not in [1]", ~col("x").isin([1])),
        ("x between 1 and 2.5", col("x").between(1, 2.5)),
        ("x not between 'a' and 'b'", ~col("x").between("a", "b")),
        ("x is null", col("x").is_null()),
        ("x IS NOT NULL", ~col("x").is_null()),
        ("'py' in tags", col("tags").contains("py")),
        ("'py' not in tags", ~col("tags").contains("py")),
        ("tags contains 'py'", col("tags").contains("py")),
        ("Year_2 == 1", col("Year_2") == 1),
    ],
)
def test_constructs(text: str, expected: Expr) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a == 1 or b == 2 and c == 3", a1 | (b2 & c3)),
        ("a == 1 and b == 2 or c == 3", (a1 & b2) | c3),
        ("(a == 1 or b == 2) and c == 3", (a1 | b2) & c3),
        ("not a == 1 and b == 2", ~a1 & b2),
        ("not (a == 1 and b == 2)", ~(a1 & b2)),
        ("~a == 1 | b == 2 & c == 3", ~a1 | (b2 & c3)),
        ("a == 1 & (b == 2 | c == 3)", a1 & (b2 | c3)),
        ("not not a == 1", ~~a1),
        ("a == 1 AND b == 2 AND c == 3", a1 & b2 & c3),
        ("x between 1 and 2 and a == 1", col("x").between(1, 2) & a1),
        ("((a == 1))", a1),
    ],
)
def test_precedence(text: str, expected: Expr) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r"s == 'it\'s'", "it's"),
        (r's == "say \"hi\""', 'say "hi"'),
        (r"s == 'a\\b'", "a\\b"),
        (r"s == 'tab\there\nnew\r\0'", "tab\there\nnew\r\0"),
        (r"s == '\x41\u00e9\U0001F600'", "Aé😀"),
        ("s == '日本語'", "日本語"),
        ("s == 'a\"b'", 'a"b'),
        ("s == ''", ""),
    ],
)
def test_string_escapes(text: str, value: str) -> None:
    assert parse_filter(text) == (col("s") == value)


def test_numbers_keep_their_type() -> None:
    assert parse_filter("x == 3") == (col("x") == 3)
    assert parse_filter("x == 3.0") == (col("x") == 3.0)
    assert parse_filter("x == 3") != parse_filter("x == 3.0")
    assert parse_filter("x == -9223372036854775808") == (col("x") == -(2**63))


@pytest.mark.parametrize(
    "expr",
    [
        a1 | (b2 & c3),
        ~(a1 | b2) & ~~c3,
        (a1 & b2) | (~c3 & col("s").isin(["it's", "\x07", 'q"']) & col("x").between(-1.5, 2)),
        ~col("x").isin([]) | ~col("x").is_null() | ~col("x").between("a", "b"),
        ~col("tags").contains("a\\b\n") & (col("f") == -0.0) & (col("f") < 1e300),
    ],
)
def test_round_trip(expr: Expr) -> None:
    assert parse_filter(str(expr)) == expr


def test_text_form_is_readable() -> None:
    expr = ((col("lang") == "en") | (col("lang") == "de")) & (col("year") >= 2020)
    assert str(expr) == "(lang == 'en' or lang == 'de') and year >= 2020"
    assert str(~col("x").isin([1, 2])) == "x not in [1, 2]"
    assert str(~col("x").is_null()) == "x is not null"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("language == ", "expected a value after '==' at column 12 in \"language == \""),
        ("language == en", "expected a value after '==', found 'en' at column 13"),
        ("(a == 1", "expected ')' to close the '(' after '1' at column 8"),
        (
            "a == 1 b == 2",
            "expected 'and', 'or', ')' or the end of the filter after '1', found 'b'",
        ),
        ("a == 1 and", "expected a property name, '(' or 'not' after 'and' at column 11"),
        ("a 1", "expected an operator ('==', '!=', '<'"),
        ("a in [1 2]", "expected ',' or ']' to close the list after '1', found '2'"),
        ("a in 1", "expected a list of values such as ['a', 'b'] after 'in'"),
        ("a is nul", "expected 'null' after 'is', found 'nul' at column 6"),
        ("a not like 'x'", "expected 'in' or 'between' after 'not', found 'like'"),
        ("a between 1 or 2", "expected 'and' between the bounds"),
        ("a == null", "write 'PROP is null'"),
        ("tags contains 5", "expected a quoted string after 'contains', found '5'"),
        ("'x' in 5", "expected a list property name after 'in'"),
        ("5 in tags", "expected a property name, '(' or 'not', found '5' at column 1"),
        ("and == 1", "found 'and' at column 1"),
        ("a == 'abc", "unterminated string; close it with ' at column 6"),
        (r"a == 'a\q'", r"unknown escape '\q'"),
        (r"a == '\x4'", r"expected 2 hex digits after '\x'"),
        (r"a == '\ud800'", "surrogate"),
        ("a $ 1", "unexpected character '$' at column 3"),
        ("a == -", "unexpected character '-' at column 6"),
        ("x == 1e999", "not a finite number"),
        ("x == 99999999999999999999", "64-bit integer range"),
        ("", "empty filter; pass None"),
        ("   ", "empty filter"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    assert message in str(info.value)


def test_syntax_error_is_a_query_error_and_value_error() -> None:
    with pytest.raises(QueryError):
        parse_filter("a ==")
    with pytest.raises(ValueError, match="column"):
        parse_filter("a ==")


def test_rejects_non_text() -> None:
    with pytest.raises(QueryError, match="must be a str"):
        parse_filter(col("a") == 1)  # type: ignore[arg-type]
