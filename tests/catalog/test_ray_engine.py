"""The Ray engine (issue 8): registration and add_property on a loopback Ray cluster give the
catalog the local engine gives, row by row, and the same errors, with nothing half-written."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mixplane.catalog import Catalog
from mixplane.catalog.engines import RayEngine, get_engine
from mixplane.errors import DependencyError, MalformedRecordError, RegistrationError
from tests.conftest import run_cli, write_corpus

from .conftest import Corpus

RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # with it, a local node binds 127.0.0.1
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
PROPERTIES = {"language": "meta.language", "source": "meta.source", "quality": "meta.quality"}

Contents = dict[str, list[tuple[Any, ...]]]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A two-CPU Ray instance on 127.0.0.1 with a 128 MB object store, for the whole module.

    Ray reads the environment when it is imported, so it is set first."""
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        object_store_memory=128 << 20,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
    )
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def contents(catalog: Catalog) -> Contents:
    """Every row of datasets, files, properties and samples (without timestamps), and the
    columns of samples."""
    con = catalog._con
    out: Contents = {}
    for table in ("datasets", "files", "properties", "samples"):
        names = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                "AND data_type NOT LIKE 'TIMESTAMP%' ORDER BY column_index",
                [table],
            ).fetchall()
        ]
        cols = ", ".join(f'"{n}"' for n in names)
        out[table] = con.execute(f"SELECT {cols} FROM {table} ORDER BY ALL").fetchall()
    out["columns"] = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE table_name = 'samples' ORDER BY column_index"
    ).fetchall()
    return out


def both(
    tmp_path: Path, action: Callable[[Catalog, str | RayEngine], Any], engine: str | RayEngine
) -> tuple[Contents, Contents, Any, Any]:
    """Run ``action`` on a fresh local-engine catalog and a fresh Ray-engine one."""
    results = []
    for name, chosen in (("local", "local"), ("ray", engine)):
        with Catalog.open(tmp_path / f"home-{name}") as cat:
            result = action(cat, chosen)
            results.append((contents(cat), result))
    (local, local_result), (ray, ray_result) = results
    return local, ray, local_result, ray_result


def functions() -> dict[str, Callable[[pa.Table], Any]]:
    """Property functions; made here (not at module level) so Ray ships them by value: the
    workers cannot import this test module."""

    def lengths(table: pa.Table) -> dict[str, Any]:
        return {
            "n_bytes": pc.binary_length(table["text"]),
            "long": pc.greater(pc.binary_length(table["text"]), 60),
        }

    def words(table: pa.Table) -> list[int]:
        return [len(t.split()) for t in table["text"].to_pylist()]

    def fails_on_doc_700(table: pa.Table) -> list[int]:
        if 700 in table["id"].to_pylist():
            raise ValueError("doc 700 is cursed")
        return [1] * table.num_rows

    return {"lengths": lengths, "words": words, "fails": fails_on_doc_700}


def reports(info: Any) -> list[tuple[str, int, int, tuple[str, ...]]]:
    return [(r.path, r.samples, r.skipped, r.messages) for r in info.file_reports]


pytestmark = pytest.mark.integration


@pytest.mark.parametrize("function", [None, "lengths"])
def test_jsonl_same_catalog(ray_cluster: Any, tmp_path: Path, function: str | None) -> None:
    write_corpus(tmp_path / "data", files=6, per_file=250)

    def register(cat: Catalog, engine: Any) -> Any:
        return cat.register(
            "corpus",
            tmp_path / "data",
            properties=PROPERTIES,
            constants={"origin": "crawl"},
            function=functions()[function] if function else None,
            progress=False,
            engine=engine,
        )

    local, ray, a, b = both(tmp_path, register, "ray")
    assert len(local["samples"]) == 1500
    assert ray == local
    assert reports(b) == reports(a)


def test_parquet_and_zstd_same_catalog(ray_cluster: Any, tmp_path: Path, corpus: Corpus) -> None:
    records = corpus.records(120)
    corpus.parquet("p/a.parquet", records[:70])
    corpus.parquet("p/b.parquet", records[70:], row_group_size=13)
    corpus.jsonl("z/a.jsonl.zst", records[:50], compression="zstd")
    corpus.jsonl("z/b.jsonl.zst", records[50:], compression="zstd")
    corpus.jsonl("z/c.jsonl.gz", records[:10], compression="gzip")
    props = {"language": "meta.language", "year": "meta.year", "clean": "meta.clean"}

    def register(cat: Catalog, engine: Any) -> Any:
        cat.register("pq", corpus.root / "p", properties={**props, "tags": "tags"}, engine=engine)
        return cat.register(
            "zst", corpus.root / "z", properties=props, progress=False, engine=engine
        )

    local, ray, _, _ = both(tmp_path, register, "ray")
    assert [r[3] for r in local["files"]] == ["parquet", "parquet", "jsonl", "jsonl", "jsonl"]
    assert ray == local


