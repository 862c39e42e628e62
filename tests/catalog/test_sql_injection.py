"""No user text reaches SQL unquoted (issue 17, item 0).

Two halves:

- **The walk** (``test_every_sql_site_is_known``): every f-string of the package whose text is
  SQL is found with ``ast``; each value it interpolates must be a call of the quoting module
  (``mixplane.catalog.sql.identifier`` / ``literal``) or an internal fragment listed in
  ``INTERNAL`` with the reason it holds no user text; every function that builds SQL must be
  listed in ``SITES`` with the entry point whose hostile-input test below drives it. A new SQL
  site fails the walk until it is quoted and given a driver.
- **The drivers**: each public entry point that reaches one of those sites gets hostile
  strings (quotes, ``')``, ``;``, ``--``, subqueries calling ``read_text`` on a secret file,
  NUL, very long) in every user-given argument. Each call must be a clean ``MixplaneError`` or
  treat the string as plain data (it round-trips exactly); the secret file's content appears in
  no answer, no error and nowhere in the catalog afterwards.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mixplane
from mixplane.catalog import Catalog
from mixplane.catalog import fields as field_paths
from mixplane.errors import (
    MalformedRecordError,
    MixplaneError,
    PropertyError,
    RegistrationError,
)
from mixplane.query.expr import col

from .conftest import Corpus, make_records

PACKAGE = Path(mixplane.__file__).parent
SECRET = "canary-4c1d-never-read-9e27"
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|ALTER|CREATE|DROP|FROM|WHERE|JOIN|TRY_CAST)\b|->>|"
    r"\b(read_json|json_type|list_contains|strlen|count|regexp_\w+|starts_with|ends_with)\(|"
    r"\b(AS|IN) "
)

#: (module, function) -> the test below that drives it with hostile strings.
SITES = {
    ("catalog/tables.py", "_dataset_properties"): "test_register_hostile_names_and_paths",
    ("catalog/computed.py", "add_property"): "test_add_property_hostile",
    ("catalog/computed.py", "_store_values"): "test_add_property_hostile",
    ("catalog/reads.py", "_per_sample"): "test_lookups_with_hostile_names",
    ("catalog/queries.py", "selection"): "test_queries_with_hostile_strings",
    ("catalog/queries.py", "runs_sql"): "test_queries_with_hostile_strings",
    ("catalog/ingest.py", "accept"): "test_register_hostile_names_and_paths",
    ("catalog/runs.py", "scan_runs"): "test_queries_with_hostile_strings",
    ("catalog/formats/jsonl_duckdb.py", "scan_duckdb"): "test_register_hostile_names_and_paths",
    ("catalog/formats/jsonl_duckdb.py", "_extract"): "test_register_hostile_names_and_paths",
    ("catalog/formats/jsonl_duckdb.py", "_maybe_not_string"): "test_register_hostile_names_and_paths",
    ("query/compile.py", "sql"): "test_queries_with_hostile_strings",
}

#: Interpolated values that are not quoted here, per function, and why they hold no user text.
INTERNAL: dict[str, dict[str, str]] = {
    "selection": {
        "columns[p].sql": "Catalog.columns(): s.<identifier(name)> for names read from the catalog",
        "columns[sort_by].sql": "Catalog.columns(), as above; sort_by is checked against it",
        "i": "an int",
        "condition": "compile_filter's SQL: placeholders for every value",
        "sql_i": "compile_filter's SQL: placeholders for every value",
    },
    "runs_sql": {
        "', '.join(keys) + ', ' if keys else ''": "selection's key expressions",
        "chosen.condition": "selection's condition: compile_filter's SQL with placeholders",
        "group": "g0.., m0.. aliases",
        "selected": "the query built above",
        "partition": "PARTITION BY over the aliases",
        "order": "aliases and ASC/DESC",
        "rank": "DENSE_RANK over the aliases, or 0",
        "lead": "the aliases",
    },
    "_dataset_properties": {"counts": "count(identifier(name)) for each property"},
    "_store_values": {"ptype.sql": "a PropertyType's SQL type name (an enum)"},
    "accept": {"merged.sql": "a PropertyType's SQL type name (an enum)"},
    "_per_sample": {
        "column": "a constant column name given by the catalog's own callers",
        "table": "a constant table name given by the catalog's own callers",
        "extra": "a constant condition with ? placeholders given by the catalog's callers",
    },
    "scan_runs": {
        "', '.join(keys)": "Catalog.components' key expressions",
        "select_keys": "Catalog.components' key expressions",
        "condition": "compile_filter's SQL: placeholders for every value",
        "order": "aliases",
    },
    "scan_duckdb": {
        "spec": "literal(key): literal(type) pairs",
        "source": "read_json over literal(path) and spec",
        "probe": "json_type over _locate's identifier and literal",
        "PROBE_ROWS": "an int constant",
        "i": "an int",
        "root": "_locate: identifier(first key)",
        "pointer": "_locate: literal(JSON pointer)",
        "_maybe_not_string(root)": "_maybe_not_string over the quoted root and literal()",
        "_extract(types[f] or PropertyType.STRING, root, pointer)": "_extract of quoted parts",
        "', '.join(select)": "the expressions above",
    },
    "_maybe_not_string": {"column": "quoted by the caller (_locate)"},
    "_extract": {
        "root": "quoted by the caller (_locate)",
        "pointer": "quoted by the caller (_locate)",
        "ptype.sql": "a PropertyType's SQL type name (an enum)",
    },
    "sql": {
        "column.sql": "Catalog.columns()",
        "sql_op": "one of the filter language's operators",
        "self.bind(column, value)": "a ? placeholder (the value is bound)",
        "self.bind(column, lo)": "a ? placeholder",
        "self.bind(column, hi)": "a ? placeholder",
        "', '.join((self.bind(column, v) for v in values))": "? placeholders",
        "self.sql(arg)": "the compiled child node",
        "self.check(prop, 'is null', ()).sql": "Catalog.columns()",
    },
}
QUOTING = {"identifier", "literal"}


def _sql_fstrings() -> Iterator[tuple[str, str, ast.JoinedStr | ast.Call]]:
    """(module, enclosing function, node) of each f-string or str.format whose text is SQL."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.JoinedStr):
                    text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                    if SQL_WORDS.search(text) and _innermost(func, node):
                        yield module, func.name, node
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "format"
                    and isinstance(node.func.value, ast.Constant)
                    and isinstance(node.func.value.value, str)
                    and SQL_WORDS.search(node.func.value.value)
                ):
                    yield module, func.name, node


