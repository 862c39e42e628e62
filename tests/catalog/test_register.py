"""Registration of every format: samples, ordinals, typed properties, bytes, and pointer reads."""

from __future__ import annotations

import gzip
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
import zstandard

import mixplane.catalog.formats.lines as lines_module
from mixplane.catalog import Catalog, PropertyType
from mixplane.catalog.formats import jsonl_duckdb
from mixplane.errors import (
    CatalogError,
    DatasetExistsError,
    DatasetNotFoundError,
    MalformedRecordError,
    PropertyError,
    RegistrationError,
)

from .conftest import Corpus, Record, make_records, utf8_len

FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "webdataset"]
FIELDS = {
    "language": "meta.language",
    "quality": "meta.quality",
    "year": "meta.year",
    "clean": "meta.clean",
    "tags": "tags",
}
TYPES = {
    "clean": PropertyType.BOOLEAN,
    "language": PropertyType.STRING,
    "quality": PropertyType.FLOAT,
    "tags": PropertyType.LIST,
    "year": PropertyType.INTEGER,
}


def write(corpus: Corpus, fmt: str, records: list[Record], name: str = "part") -> Path:
    if fmt == "parquet":
        return corpus.parquet(f"{name}.parquet", records, row_group_size=5)
    if fmt == "webdataset":
        return corpus.tar(f"{name}.tar", corpus.samples(records))
    compression = {"jsonl": None, "jsonl.gz": "gzip", "jsonl.zst": "zstd"}[fmt]
    return corpus.jsonl(f"{name}.{fmt}", records, compression=compression)


def fields_for(fmt: str) -> dict[str, str]:
    """WebDataset records are {"__key__", "txt", "json": {...}}: field paths start at json."""
    prefix = "json." if fmt == "webdataset" else ""
    return {k: prefix + v for k, v in FIELDS.items()}


def as_record(fmt: str, row: dict[str, Any]) -> Record:
    """A record read back through the catalog, in the shape it was written."""
    if fmt != "webdataset":
        return row
    assert row["__key__"] == row["json"]["id"]
    return {"text": row["txt"], **row["json"]}


def file_ids(catalog: Catalog, dataset: str | None = None) -> list[int]:
    return catalog.files(dataset).column("file_id").to_pylist()


def sample_rows(catalog: Catalog, columns: str, file_id: int) -> list[tuple[Any, ...]]:
    return catalog._con.execute(
        f"SELECT {columns} FROM samples WHERE file_id = ? ORDER BY ordinal", [file_id]
    ).fetchall()


def read_ids(catalog: Catalog, file_id: int, ordinals: list[int]) -> list[str]:
    return catalog.read(file_id, ordinals).column("id").to_pylist()


# -- one file of each format -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_register_each_format(catalog: Catalog, corpus: Corpus, fmt: str) -> None:
    records = make_records(23)
    path = write(corpus, fmt, records)
    info = catalog.register("ds", path, properties=fields_for(fmt))

    assert (info.name, info.files, info.samples, info.skipped) == ("ds", 1, 23, 0)
    assert info.format == ("webdataset" if fmt == "webdataset" else fmt.split(".", maxsplit=1)[0])
    assert info.bytes == sum(utf8_len(r["text"]) for r in records)
    assert info.bytes > sum(len(r["text"]) for r in records)  # multi-byte text is counted as bytes
    assert sorted(info.properties) == sorted(TYPES)
    assert catalog.properties() == TYPES
    assert [d.to_dict() for d in catalog.datasets()] == [info.to_dict()]

    (file_id,) = file_ids(catalog)
    rows = sample_rows(catalog, "ordinal, bytes, language, quality, year, clean, tags", file_id)
    assert rows == [
        (
            i,
            utf8_len(r["text"]),
            r["meta"]["language"],
            r["meta"]["quality"],
            r["meta"]["year"],
            r["meta"]["clean"],
            r["tags"],
        )
        for i, r in enumerate(records)
    ]
    assert catalog.files().column("samples").to_pylist() == [23]


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_returns_the_registered_records_in_request_order(
    catalog: Catalog, corpus: Corpus, fmt: str
) -> None:
    records = make_records(23)
    catalog.register("ds", write(corpus, fmt, records), properties=fields_for(fmt))
    (file_id,) = file_ids(catalog)
    for ordinals in ([17, 0, 22, 5, 9], list(range(23)), list(range(22, -1, -1)), [11]):
        table = catalog.read(file_id, ordinals)
        assert [as_record(fmt, row) for row in table.to_pylist()] == [records[o] for o in ordinals]


