"""add_property: a function over batches of records read by pointer; all of it stored, or nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mixplane.catalog import Catalog, PropertyType
from mixplane.errors import PropertyError, RegistrationError

from .conftest import Corpus, make_records

N = 12  # samples per dataset


def text_of(table: pa.Table) -> pa.ChunkedArray:
    return table["text"] if "text" in table.column_names else table["txt"]


def id_of(table: pa.Table) -> pa.ChunkedArray:
    return table["id"] if "id" in table.column_names else table["__key__"]


@pytest.fixture
def three(catalog: Catalog, corpus: Corpus) -> Catalog:
    """Datasets a (JSONL.zst), b (Parquet, 3 row groups) and c (WebDataset), N samples each."""
    catalog.register(
        "a",
        corpus.jsonl("a.jsonl.zst", make_records(N, "a"), "zstd"),
        properties={"language": "meta.language"},
    )
    catalog.register("b", corpus.parquet("b.parquet", make_records(N, "b"), row_group_size=5))
    catalog.register("c", corpus.tar("c.tar", corpus.samples(make_records(N, "c"))))
    return catalog


def values(catalog: Catalog, name: str) -> dict[str, list[Any]]:
    """Per dataset, the property's values in ordinal order."""
    rows = catalog._con.execute(
        f'SELECT d.name, s."{name}" FROM samples s JOIN files f USING (file_id) '
        "JOIN datasets d USING (dataset_id) ORDER BY d.name, s.file_id, s.ordinal"
    ).fetchall()
    out: dict[str, list[Any]] = {}
    for dataset, value in rows:
        out.setdefault(dataset, []).append(value)
    return out


def test_values_are_stored_per_sample_in_ordinal_order(three: Catalog) -> None:
    batches: list[int] = []

    def rid(table: pa.Table) -> pa.ChunkedArray:
        batches.append(table.num_rows)
        return id_of(table)

    assert three.add_property("rid", rid, batch_size=5) == 3 * N
    assert batches == [5, 5, 2] * 3  # batches never span files
    assert three.properties()["rid"] is PropertyType.STRING
    assert values(three, "rid") == {p: [f"{p}{i}" for i in range(N)] for p in "abc"}


def test_computed_property_is_filterable(three: Catalog) -> None:
    assert three.add_property("n_chars", lambda t: pc.utf8_length(text_of(t))) == 3 * N
    assert three.properties()["n_chars"] is PropertyType.INTEGER
    texts = {p: [r["text"] for r in make_records(N, p)] for p in "abc"}
    assert values(three, "n_chars") == {p: [len(t) for t in ts] for p, ts in texts.items()}
    n = len(texts["a"][5])
    result = three.components(f"n_chars == {n}", by=["dataset"])
    expected = {p: sum(len(t) == n for t in ts) for p, ts in texts.items()}
    assert {c.properties["dataset"]: c.samples for c in result.components} == expected
    assert result.total_samples == sum(expected.values()) > 0
    assert all("n_chars" in three.dataset(p).properties for p in "abc")


@pytest.mark.parametrize("kind", ["list", "numpy", "array", "chunked"])
def test_return_kinds(three: Catalog, kind: str) -> None:
    def flag(table: pa.Table) -> Any:
        odd = [int(x[1:]) % 2 == 1 for x in id_of(table).to_pylist()]
        if kind == "numpy":
            return np.asarray(odd)
        if kind == "array":
            return pa.array(odd)
        if kind == "chunked":
            return pa.chunked_array([odd[:1], odd[1:]], pa.bool_())
        return odd

    three.add_property("odd", flag, datasets=["b"], batch_size=4)
    assert three.properties()["odd"] is PropertyType.BOOLEAN
    assert values(three, "odd")["b"] == [i % 2 == 1 for i in range(N)]
    assert three.components("odd == true").total_samples == N // 2


def test_restricted_to_datasets(three: Catalog, snap: Any) -> None:
    assert three.add_property("score", lambda t: [1] * t.num_rows, datasets=["b"]) == N
    got = values(three, "score")
    assert got == {"a": [None] * N, "b": [1] * N, "c": [None] * N}
    assert "score" in three.dataset("b").properties
    assert "score" not in three.dataset("a").properties
    assert three.components("score is null").total_samples == 2 * N

    # Other datasets have no values yet: no replace needed; ints meet floats and widen.
    assert three.add_property("score", lambda t: [0.5] * t.num_rows, datasets=["a", "c"]) == 2 * N
    assert three.properties()["score"] is PropertyType.FLOAT
    assert values(three, "score") == {"a": [0.5] * N, "b": [1.0] * N, "c": [0.5] * N}

    before = snap(three)
    with pytest.raises(
        PropertyError, match=r"'score' already has values in datasets \['c'\].*replace=True"
    ):
        three.add_property("score", lambda t: [2.0] * t.num_rows, datasets=["c"])
    assert snap(three) == before

    assert (
        three.add_property("score", lambda t: [2.0] * t.num_rows, datasets=["c"], replace=True) == N
    )
    assert values(three, "score") == {"a": [0.5] * N, "b": [1.0] * N, "c": [2.0] * N}


def test_property_from_registration_needs_replace(three: Catalog, snap: Any) -> None:
    before = snap(three)
    with pytest.raises(PropertyError, match="'language' already has values"):
        three.add_property("language", lambda t: ["xx"] * t.num_rows)
    assert snap(three) == before
    three.add_property("language", lambda t: ["xx"] * t.num_rows, datasets=["a"], replace=True)
    assert values(three, "language")["a"] == ["xx"] * N


def test_type_conflict_leaves_catalog_unchanged(three: Catalog, snap: Any) -> None:
    before = snap(three)
    with pytest.raises(PropertyError, match=r"'language' is string but .* gives integer"):
        three.add_property("language", lambda t: [1] * t.num_rows, datasets=["a"], replace=True)
    assert snap(three) == before


@pytest.mark.parametrize("bad_batch", [0, 2])
def test_wrong_length_leaves_catalog_unchanged(three: Catalog, snap: Any, bad_batch: int) -> None:
    calls = []

    def short(table: pa.Table) -> list[int]:
        calls.append(table.num_rows)
        n = table.num_rows - (len(calls) - 1 == bad_batch)
        return [1] * n

    before = snap(three)
    with pytest.raises(
        PropertyError, match=r"returned \d+ values for \d+ records of .*one value per record"
    ):
        three.add_property("short", short, batch_size=8)
    assert len(calls) == bad_batch + 1
    assert snap(three) == before
    assert "short" not in three.properties()


def test_failing_function_leaves_catalog_unchanged(three: Catalog, snap: Any) -> None:
    def boom(table: pa.Table) -> list[int]:
        raise ZeroDivisionError("nope")

    before = snap(three)
    with pytest.raises(
        RegistrationError, match=r"'boom' failed on a batch of .*a\.jsonl\.zst: ZeroDivisionError"
    ):
        three.add_property("boom", boom)
    assert snap(three) == before


def test_only_nulls_and_bad_names(three: Catalog, snap: Any) -> None:
    before = snap(three)
    with pytest.raises(PropertyError, match="only null values"):
        three.add_property("empty", lambda t: [None] * t.num_rows)
    with pytest.raises(PropertyError, match="invalid property name"):
        three.add_property("Bad Name", lambda t: [1] * t.num_rows)
    with pytest.raises(PropertyError, match="reserved"):
        three.add_property("bytes", lambda t: [1] * t.num_rows)
    assert snap(three) == before