def _innermost(func: ast.AST, node: ast.AST) -> bool:
    """Whether ``func`` is the innermost function holding ``node`` (nested ones are walked
    on their own)."""
    inner = [
        f
        for f in ast.walk(func)
        if f is not func and isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    ]
    return not any(node in set(ast.walk(f)) for f in inner)


def test_every_sql_site_is_known() -> None:
    found: set[tuple[str, str]] = set()
    problems = []
    for module, function, node in _sql_fstrings():
        found.add((module, function))
        where = f"{module}:{node.lineno} in {function}()"
        if isinstance(node, ast.Call):
            problems.append(f"{where}: SQL built with str.format; use an f-string with quoting")
            continue
        for value in node.values:
            if not isinstance(value, ast.FormattedValue):
                continue
            expr = value.value
            if (
                isinstance(expr, ast.Call)
                and isinstance(expr.func, ast.Name)
                and expr.func.id in QUOTING
            ):
                continue
            source = ast.unparse(expr)
            if source not in INTERNAL.get(function, {}):
                problems.append(f"{where}: {{{source}}} is neither quoted nor a known fragment")
    assert not problems, "\n".join(problems)
    assert found == set(SITES), (
        f"SQL sites without a hostile-input driver: {sorted(found - set(SITES))}; "
        f"listed but gone: {sorted(set(SITES) - found)}"
    )
    tests = {name for name in globals() if name.startswith("test_")}
    assert set(SITES.values()) <= tests


# -- hostile strings --------------------------------------------------------------------------


def hostile(secret: Path) -> list[str]:
    read = f"read_text('{secret}')"
    return [
        "'",
        '"',
        "')",
        "'))",
        ";",
        "--",
        "x'; DROP TABLE samples; --",
        'x"; DROP TABLE samples; --',
        f"' || (SELECT content FROM {read}) || '",
        f"') || (SELECT content FROM {read}) || ('",
        f'" || (SELECT content FROM {read}) || "',
        f"language' || (SELECT content FROM {read}) || '",
        f"(SELECT content FROM {read})",
        "read_text(",
        "a\x00b",
        "x" * 100_000,
        "é字'\"\\",
    ]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every registered path; its content must never be read."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