@pytest.mark.parametrize(
    "fmt",
    [
        "jsonl",
        pytest.param("jsonl.gz"),
        pytest.param("jsonl.zst"),
        "parquet",
        "webdataset",
    ],
)
def test_read_repeated_ordinals(catalog: Catalog, corpus: Corpus, fmt: str) -> None:
    # Only the last ordinals repeat: with the bug above, a repeat followed by a later ordinal
    # makes the reader skip past the end of the stream, where it loops forever.
    records = make_records(23)
    catalog.register("ds", write(corpus, fmt, records))
    table = catalog.read(file_ids(catalog)[0], [3, 22, 22])
    assert [as_record(fmt, row) for row in table.to_pylist()] == [records[o] for o in (3, 22, 22)]


@pytest.mark.parametrize(
    "fmt",
    [
        "jsonl",
        pytest.param(
            "parquet",
        ),
        "webdataset",
    ],
)
def test_read_no_ordinals_gives_no_records(catalog: Catalog, corpus: Corpus, fmt: str) -> None:
    catalog.register("ds", write(corpus, fmt, make_records(5)))
    assert catalog.read(file_ids(catalog)[0], []).num_rows == 0


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_read_unknown_ordinal_is_a_catalog_error(
    catalog: Catalog, corpus: Corpus, fmt: str
) -> None:
    catalog.register("ds", write(corpus, fmt, make_records(5)))
    with pytest.raises(CatalogError, match="7"):
        catalog.read(file_ids(catalog)[0], [4, 7])


