"""Exact token counts (issue 13, item 2): every format, in this process and in worker processes,
cached per tokenizer fingerprint and file, changed files refused or left out and reported, and
the ``mixplane count-tokens`` command (report, --json, one-line errors).

Counts are checked against texts taken from the records as written (not read back through the
catalog), encoded one by one by the bare tokenizer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from mixplane.catalog import Catalog
from mixplane.catalog.engines import LocalEngine
from mixplane.catalog.token_counts import TokenCountReport
from mixplane.client import Client
from mixplane.errors import DatasetNotFoundError, FileChangedError
from mixplane.tokens import HFTokenizer, load_tokenizer, train_bpe
from mixplane.tokens.tokenizer import Tokenizer, TokenizerError
from tests.conftest import run_cli

from .conftest import Corpus, Record

Truth = dict[tuple[str, int], int]


def mixed(corpus: Corpus) -> dict[str, list[tuple[Path, list[str]]]]:
    """Four datasets of every text format: each file with its texts in ordinal order."""
    records = corpus.records(240)
    for i, r in enumerate(records):  # longer texts, so that tasks hold several samples
        r["text"] = r["text"] + " words and more words" * (i % 17)

    def files(*pairs: tuple[Path, list[Record]]) -> list[tuple[Path, list[str]]]:
        return [(p.resolve(), [str(r["text"]) for r in rs]) for p, rs in pairs]

    return {
        "j": files(
            (corpus.jsonl("j/a.jsonl", records[:100]), records[:100]),
            (corpus.jsonl("j/b.jsonl", records[100:160]), records[100:160]),
        ),
        "z": files((corpus.jsonl("z/a.jsonl.zst", records[:90], "zstd"), records[:90])),
        "p": files((corpus.parquet("p/a.parquet", records[60:200], 13), records[60:200])),
        "w": files((corpus.tar("w/a.tar", corpus.samples(records[120:])), records[120:])),
    }


def register(cat: Catalog, root: Path) -> None:
    for name in ("j", "z", "p", "w"):
        cat.register(name, root / name, progress=False)


def truth(datasets: Mapping[str, list[tuple[Path, list[str]]]], tokenizer: Tokenizer) -> Truth:
    out: Truth = {}
    for files in datasets.values():
        for path, texts in files:
            for i, text in enumerate(texts):
                out[(str(path), i)] = len(tokenizer.encode_batch([text])[0])
    return out


def stored(cat: Catalog, fingerprint: str) -> Truth:
    """The catalog's counts for a tokenizer, by (file path, ordinal)."""
    rows = cat._con.execute(
        "SELECT f.path, t.ordinal, t.tokens FROM token_counts t JOIN files f USING (file_id) "
        "WHERE t.tokenizer = ?",
        [fingerprint],
    ).fetchall()
    out = {(str(p), int(o)): int(n) for p, o, n in rows}
    assert len(out) == len(rows)  # no sample twice
    return out


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    """A small byte-level BPE saved as a tokenizer.json and loaded from it."""
    texts = [r["text"] + " words and more words" * 3 for r in Corpus.records(200)]
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    train_bpe(texts, vocab_size=300).save(path)
    return load_tokenizer(path)  # type: ignore[return-value]


