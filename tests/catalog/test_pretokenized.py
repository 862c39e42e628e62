"""Pre-tokenized datasets: every format and dtype registers exactly (ids, counts, properties),
and every malformed input is one clear error with nothing half-registered. Issue 15."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from mixplane.catalog.catalog import Catalog
from mixplane.catalog.formats.tokenized import wants_text
from mixplane.errors import (
    MalformedRecordError,
    PlanError,
    PropertyError,
    RegistrationError,
)
from mixplane.tokens import train_bpe
from tests.tokendata import (
    documents,
    save_to_disk,
    tiny_tokenizer,
    token_table,
    write_arrow,
    write_megatron,
    write_memmap,
    write_parquet,
)

VOCAB_TEXT = ["the quick brown fox jumps over the lazy dog " * 20, "lorem ipsum dolor sit " * 30]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tok = train_bpe(VOCAB_TEXT, vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(path)
    return path


@pytest.fixture
def catalog(tmp_path: Path) -> Any:
    with Catalog.open(tmp_path / "home") as cat:
        yield cat


def stored_ids(cat: Catalog, dataset: str) -> list[list[int]]:
    out = []
    for f in cat.files(dataset).to_pylist():
        table = cat.read(f["file_id"], np.arange(f["samples"]))
        out += table.column(f["text_field"]).to_pylist()
    return out


def counts(cat: Catalog, dataset: str, tokenizer: str) -> list[int]:
    runs = cat.components(f"dataset == '{dataset}'").runs
    found = cat.sample_tokens(runs, tokenizer)
    assert found is not None  # exact for free: no count-tokens pass
    return found.tolist()


def content(doc: np.ndarray, eos: int) -> int:
    return len(doc) - int(len(doc) > 0 and doc[-1] == eos)


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "int64"])
@pytest.mark.parametrize("sequences", [1, 3])
def test_megatron_every_dtype(catalog: Catalog, tmp_path: Path, dtype: str, sequences: int) -> None:
    tok = tiny_tokenizer(tmp_path / "tok")
    docs = documents(1, 120, vocab=tok.vocab_size, eos=tok.eos_id)
    idx = write_megatron(tmp_path / "data" / "web", docs, dtype, sequences=sequences)
    info = catalog.register("m", idx, tokenizer=tok, constants={"kind": "tokens"})
    assert (info.format, info.files, info.samples) == ("megatron", 1, 120)
    assert stored_ids(catalog, "m") == [d.tolist() for d in docs]
    assert counts(catalog, "m", tok.fingerprint) == [content(d, tok.eos_id) for d in docs]
    row = catalog.files("m").to_pylist()[0]
    assert row["path"].endswith("web.bin") and row["token_dtype"] == dtype
    assert row["tokenizer"] == tok.fingerprint


def test_megatron_directory_with_path_properties(
    catalog: Catalog, tmp_path: Path, bpe: Path
) -> None:
    eos = 0
    parts = {}
    for source in ("web", "code"):
        for k in range(2):
            docs = documents(hash((source, k)) % 1000, 30, vocab=260, eos=eos)
            write_megatron(tmp_path / "data" / source / f"part{k}", docs, "uint16")
            parts[(source, k)] = docs
    info = catalog.register(
        "m",
        tmp_path / "data",
        tokenizer=str(bpe),
        path_pattern=r"/(?P<source>[a-z]+)/part(?P<part>\d)",
    )
    assert (info.files, info.samples) == (4, 120)  # each .idx/.bin pair is one file
    assert set(info.properties) == {"source", "part"}
    result = catalog.components(by=["source", "part"])
    assert sorted(c.properties["source"] for c in result.components) == ["code"] * 2 + ["web"] * 2
    assert {type(c.properties["part"]) for c in result.components} == {int}


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_dolma_memmaps_with_metadata(
    catalog: Catalog, tmp_path: Path, bpe: Path, dtype: str
) -> None:
    docs = documents(2, 90, vocab=280, eos=0)
    write_memmap(tmp_path / "data" / "part-0-00000.npy", docs[:50], dtype)
    write_memmap(tmp_path / "data" / "part-0-00001.npy", docs[50:], dtype)
    info = catalog.register(
        "d",
        tmp_path / "data",
        tokenizer=str(bpe),
        token_dtype=dtype,
        properties={"doc": "id", "origin": "src"},
    )
    assert (info.format, info.files, info.samples) == ("tokens", 2, 90)
    assert stored_ids(catalog, "d") == [d.tolist() for d in docs]
    got = catalog.components(by=["origin"])
    assert {c.properties["origin"] for c in got.components} == {
        f"src/part-{i}.jsonl" for i in range(3)
    }
    fid = catalog.files("d").column("file_id")[0].as_py()
    record = catalog.read(fid, [3]).to_pylist()[0]
    assert record["id"] == "doc-3" and record["loc"] == 3


def test_dolma_memmaps_split_at_eos_without_metadata(
    catalog: Catalog, tmp_path: Path, bpe: Path
) -> None:
    docs = documents(3, 40, vocab=280, eos=0, with_eos=1.0)  # every document ends with EOS
    write_memmap(tmp_path / "a.npy", docs, "uint16", metadata=False)
    info = catalog.register("d", tmp_path / "a.npy", tokenizer=str(bpe), token_dtype="uint16")
    assert info.samples == 40
    assert stored_ids(catalog, "d") == [d.tolist() for d in docs]


def test_numpy_header_gives_the_dtype(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    docs = documents(4, 30, vocab=280, eos=0, with_eos=1.0)
    np.save(tmp_path / "a.npy", np.concatenate(docs).astype(np.int32))
    catalog.register("d", tmp_path / "a.npy", tokenizer=str(bpe))
    assert catalog.files("d").column("token_dtype")[0].as_py() == "int32"
    assert stored_ids(catalog, "d") == [d.tolist() for d in docs]


@pytest.mark.parametrize("value_type", [pa.int32(), pa.int64(), pa.uint16()])
@pytest.mark.parametrize("stream", [True, False])
def test_arrow_ipc(
    catalog: Catalog, tmp_path: Path, bpe: Path, value_type: Any, stream: bool
) -> None:
    docs = documents(5, 100, vocab=280, eos=0)
    langs = ["en" if i % 3 else "de" for i in range(100)]
    write_arrow(tmp_path / "a.arrow", token_table(docs, value_type, lang=langs), stream=stream)
    info = catalog.register(
        "a", tmp_path / "a.arrow", tokenizer=str(bpe), properties={"language": "lang"}
    )
    assert (info.format, info.samples) == ("arrow", 100)
    assert stored_ids(catalog, "a") == [d.tolist() for d in docs]
    assert counts(catalog, "a", catalog.files("a").column("tokenizer")[0].as_py()) == [
        content(d, 0) for d in docs
    ]
    assert sorted(c.samples for c in catalog.components(by=["language"]).components) == [34, 66]


def test_hf_save_to_disk_folder(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    docs = documents(6, 80, vocab=280, eos=0)
    save_to_disk(tmp_path / "saved", docs, topic=[f"t{i % 4}" for i in range(80)])
    info = catalog.register(
        "hf", tmp_path / "saved", tokenizer=str(bpe), properties={"topic": "topic"}
    )
    assert (info.format, info.files, info.samples) == ("arrow", 2, 80)  # no JSON metadata files
    assert stored_ids(catalog, "hf") == [d.tolist() for d in docs]


def test_parquet_token_column(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    docs = documents(7, 120, vocab=280, eos=0)
    table = token_table(docs, pa.int32(), lang=["en" if i % 2 else "fr" for i in range(120)])
    write_parquet(tmp_path / "p.parquet", table.rename_columns(["tokens", "lang"]))
    info = catalog.register(
        "p",
        tmp_path / "p.parquet",
        tokenizer=str(bpe),
        tokens_field="tokens",
        properties={"language": "lang"},
    )
    assert (info.format, info.samples) == ("parquet", 120)
    assert stored_ids(catalog, "p") == [d.tolist() for d in docs]
    fp = catalog.files("p").column("tokenizer")[0].as_py()
    assert counts(catalog, "p", fp) == [content(d, 0) for d in docs]


def test_property_function_sees_text_only_when_it_asks(
    catalog: Catalog, tmp_path: Path, bpe: Path
) -> None:
    from mixplane.tokens import load_tokenizer

    tok = load_tokenizer(str(bpe))
    texts = ["the quick fox", "lorem ipsum", "the lazy dog sits"] * 10
    docs = [np.array([*tok.encode_batch([t])[0], tok.eos_id]) for t in texts]
    write_megatron(tmp_path / "m", docs, "uint16")
    seen: dict[str, Any] = {}

    def plain(batch: pa.Table) -> dict[str, Any]:
        seen["plain"] = batch.column_names
        return {"n_ids": [len(x) for x in batch.column("input_ids").to_pylist()]}

    @wants_text
    def textual(batch: pa.Table) -> dict[str, Any]:
        seen["text"] = batch.column("text").to_pylist()
        return {"has_fox": ["fox" in t for t in batch.column("text").to_pylist()]}

    catalog.register("m", tmp_path / "m.idx", tokenizer=str(bpe), function=plain)
    assert seen["plain"] == ["input_ids"]
    catalog.add_property("n2", lambda b: plain(b)["n_ids"], datasets=["m"])
    assert seen["plain"] == ["input_ids"]  # did not ask: no text decoded
    catalog.add_property("fox2", wants_text(lambda b: textual(b)["has_fox"]), datasets=["m"])
    assert [t.replace(tok.decode([tok.eos_id]), "") for t in seen["text"]] == texts
    assert catalog.components("fox2 == true").components[0].samples == 10


# -- declaring the tokenizer ------------------------------------------------------------------
def test_token_data_needs_its_tokenizer(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    idx = write_megatron(tmp_path / "m", documents(8, 10, vocab=280, eos=0), "uint16")
    with pytest.raises(RegistrationError, match="tokenizer=NAME"):
        catalog.register("m", idx)
    (tmp_path / "t.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(RegistrationError, match="count_tokens"):
        catalog.register("t", tmp_path / "t.jsonl", tokenizer=str(bpe))
    assert catalog.datasets() == []


def test_a_job_with_another_tokenizer_is_refused(
    catalog: Catalog, tmp_path: Path, bpe: Path
) -> None:
    from mixplane.client import Client

    idx = write_megatron(tmp_path / "m", documents(9, 50, vocab=280, eos=0), "uint16")
    catalog.register("m", idx, tokenizer=str(bpe), constants={"kind": "tokens"})
    other = train_bpe(["something else entirely " * 30], vocab_size=290)
    client = Client(catalog)
    with pytest.raises(
        PlanError,
        match=r"holds token ids of tokenizer '.*tokenizer.json' \(\w+\), but the job's tokenizer is \w+",
    ):
        client.submit("j", mixture={"kind=tokens": 1.0}, tokenizer=other)


# -- malformed inputs: one line naming the file and the fix, nothing registered ---------------
def assert_nothing_registered(cat: Catalog) -> None:
    assert cat.datasets() == []
    con = cat._con
    for table in ("files", "samples", "token_files", "token_counts", "token_count_files"):
        assert con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 0, table


def one_line_error(excinfo: Any, path: Path, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message, message
    for word in words:
        assert word in message, message


def good_pair(tmp_path: Path, name: str = "good") -> Path:
    return write_megatron(tmp_path / name, documents(10, 40, vocab=280, eos=0), "uint16")


def test_truncated_index(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    good = good_pair(tmp_path)
    idx = good_pair(tmp_path, "bad")
    data = idx.read_bytes()
    for cut in (20, len(data) - 9):
        idx.write_bytes(data[:cut])
        with pytest.raises(MalformedRecordError) as excinfo:
            catalog.register("m", [good, idx], tokenizer=str(bpe))
        one_line_error(excinfo, idx, "truncated", "rebuild")
        assert_nothing_registered(catalog)


def test_corrupt_index_header_version_and_dtype(
    catalog: Catalog, tmp_path: Path, bpe: Path
) -> None:
    idx = good_pair(tmp_path)
    data = bytearray(idx.read_bytes())
    cases = {
        "not a Megatron-Core index": (0, b"XXIDIDX\x00\x00"),
        "index version 2": (9, struct.pack("<Q", 2)),
        "float32 values, not token ids": (17, bytes([7])),
        "unknown dtype code 42": (17, bytes([42])),
    }
    for words, (at, patch) in cases.items():
        broken = bytearray(data)
        broken[at : at + len(patch)] = patch
        idx.write_bytes(bytes(broken))
        with pytest.raises(MalformedRecordError) as excinfo:
            catalog.register("m", idx, tokenizer=str(bpe))
        assert words in str(excinfo.value)
        assert "\n" not in str(excinfo.value) and "good" in str(excinfo.value)
        assert_nothing_registered(catalog)


def test_document_indices_corrupt(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    idx = good_pair(tmp_path)
    data = bytearray(idx.read_bytes())
    data[-8:] = struct.pack("<q", 3)  # the last document index no longer the sequence count
    idx.write_bytes(bytes(data))
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("m", idx, tokenizer=str(bpe))
    one_line_error(excinfo, idx, "corrupt")
    assert_nothing_registered(catalog)


@pytest.mark.parametrize("change", ["truncate", "extend"])
def test_bin_size_mismatch(catalog: Catalog, tmp_path: Path, bpe: Path, change: str) -> None:
    idx = good_pair(tmp_path)
    data = idx.with_suffix(".bin").read_bytes()
    idx.with_suffix(".bin").write_bytes(data[:-6] if change == "truncate" else data + b"\0\0")
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("m", idx, tokenizer=str(bpe))
    one_line_error(excinfo, idx, "size mismatch between good.idx and good.bin")
    assert_nothing_registered(catalog)


def test_missing_index_or_data(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    idx = good_pair(tmp_path)
    idx.unlink()
    with pytest.raises(MalformedRecordError, match=r"good.bin: no index good.idx"):
        catalog.register("m", tmp_path / "good.bin", format="megatron", tokenizer=str(bpe))
    assert_nothing_registered(catalog)


def test_ids_beyond_the_vocabulary(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    docs = documents(11, 30, vocab=280, eos=0)
    docs[17][2] = 5000
    idx = write_megatron(tmp_path / "m", docs, "uint16")
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("m", idx, tokenizer=str(bpe))
    one_line_error(
        excinfo, idx.with_suffix(".bin"), "document 17", "id 5000", "vocabulary", "--tokenizer"
    )
    assert_nothing_registered(catalog)
    table = token_table(docs, pa.int32())
    write_parquet(tmp_path / "p.parquet", table, row_group_size=7)
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("p", tmp_path / "p.parquet", tokenizer=str(bpe), tokens_field="input_ids")
    one_line_error(excinfo, tmp_path / "p.parquet", "row 17", "id 5000")
    assert_nothing_registered(catalog)


def test_wrong_dtype(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    docs = documents(12, 300, vocab=280, eos=0)
    write_memmap(tmp_path / "a.npy", docs, "uint32", metadata=False)
    with pytest.raises(MalformedRecordError) as excinfo:  # uint32 ids read as uint16
        catalog.register("d", tmp_path / "a.npy", tokenizer=str(bpe), token_dtype="uint16")
    one_line_error(excinfo, tmp_path / "a.npy", "--token-dtype uint32")
    write_memmap(tmp_path / "b.npy", docs, "uint16", metadata=True)
    with pytest.raises(MalformedRecordError) as excinfo:  # uint16 ids read as uint32
        catalog.register("d", tmp_path / "b.npy", tokenizer=str(bpe), token_dtype="uint32")
    assert "--token-dtype" in str(excinfo.value) and "\n" not in str(excinfo.value)
    write_memmap(tmp_path / "c.npy", docs[:3], "uint16", metadata=False)
    with open(tmp_path / "c.npy", "ab") as f:
        f.write(b"\x01")  # half an id
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("d", tmp_path / "c.npy", tokenizer=str(bpe), token_dtype="uint16")
    one_line_error(excinfo, tmp_path / "c.npy", "not a multiple of 2", "truncated")
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("d", tmp_path / "c.npy", tokenizer=str(bpe))
    one_line_error(excinfo, tmp_path / "c.npy", "--token-dtype")
    idx = good_pair(tmp_path)
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("m", idx, tokenizer=str(bpe), token_dtype="uint32")
    one_line_error(excinfo, idx.with_suffix(".bin"), "stores its ids as uint16", "--token-dtype")
    big = tiny_tokenizer(tmp_path / "big", size=70_000)
    with pytest.raises(MalformedRecordError, match="more than uint16 holds"):
        catalog.register("m", idx, tokenizer=big)
    assert_nothing_registered(catalog)


def test_truncated_memmap_without_metadata(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    docs = documents(13, 20, vocab=280, eos=0, with_eos=1.0)
    flat = np.concatenate(docs).astype(np.uint16)
    flat[:-3].tofile(tmp_path / "a.npy")
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("d", tmp_path / "a.npy", tokenizer=str(bpe), token_dtype="uint16")
    one_line_error(excinfo, tmp_path / "a.npy", "follow the last EOS", "truncated")
    assert_nothing_registered(catalog)
    info = catalog.register(
        "d", tmp_path / "a.npy", tokenizer=str(bpe), token_dtype="uint16", on_error="skip"
    )
    assert (info.samples, info.skipped) == (19, 1)


def test_metadata_not_of_this_file(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    docs = documents(14, 20, vocab=280, eos=0)
    path = write_memmap(tmp_path / "a.npy", docs, "uint16")
    with gzip.open(path.with_suffix(".csv.gz"), "at") as f:
        f.write("999999,1000000,x,y,1\n")
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("d", path, tokenizer=str(bpe), token_dtype="uint16")
    one_line_error(excinfo, path.with_suffix(".csv.gz"), "line 21", "beyond")
    assert_nothing_registered(catalog)


def test_token_column_problems(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    write_parquet(tmp_path / "s.parquet", pa.table({"input_ids": ["not", "ids"]}))
    with pytest.raises(
        MalformedRecordError, match="expected a list of integers; pass --tokens-field"
    ):
        catalog.register("p", tmp_path / "s.parquet", tokenizer=str(bpe), tokens_field="input_ids")
    write_parquet(
        tmp_path / "n.parquet", pa.table({"x": pa.array([[1, None]], pa.list_(pa.int32()))})
    )
    with pytest.raises(MalformedRecordError, match="no token column 'input_ids'"):
        catalog.register("p", tmp_path / "n.parquet", tokenizer=str(bpe), tokens_field="input_ids")
    with pytest.raises(MalformedRecordError, match=r"n.parquet:row 0: a null inside the ids"):
        catalog.register("p", tmp_path / "n.parquet", tokenizer=str(bpe), tokens_field="x")
    floats = pa.table({"input_ids": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))})
    write_arrow(tmp_path / "f.arrow", floats)
    with pytest.raises(MalformedRecordError, match="expected a list of integers"):
        catalog.register("a", tmp_path / "f.arrow", tokenizer=str(bpe))
    good = write_arrow(
        tmp_path / "g.arrow", token_table(documents(1, 50, vocab=280, eos=0), pa.int32())
    )
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(MalformedRecordError) as excinfo:
        catalog.register("a", good, tokenizer=str(bpe))
    one_line_error(excinfo, good, "truncated")
    assert_nothing_registered(catalog)


def test_path_pattern_errors(catalog: Catalog, tmp_path: Path, bpe: Path) -> None:
    idx = good_pair(tmp_path)
    with pytest.raises(PropertyError, match="does not match file"):
        catalog.register("m", idx, tokenizer=str(bpe), path_pattern=r"/(?P<source>zzz)/")
    with pytest.raises(PropertyError, match="names no property"):
        catalog.register("m", idx, tokenizer=str(bpe), path_pattern=r"good")
    assert_nothing_registered(catalog)


def test_a_v2_catalog_is_migrated(tmp_path: Path, bpe: Path) -> None:
    from mixplane.catalog.schema import SCHEMA_VERSION

    with Catalog.open(tmp_path / "home") as cat:
        (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n')
        cat.register("t", tmp_path / "t.jsonl")
        cat._con.execute("DROP TABLE token_files")  # as mixplane with schema v2 left it
        cat._con.execute("UPDATE schema_version SET version = 2")
    with Catalog.open(tmp_path / "home") as cat:
        assert cat._con.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        assert cat.files().column("token_dtype").to_pylist() == [None]  # text files stay text
        idx = good_pair(tmp_path)
        assert cat.register("m", idx, tokenizer=str(bpe)).samples == 40