def test_types_learned_across_files(ray_cluster: Any, tmp_path: Path, corpus: Corpus) -> None:
    """Later files are checked against the types earlier ones showed: an integer property that
    meets floats widens (the tasks guessed 'integer' start again), and a file whose languages
    are numbers is skipped record by record, exactly as the local engine does."""
    rows = [{"text": f"t{i}", "meta": {"language": "en", "score": i}} for i in range(30)]
    corpus.jsonl("a.jsonl", rows)
    corpus.jsonl("b.jsonl", [{**r, "meta": {"language": "de", "score": 0.5}} for r in rows])
    corpus.jsonl("c.jsonl", [{**r, "meta": {"language": 7, "score": 1.5}} for r in rows[:9]])
    corpus.jsonl("d.jsonl", [{**r, "meta": {"language": "fr", "score": 2}} for r in rows])
    engine = RayEngine()

    def register(cat: Catalog, chosen: Any) -> Any:
        return cat.register(
            "mixed",
            corpus.root,
            properties={"language": "meta.language", "score": "meta.score"},
            on_error="skip",
            progress=False,
            engine=chosen,
        )

    local, ray, a, b = both(tmp_path, register, engine)
    assert ray == local
    assert reports(b) == reports(a)
    assert [r[2] for r in reports(a)] == [0, 0, 9, 0]
    assert ("score", "DOUBLE") in local["columns"]
    assert engine.misses >= 1  # c and d were guessed with 'integer' scores and ran again


def test_add_property_same_values(ray_cluster: Any, tmp_path: Path) -> None:
    write_corpus(tmp_path / "data", files=4, per_file=300)

    def add(cat: Catalog, engine: Any) -> int:
        cat.register("corpus", tmp_path / "data", properties=PROPERTIES, progress=False)
        return cat.add_property(
            "words", functions()["words"], batch_size=128, progress=False, engine=engine
        )

    local, ray, a, b = both(tmp_path, add, "ray")
    assert a == b == 1200
    assert ("words", "BIGINT") in local["columns"]
    assert ray == local


def test_add_property_error_is_the_local_one(ray_cluster: Any, tmp_path: Path) -> None:
    write_corpus(tmp_path / "data", files=4, per_file=300)
    errors = []
    for engine in ("local", "ray"):
        with Catalog.open(tmp_path / f"home-{engine}") as cat:
            cat.register("corpus", tmp_path / "data", properties=PROPERTIES, progress=False)
            before = contents(cat)
            with pytest.raises(RegistrationError) as info:
                cat.add_property("ok", functions()["fails"], batch_size=100, engine=engine)
            errors.append(str(info.value))
            assert contents(cat) == before
    assert errors[1] == errors[0]
    assert "part-2.jsonl: ValueError: doc 700 is cursed" in errors[0]


def malformed_corpus(root: Path) -> list[Path]:
    """Four JSONL files; part-1 has bad JSON on line 7 and part-3 on line 2."""
    paths = write_corpus(root, files=4, per_file=200)
    for path, line in ((paths[1], 7), (paths[3], 2)):
        lines = path.read_bytes().splitlines(keepends=True)
        lines[line - 1] = b'{"id": 1, "text": "cut sho\n'
        path.write_bytes(b"".join(lines))
    return paths


def test_malformed_raises_the_local_error(ray_cluster: Any, tmp_path: Path) -> None:
    paths = malformed_corpus(tmp_path / "bad")
    write_corpus(tmp_path / "good", files=1, per_file=20)
    errors = []
    for engine in ("local", "ray"):
        with Catalog.open(tmp_path / f"home-{engine}") as cat:
            cat.register("good", tmp_path / "good", properties=PROPERTIES, progress=False)
            before = contents(cat)
            with pytest.raises(MalformedRecordError) as info:
                cat.register("bad", tmp_path / "bad", properties=PROPERTIES, engine=engine)
            errors.append((type(info.value), str(info.value), info.value.path, info.value.location))
            assert contents(cat) == before  # nothing half-written
    assert errors[1] == errors[0]
    assert errors[0][2:] == (str(paths[1].resolve()), "line 7")  # the first in file order


def test_malformed_skipped_alike(ray_cluster: Any, tmp_path: Path) -> None:
    malformed_corpus(tmp_path / "bad")

    def register(cat: Catalog, engine: Any) -> Any:
        return cat.register(
            "bad", tmp_path / "bad", properties=PROPERTIES, on_error="skip", engine=engine
        )

    local, ray, a, b = both(tmp_path, register, "ray")
    assert ray == local
    assert reports(b) == reports(a)
    assert a.skipped == b.skipped == 2
    assert a.to_dict()["skipped_by_file"] == b.to_dict()["skipped_by_file"]


