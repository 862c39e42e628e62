"""Malformed input: every kind raises naming the file and record, or is skipped and counted.

Under ``on_error='raise'`` the catalog must be exactly as before (every table row and the
columns of ``samples``); under ``on_error='skip'`` the good records are registered with correct
pointers and the skipped ones are counted per file.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixplane.catalog import Catalog, DatasetInfo
from mixplane.catalog.formats import jsonl_duckdb
from mixplane.errors import FileChangedError, MalformedRecordError, PropertyError

from .conftest import Corpus, Record, make_records

FIELDS = {"language": "meta.language", "quality": "meta.quality"}
GOOD = make_records(6)
BAD_JSONL: dict[str, tuple[bytes, str]] = {
    # kind: (bad line, what the message says)
    "invalid_utf8": (
        b'{"id": "bad", "text": "a\xff\xfeb", "meta": {"language": "en", "quality": 0.5}}',
        "invalid utf-8",
    ),
    "non_object": (b"[1, 2]", "expected a JSON object, got list"),
    "missing_field": (
        b'{"id": "bad", "text": "t", "meta": {"language": "en"}}',
        "missing field 'meta.quality'",
    ),
    "wrong_type": (
        b'{"id": "bad", "text": "t", "meta": {"language": "en", "quality": "high"}}',
        "field 'meta.quality' is string 'high', expected float",
    ),
}


@pytest.fixture
def base(catalog: Catalog, corpus: Corpus) -> Catalog:
    """A catalog that already holds a dataset, so 'exactly as before' is not just 'empty'."""
    catalog.register(
        "base", corpus.jsonl("base/b.jsonl", make_records(3, "b")), properties={"year": "meta.year"}
    )
    return catalog


def ids(catalog: Catalog, file_id: int, n: int) -> list[str]:
    table = catalog.read(file_id, list(range(n)))
    if "__key__" in table.column_names:
        return table.column("__key__").to_pylist()
    return table.column("id").to_pylist()


def file_id_of(catalog: Catalog, path: Path) -> int:
    for row in catalog.files().to_pylist():
        if row["path"] == str(path.resolve()):
            return int(row["file_id"])
    raise AssertionError(f"{path} is not registered")


def assert_skipped(catalog: Catalog, info: DatasetInfo, skipped: dict[Path, int]) -> None:
    """The skip counts are exact in the result, in to_dict(), and as stored in the catalog."""
    total = sum(skipped.values())
    assert info.skipped == total
    assert info.to_dict()["skipped_by_file"] == {
        str(p.resolve()): n for p, n in skipped.items() if n
    }
    assert catalog.dataset(info.name).skipped == total
    stored = {row["path"]: row["skipped"] for row in catalog.files(info.name).to_pylist()}
    for path, n in skipped.items():
        assert stored[str(path.resolve())] == n


def assert_raises_unchanged(
    catalog: Catalog,
    snap: Any,
    call: Any,
    error: type[Exception],
    *patterns: str,
) -> pytest.ExceptionInfo[Any]:
    before = snap(catalog)
    with pytest.raises(error) as err:
        call()
    for pattern in patterns:
        assert pattern in str(err.value), (pattern, str(err.value))
    assert snap(catalog) == before
    return err


def test_snapshot_sees_every_change(base: Catalog, corpus: Corpus, snap: Any) -> None:
    """The 'exactly as before' checks below would catch a partial registration."""
    before = snap(base)
    base.register("more", corpus.jsonl("m.jsonl", make_records(2, "m")))
    after_register = snap(base)
    assert after_register["datasets"] != before["datasets"]
    assert after_register["files"] != before["files"]
    assert after_register["samples"] != before["samples"]
    assert after_register["columns"] == before["columns"]
    base.add_property("flag", lambda t: [True] * t.num_rows, datasets=["more"])
    after_property = snap(base)
    assert after_property["columns"] == [*before["columns"], ("flag", "BOOLEAN")]
    assert after_property["properties"] != after_register["properties"]


# -- JSONL record kinds ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("kind", sorted(BAD_JSONL))
def test_jsonl_bad_line_raises(
    base: Catalog, corpus: Corpus, snap: Any, kind: str, compression: Any
) -> None:
    bad, problem = BAD_JSONL[kind]
    name = "d.jsonl" + (".zst" if compression else "")
    path = corpus.jsonl(name, [*GOOD[:2], bad, *GOOD[2:]], compression)
    err = assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", path, properties=FIELDS),
        MalformedRecordError,
        f"{path.resolve()}:line 3: ",
        problem,
        "on_error='skip'",
    )
    assert (err.value.path, err.value.location) == (str(path.resolve()), "line 3")


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("kind", sorted(BAD_JSONL))
def test_jsonl_bad_lines_are_skipped_and_counted(
    base: Catalog, corpus: Corpus, kind: str, compression: Any
) -> None:
    bad, problem = BAD_JSONL[kind]
    lines = [*GOOD[:2], bad, *GOOD[2:5], bad, GOOD[5]]
    path = corpus.jsonl("d.jsonl" + (".zst" if compression else ""), lines, compression)
    info = base.register("ds", path, properties=FIELDS, on_error="skip")
    assert info.samples == 6
    assert_skipped(base, info, {path: 2})
    (report,) = info.file_reports
    assert [m.split(": ", 1)[0] for m in report.messages] == [
        f"{path.resolve()}:line 3",
        f"{path.resolve()}:line 7",
    ]
    assert all(problem in m for m in report.messages)
    assert ids(base, file_id_of(base, path), 6) == [r["id"] for r in GOOD]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_truncated_last_line(base: Catalog, corpus: Corpus, snap: Any, compression: Any) -> None:
    data = corpus.lines(GOOD) + b'{"text": "ab'  # cut mid-string, no final newline
    if compression == "gzip":
        path = corpus.raw("d.jsonl.gz", gzip.compress(data))
    else:
        path = corpus.raw("d.jsonl", data)
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", path, properties=FIELDS),
        MalformedRecordError,
        f"{path.resolve()}:line 7: ",
        "truncated",
    )
    info = base.register("ds", path, properties=FIELDS, on_error="skip")
    assert info.samples == 6
    assert_skipped(base, info, {path: 1})
    assert ids(base, file_id_of(base, path), 6) == [r["id"] for r in GOOD]


@pytest.mark.parametrize("bad", [b"[1, 2]", b'"just a string"'])
def test_non_object_line_without_properties(
    catalog: Catalog, corpus: Corpus, snap: Any, bad: bytes
) -> None:
    path = corpus.jsonl("d.jsonl", [*GOOD[:2], bad, *GOOD[2:]])
    assert_raises_unchanged(
        catalog,
        snap,
        lambda: catalog.register("ds", path),
        MalformedRecordError,
        f"{path.resolve()}:line 3: expected a JSON object",
    )
    info = catalog.register("ds", path, on_error="skip")
    assert (info.samples, info.skipped) == (6, 1)
    assert info.bytes == sum(len(r["text"].encode()) for r in GOOD)


#: A text field value that is not a string, and what the message says about it.
NOT_STRINGS = {
    "int": ("5", "field 'text' is int"),
    "float": ("-1.5e3", "field 'text' is float"),
    "object": ('{"a": 1}', "field 'text' is dict"),
    "list": ('["a", "b"]', "field 'text' is list"),
    "bool": ("true", "field 'text' is bool"),
    "nan": ("NaN", "field 'text' is float"),
    "null": ("null", "missing field 'text'"),
}
#: How the file is scanned: DuckDB's fast path (a top-level text read as VARCHAR; a nested
#: one), or the block-wise Arrow path (a property function needs whole records).
SCAN_PATHS = ["fast", "nested", "blocks"]


def _not_string_line(value: str, scan_path: str) -> bytes:
    text = f'"body": {{"text": {value}}}' if scan_path == "nested" else f'"text": {value}'
    return f'{{"id": "bad", {text}, "meta": {{"language": "en", "quality": 0.5}}}}'.encode()


def _text_records(scan_path: str) -> list[Record]:
    if scan_path != "nested":
        return GOOD
    return [
        {**{k: v for k, v in r.items() if k != "text"}, "body": {"text": r["text"]}} for r in GOOD
    ]


def _register_args(scan_path: str, fields: dict[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {"properties": fields}
    if scan_path == "nested":
        args["text_field"] = "body.text"
    if scan_path == "blocks":
        args["function"] = lambda t: {"n": [1] * t.num_rows}
    return args


@pytest.mark.parametrize(
    ("kind", "scan_path", "compression"),
    [(k, p, None) for k in sorted(NOT_STRINGS) for p in SCAN_PATHS]
    + [(k, p, c) for k in ("int", "object") for p in SCAN_PATHS for c in ("gzip", "zstd")],
)
def test_text_that_is_not_a_string(
    catalog: Catalog,
    corpus: Corpus,
    snap: Any,
    kind: str,
    scan_path: str,
    compression: Any,
) -> None:
    """Issue 13: on every path (and compression) a text that is not a string is an error
    naming the line, or one counted skip; the fast path used to register its JSON text."""
    value, problem = NOT_STRINGS[kind]
    field = "body.text" if scan_path == "nested" else "text"
    problem = problem.replace("'text'", repr(field))
    bad = _not_string_line(value, scan_path)
    records: list[Record | bytes] = list(_text_records(scan_path))
    name = "d.jsonl" + {None: "", "gzip": ".gz", "zstd": ".zst"}[compression]
    path = corpus.jsonl(name, [*records[:2], bad, *records[2:]], compression)
    for fields in (FIELDS, {}):
        args = _register_args(scan_path, fields)
        assert_raises_unchanged(
            catalog,
            snap,
            lambda args=args: catalog.register("ds", path, replace=True, **args),
            MalformedRecordError,
            f"{path.resolve()}:line 3: {problem}",
        )
        info = catalog.register("ds", path, on_error="skip", replace=True, **args)
        assert (info.samples, info.skipped) == (6, 1)
        assert info.bytes == sum(len(r["text"].encode()) for r in GOOD)
        assert ids(catalog, file_id_of(catalog, path), 6) == [r["id"] for r in GOOD]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_texts_that_look_like_other_values_stay_on_the_fast_path(
    catalog: Catalog, corpus: Corpus, jsonl_batches: dict[str, list[int]], compression: Any
) -> None:
    """Strings such as "5", "{...}", "true" are texts: the fast path checks their lines and
    keeps them (no fallback to the block-wise path)."""
    texts = ["5", "-1", '{"a": 1}', "[x]", "true", "false", "NaN", "9 lives", "plain"]
    records = [{**r, "text": t} for r, t in zip(make_records(len(texts)), texts, strict=True)]
    path = corpus.jsonl("d.jsonl" + (".gz" if compression else ""), records, compression)
    info = catalog.register("ds", path, properties=FIELDS)
    assert (info.samples, info.skipped) == (len(texts), 0)
    assert info.bytes == sum(len(t) for t in texts)
    assert jsonl_batches == {"duckdb": [len(texts)], "blocks": []}


def test_failure_in_second_file_leaves_catalog_unchanged(
    base: Catalog, corpus: Corpus, snap: Any
) -> None:
    first = corpus.jsonl("ds/a.jsonl", GOOD)
    second = corpus.jsonl("ds/b.jsonl", [GOOD[0], b'{"text": "ab'])
    err = assert_raises_unchanged(
        base,
        snap,
        # 'tags' is a new property: its column is added in the transaction and must go again
        lambda: base.register("ds", first.parent, properties={**FIELDS, "tags": "tags"}),
        MalformedRecordError,
        f"{second.resolve()}:line 2: ",
    )
    assert err.value.path == str(second.resolve())
    assert "tags" not in base.properties()


@pytest.fixture
def small_batches(
    monkeypatch: pytest.MonkeyPatch, jsonl_batches: dict[str, list[int]]
) -> list[int]:
    """DuckDB batches and type probe of 4 lines; the sizes of the batches the fast path yielded."""
    monkeypatch.setattr(jsonl_duckdb, "DUCKDB_BATCH", 4)
    monkeypatch.setattr(jsonl_duckdb, "PROBE_ROWS", 4)
    return jsonl_batches["duckdb"]


def test_bad_record_after_first_duckdb_batch_raises(
    base: Catalog, corpus: Corpus, snap: Any, small_batches: list[int]
) -> None:
    records = make_records(20)
    lines: list[Record | bytes] = list(records)
    lines[13] = BAD_JSONL["wrong_type"][0]
    path = corpus.jsonl("d.jsonl", lines)
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", path, properties=FIELDS),
        MalformedRecordError,
        f"{path.resolve()}:line 14: ",
        "expected float",
    )
    assert small_batches[:3] == [4, 4, 4]  # the fast path had yielded before falling back


def test_bad_record_after_first_duckdb_batch_skipped(
    catalog: Catalog, corpus: Corpus, small_batches: list[int]
) -> None:
    records = make_records(20)
    lines: list[Record | bytes] = list(records)
    lines[1] = BAD_JSONL["missing_field"][0]  # skipped by the fast path in its first batch
    lines[13] = BAD_JSONL["wrong_type"][0]  # makes the fast path give up after 3 batches
    path = corpus.jsonl("d.jsonl", lines)
    info = catalog.register("ds", path, properties=FIELDS, on_error="skip")
    assert small_batches[:1] == [3]
    assert info.samples == 18
    assert_skipped(catalog, info, {path: 2})  # line 2 counted once, not again after the restart
    kept = [r for i, r in enumerate(records) if i not in (1, 13)]
    assert ids(catalog, 1, 18) == [r["id"] for r in kept]
    rows = catalog._con.execute("SELECT ordinal, quality FROM samples ORDER BY ordinal").fetchall()
    assert rows == [(i, r["meta"]["quality"]) for i, r in enumerate(kept)]


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(
            "jsonl",
        ),
        "parquet",
        pytest.param(
            "webdataset",
        ),
    ],
)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_type_conflict_with_an_earlier_dataset(
    base: Catalog, corpus: Corpus, snap: Any, fmt: str, on_error: Any
) -> None:
    base.register("floats", corpus.jsonl("f.jsonl", GOOD), properties={"quality": "meta.quality"})
    records = [{**r, "meta": {**r["meta"], "quality": "high"}} for r in GOOD]
    if fmt == "jsonl":
        path = corpus.jsonl("s.jsonl", records)
    elif fmt == "parquet":
        path = corpus.parquet("s.parquet", records)
    else:
        path = corpus.tar("s.tar", corpus.samples(records))
    field = "json.meta.quality" if fmt == "webdataset" else "meta.quality"
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("strings", path, properties={"quality": field}, on_error=on_error),
        PropertyError,
        "'quality'",
        str(path.resolve()),
    )


# -- empty and corrupt files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [pytest.param(FIELDS, id="fields"), pytest.param({}, id="no_fields")],
)
def test_empty_file(base: Catalog, corpus: Corpus, snap: Any, fields: dict[str, str]) -> None:
    empty = corpus.raw("ds/a.jsonl", b"")  # first: no property type is known yet
    good = corpus.jsonl("ds/b.jsonl", GOOD)
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", good.parent, properties=fields),
        MalformedRecordError,
        f"{empty.resolve()}: file holds no samples",
    )
    info = base.register("ds", good.parent, properties=fields, on_error="skip")
    assert (info.files, info.samples) == (2, 6)
    assert_skipped(base, info, {good: 0, empty: 0})  # no record was malformed
    assert info.file_reports[0].messages == (f"{empty.resolve()}: file holds no samples",)
    assert ids(base, file_id_of(base, good), 6) == [r["id"] for r in GOOD]


def test_corrupt_zst_raises(base: Catalog, corpus: Corpus, snap: Any) -> None:
    corpus.jsonl("ds/a.jsonl", GOOD)
    bad = corpus.raw("ds/b.jsonl.zst", b"this is not zstd at all\n" * 40)
    err = assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", bad.parent, properties=FIELDS),
        MalformedRecordError,
        str(bad.resolve()),
        "cannot decompress",
    )
    assert err.value.path == str(bad.resolve())


def test_truncated_zst_raises(base: Catalog, corpus: Corpus, snap: Any) -> None:
    data = zstandard.ZstdCompressor().compress(corpus.lines(GOOD))
    bad = corpus.raw("b.jsonl.zst", data[: len(data) // 2])
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", bad, on_error="skip"),
        MalformedRecordError,
        str(bad.resolve()),
        "truncated",
    )


def _truncated_parquet(corpus: Corpus) -> Path:
    whole = corpus.parquet("whole.parquet", make_records(40), row_group_size=8)
    data = whole.read_bytes()
    whole.unlink()
    return corpus.raw("ds/b.parquet", data[: len(data) // 2])


def test_truncated_parquet_raises(base: Catalog, corpus: Corpus, snap: Any) -> None:
    corpus.parquet("ds/a.parquet", GOOD)
    bad = _truncated_parquet(corpus)
    err = assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", bad.parent, properties=FIELDS),
        MalformedRecordError,
        str(bad.resolve()),
        "truncated",
    )
    assert err.value.path == str(bad.resolve())


@pytest.mark.parametrize("kind", ["zst", "parquet"])
def test_unreadable_file_raises_even_under_skip(
    base: Catalog, corpus: Corpus, snap: Any, kind: str
) -> None:
    """A file that cannot be read at all is never skipped silently: how many records it held is
    unknown, so skipping it would lose data without a count (docs/catalog.md)."""
    if kind == "zst":
        corpus.jsonl("ds/a.jsonl", GOOD)
        bad = corpus.raw("ds/b.jsonl.zst", b"this is not zstd at all\n" * 40)
    else:
        good = corpus.parquet("ds/a.parquet", GOOD)
        bad = _truncated_parquet(corpus)
        assert bad.parent == good.parent
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", bad.parent, properties=FIELDS, on_error="skip"),
        MalformedRecordError,
        str(bad.resolve()),
    )


# -- missing field in other formats ---------------------------------------------------------------


def test_parquet_missing_field(base: Catalog, corpus: Corpus, snap: Any) -> None:
    records = make_records(12)
    records[9]["meta"]["quality"] = None
    records[10]["text"] = None
    path = corpus.parquet("p.parquet", records, row_group_size=4)
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", path, properties=FIELDS),
        MalformedRecordError,
        f"{path.resolve()}:row 9: missing field 'meta.quality'",
    )
    info = base.register("ds", path, properties=FIELDS, on_error="skip")
    assert info.samples == 10
    assert_skipped(base, info, {path: 2})
    kept = [r["id"] for i, r in enumerate(records) if i not in (9, 10)]
    assert ids(base, file_id_of(base, path), 10) == kept


def test_webdataset_missing_member_and_field(base: Catalog, corpus: Corpus, snap: Any) -> None:
    records = make_records(8)
    samples = corpus.samples(records)
    del samples[3][1]["txt"]  # a sample without its text member
    samples[6][1]["json"] = json.dumps({"meta": {"language": "en"}}).encode()  # no quality
    fields = {k: "json." + v for k, v in FIELDS.items()}
    path = corpus.tar("w.tar", samples)
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", path, properties=fields),
        MalformedRecordError,
        f"{path.resolve()}:sample 'r3': missing member(s) ['txt']",
    )
    info = base.register("ds", path, properties=fields, on_error="skip")
    assert info.samples == 6
    assert_skipped(base, info, {path: 2})
    messages = info.file_reports[0].messages
    assert [m.split(": ", 1)[0] for m in messages] == [
        f"{path.resolve()}:sample 'r3'",
        f"{path.resolve()}:sample 'r6'",
    ]
    assert "missing field 'json.meta.quality'" in messages[1]
    kept = [r["id"] for i, r in enumerate(records) if i not in (3, 6)]
    assert ids(base, file_id_of(base, path), 6) == kept


def test_webdataset_wrong_type(base: Catalog, corpus: Corpus, snap: Any) -> None:
    records = make_records(6)
    records[4]["meta"]["quality"] = "high"
    path = corpus.tar("w.tar", corpus.samples(records))
    fields = {"quality": "json.meta.quality"}
    assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", path, properties=fields),
        MalformedRecordError,
        f"{path.resolve()}:sample 'r4': field 'json.meta.quality' is string 'high'",
    )
    info = base.register("ds", path, properties=fields, on_error="skip")
    assert_skipped(base, info, {path: 1})
    assert ids(base, file_id_of(base, path), 5) == ["r0", "r1", "r2", "r3", "r5"]


# -- files changed after registration -------------------------------------------------------------


@pytest.fixture
def registered(catalog: Catalog, corpus: Corpus) -> tuple[Catalog, Path, Path]:
    """Two datasets of one file each: 'ds' (the file the tests change) and 'other'."""
    path = corpus.jsonl("d.jsonl", GOOD)
    other = corpus.parquet("o.parquet", make_records(4, "o"))
    catalog.register("ds", path, properties=FIELDS)
    catalog.register("other", other)
    return catalog, path, other


def _change(path: Path, how: str) -> None:
    if how == "removed":
        path.unlink()
    elif how == "appended":
        with path.open("ab") as f:
            f.write(Corpus.lines(make_records(1, "x")))
    else:  # same size and mtime, other bytes: only the fingerprint tells
        st = path.stat()
        data = path.read_bytes()
        path.write_bytes(data.replace(b"r1", b"r9", 1))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size == st.st_size


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("removed", "was removed after registration"),
        ("appended", "changed after registration (size"),
        ("rewritten", "changed after registration (fingerprint"),
    ],
)
def test_changed_file_is_detected(
    registered: tuple[Catalog, Path, Path], snap: Any, how: str, says: str
) -> None:
    catalog, path, other = registered
    _change(path, how)
    expected = (f"file {path.resolve()} of dataset 'ds' {says}", "replace=True")
    for call in (
        catalog.check_files,
        lambda: catalog.check_files("ds"),
        lambda: catalog.read(file_id_of(catalog, path), [0]),
        lambda: catalog.add_property("n", lambda t: [1] * t.num_rows),
        lambda: catalog.add_property("n", lambda t: [1] * t.num_rows, datasets=["ds"]),
    ):
        err = assert_raises_unchanged(catalog, snap, call, FileChangedError, *expected)
        assert isinstance(err.value, OSError)
    catalog.check_files("other")  # the unchanged dataset is still usable
    assert ids(catalog, file_id_of(catalog, other), 4) == ["o0", "o1", "o2", "o3"]
    assert catalog.add_property("n", lambda t: [1] * t.num_rows, datasets=["other"]) == 4


def test_unchanged_files_pass_check(registered: tuple[Catalog, Path, Path]) -> None:
    catalog, path, _ = registered
    catalog.check_files()
    path.read_bytes()  # reading does not change the identity
    catalog.check_files("ds")


def test_parquet_schema_edge(catalog: Catalog, corpus: Corpus) -> None:
    """A text column that is not a string is an error naming the fix (text_field=)."""
    path = corpus.path("n.parquet")
    pq.write_table(pa.table({"text": [1, 2], "body": ["a", "b"]}), path)
    with pytest.raises(MalformedRecordError, match="text_field="):
        catalog.register("n", path)
    assert catalog.register("n", path, text_field="body").bytes == 2


# -- broken tar archives (issue 13) ---------------------------------------------------------------


def _cut_tar(corpus: Corpus, name: str, how: str) -> tuple[Path, int]:
    """A shard of 6 samples broken as ``how`` says, and the byte offset the error names."""
    whole = corpus.tar("whole.tar", corpus.samples(GOOD))
    data = whole.read_bytes()
    whole.unlink()
    header = data.find(b"r4.txt")  # the first member of the fifth sample
    members = 12 * 1024  # 12 members of one header and one data block each
    assert data[members : members + 1024] == bytes(1024)
    cuts = {
        # data cut short inside the member's padding: its padded data runs past the end
        "in_padding": (data[: header + 700], header),
        "in_data": (data[: header + 515], header),
        "in_header": (data[: header + 100], header),  # not a multiple of 512
        "at_boundary": (data[:header], header),  # no end-of-archive blocks at all
        "one_zero_block": (data[: members + 512], members),
        "trailing_bytes": (data + b"junk", len(data)),
        "bad_checksum": (data[:header] + b"X" + data[header + 1 :], header),
    }
    cut, offset = cuts[how]
    return corpus.raw(name, cut), offset


TAR_BREAKS = [
    "in_padding",
    "in_data",
    "in_header",
    "at_boundary",
    "one_zero_block",
    "trailing_bytes",
    "bad_checksum",
]


@pytest.mark.parametrize("how", TAR_BREAKS)
def test_broken_tar_raises_naming_file_and_byte(
    base: Catalog, corpus: Corpus, snap: Any, how: str
) -> None:
    corpus.tar("ds/a.tar", corpus.samples(make_records(3, "a")))
    path, offset = _cut_tar(corpus, "ds/b.tar", how)
    err = assert_raises_unchanged(
        base,
        snap,
        lambda: base.register("ds", path.parent, properties={"language": "json.meta.language"}),
        MalformedRecordError,
        f"{path.resolve()}:byte {offset}: ",
        "on_error='skip'",
    )
    assert (err.value.path, err.value.location) == (str(path.resolve()), f"byte {offset}")


@pytest.mark.parametrize("how", TAR_BREAKS)
def test_broken_tar_is_skipped_whole_and_reported(
    base: Catalog, corpus: Corpus, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under on_error='skip' the broken shard is skipped whole (never half-read: batches it
    had yielded are taken back) and reported, with the samples found before the break
    counted as skipped; the other shard is registered."""
    from mixplane.catalog.formats import webdataset

    monkeypatch.setattr(webdataset, "BATCH_SAMPLES", 2)  # batches are yielded before the break
    good = corpus.tar("ds/a.tar", corpus.samples(make_records(3, "a")))
    path, offset = _cut_tar(corpus, "ds/b.tar", how)
    fields = {"language": "json.meta.language"}
    info = base.register("ds", path.parent, properties=fields, on_error="skip")
    assert (info.files, info.samples) == (2, 3)
    found = 4 if how in ("in_padding", "in_data", "in_header", "at_boundary", "bad_checksum") else 6
    assert_skipped(base, info, {good: 0, path: found})
    (message,) = info.file_reports[1].messages
    assert message.startswith(f"{path.resolve()}:byte {offset}: ")
    assert f"file skipped ({found} samples)" in message
    assert base.files("ds").to_pylist()[1]["samples"] == 0
    assert ids(base, file_id_of(base, good), 3) == ["a0", "a1", "a2"]


def test_whole_tar_formats_still_register(catalog: Catalog, corpus: Corpus) -> None:
    """Archives as writers make them (tarfile pads to 10 KiB records; GNU tar, PAX headers)
    pass the end-of-archive and checksum checks."""
    import tarfile

    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        path = corpus.tar(f"w{fmt}.tar", corpus.samples(GOOD), tar_format=fmt)
        info = catalog.register(f"w{fmt}", path)
        assert (info.samples, info.skipped) == (6, 0)
