"""components/explain: filters and grouping against the same computation done in Python."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mixplane.catalog import Catalog
from mixplane.errors import QueryError
from mixplane.query import col
from mixplane.query.result import QueryResult

from .conftest import Corpus, Record, make_records, utf8_len

FIELDS = {"language": "meta.language", "year": "meta.year", "tags": "tags"}

# (dataset, file name, records) in registration order; file ids follow this order.
LAYOUT = [
    ("web", "web/a.jsonl", make_records(20, "wa")),
    ("web", "web/b.jsonl.gz", make_records(15, "wb")),
    ("wiki", "wiki.parquet", make_records(10, "k")),
]
Sample = tuple[int, int, str, Record]  # file id, ordinal, dataset, record


def build(root: Path) -> Catalog:
    corpus = Corpus(root / "data")
    for _, name, records in LAYOUT:
        if name.endswith(".parquet"):
            corpus.parquet(name, records, row_group_size=4)
        else:
            corpus.jsonl(name, records, "gzip" if name.endswith(".gz") else None)
    catalog = Catalog.open(root / "home")
    catalog.register("web", corpus.root / "web", properties=FIELDS, constants={"source": "web"})
    catalog.register(
        "wiki", corpus.root / "wiki.parquet", properties=FIELDS, constants={"source": "wiki"}
    )
    return catalog


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    """Shared by the tests that only query; tests that change the catalog use ``fresh``."""
    catalog = build(tmp_path_factory.mktemp("components"))
    yield catalog
    catalog.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Catalog]:
    catalog = build(tmp_path)
    yield catalog
    catalog.close()


def samples() -> list[Sample]:
    out = []
    for file_id, (dataset, _, records) in enumerate(LAYOUT, start=1):
        out += [(file_id, i, dataset, r) for i, r in enumerate(records)]
    return out


def props(dataset: str, record: Record) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "source": dataset,
        "language": record["meta"]["language"],
        "year": record["meta"]["year"],
    }


def expected(
    where: Callable[[dict[str, Any]], bool], by: list[str]
) -> dict[tuple[Any, ...], list[tuple[int, int, int]]]:
    """Component key -> sorted (file id, ordinal, bytes) of its samples, computed in Python."""
    groups: dict[tuple[Any, ...], list[tuple[int, int, int]]] = defaultdict(list)
    for file_id, ordinal, dataset, record in samples():
        p = props(dataset, record)
        if where(p):
            groups[tuple(p[k] for k in by)].append((file_id, ordinal, utf8_len(record["text"])))
    return dict(sorted(groups.items()))


def members(result: QueryResult) -> dict[tuple[Any, ...], list[tuple[int, int, int]]]:
    """Component key -> its samples, expanded from the component's runs."""
    bytes_of = {(f, o): utf8_len(r["text"]) for f, o, _, r in samples()}
    out = {}
    for c in result.components:
        key = tuple(c.properties[k] for k in result.by)
        out[key] = sorted(
            (f, o, bytes_of[f, o])
            for f, start, count in zip(
                c.runs.column("file_id").to_pylist(),
                c.runs.column("start").to_pylist(),
                c.runs.column("count").to_pylist(),
                strict=True,
            )
            for o in range(start, start + count)
        )
    return out


def check(result: QueryResult, want: dict[tuple[Any, ...], list[tuple[int, int, int]]]) -> None:
    assert members(result) == want
    assert [tuple(c.properties.values()) for c in result.components] == list(want)
    for c in result.components:
        key = tuple(c.properties.values())
        assert c.samples == len(want[key]) == sum(c.runs.column("count").to_pylist())
        assert c.bytes == sum(b for _, _, b in want[key]) == sum(c.runs.column("bytes").to_pylist())
    assert result.total_samples == sum(len(v) for v in want.values())
    assert result.total_bytes == sum(b for v in want.values() for _, _, b in v)


def test_by_one_property(populated: Catalog) -> None:
    result = populated.components(by=["language"])
    assert result.by == ("language",)
    check(result, expected(lambda p: True, ["language"]))
    assert [c.selector for c in result.components] == ["language=de", "language=en", "language=fr"]


def test_by_two_properties_with_filter(populated: Catalog) -> None:
    result = populated.components("year >= 2002", by=["source", "language"])
    check(result, expected(lambda p: p["year"] >= 2002, ["source", "language"]))
    assert len(result.components) == 6
    assert result.params == [2002]
    assert "?" in result.sql and "2002" not in result.sql


def test_filter_text_and_expr_agree(populated: Catalog) -> None:
    text = populated.components("language == 'en' and year in [2001, 2003]", by=["source"])
    expr = populated.components(
        (col("language") == "en") & col("year").isin([2001, 2003]), by=["source"]
    )
    assert text.to_dict(runs=True) == expr.to_dict(runs=True)
    assert text.runs.equals(expr.runs)
    check(text, expected(lambda p: p["language"] == "en" and p["year"] in (2001, 2003), ["source"]))