def test_cli_engine_ray(ray_cluster: Any, tmp_path: Path) -> None:
    """--engine ray --ray-address: the CLI joins the running cluster, same catalog as local."""
    write_corpus(tmp_path / "data", files=3, per_file=100)
    (tmp_path / "props_mod.py").write_text(
        "def n_chars(table):\n    return [len(t) for t in table['text'].to_pylist()]\n"
    )
    address = ray_cluster.get_runtime_context().gcs_address
    homes = {}
    for engine in ("local", "ray"):
        home = homes[engine] = tmp_path / f"home-{engine}"
        extra = ["--engine", "ray", "--ray-address", address] if engine == "ray" else []
        args = ["corpus", str(tmp_path / "data"), "--property", "language=meta.language"]
        run_cli(home, "register", *args, *extra)
        out = run_cli(home, "add-property", "n_chars", "props_mod:n_chars", *extra, cwd=tmp_path)
        assert out.stdout.strip() == "added property n_chars to 300 samples"
    with Catalog.open(homes["local"]) as a, Catalog.open(homes["ray"]) as b:
        assert contents(b) == contents(a)


def test_cli_ray_address_needs_engine_ray(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "register", "x", str(tmp_path), "--ray-address", "a:1", check=False)
    assert proc.returncode == 1
    assert "--ray-address a:1 needs --engine ray" in proc.stderr


def test_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(DependencyError) as info:
        get_engine("ray")
    assert str(info.value) == (
        "engine='ray' needs Ray, which is not installed; pip install 'mixplane[ray]'"
    )
    write_corpus(tmp_path / "data", files=1, per_file=5)
    with Catalog.open(tmp_path / "home") as cat, pytest.raises(DependencyError):
        cat.register("corpus", tmp_path / "data", engine="ray")


def test_token_counts_same_as_local(ray_cluster: Any, tmp_path: Path, corpus: Corpus) -> None:
    """count_tokens on Ray (tasks of 37 samples over every format, the tokenizer rebuilt on the
    workers from its tokenizer.json's content) stores the counts the local engine stores, and a
    second run (here through the CLI, joining the cluster) counts nothing."""
    from mixplane.tokens import load_tokenizer, train_bpe

    from .test_token_counts import mixed, register, stored, truth

    datasets = mixed(corpus)
    path = tmp_path / "tokenizer.json"
    train_bpe(
        [t for files in datasets.values() for _, ts in files for t in ts], vocab_size=300
    ).save(path)
    tokenizer = load_tokenizer(path)
    counts = {}
    for engine in ("local", "ray"):
        with Catalog.open(tmp_path / f"home-{engine}") as cat:
            register(cat, corpus.root)
            report = cat.count_tokens(path, engine=engine, batch_size=37, progress=False)
            assert (report.engine, report.counted, report.files_counted) == (engine, 510, 5)
            counts[engine] = stored(cat, tokenizer.fingerprint)
    assert counts["ray"] == counts["local"] == truth(datasets, tokenizer)
    address = ray_cluster.get_runtime_context().gcs_address
    again = run_cli(
        tmp_path / "home-ray", "count-tokens", "--tokenizer", str(path), "--engine", "ray",
        "--ray-address", address, "--json",
    )  # fmt: skip
    assert '"counted": 0, "cached": 510' in again.stdout


def test_token_data_same_catalog(ray_cluster: Any, tmp_path: Path) -> None:
    """Pre-tokenized files (issue 15): the same samples, exact token counts and token files;
    a property function that asks for text gets it decoded on the workers."""
    import numpy as np

    from mixplane.catalog.formats.tokenized import wants_text
    from mixplane.tokens import train_bpe
    from tests.tokendata import documents, token_table, write_megatron, write_memmap, write_parquet

    tok = train_bpe(["alpha beta gamma delta " * 30], vocab_size=270)
    tok.save(tmp_path / "tokenizer.json")
    eos = tok.eos_id
    assert eos is not None
    docs = documents(3, 90, vocab=tok.vocab_size, eos=eos)
    write_megatron(tmp_path / "m" / "web" / "a", docs[:40], "uint16")
    write_megatron(tmp_path / "m" / "code" / "b", docs[40:], "int32")
    write_memmap(tmp_path / "d" / "part-0.npy", docs, "uint16")
    write_parquet(tmp_path / "p" / "a.parquet", token_table(docs, pa.int32()), row_group_size=17)

    def register(cat: Catalog, engine: Any) -> Any:
        kw = {"tokenizer": str(tmp_path / "tokenizer.json"), "engine": engine, "progress": False}
        cat.register("m", tmp_path / "m", path_pattern=r"/(?P<source>[a-z]+)/[ab]\.bin", **kw)
        cat.register("d", tmp_path / "d", token_dtype="uint16", properties={"src": "src"}, **kw)
        cat.register("p", tmp_path / "p", tokens_field="input_ids", **kw)

        @wants_text
        def has_alpha(batch: pa.Table) -> list[bool]:
            return ["alpha" in t for t in batch.column("text").to_pylist()]

        cat.add_property("alpha", has_alpha, engine=engine)
        con = cat._con
        return [
            con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
            for table in ("token_files", "token_counts", "token_count_files")
        ]

    local, ray, local_tokens, ray_tokens = both(tmp_path, register, "ray")
    assert ray == local
    assert ray_tokens == local_tokens
    assert len(local_tokens[1]) == 3 * 90 and np.array(local_tokens[1])[:, 3].astype(int).min() >= 0
