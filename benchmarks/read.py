"""Streaming benchmark: raw samples (no tokenization) of a 4-component mixture, in process.

What it measures, in one process:

1. Generation (not a target): N records ``{"id", "text" (~1,400 ASCII chars of words), "meta":
   {"language" (4 values), "source" (4 values)}}``, ~1.5 KB a line, written as 8 JSONL files
   (orjson; properties drawn independently per sample, so each component's samples are spread
   over every file, one line in four). Registered with properties ``language, source``.
2. mixplane: ``Client.local(home)``, ``client.submit`` of the mixture ``en 0.4, de 0.3, fr 0.2,
   zh 0.1`` (shuffled order, ``on_exhausted="repeat"``) with ``chunk_size`` 100 and 1000 samples,
   then ``job.stream(0, 0, 0)`` read for a fixed number of samples, summing ``len(sample.text)``
   (texts are ASCII: characters are bytes). Timed from the first ``next()`` to the last sample;
   the submit (query, orders, weights) is timed apart.
3. The named baseline *plain sequential read*: the same files in order, ``for line in f:
   orjson.loads(line)["text"]`` for the same number of samples: the ceiling for reading and
   parsing these bytes in Python (mixplane also reads by pointer, shuffles and interleaves).

Runs alternate their order on each repetition; each gets a ``gc.collect()`` first and a fresh
client (mixplane). The best run of each kind is reported, and the chunk-size ratio also as the
median of its per-repetition values (runs adjacent in time), which a shared machine disturbs
less. The files have just been written, so these are warm-cache figures.
Targets: >= 100k samples/s, and chunk 100 within 20% of chunk 1000 (ratio >= 0.8).

Usage::

    .venv/bin/python benchmarks/read.py [--samples 300000] [--read 200000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import multiprocessing
import os
import platform
import pstats
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from common import join_rows, load, print_summary, scratch

from mixplane.client import Client

LANGUAGES = ("en", "de", "fr", "zh")
SOURCES = ("web", "books", "wiki", "arxiv")
MIXTURE = {"language=en": 0.4, "language=de": 0.3, "language=fr": 0.2, "language=zh": 0.1}
FILES = 8
CHUNK_ROWS = 65_536
VOCABULARY = 4_096  # words of 2..11 random letters
PHRASES = 65_536
WORDS_PER_PHRASE = 8  # ~59 chars
PHRASES_PER_SAMPLE = 24  # ~1,400 chars
CHUNK_SIZES = (100, 1000)
SAMPLES_TARGET = 100_000
CHUNK_RATIO_TARGET = 0.8


# -- corpus ------------------------------------------------------------------------------------


def generate(directory: Path, samples: int, seed: int = 0) -> tuple[list[Path], float]:
    """FILES JSONL files holding ``samples`` records in all; returns (paths, seconds)."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 12, VOCABULARY)
    letters = rng.integers(ord("a"), ord("z") + 1, lengths.sum(), dtype=np.uint8)
    offsets = np.zeros(VOCABULARY + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    words = pa.StringArray.from_buffers(
        VOCABULARY, pa.py_buffer(offsets), pa.py_buffer(letters.tobytes())
    )
    phrases = join_rows(
        words.take(pa.array(rng.integers(0, VOCABULARY, PHRASES * WORDS_PER_PHRASE))),
        WORDS_PER_PHRASE,
        " ",
    )
    bounds = np.linspace(0, samples, FILES + 1).astype(np.int64).tolist()
    paths = []
    for f in range(FILES):
        path = directory / f"part-{f:02d}.jsonl"
        paths.append(path)
        with path.open("wb") as out:
            for first in range(bounds[f], bounds[f + 1], CHUNK_ROWS):
                n = min(CHUNK_ROWS, bounds[f + 1] - first)
                picks = rng.integers(0, PHRASES, n * PHRASES_PER_SAMPLE)
                texts = join_rows(
                    phrases.take(pa.array(picks)), PHRASES_PER_SAMPLE, " "
                ).to_pylist()
                language = rng.integers(0, len(LANGUAGES), n).tolist()
                source = rng.integers(0, len(SOURCES), n).tolist()
                out.write(
                    b"".join(
                        orjson.dumps(
                            {
                                "id": first + i,
                                "text": t,
                                "meta": {"language": LANGUAGES[lang], "source": SOURCES[src]},
                            },
                            option=orjson.OPT_APPEND_NEWLINE,
                        )
                        for i, (t, lang, src) in enumerate(
                            zip(texts, language, source, strict=True)
                        )
                    )
                )
    return paths, time.perf_counter() - start


# -- measurements ------------------------------------------------------------------------------


def stream_mixplane(home: Path, chunk_size: int, count: int) -> tuple[float, float, int]:
    """(submit seconds, streaming seconds, text bytes) for ``count`` samples of one consumer."""
    with Client.local(home) as client:
        start = time.perf_counter()
        job = client.submit(
            f"read-{chunk_size}", unit="samples", mixture=MIXTURE, chunk_size=chunk_size, seed=7
        )
        submitted = time.perf_counter()
        stream = iter(job.stream(0, 0, 0))
        total = 0
        seen = 0
        for sample in stream:
            total += len(sample.text)
            seen += 1
            if seen == count:
                break
        end = time.perf_counter()
    assert seen == count, (seen, count)
    return submitted - start, end - submitted, total


def read_baseline(paths: list[Path], count: int) -> tuple[float, int]:
    """(seconds, text bytes) of a plain sequential read of the files, ``count`` lines."""
    start = time.perf_counter()
    total = 0
    seen = 0
    for path in paths:
        with path.open("rb") as f:
            for line in f:
                total += len(orjson.loads(line)["text"])
                seen += 1
                if seen == count:
                    break
        if seen == count:
            break
    seconds = time.perf_counter() - start
    assert seen == count, (seen, count)
    return seconds, total


def shares(home: Path, chunk_size: int, count: int) -> list[float]:
    """Realized component shares over the first ``count`` samples (from the plan, untimed)."""
    with Client.local(home) as client:
        job = client.submit(
            "shares", unit="samples", mixture=MIXTURE, chunk_size=chunk_size, seed=7
        )
        counts = sum(spec.counts for spec in job.plan(-(-count // chunk_size)))
        names = [c.selector for c in job.result.components]
    by_name = dict(zip(names, (counts / counts.sum()).tolist(), strict=True))
    return [by_name.get(s, 0.0) for s in MIXTURE]


def describe(count: int, seconds: float, nbytes: int) -> str:
    return f"{count / seconds:,.0f} samples/s, {nbytes / seconds / 1e6:,.0f} MB/s ({seconds:.2f} s)"


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300_000, help="corpus size")
    parser.add_argument("--read", type=int, default=200_000, help="samples streamed per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each kind (best is kept)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where a fresh mixplane-read-* folder is made (default: the system temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the corpus and catalog")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile one extra mixplane run (top 15 by tottime)",
    )
    parser.add_argument(
        "--profile-chunk-size", type=int, default=100, help="chunk size of the profiled run"
    )
    args = parser.parse_args()
    if args.samples < 1 or args.read < 1 or args.repeat < 1:
        parser.error("--samples, --read and --repeat must be at least 1")
    with scratch("mixplane-read-", args.workdir, keep=args.keep) as workdir:
        print(
            f"mixplane read benchmark: corpus {args.samples:,} samples in {FILES} files, "
            f"{args.read:,} streamed per run, repeat {args.repeat}, {os.cpu_count()} CPUs, "
            f"python {platform.python_version()}, orjson {orjson.__version__}; workdir {workdir}; "
            f"load average {load()}"
        )
        run(args, workdir)


def run(args: argparse.Namespace, workdir: Path) -> None:
    n = args.read
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths, generation = pool.submit(generate, workdir, args.samples).result()
    size = sum(p.stat().st_size for p in paths)
    print(
        f"generated {size / 1e6:,.0f} MB of JSONL ({size / args.samples:,.0f} B/sample) in "
        f"{generation:.1f} s"
    )
    home = workdir / "home"
    with Client.local(home) as client:
        start = time.perf_counter()
        client.catalog.register(
            "corpus",
            paths,
            properties={"language": "meta.language", "source": "meta.source"},
            progress=False,
        )
        print(f"registered in {time.perf_counter() - start:.1f} s")

    kinds = [f"chunk {c}" for c in CHUNK_SIZES] + ["baseline"]
    best: dict[str, tuple[float, int]] = {}
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    submits: dict[str, float] = {}
    print(f"\n## Streaming {n:,} samples (mixplane job.stream vs plain sequential read)")
    for rep in range(args.repeat):
        for kind in kinds if rep % 2 == 0 else kinds[::-1]:
            gc.collect()
            if kind == "baseline":
                seconds, nbytes = read_baseline(paths, n)
                extra = ""
            else:
                submit, seconds, nbytes = stream_mixplane(home, int(kind.split()[1]), n)
                submits[kind] = min(submits.get(kind, submit), submit)
                extra = f", submit {submit:.2f} s"
            runs[kind].append(seconds)
            if kind not in best or seconds < best[kind][0]:
                best[kind] = (seconds, nbytes)
            print(f"  rep {rep} {kind:10s}: {describe(n, seconds, nbytes)}{extra}  load {load()}")

    rates = {kind: n / seconds for kind, (seconds, _) in best.items()}
    mb = {kind: nbytes / seconds / 1e6 for kind, (seconds, nbytes) in best.items()}
    chunk_ratio = rates["chunk 100"] / rates["chunk 1000"]
    # the same ratio within each repetition (runs adjacent in time), robust to drifting load
    paired = statistics.median(
        a / b for a, b in zip(runs["chunk 1000"], runs["chunk 100"], strict=True)
    )
    print(
        "  best: "
        + ", ".join(f"{kind} {describe(n, *best[kind])}" for kind in kinds)
        + f"\n  ratio chunk100/chunk1000 {chunk_ratio:.2f} (median of per-repetition ratios "
        f"{paired:.2f}); mixplane/baseline "
        + ", ".join(f"{kind} {rates[kind] / rates['baseline']:.2f}" for kind in kinds[:-1])
    )
    realized = shares(home, 1000, n)
    print(
        "  realized shares (chunk 1000, from the plan): "
        + ", ".join(
            f"{s.split('=')[1]} {r:.4f} (weight {w})"
            for (s, w), r in zip(MIXTURE.items(), realized, strict=True)
        )
    )

    if args.profile:
        size_ = args.profile_chunk_size
        print(f"\n## cProfile: one mixplane run, chunk {size_}, {n:,} samples, top 15 by tottime")
        profiler = cProfile.Profile()
        gc.collect()
        profiler.runcall(stream_mixplane, home, size_, n)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)

    rows = [
        (f"mixplane, chunk {c}", f"{rates[f'chunk {c}']:,.0f} samples/s",
         f"{mb[f'chunk {c}']:,.0f} MB/s", ">= 100,000 samples/s",
         rates[f"chunk {c}"] >= SAMPLES_TARGET)
        for c in CHUNK_SIZES
    ] + [
        ("plain sequential read (baseline)", f"{rates['baseline']:,.0f} samples/s",
         f"{mb['baseline']:,.0f} MB/s", "-", None),
        ("ratio chunk 100 / chunk 1000 (best runs)", f"{chunk_ratio:.2f}", "", ">= 0.8",
         chunk_ratio >= CHUNK_RATIO_TARGET),
        ("ratio chunk 100 / chunk 1000, median of per-repetition pairs", f"{paired:.2f}", "",
         "-", None),
    ] + [
        (f"ratio mixplane chunk {c} / baseline", f"{rates[f'chunk {c}'] / rates['baseline']:.2f}",
         "", "-", None)
        for c in CHUNK_SIZES
    ] + [
        (f"submit (query, orders), chunk {c}", f"{submits[f'chunk {c}']:.2f} s", "", "-", None)
        for c in CHUNK_SIZES
    ] + [("load average (1/5/15 min) at end", load(), "", "-", None)]  # fmt: skip
    print_summary(
        f"{n:,} of {args.samples:,} samples", ["metric", "value", "text", "target", "met"], rows
    )


if __name__ == "__main__":
    main()