def test_runs_are_compact(populated: Catalog) -> None:
    result = populated.components(by=["source"])
    # registered in order with a constant property: one run per file, covering it all
    assert [c.runs.num_rows for c in result.components] == [2, 1]
    assert [r for c in result.components for r in c.to_dict(runs=True)["ranges"]] == [
        {
            "file_id": i,
            "start": 0,
            "count": len(recs),
            "bytes": sum(utf8_len(r["text"]) for r in recs),
        }
        for i, (_, _, recs) in enumerate(LAYOUT, start=1)
    ]
    everything = populated.components()
    assert everything.runs.num_rows == 3
    assert [c.selector for c in everything.components] == ["*"]


def test_totals_match_the_datasets(populated: Catalog) -> None:
    datasets = populated.datasets()
    for by in ([], ["language"], ["source", "year"], ["dataset"]):
        result = populated.components(by=by)
        assert result.total_samples == sum(d.samples for d in datasets) == 45
        assert result.total_bytes == sum(d.bytes for d in datasets)
        assert result.runs.num_rows == sum(c.runs.num_rows for c in result.components)


def test_dataset_is_a_virtual_property(populated: Catalog) -> None:
    check(
        populated.components("dataset == 'wiki'", by=["language"]),
        expected(lambda p: p["dataset"] == "wiki", ["language"]),
    )
    check(
        populated.components("dataset in ['web'] and language != 'de'", by=["dataset"]),
        expected(lambda p: p["dataset"] == "web" and p["language"] != "de", ["dataset"]),
    )
    assert "dataset" in populated.columns()


def test_list_property_filters_but_does_not_group(populated: Catalog) -> None:
    result = populated.components("tags contains 'code'")
    want = sum("code" in r["tags"] for _, _, _, r in samples())
    assert result.total_samples == want > 0
    with pytest.raises(QueryError, match=r"cannot group.* by list property 'tags'"):
        populated.components(by=["tags"])


def test_unknown_property(populated: Catalog) -> None:
    known = re.escape("known: ['dataset', 'language', 'source', 'tags', 'year']")
    with pytest.raises(QueryError, match=f"unknown property 'lang'.*{known}"):
        populated.components(by=["language", "lang"])
    with pytest.raises(QueryError, match="'lang'"):
        populated.components("lang == 'en'")


def test_missing_values_form_a_null_component(fresh: Catalog, corpus: Corpus) -> None:
    fresh.register(
        "code", corpus.jsonl("code.jsonl", make_records(4, "c")), constants={"source": "code"}
    )
    result = fresh.components(by=["language"])
    assert [c.properties["language"] for c in result.components] == ["de", "en", "fr", None]
    assert result.components[-1].samples == 4
    assert result.components[-1].selector == "language=null"
    assert fresh.components("language is null").total_samples == 4


def test_empty_result(populated: Catalog) -> None:
    result = populated.components("language == 'xx'", by=["source"])
    assert result.components == ()
    assert (result.total_samples, result.total_bytes, result.runs.num_rows) == (0, 0, 0)


def test_explain_is_components(populated: Catalog) -> None:
    where, by = "year < 2003", ["language"]
    assert populated.explain(where, by).to_dict(runs=True) == populated.components(
        where, by
    ).to_dict(runs=True)


def test_fingerprint(fresh: Catalog, corpus: Corpus, tmp_path: Path) -> None:
    where, by = "language == 'en'", ["source"]
    first = fresh.components(where, by).fingerprint
    assert fresh.components(where, by).fingerprint == first
    assert fresh.components(where, ["year"]).fingerprint != first
    assert fresh.components("language == 'de'", by).fingerprint != first
    fresh.close()

    with Catalog.open(tmp_path / "home") as reopened:
        assert reopened.components(where, by).fingerprint == first
        # samples the filter does not select leave the result, and its fingerprint, alone
        others = [{**r, "meta": {**r["meta"], "language": "xx"}} for r in make_records(5, "x")]
        reopened.register("other", corpus.jsonl("other.jsonl", others), properties=FIELDS)
        assert reopened.components(where, by).fingerprint == first
        # a new file with matching samples changes it
        reopened.register(
            "more",
            corpus.jsonl("more.jsonl", make_records(6, "m")),
            properties=FIELDS,
            constants={"source": "web"},
        )
        changed = reopened.components(where, by)
        assert changed.fingerprint != first
        english = sum(r["meta"]["language"] == "en" for _, _, _, r in samples())
        assert changed.total_samples == english + 2  # 'more' has 2 English samples