def test_counts_every_format_exactly(catalog: Catalog, corpus: Corpus, bpe: HFTokenizer) -> None:
    datasets = mixed(corpus)
    register(catalog, corpus.root)
    report = catalog.count_tokens(bpe, progress=False)
    expected = truth(datasets, bpe)
    assert stored(catalog, bpe.fingerprint) == expected
    assert (report.counted, report.cached) == (len(expected), 0)
    assert (report.files_counted, report.files_cached) == (5, 0)
    assert report.workers == 0  # a small count stays in this process
    assert report.tokens == sum(expected.values())
    per_dataset = {d.name: (d.files, d.counted_files, d.samples) for d in report.datasets}
    assert per_dataset == {"j": (2, 2, 160), "z": (1, 1, 90), "p": (1, 1, 140), "w": (1, 1, 120)}
    # job sizing finds them: every component of a query, in run order
    runs = catalog.components().runs
    sizes = catalog.sample_tokens(runs, bpe.fingerprint)
    assert sizes is not None and int(sizes.sum()) == report.tokens


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["tokenizer.json", "qwen"])
def test_worker_processes_count_the_same(
    tmp_path: Path, corpus: Corpus, bpe: HFTokenizer, kind: str
) -> None:
    """Spawned workers rebuild the tokenizer from its definition (a tokenizer.json's content)
    or by name (a tiktoken rank file); tasks of 37 samples cut files into many slices (Parquet
    only at row-group boundaries) and still every sample is counted once, exactly."""
    datasets = mixed(corpus)
    tokenizer = bpe if kind == "tokenizer.json" else load_tokenizer("qwen")
    with Catalog.open(tmp_path / "home") as cat:
        register(cat, corpus.root)
        report = cat.count_tokens(
            tokenizer if kind == "tokenizer.json" else "qwen",
            workers=2,
            batch_size=37,
            progress=False,
        )
        assert report.workers == 2
        assert stored(cat, tokenizer.fingerprint) == truth(datasets, tokenizer)
        assert report.counted == 510 and report.files_counted == 5


def test_second_run_counts_nothing(tmp_path: Path, corpus: Corpus, bpe: HFTokenizer) -> None:
    """Cached per fingerprint and file: the second run reads no file (they are gone) and says
    counted 0, cached N; another tokenizer counts again; a new dataset is counted alone."""
    mixed(corpus)
    with Catalog.open(tmp_path / "home") as cat:
        register(cat, corpus.root)
        first = cat.count_tokens(bpe, progress=False)
        before = stored(cat, bpe.fingerprint)
        moved = tmp_path / "moved"
        shutil.move(corpus.root, moved)
        second = cat.count_tokens(bpe, progress=False)
        assert (second.counted, second.cached) == (0, first.counted)
        assert (second.files_counted, second.files_cached) == (0, 5)
        assert second.tokens == first.tokens and second.counted_bytes == 0
        assert stored(cat, bpe.fingerprint) == before
        with pytest.raises(FileChangedError, match="was removed after registration"):
            cat.count_tokens("qwen", progress=False)  # another fingerprint: not cached
        shutil.move(moved, corpus.root)
        corpus.jsonl("n/new.jsonl", corpus.records(7))
        cat.register("n", corpus.root / "n", progress=False)
        third = cat.count_tokens(bpe, progress=False)
        assert (third.counted, third.cached, third.files_counted) == (7, first.counted, 1)


def test_changed_file_is_refused_or_left_out(
    catalog: Catalog, corpus: Corpus, bpe: HFTokenizer
) -> None:
    """A file changed after registration: an error naming it before anything is counted; with
    on_changed='skip' the others are counted and it is reported; re-registering its dataset
    gives new file ids, which the next run counts (from the new content)."""
    corpus.jsonl("j/a.jsonl", corpus.records(30, "a"))
    changed = corpus.jsonl("j/b.jsonl", corpus.records(20, "b"))
    corpus.jsonl("k/c.jsonl", corpus.records(10, "c"))
    catalog.register("j", corpus.root / "j", progress=False)
    catalog.register("k", corpus.root / "k", progress=False)
    corpus.jsonl("j/b.jsonl", corpus.records(25, "b"))  # rewritten: other size and content
    with pytest.raises(FileChangedError) as info:
        catalog.count_tokens(bpe, progress=False)
    message = str(info.value)
    assert str(changed.resolve()) in message and "changed after registration" in message
    assert "re-register" in message and "on_changed='skip'" in message and "\n" not in message
    assert stored(catalog, bpe.fingerprint) == {}
    report = catalog.count_tokens(bpe, on_changed="skip", progress=False)
    assert (report.counted, report.files_counted) == (40, 2)
    assert len(report.changed) == 1 and str(changed.resolve()) in report.changed[0]
    assert catalog.sample_tokens(catalog.components().runs, bpe.fingerprint) is None
    catalog.register("j", corpus.root / "j", replace=True, progress=False)
    again = catalog.count_tokens(bpe, progress=False)
    assert (again.counted, again.cached, again.changed) == (55, 10, ())
    b_texts = [str(r["text"]) for r in corpus.records(25, "b")]
    counts = stored(catalog, bpe.fingerprint)
    assert [counts[(str(changed.resolve()), i)] for i in range(25)] == [
        len(ids) for ids in bpe.encode_batch(b_texts)
    ]


