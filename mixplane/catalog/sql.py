"""SQL text from strings: the one place where a name or a value becomes part of a statement.

Values reach DuckDB as bound parameters (``?``) wherever SQL takes one. Where it cannot (a
column name in ``ALTER TABLE``, a file name or a JSON path inside a table function's
arguments, a struct key in ``read_json``'s ``columns``), the text goes through ``identifier``
(double quotes, a ``"`` doubled) or ``literal`` (single quotes, a ``'`` doubled) here and
nowhere else: DuckDB reads the quoted text back exactly as it was, so a quote, ``;``, ``--`` or
``read_text(`` inside it is data, never syntax. NUL cannot be held by either form and is
refused. ``tests/catalog/test_sql_injection.py`` walks every f-string of the package that
builds SQL and checks that each interpolated value comes from here or is listed there as an
internal fragment (compiled placeholders, type names, integers).

Cost: one ``str.replace`` per quoted string.
"""

from __future__ import annotations

from mixplane.errors import QueryError


def identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier: ``a"b`` -> ``"a""b"``."""
    return '"' + _checked(name, "an identifier").replace('"', '""') + '"'


def literal(text: str) -> str:
    """``text`` as an SQL string literal: ``it's`` -> ``'it''s'``."""
    return "'" + _checked(text, "a string literal").replace("'", "''") + "'"


def _checked(text: str, what: str) -> str:
    if not isinstance(text, str):
        msg = f"{what} must be text, got {type(text).__name__}"
        raise QueryError(msg)
    if "\x00" in text:
        msg = f"{text[:40]!r} holds a NUL character, which {what} cannot hold; remove it"
        raise QueryError(msg)
    return text