def test_read_unknown_file_id(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown file id 99"):
        catalog.read(99, [0])


def test_parquet_properties_from_columns_and_nested_fields(
    catalog: Catalog, corpus: Corpus
) -> None:
    records = [{**r, "n": i * 3, "score": i / 4} for i, r in enumerate(make_records(17))]
    path = corpus.parquet("p.parquet", records, row_group_size=4)  # 5 row groups
    info = catalog.register(
        "p", path, properties={"doc": "id", "n": "n", "score": "score", "year": "meta.year"}
    )
    assert info.samples == 17
    assert catalog.properties() == {
        "doc": PropertyType.STRING,
        "n": PropertyType.INTEGER,
        "score": PropertyType.FLOAT,
        "year": PropertyType.INTEGER,
    }
    rows = sample_rows(catalog, 'ordinal, row_group, "row", doc, n, score, year', 1)
    assert rows == [
        (i, i // 4, i % 4, r["id"], r["n"], r["score"], r["meta"]["year"])
        for i, r in enumerate(records)
    ]
    assert read_ids(catalog, 1, [16, 3, 4, 12]) == ["r16", "r3", "r4", "r12"]


def test_webdataset_text_member_defaults_to_txt(catalog: Catalog, corpus: Corpus) -> None:
    records = make_records(4)
    samples = corpus.samples(records)
    for _, members in samples:
        members["md"] = b"markdown that is not the text"
    info = catalog.register("w", corpus.tar("w.tar", samples))
    assert info.bytes == sum(utf8_len(r["text"]) for r in records)
    md = catalog.register("w_md", corpus.tar("w2.tar", samples), text_field="md")
    assert md.bytes == 4 * len(b"markdown that is not the text")


@pytest.mark.parametrize(
    "tar_format",
    [
        pytest.param(tarfile.PAX_FORMAT, id="pax"),
        pytest.param(tarfile.GNU_FORMAT, id="gnu"),
        pytest.param(tarfile.USTAR_FORMAT, id="ustar"),
    ],
)
def test_webdataset_long_member_names(catalog: Catalog, corpus: Corpus, tar_format: int) -> None:
    records = make_records(4)
    for i, r in enumerate(records):  # keys past the 100 bytes of a tar header's name field
        r["id"] = "shard-0001/" + "d" * 80 + "/" + "k" * 40 + str(i)
    path = corpus.tar("long.tar", corpus.samples(records), tar_format=tar_format)
    info = catalog.register("w", path, properties={"year": "json.meta.year"})
    assert info.samples == 4
    assert [r[0] for r in sample_rows(catalog, "year", 1)] == [r["meta"]["year"] for r in records]
    table = catalog.read(1, [3, 0])
    assert [as_record("webdataset", row) for row in table.to_pylist()] == [records[3], records[0]]


def test_jsonl_nested_text_field(catalog: Catalog, corpus: Corpus) -> None:
    records = [{"id": r["id"], "doc": {"body": r["text"]}} for r in make_records(6)]
    info = catalog.register("t", corpus.jsonl("t.jsonl", records), text_field="doc.body")
    assert info.samples == 6
    assert info.bytes == sum(utf8_len(r["doc"]["body"]) for r in records)
    assert catalog.read(1, [5, 1]).to_pylist() == [records[5], records[1]]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize(
    "function", [None, lambda t: {"n": pc.utf8_length(t["text"])}], ids=["duckdb", "blocks"]
)
def test_compressed_files_of_several_frames(
    catalog: Catalog, corpus: Corpus, compression: str, function: Any
) -> None:
    records = make_records(10)
    compress = gzip.compress if compression == "gzip" else zstandard.ZstdCompressor().compress
    data = compress(corpus.lines(records[:4])) + compress(corpus.lines(records[4:]))
    path = corpus.raw("m.jsonl" + (".gz" if compression == "gzip" else ".zst"), data)
    info = catalog.register("m", path, properties={"year": "meta.year"}, function=function)
    assert info.samples == 10
    assert catalog.read(1, [9, 2, 4, 3]).to_pylist() == [records[o] for o in (9, 2, 4, 3)]


# -- paths -----------------------------------------------------------------------------------


def test_directory_is_scanned_recursively_in_sorted_order(catalog: Catalog, corpus: Corpus) -> None:
    corpus.jsonl("b.jsonl", make_records(3, "b"))
    corpus.jsonl("sub/a.jsonl.gz", make_records(4, "a"), compression="gzip")
    corpus.parquet("sub/deeper/c.parquet", make_records(5, "c"))
    corpus.raw("README.txt", b"not data")
    info = catalog.register("dir", corpus.root)
    assert (info.files, info.samples) == (3, 12)
    assert info.format == "jsonl,parquet"
    paths = catalog.files("dir").column("path").to_pylist()
    assert paths == sorted(paths)
    assert [Path(p).name for p in paths] == ["b.jsonl", "a.jsonl.gz", "c.parquet"]
    for file_id, prefix in zip(file_ids(catalog), "bac", strict=True):
        assert read_ids(catalog, file_id, [0, 2]) == [f"{prefix}0", f"{prefix}2"]


def test_globs_and_lists_of_paths(catalog: Catalog, corpus: Corpus) -> None:
    corpus.jsonl("x/1.jsonl", make_records(2, "x"))
    corpus.jsonl("x/y/2.jsonl", make_records(3, "y"))
    corpus.jsonl("x/y/3.jsonl.zst", make_records(4, "z"), compression="zstd")
    flat = catalog.register("flat", str(corpus.root / "x" / "*.jsonl"))
    assert (flat.files, flat.samples) == (1, 2)
    deep = catalog.register("deep", str(corpus.root / "x" / "**" / "*.jsonl*"))
    assert (deep.files, deep.samples) == (3, 9)
    listed = catalog.register(
        "listed", [corpus.root / "x" / "y" / "2.jsonl", str(corpus.root / "x" / "y" / "*.zst")]
    )
    assert (listed.files, listed.samples) == (2, 7)


def test_path_and_glob_errors(catalog: Catalog, corpus: Corpus) -> None:
    with pytest.raises(RegistrationError, match="does not exist"):
        catalog.register("ds", corpus.root / "missing.jsonl")
    with pytest.raises(RegistrationError, match="no files match"):
        catalog.register("ds", str(corpus.root / "*.jsonl"))
    corpus.raw("notes.txt", b"")
    with pytest.raises(RegistrationError, match="no data files"):
        catalog.register("ds", corpus.root)
    assert catalog.datasets() == []


def test_unknown_suffix_needs_format(catalog: Catalog, corpus: Corpus) -> None:
    records = make_records(5)
    path = corpus.raw("data.txt", corpus.lines(records))
    with pytest.raises(RegistrationError, match=r"cannot tell the format of .*data\.txt.*format="):
        catalog.register("ds", path)
    assert catalog.datasets() == []
    info = catalog.register("ds", path, format="jsonl")
    assert (info.format, info.samples) == ("jsonl", 5)
    assert read_ids(catalog, 1, [4, 0]) == ["r4", "r0"]
    globbed = catalog.register("globbed", str(corpus.root / "*.txt"), format="jsonl")
    assert globbed.samples == 5


# -- where property values come from ----------------------------------------------------------


def test_constants_are_typed(catalog: Catalog, corpus: Corpus) -> None:
    info = catalog.register(
        "wiki",
        corpus.jsonl("w.jsonl", make_records(4)),
        constants={"source": "wiki", "shard": 3, "weight": 0.5, "curated": True},
    )
    assert sorted(info.properties) == ["curated", "shard", "source", "weight"]
    assert catalog.properties() == {
        "curated": PropertyType.BOOLEAN,
        "shard": PropertyType.INTEGER,
        "source": PropertyType.STRING,
        "weight": PropertyType.FLOAT,
    }
    rows = sample_rows(catalog, "source, shard, weight, curated", 1)
    assert rows == [("wiki", 3, 0.5, True)] * 4


def test_property_given_as_field_and_constant_is_refused(catalog: Catalog, corpus: Corpus) -> None:
    path = corpus.jsonl("w.jsonl", make_records(2))
    with pytest.raises(PropertyError, match="source"):
        catalog.register(
            "w", path, properties={"source": "meta.language"}, constants={"source": "x"}
        )
    with pytest.raises(PropertyError, match="reserved"):
        catalog.register("w", path, constants={"bytes": 1})
    assert catalog.datasets() == []


@pytest.mark.parametrize(
    ("preset", "meta_key"), [("slimpajama", "redpajama_set_name"), ("pile", "pile_set_name")]
)
def test_presets_read_the_source(
    catalog: Catalog, corpus: Corpus, preset: str, meta_key: str
) -> None:
    names = ["RedPajamaC4", "RedPajamaWikipedia", "RedPajamaArXiv"]
    records = [
        {"text": f"doc {i}", "meta": {meta_key: names[i % 3]}, "id": f"r{i}"} for i in range(7)
    ]
    info = catalog.register("corpus", corpus.jsonl("c.jsonl.zst", records, "zstd"), preset=preset)
    assert info.properties == ("source",)
    assert catalog.properties() == {"source": PropertyType.STRING}
    assert [r[0] for r in sample_rows(catalog, "source", 1)] == [names[i % 3] for i in range(7)]
    with pytest.raises(PropertyError, match=r"unknown preset 'nope'.*slimpajama"):
        catalog.register("other", corpus.root, preset="nope")


def test_explicit_property_overrides_preset_field(catalog: Catalog, corpus: Corpus) -> None:
    records = [{"text": "t", "meta": {"redpajama_set_name": "a", "origin": "b"}}]
    catalog.register(
        "c",
        corpus.jsonl("c.jsonl", records),
        preset="slimpajama",
        properties={"source": "meta.origin"},
    )
    assert sample_rows(catalog, "source", 1) == [("b",)]


def test_list_of_strings_property(catalog: Catalog, corpus: Corpus) -> None:
    records = make_records(9)
    catalog.register("ds", corpus.jsonl("d.jsonl", records), properties={"tags": "tags"})
    assert catalog.properties() == {"tags": PropertyType.LIST}
    assert [r[0] for r in sample_rows(catalog, "tags", 1)] == [r["tags"] for r in records]
    result = catalog.components("tags contains 'code'")
    assert result.total_samples == sum("code" in r["tags"] for r in records)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_integer_widens_to_float_across_files(catalog: Catalog, corpus: Corpus, fmt: str) -> None:
    ints = [{"text": f"i{i}", "q": i} for i in range(3)]
    floats = [{"text": f"f{i}", "q": i + 0.5} for i in range(3)]
    if fmt == "parquet":
        corpus.parquet("a.parquet", ints)
        corpus.parquet("b.parquet", floats)
    else:
        corpus.jsonl("a.jsonl", ints)
        corpus.jsonl("b.jsonl", floats)
    catalog.register("ds", corpus.root, properties={"q": "q"})
    assert catalog.properties() == {"q": PropertyType.FLOAT}
    values = catalog._con.execute("SELECT q FROM samples ORDER BY file_id, ordinal").fetchall()
    assert values == [(0.0,), (1.0,), (2.0,), (0.5,), (1.5,), (2.5,)]


def test_integer_widens_to_float_across_datasets(catalog: Catalog, corpus: Corpus) -> None:
    catalog.register(
        "ints", corpus.jsonl("a.jsonl", [{"text": "a", "q": 2}]), properties={"q": "q"}
    )
    assert catalog.properties() == {"q": PropertyType.INTEGER}
    catalog.register(
        "floats", corpus.jsonl("b.jsonl", [{"text": "b", "q": 0.25}]), properties={"q": "q"}
    )
    assert catalog.properties() == {"q": PropertyType.FLOAT}
    assert catalog._con.execute("SELECT q FROM samples ORDER BY file_id").fetchall() == [
        (2.0,),
        (0.25,),
    ]
    assert catalog.components("q > 1.5").total_samples == 1


def test_integer_widens_to_float_inside_a_webdataset_shard(
    catalog: Catalog, corpus: Corpus
) -> None:
    samples = [
        (f"k{i}", {"txt": b"t", "json": json.dumps({"q": q}).encode()})
        for i, q in enumerate([1, 0.5, 2.75])
    ]
    catalog.register("w", corpus.tar("w.tar", samples), properties={"q": "json.q"})
    assert catalog.properties() == {"q": PropertyType.FLOAT}
    assert sample_rows(catalog, "q", 1) == [(1.0,), (0.5,), (2.75,)]


def test_integer_widens_to_float_in_a_block_with_a_bad_line(
    catalog: Catalog, corpus: Corpus
) -> None:
    lines: list[Record | bytes] = [{"text": "a", "q": 1}, {"text": "b", "q": 0.5}]
    lines += [b'{"text": "trunc', {"text": "c", "q": 2}]
    catalog.register("ds", corpus.jsonl("d.jsonl", lines), properties={"q": "q"}, on_error="skip")
    assert catalog.properties() == {"q": PropertyType.FLOAT}
    assert sample_rows(catalog, "q", 1) == [(1.0,), (0.5,), (2.0,)]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_batch_function_computes_properties(catalog: Catalog, corpus: Corpus, fmt: str) -> None:
    records = make_records(12)
    info = catalog.register(
        "ds",
        write(corpus, fmt, records),
        properties={"language": "meta.language"},
        function=lambda t: {"n_chars": pc.utf8_length(t["text"]), "first": t["id"]},
    )
    assert sorted(info.properties) == ["first", "language", "n_chars"]
    assert catalog.properties()["n_chars"] is PropertyType.INTEGER
    assert sample_rows(catalog, "n_chars, first, language", 1) == [
        (len(r["text"]), r["id"], r["meta"]["language"]) for r in records
    ]


def test_batch_function_errors(catalog: Catalog, corpus: Corpus) -> None:
    path = corpus.jsonl("d.jsonl", make_records(5))
    with pytest.raises(PropertyError, match="for 'n' returned 2 values for 5 records"):
        catalog.register("ds", path, function=lambda t: {"n": [1, 2]})
    with pytest.raises(RegistrationError, match="ZeroDivisionError"):
        catalog.register("ds", path, function=lambda t: {"n": [1 / 0]})
    with pytest.raises(PropertyError, match="return a dict"):
        catalog.register("ds", path, function=lambda t: [1] * t.num_rows)  # type: ignore[arg-type,return-value]
    assert catalog.datasets() == []
    assert catalog.properties() == {}


# -- names -----------------------------------------------------------------------------------


def test_reregistering_a_name_needs_replace(catalog: Catalog, corpus: Corpus, snap: Any) -> None:
    old = corpus.jsonl("old.jsonl", make_records(4, "old"))
    new = corpus.parquet("new.parquet", make_records(6, "new"))
    catalog.register("ds", old, constants={"source": "old"})
    before = snap(catalog)
    with pytest.raises(DatasetExistsError, match=r"'ds' is already registered.*replace=True"):
        catalog.register("ds", new, constants={"source": "new"})
    assert snap(catalog) == before

    info = catalog.register("ds", new, constants={"source": "new"}, replace=True)
    assert (info.files, info.samples, info.format) == (1, 6, "parquet")
    files = catalog.files().to_pylist()
    assert [(f["dataset"], Path(f["path"]).name) for f in files] == [("ds", "new.parquet")]
    assert catalog._con.execute("SELECT DISTINCT file_id, source FROM samples").fetchall() == [
        (files[0]["file_id"], "new")
    ]
    assert read_ids(catalog, files[0]["file_id"], [5, 0]) == ["new5", "new0"]
    assert [d.name for d in catalog.datasets()] == ["ds"]


def test_failed_replace_keeps_the_old_dataset(catalog: Catalog, corpus: Corpus, snap: Any) -> None:
    catalog.register("ds", corpus.jsonl("good.jsonl", make_records(4)))
    before = snap(catalog)
    bad = corpus.jsonl("bad.jsonl", [*make_records(2), b'{"text": "ab'])
    with pytest.raises(MalformedRecordError):
        catalog.register("ds", bad, replace=True)
    assert snap(catalog) == before
    assert read_ids(catalog, 1, [3]) == ["r3"]


def test_unknown_dataset_lists_known_names(catalog: Catalog, corpus: Corpus) -> None:
    catalog.register("beta", corpus.jsonl("b.jsonl", make_records(1)))
    catalog.register("alpha", corpus.jsonl("a.jsonl", make_records(1)))
    for call in (
        lambda: catalog.dataset("gamma"),
        lambda: catalog.files("gamma"),
        lambda: catalog.unregister("gamma"),
        lambda: catalog.add_property("p", lambda t: [1] * t.num_rows, datasets=["gamma"]),
    ):
        with pytest.raises(DatasetNotFoundError, match=r"'gamma'.*\['alpha', 'beta'\]") as err:
            call()
        assert isinstance(err.value, KeyError)


def test_invalid_dataset_name(catalog: Catalog, corpus: Corpus) -> None:
    with pytest.raises(RegistrationError, match="invalid dataset name"):
        catalog.register("a b", corpus.jsonl("a.jsonl", make_records(1)))


def test_unregister_removes_samples_and_files(catalog: Catalog, corpus: Corpus) -> None:
    catalog.register("a", corpus.jsonl("a.jsonl", make_records(3)))
    catalog.register("b", corpus.jsonl("b.jsonl", make_records(2)))
    catalog.unregister("a")
    assert [d.name for d in catalog.datasets()] == ["b"]
    assert catalog._con.execute("SELECT DISTINCT file_id FROM samples").fetchall() == [(2,)]
    assert catalog.files().column("dataset").to_pylist() == ["b"]


# -- JSONL spread over several blocks and DuckDB batches ---------------------------------------


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
@pytest.mark.parametrize("path", ["duckdb", "blocks"])
def test_jsonl_offsets_across_blocks(
    catalog: Catalog,
    corpus: Corpus,
    monkeypatch: pytest.MonkeyPatch,
    jsonl_batches: dict[str, list[int]],
    compression: Any,
    path: str,
) -> None:
    monkeypatch.setattr(lines_module, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(jsonl_duckdb, "DUCKDB_BATCH", 16)
    records = make_records(300)
    for i, r in enumerate(records):
        r["text"] += " padding" * (i % 17)  # lines of varied length straddle block boundaries
    # Windows line ends and blank lines are not samples and must not shift offsets.
    data = b"".join(
        line + b"\r\n" + (b"\r\n\n" if i % 50 == 7 else b"")
        for i, line in enumerate(corpus.lines(records).splitlines())
    )
    assert len(data) > 8 * 4096
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    file = corpus.raw("d.jsonl" + {None: "", "gzip": ".gz", "zstd": ".zst"}[compression], data)
    function = (lambda t: {"n": pc.utf8_length(t["text"])}) if path == "blocks" else None
    info = catalog.register(
        "ds", file, properties={"language": "meta.language", "year": "meta.year"}, function=function
    )
    assert info.samples == 300
    if path == "duckdb":
        assert jsonl_batches == {"duckdb": [16] * 18 + [12], "blocks": []}
    else:
        assert jsonl_batches["duckdb"] == []
        assert len(jsonl_batches["blocks"]) >= 8 and sum(jsonl_batches["blocks"]) == 300
    assert info.bytes == sum(utf8_len(r["text"]) for r in records)
    rows = sample_rows(catalog, "ordinal, language, year", 1)
    assert rows == [(i, r["meta"]["language"], r["meta"]["year"]) for i, r in enumerate(records)]
    ordinals = list(range(300))
    random.Random(0).shuffle(ordinals)
    assert catalog.read(1, ordinals).to_pylist() == [records[o] for o in ordinals]