@pytest.fixture
def loaded(catalog: Catalog, corpus: Corpus) -> tuple[Catalog, Path]:
    path = corpus.jsonl("d.jsonl", make_records(12))
    catalog.register("ds", path, properties={"language": "meta.language"}, constants={"n": 1})
    return catalog, path


def dump(catalog: Catalog) -> str:
    """Every value of every table of the catalog, as text."""
    con = catalog._con
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    return json.dumps(
        {t: con.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}, default=str
    )


def attempt(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or the MixplaneError it raised; anything else fails the test. The
    secret is in neither."""
    try:
        result = call()
    except MixplaneError as exc:
        assert SECRET not in str(exc)
        assert "\n" not in str(exc).strip() or "Traceback" not in str(exc)
        return exc
    assert SECRET not in repr(result)
    return result


def parses(path: str) -> bool:
    try:
        field_paths.keys(path)
    except PropertyError:
        return False
    return True


def values(result: Any, prop: str) -> list[Any]:
    return [c.properties[prop] for c in result.components]


def assert_untouched(catalog: Catalog) -> None:
    """The catalog holds no trace of the secret and its tables still answer."""
    assert SECRET not in dump(catalog)
    assert catalog.dataset("ds").samples == 12


def test_register_hostile_names_and_paths(
    loaded: tuple[Catalog, Path], secret: Path, corpus: Corpus
) -> None:
    catalog, path = loaded
    for text in hostile(secret):
        quoted = "meta." + json.dumps(text)  # the escape: a key holding anything but NUL
        calls: dict[str, Callable[[], Any]] = {
            "dataset name": lambda text=text: catalog.register(text, path),
            "property name": lambda text=text: catalog.register(
                "h", path, properties={text: "meta.language"}
            ),
            "field path": lambda text=text: catalog.register(
                "h", path, properties={"lang": "meta." + text}
            ),
            "quoted field path": lambda quoted=quoted: catalog.register(
                "h", path, properties={"lang": quoted}, on_error="skip"
            ),
            "text field": lambda text=text: catalog.register("h", path, text_field=text),
            "quoted text field": lambda text=text: catalog.register(
                "h", path, text_field=json.dumps(text), on_error="skip"
            ),
            "constant name": lambda text=text: catalog.register("h", path, constants={text: 1}),
        }
        for what, call in calls.items():
            outcome = attempt(call)
            if what in ("field path", "text field"):  # invalid, or a key looked up as data
                valid = parses(("meta." if what == "field path" else "") + text)
                wanted = MalformedRecordError if valid else PropertyError
                assert isinstance(outcome, wanted), (what, text[:60], outcome)
                assert valid or what != "field path" or "for property 'lang'" in str(outcome)
            if what == "property name":
                assert isinstance(outcome, PropertyError), (text[:60], outcome)
            if what == "dataset name":
                assert isinstance(outcome, RegistrationError), (text[:60], outcome)
            if not isinstance(outcome, MixplaneError):  # registered: the key was plain data
                assert outcome.samples == 0, (what, text[:60])
                catalog.unregister("h")
        constant = attempt(lambda text=text: catalog.register("h", path, constants={"src": text}))
        if "\x00" in text:
            assert isinstance(constant, MixplaneError) or constant.samples == 12
        else:
            assert constant.samples == 12
            assert values(catalog.components("dataset == 'h'", by=["src"]), "src") == [text]
        if not isinstance(constant, MixplaneError):
            catalog.unregister("h")
    assert_untouched(catalog)


def test_files_named_with_quotes_are_data(catalog: Catalog, corpus: Corpus) -> None:
    """A file name holding quotes, ';' and '--' reaches read_json as a literal."""
    path = corpus.jsonl('it\'s; --"x".jsonl', make_records(4))
    info = catalog.register("q", path, properties={"language": "meta.language"})
    assert info.samples == 4
    assert catalog.files("q").column("path").to_pylist() == [str(path.resolve())]


def test_add_property_hostile(loaded: tuple[Catalog, Path], secret: Path) -> None:
    catalog, _ = loaded
    for text in hostile(secret):
        outcome = attempt(lambda text=text: catalog.add_property(text, lambda t: [1] * t.num_rows))
        assert isinstance(outcome, PropertyError)
        stored = attempt(
            lambda text=text: catalog.add_property(
                "note", lambda t, text=text: [text] * t.num_rows, replace=True
            )
        )
        if not isinstance(stored, MixplaneError):
            assert values(catalog.components(by=["note"]), "note") == [text]
    assert_untouched(catalog)


def test_queries_with_hostile_strings(loaded: tuple[Catalog, Path], secret: Path) -> None:
    catalog, _ = loaded
    for text in hostile(secret):
        for call in (
            lambda text=text: catalog.components(text),
            lambda text=text: catalog.components(by=[text]),
            lambda text=text: catalog.components(sort_by=text),
            lambda text=text: catalog.components(members=[text]),
            lambda text=text: catalog.explain(f"language == {json.dumps(text)}"),
        ):
            outcome = attempt(call)
            if not isinstance(outcome, MixplaneError):  # a filter that parsed: values bound
                assert len(outcome.components) <= 1
        # as a value: bound, so it selects nothing (no sample has it) and runs no SQL
        result = attempt(lambda text=text: catalog.components(col("language") == text))
        assert not isinstance(result, MixplaneError)
        assert result.components == ()
        listed = attempt(lambda text=text: catalog.components(col("language").isin([text, "en"])))
        assert [c.properties for c in listed.components] == [{}]
    assert_untouched(catalog)


def test_lookups_with_hostile_names(loaded: tuple[Catalog, Path], secret: Path) -> None:
    catalog, _ = loaded
    runs = catalog.components().runs
    for text in hostile(secret):
        for call in (
            lambda text=text: catalog.files(text),
            lambda text=text: catalog.dataset(text),
            lambda text=text: catalog.unregister(text),
        ):
            assert isinstance(attempt(call), MixplaneError)
        assert catalog.sample_tokens(runs, text) is None  # bound: no counts under that name
    assert np.array_equal(
        catalog.sample_bytes(runs), [len(r["text"].encode()) for r in make_records(12)]
    )
    assert_untouched(catalog)


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        ("text", ("text",)),
        ("meta.language", ("meta", "language")),
        ('meta."lang.code"', ("meta", "lang.code")),
        ('"a b"."c\\"d"', ("a b", 'c"d')),
        ("meta.2024-q1", ("meta", "2024-q1")),
        ("meta.语言", ("meta", "语言")),
        ('meta.""', ("meta", "")),
    ],
)
def test_field_path_syntax(path: str, keys: tuple[str, ...]) -> None:
    assert field_paths.keys(path) == keys
    assert field_paths.keys(field_paths.text(keys)) == keys


@pytest.mark.parametrize(
    "path",
    ["", ".", "meta.", ".meta", "meta..x", "meta x", "meta.'x'", 'meta."x', 'meta."x"y', "a\x00"],
)
def test_field_path_errors_name_the_property(catalog: Catalog, corpus: Corpus, path: str) -> None:
    data = corpus.jsonl("d.jsonl", make_records(2))
    with pytest.raises(PropertyError, match=r"invalid field path .* for property 'language': "):
        catalog.register("ds", data, properties={"language": path})
    assert catalog.datasets() == []


def test_escaped_keys_are_read(catalog: Catalog, corpus: Corpus) -> None:
    """A key that is not an identifier is read through the escape on every format path."""
    records = [
        {"text": f"t{i}", "meta": {"lang.code": "en", "it's": i, "a/b~c": True}} for i in range(5)
    ]
    path = corpus.jsonl("d.jsonl", records)
    props = {"code": 'meta."lang.code"', "q": 'meta."it\'s"', "flag": 'meta."a/b~c"'}
    for name, function in (("fast", None), ("blocks", lambda t: {"k": [1] * t.num_rows})):
        catalog.register(name, path, properties=props, function=function)
        result = catalog.components(f"dataset == '{name}'", by=["code", "flag"])
        assert [c.properties for c in result.components] == [{"code": "en", "flag": True}]
    parquet = corpus.parquet("p.parquet", records)
    catalog.register("pq", parquet, properties=props)
    assert values(catalog.components("dataset == 'pq'", by=["code"]), "code") == ["en"]
