"""Ingestion benchmark: register a synthetic corpus of ~1 KB samples from JSONL and Parquet.

What it measures, in one process:

1. Generation (not a target): N records ``{"id", "text" (~900 ASCII chars of words), "meta":
   {"language" (5 values), "source" (4), "quality" (float), "tags" (0-2 strings)}}`` written as
   JSONL (orjson) and the same data as Parquet (flat columns ``id, text, language, source,
   quality``; row groups of 65,536 rows). Texts are random phrases of random words, drawn with
   numpy and joined by Arrow, 65,536 records at a time (about 15 s per million on 2 cores).
2. JSONL registration: ``Catalog.register`` with properties ``language, source, quality, tags``
   from ``meta.*``, against the named baseline *plain Python*: ``json.loads`` per line, collecting
   (file_id, ordinal, offset, length, language, source, quality) in column lists, inserted into a
   fresh DuckDB table through a pyarrow table every 65,536 rows, in one transaction. The baseline
   stores less than mixplane (no ``tags``, no text byte length), so the ratio is conservative.
   Runs alternate (mixplane first on even repetitions); each gets a fresh catalog home / DuckDB
   file, a ``gc.collect()`` before it, and is timed from open to close.
3. Parquet registration (properties from the non-text columns), plus pyarrow's time to decode only
   the property columns vs only the text column (mixplane reads ``text`` for per-sample UTF-8
   byte lengths), to judge whether the text column bounds Parquet registration.
4. ``components(None, by=["language", "source"])`` and ``components("quality >= 0.5",
   by=["language"])`` on the JSONL catalog (best of 3).

Targets: JSONL >= 250k samples/s, Parquet >= 1M samples/s, each query + components < 1 s.
Files are freshly written, so they are in the page cache: these are warm-cache figures.

Usage::

    .venv/bin/python benchmarks/ingest.py --samples 1000000 [--repeat 3] [--profile] [--keep]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import multiprocessing
import os
import platform
import pstats
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from common import best_of, join_rows, load, print_summary, scratch, timed

from mixplane.catalog import Catalog

LANGUAGES = ("en", "de", "fr", "zh", "code")
SOURCES = ("web", "books", "wiki", "arxiv")
TAGS = ("news", "forum", "edu", "legal", "medical", "short")
CHUNK_ROWS = 65_536  # generation chunk = Parquet row group = baseline insert batch
VOCABULARY = 4_096  # words of 2..11 random letters
PHRASES = 65_536  # texts are drawn from phrases of words: 15x fewer draws than word by word
WORDS_PER_PHRASE = 8  # ~59 chars
PHRASES_PER_SAMPLE = 15  # ~900 chars

JSONL_TARGET = 250_000
PARQUET_TARGET = 1_000_000
QUERY_TARGET_S = 1.0

JSONL_PROPERTIES = {
    "language": "meta.language",
    "source": "meta.source",
    "quality": "meta.quality",
    "tags": "meta.tags",
}
PARQUET_PROPERTIES = {"language": "language", "source": "source", "quality": "quality"}


# -- corpus ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Corpus:
    jsonl: Path
    parquet: Path
    samples: int
    seconds: float


def _phrases(rng: np.random.Generator) -> pa.Array:
    """PHRASES phrases of WORDS_PER_PHRASE random-letter words (2..11 letters, ~59 chars)."""
    lengths = rng.integers(2, 12, VOCABULARY)
    letters = rng.integers(ord("a"), ord("z") + 1, lengths.sum(), dtype=np.uint8)
    offsets = np.zeros(VOCABULARY + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    words = pa.StringArray.from_buffers(
        VOCABULARY, pa.py_buffer(offsets), pa.py_buffer(letters.tobytes())
    )
    picks = rng.integers(0, VOCABULARY, PHRASES * WORDS_PER_PHRASE)
    return join_rows(words.take(pa.array(picks)), WORDS_PER_PHRASE, " ")


def _texts(rng: np.random.Generator, n: int, phrases: pa.Array) -> pa.Array:
    """n texts of PHRASES_PER_SAMPLE phrases (~900 chars each)."""
    picks = rng.integers(0, PHRASES, n * PHRASES_PER_SAMPLE)
    return join_rows(phrases.take(pa.array(picks)), PHRASES_PER_SAMPLE, " ")


def generate(directory: Path, samples: int, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    phrases = _phrases(rng)
    tag_lists = [[[], [a], [a, b]] for a in TAGS for b in TAGS]  # [a * len(TAGS) + b][count]
    jsonl = directory / "corpus.jsonl"
    parquet = directory / "corpus.parquet"
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("text", pa.string()),
            ("language", pa.string()),
            ("source", pa.string()),
            ("quality", pa.float64()),
        ]
    )
    start = time.perf_counter()
    with jsonl.open("wb") as out, pq.ParquetWriter(parquet, schema) as writer:
        for first in range(0, samples, CHUNK_ROWS):
            n = min(CHUNK_ROWS, samples - first)
            ids = np.arange(first, first + n, dtype=np.int64)
            texts = _texts(rng, n, phrases)
            language = pa.array(
                np.asarray(LANGUAGES, dtype=object)[rng.integers(0, len(LANGUAGES), n)]
            )
            source = pa.array(np.asarray(SOURCES, dtype=object)[rng.integers(0, len(SOURCES), n)])
            quality = np.round(rng.random(n), 4)
            tag_pick = rng.integers(0, len(TAGS) ** 2, n).tolist()
            tag_count = rng.integers(0, 3, n).tolist()
            lines = [
                orjson.dumps(
                    {
                        "id": i,
                        "text": t,
                        "meta": {
                            "language": lang,
                            "source": src,
                            "quality": q,
                            "tags": tag_lists[p][c],
                        },
                    },
                    option=orjson.OPT_APPEND_NEWLINE,
                )
                for i, t, lang, src, q, p, c in zip(
                    ids.tolist(),
                    texts.to_pylist(),
                    language.to_pylist(),
                    source.to_pylist(),
                    quality.tolist(),
                    tag_pick,
                    tag_count,
                    strict=True,
                )
            ]
            out.write(b"".join(lines))
            writer.write_table(
                pa.table(
                    [pa.array(ids), texts, language, source, pa.array(quality)], schema=schema
                ),
                row_group_size=CHUNK_ROWS,
            )
    return Corpus(
        jsonl=jsonl, parquet=parquet, samples=samples, seconds=time.perf_counter() - start
    )


# -- measurements ------------------------------------------------------------------------------


def register_mixplane(
    home: Path, path: Path, properties: dict[str, str], text_lengths: str = "exact"
) -> int:
    """Open a fresh catalog, register one file, close (the close checkpoints to disk)."""
    with Catalog.open(home) as catalog:
        info = catalog.register(
            "corpus",
            path,
            properties=properties,
            progress=False,
            text_lengths=text_lengths,  # type: ignore[arg-type]
        )
    return info.samples


def register_baseline(database: Path, path: Path) -> int:
    """json.loads per line; column lists flushed to DuckDB through a pyarrow table."""
    con = duckdb.connect(str(database))
    con.execute(
        'CREATE TABLE samples (file_id INTEGER, ordinal BIGINT, "offset" BIGINT, '
        "length BIGINT, language VARCHAR, source VARCHAR, quality DOUBLE)"
    )
    con.execute("BEGIN TRANSACTION")
    offsets: list[int] = []
    lengths: list[int] = []
    languages: list[str] = []
    sources: list[str] = []
    qualities: list[float] = []
    total = 0

    def flush() -> None:
        n = len(offsets)
        batch = pa.table(
            {
                "file_id": pa.array(np.ones(n, dtype=np.int32)),
                "ordinal": pa.array(np.arange(total - n, total, dtype=np.int64)),
                "offset": pa.array(offsets, pa.int64()),
                "length": pa.array(lengths, pa.int64()),
                "language": pa.array(languages, pa.string()),
                "source": pa.array(sources, pa.string()),
                "quality": pa.array(qualities, pa.float64()),
            }
        )
        con.register("batch", batch)
        con.execute("INSERT INTO samples SELECT * FROM batch")
        con.unregister("batch")
        for column in (offsets, lengths, languages, sources, qualities):
            column.clear()

    position = 0
    with path.open("rb") as f:
        for line in f:
            record = json.loads(line)
            meta = record["meta"]
            offsets.append(position)
            lengths.append(len(line.rstrip(b"\r\n")))
            languages.append(meta["language"])
            sources.append(meta["source"])
            qualities.append(meta["quality"])
            position += len(line)
            total += 1
            if len(offsets) == CHUNK_ROWS:
                flush()
    if offsets:
        flush()
    con.execute("COMMIT")
    con.close()
    return total


def read_columns(path: Path, columns: list[str]) -> int:
    """Decode the given columns row group by row group (as mixplane's Parquet scan does)."""
    pf = pq.ParquetFile(path)
    rows = 0
    for group in range(pf.metadata.num_row_groups):
        rows += pf.read_row_group(group, columns=columns).num_rows
    return rows


def text_lengths(path: Path) -> int:
    pf = pq.ParquetFile(path)
    total = 0
    for group in range(pf.metadata.num_row_groups):
        text = pf.read_row_group(group, columns=["text"]).column("text")
        total += int(pc.sum(pc.binary_length(text)).as_py())
    return total


def rate(samples: int, seconds: float) -> str:
    return f"{samples / seconds:,.0f} samples/s ({seconds:.2f} s)"


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where a fresh mixplane-bench-* folder is made (default: the system temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the corpus and catalogs")
    parser.add_argument("--repeat", type=int, default=1, help="registrations of each kind")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one extra mixplane JSONL registration (top 15 by tottime)",
    )
    args = parser.parse_args()
    if args.samples < 1 or args.repeat < 1:
        parser.error("--samples and --repeat must be at least 1")
    with scratch("mixplane-bench-", args.workdir, keep=args.keep) as workdir:
        print(
            f"mixplane ingest benchmark: {args.samples:,} samples, repeat {args.repeat}, "
            f"{os.cpu_count()} CPUs, python {platform.python_version()}, duckdb {duckdb.__version__}, "
            f"pyarrow {pa.__version__}; workdir {workdir}; load average {load()}"
        )
        run(args, workdir)


def run(args: argparse.Namespace, workdir: Path) -> None:
    n = args.samples
    # A child process generates, so the peak RSS below is that of the measurements alone.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        corpus = pool.submit(generate, workdir, n).result()
    generation_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    jsonl_mb = corpus.jsonl.stat().st_size / 1e6
    parquet_mb = corpus.parquet.stat().st_size / 1e6
    print(
        f"generated JSONL {jsonl_mb:,.0f} MB ({jsonl_mb * 1e6 / n:,.0f} B/sample) and Parquet "
        f"{parquet_mb:,.0f} MB in {corpus.seconds:.1f} s (peak RSS {generation_mb:,.0f} MB)"
    )

    homes = (workdir / f"home-{i}" for i in itertools.count())
    mixplane_jsonl: list[float] = []
    baseline_jsonl: list[float] = []
    last_jsonl_home = workdir
    print("\n## JSONL registration (mixplane vs plain-Python json.loads + DuckDB)")
    for rep in range(args.repeat):
        order = ("mixplane", "baseline") if rep % 2 == 0 else ("baseline", "mixplane")
        for who in order:
            home = next(homes)
            if who == "mixplane":
                seconds, count = timed(
                    lambda h=home: register_mixplane(h, corpus.jsonl, JSONL_PROPERTIES)
                )
                mixplane_jsonl.append(seconds)
                last_jsonl_home = home
            else:
                home.mkdir()
                seconds, count = timed(
                    lambda h=home: register_baseline(h / "baseline.duckdb", corpus.jsonl)
                )
                baseline_jsonl.append(seconds)
            assert count == n, (who, count, n)
            print(f"  rep {rep} {who:9s}: {rate(n, seconds)}  load {load()}")
    best_mixplane, best_baseline = min(mixplane_jsonl), min(baseline_jsonl)
    ratio = best_baseline / best_mixplane
    print(
        f"  best: mixplane {rate(n, best_mixplane)}, baseline {rate(n, best_baseline)}, "
        f"ratio mixplane/baseline {ratio:.2f}x"
    )

    print("\n## Parquet registration (properties from non-text columns)")
    parquet_runs: list[float] = []
    for rep in range(args.repeat):
        home = next(homes)
        seconds, count = timed(
            lambda h=home: register_mixplane(h, corpus.parquet, PARQUET_PROPERTIES)
        )
        assert count == n, count
        parquet_runs.append(seconds)
        print(f"  rep {rep} mixplane : {rate(n, seconds)}  load {load()}")
    best_parquet = min(parquet_runs)
    metadata_runs: list[float] = []
    for rep in range(args.repeat):
        home = next(homes)
        seconds, count = timed(
            lambda h=home: register_mixplane(h, corpus.parquet, PARQUET_PROPERTIES, "metadata")
        )
        assert count == n, count
        metadata_runs.append(seconds)
        print(
            f"  rep {rep} mixplane, text_lengths=metadata (text never read): "
            f"{rate(n, seconds)}  load {load()}"
        )
    best_metadata = min(metadata_runs)
    props = list(PARQUET_PROPERTIES)
    read_props, _ = best_of(3, lambda: read_columns(corpus.parquet, props))
    read_text, _ = best_of(3, lambda: read_columns(corpus.parquet, ["text"]))
    read_both, _ = best_of(3, lambda: read_columns(corpus.parquet, [*props, "text"]))
    lengths, _ = best_of(3, lambda: text_lengths(corpus.parquet))
    print(
        f"  pyarrow decode (best of 3): property columns {read_props:.2f} s, text column "
        f"{read_text:.2f} s, both {read_both:.2f} s, text + binary_length {lengths:.2f} s; "
        f"registration {best_parquet:.2f} s"
    )

    print("\n## Queries on the JSONL catalog (best of 3)")
    with Catalog.open(last_jsonl_home) as catalog:
        by_two, result_two = best_of(3, lambda: catalog.components(None, by=["language", "source"]))
        filtered, result_filtered = best_of(
            3, lambda: catalog.components("quality >= 0.5", by=["language"])
        )
    for label, seconds, result in (
        ("components(None, by=[language, source])", by_two, result_two),
        ("components('quality >= 0.5', by=[language])", filtered, result_filtered),
    ):
        print(
            f"  {label}: {seconds:.3f} s, {len(result.components)} components, "
            f"{result.total_samples:,} samples in {result.runs.num_rows:,} runs"
        )

    if args.profile:
        print("\n## cProfile: one mixplane JSONL registration (main thread), top 15 by tottime")
        profiler = cProfile.Profile()
        home = next(homes)
        gc.collect()
        profiler.runcall(register_mixplane, home, corpus.jsonl, JSONL_PROPERTIES)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("JSONL registration, mixplane", f"{n / best_mixplane:,.0f} samples/s", ">= 250,000",
         n / best_mixplane >= JSONL_TARGET),
        ("JSONL, plain Python baseline", f"{n / best_baseline:,.0f} samples/s", "-", None),
        ("JSONL ratio mixplane/baseline", f"{ratio:.2f}x", "-", None),
        ("Parquet registration, mixplane (exact text lengths)",
         f"{n / best_parquet:,.0f} samples/s", "-", None),
        ("Parquet registration, text never read (text_lengths=metadata)",
         f"{n / best_metadata:,.0f} samples/s", ">= 1,000,000",
         n / best_metadata >= PARQUET_TARGET),
        ("Parquet decode: property columns / text", f"{read_props:.2f} s / {read_text:.2f} s",
         "-", None),
        ("components(None, by=[language, source])", f"{by_two:.3f} s", "< 1 s",
         by_two < QUERY_TARGET_S),
        ("components('quality >= 0.5', by=[language])", f"{filtered:.3f} s", "< 1 s",
         filtered < QUERY_TARGET_S),
        ("peak RSS of the measuring process", f"{peak_mb:,.0f} MB", "-", None),
        ("corpus generation", f"{corpus.seconds:.1f} s", "-", None),
        ("load average (1/5/15 min) at end", load(), "-", None),
    ]  # fmt: skip
    print_summary(f"{n:,} samples", ["metric", "value", "target", "met"], rows)


if __name__ == "__main__":
    main()