class ChangesAFile(LocalEngine):
    """The local engine, with a file rewritten after the owner checked it and before the
    workers read it (a change during the count)."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data = path, data

    def counts(self, tasks: Iterable[Mapping[str, Any]], *args: Any, **kwargs: Any) -> Any:
        self.path.write_bytes(self.data)
        return super().counts(tasks, *args, **kwargs)


@pytest.mark.parametrize("on_changed", ["error", "skip"])
def test_file_changed_during_the_count(
    catalog: Catalog, corpus: Corpus, bpe: HFTokenizer, on_changed: str
) -> None:
    corpus.jsonl("j/a.jsonl", corpus.records(30, "a"))
    path = corpus.jsonl("j/b.jsonl", corpus.records(20, "b"))
    catalog.register("j", corpus.root / "j", progress=False)
    engine = ChangesAFile(path, Corpus.lines(corpus.records(21, "b")))
    if on_changed == "error":
        with pytest.raises(FileChangedError, match="changed after registration"):
            catalog.count_tokens(bpe, engine=engine, progress=False)
        counted = stored(catalog, bpe.fingerprint)
        assert {p for p, _ in counted} <= {str((corpus.root / "j/a.jsonl").resolve())}
        return
    report = catalog.count_tokens(bpe, engine=engine, on_changed="skip", progress=False)
    assert (report.counted, report.files_counted) == (30, 1)
    assert len(report.changed) == 1 and str(path.resolve()) in report.changed[0]


def test_other_tokenizers_count_in_this_process(catalog: Catalog, corpus: Corpus) -> None:
    """A tokenizer that is neither a Hugging Face nor a tiktoken one cannot be rebuilt in a
    worker: it counts here, whatever ``workers`` says."""

    class Words:
        fingerprint = "words-v1"

        def encode_batch(self, texts: Any) -> list[list[int]]:
            return [[0] * len(t.split()) for t in texts]

        def count_batch(self, texts: Any) -> Any:
            import numpy as np

            return np.array([len(t.split()) for t in texts], dtype=np.int64)

    records = corpus.records(50)
    corpus.jsonl("j/a.jsonl", records)
    catalog.register("j", corpus.root / "j", progress=False)
    report = catalog.count_tokens(Words(), workers=2, progress=False)
    assert report.workers == 0 and report.counted == 50
    assert report.tokens == sum(len(str(r["text"]).split()) for r in records)


def test_bad_arguments_are_one_line_errors(
    catalog: Catalog, corpus: Corpus, tmp_path: Path
) -> None:
    corpus.jsonl("j/a.jsonl", corpus.records(5))
    catalog.register("j", corpus.root / "j", progress=False)
    with pytest.raises(TokenizerError, match="unknown tokenizer 'nope'; known names"):
        catalog.count_tokens("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": ')
    with pytest.raises(TokenizerError, match=r"is it a Hugging Face tokenizer\.json"):
        catalog.count_tokens(bad)
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'x'"):
        catalog.count_tokens("qwen", datasets=["x"])
    assert stored(catalog, load_tokenizer("qwen").fingerprint) == {}


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_reports_counts_and_cache(tmp_path: Path, corpus: Corpus, bpe: HFTokenizer) -> None:
    datasets = mixed(corpus)
    home = tmp_path / "home"
    with Catalog.open(home) as cat:
        register(cat, corpus.root)
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    first = run_cli(home, "count-tokens", "--tokenizer", str(path), "--datasets", "j,p", "--json")
    report = TokenCountReport.from_dict(json.loads(first.stdout))
    assert report.tokenizer == bpe.fingerprint
    assert (report.counted, report.cached, report.files_counted) == (300, 0, 3)
    assert [d.name for d in report.datasets] == ["j", "p"]
    assert "%|" not in first.stderr  # no bar when stderr is not a terminal
    second = run_cli(home, "count-tokens", "--tokenizer", str(path))
    assert "counted 210 samples in 2 files" in second.stdout
    assert "cached 300 samples in 3 files" in second.stdout
    third = run_cli(home, "count-tokens", "--tokenizer", str(path), "--json")
    again = json.loads(third.stdout)
    assert (again["counted"], again["cached"], again["files_cached"]) == (0, 510, 5)
    with Catalog.open(home) as cat:
        assert stored(cat, bpe.fingerprint) == truth(datasets, bpe)
    # a token-budgeted job with the same tokenizer is sized from the exact counts
    with Client.local(home) as client:
        job = client.submit(
            "t", mixture={"dataset=j": 0.5, "dataset=p": 0.5}, unit="tokens",
            chunk_size=2000, tokenizer=load_tokenizer(path),
        )  # fmt: skip
        job.plan(1)
        assert set(job.token_source.values()) == {"exact"}


@pytest.mark.integration
def test_cli_errors_are_one_line(tmp_path: Path, corpus: Corpus) -> None:
    corpus.jsonl("j/a.jsonl", corpus.records(5))
    home = tmp_path / "home"
    run_cli(home, "register", "j", str(corpus.root / "j"))
    bad = tmp_path / "ranks.tiktoken"
    bad.write_text("not base64 at all\n")
    for args, expected in (
        (["--tokenizer", "nope"], "error: unknown tokenizer 'nope'; known names"),
        (["--tokenizer", str(bad)], f"error: {bad}:1: not a tiktoken rank line"),
        (["--tokenizer", "qwen", "--datasets", "x"], "error: unknown dataset 'x'"),
        (["--tokenizer", "qwen", "--workers", "0"], "Invalid value for '--workers'"),
    ):
        proc = run_cli(home, "count-tokens", *args, check=False)
        assert proc.returncode != 0, args
        assert expected in proc.stderr, (args, proc.stderr)
        if expected.startswith("error:"):
            assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr


class StopsAfter(LocalEngine):
    """The local engine, interrupted (Ctrl-C) after ``tasks`` tasks came back."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks

    def counts(self, tasks: Iterable[Mapping[str, Any]], *args: Any, **kwargs: Any) -> Any:
        for i, result in enumerate(super().counts(tasks, *args, **kwargs)):
            if i == self.tasks:
                raise KeyboardInterrupt
            yield result


def test_an_interrupted_count_keeps_whole_files(
    catalog: Catalog, corpus: Corpus, bpe: HFTokenizer
) -> None:
    """Files whose tasks all came back before the interruption are stored (and cached for the
    next run); the file in progress is not stored at all."""
    paths = [corpus.jsonl(f"j/{i}.jsonl", corpus.records(20, f"f{i}")) for i in range(4)]
    catalog.register("j", corpus.root / "j", progress=False)
    with pytest.raises(KeyboardInterrupt):  # tasks of 8 samples: 3 a file; 7 tasks come back
        catalog.count_tokens(bpe, engine=StopsAfter(7), batch_size=8, progress=False)
    kept = {path for path, _ in stored(catalog, bpe.fingerprint)}
    assert kept == {str(p.resolve()) for p in paths[:2]}
    report = catalog.count_tokens(bpe, batch_size=8, progress=False)
    assert (report.counted, report.cached, report.files_counted) == (40, 40, 2)
    assert len(stored(catalog, bpe.fingerprint)) == 80
