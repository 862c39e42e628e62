"""Planning benchmark: chunks per second, and resume cost independent of history.

What it measures, in one process:

1. Synthetic component orders (no catalog): 1M samples in 30 components of varied sizes
   (log-uniform, 1.6k to 190k samples), each spread over 3-6 of 16 files in runs of 1-127
   consecutive samples (runs of all components interleaved in the files), shuffled order with
   blocks of 256, and per-sample token sizes (log-normal, mean ~300 tokens, token mode only).
   Weights are drawn from a Dirichlet(1) over the components, so small components go through
   many epochs (``on_exhausted="repeat"``).
2. Throughput: ``Planner.plan()`` for 100k chunks of 1,000 samples, and 20k chunks of 100k
   tokens.
3. Planner resume: for k in (1e3, 1e5), the ``state_dict()`` before chunk k (taken during the
   throughput run) is serialized with msgpack; the restore is timed as: unpack + new ``Planner``
   + ``load_state_dict`` + plan chunk k, on fresh component orders (epoch permutations are
   rebuilt, as after a real restart); the restored chunk is checked equal to the uninterrupted
   one. What chunk k holds (how many draws, epoch crossings) varies its cost by up to ~2x, so
   the figure is the median over restore points k..k+4 of the best of ``--repeat`` restores.
   Named baseline *naive replay*: a planner that re-derives its state by replaying chunks
   0..k-1 from the start, then plans chunk k (what a design that keeps no cursors pays).
4. Whole-job resume through the catalog: a small registered corpus (20k samples, 4 files,
   property ``language``); a job with chunks of 10 samples is streamed for 1e3 and 1e4 chunks;
   ``Job.state_dict`` is msgpack-serialized, and the restore is timed as: unpack + a new
   ``client.submit`` with the same arguments + ``load_state_dict`` + the first sample (checked
   equal to the sample the uninterrupted stream yields next).

Target: restore time after 1e5 chunks / after 1e3 chunks near 1 (no replay of history).

Usage::

    .venv/bin/python benchmarks/plan.py [--chunks 100000] [--token-chunks 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson
from common import load, print_summary, scratch

from mixplane.chunking.order import ComponentOrder
from mixplane.chunking.planner import Planner
from mixplane.chunking.spec import ChunkSpec, Unit
from mixplane.client import Client

SAMPLES = 1_000_000
COMPONENTS = 30
FILES = 16
SAMPLE_CHUNK = 1_000
TOKEN_CHUNK = 100_000
RESUME_AT = (1_000, 100_000)
RESUME_POINTS = 5  # restore at k, k+1, ..., k+4: what chunk k holds varies the cost of planning it
JOB_RESUME_AT = (1_000, 10_000)
JOB_CHUNK = 10
JOB_SAMPLES = 20_000
JOB_MIXTURE = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
RATIO_TARGET = 1.5  # "near 1": restore after 100x more history costs at most 1.5x


# -- synthetic components ----------------------------------------------------------------------


def component_sizes(rng: np.random.Generator) -> np.ndarray:
    raw = np.exp(rng.uniform(np.log(1), np.log(100), COMPONENTS))
    sizes = np.floor(raw / raw.sum() * SAMPLES).astype(np.int64)
    sizes[np.argmax(sizes)] += SAMPLES - sizes.sum()
    return sizes


def layout(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Runs (files, starts, counts) and token sizes of each component, files interleaved."""
    rng = np.random.default_rng(seed)
    sizes = component_sizes(rng)
    runs_comp, runs_file, runs_count = [], [], []
    for c, size in enumerate(sizes.tolist()):
        lengths = rng.integers(1, 128, size // 32 + 2)
        cum = np.cumsum(lengths)
        lengths = lengths[: np.searchsorted(cum, size) + 1]
        lengths[-1] -= int(lengths.sum()) - size
        homes = rng.choice(FILES, rng.integers(3, 7), replace=False)
        runs_comp.append(np.full(len(lengths), c))
        runs_file.append(homes[rng.integers(0, len(homes), len(lengths))])
        runs_count.append(lengths)
    comp = np.concatenate(runs_comp)
    file = np.concatenate(runs_file)
    count = np.concatenate(runs_count).astype(np.int64)
    # lay the runs out: a random global order, then consecutive ordinals within each file
    perm = rng.permutation(len(comp))
    comp, file, count = comp[perm], file[perm], count[perm]
    start = np.zeros(len(comp), dtype=np.int64)
    for f in range(FILES):
        mine = np.flatnonzero(file == f)
        start[mine] = np.concatenate(([0], np.cumsum(count[mine])[:-1]))
    out = []
    for c in range(COMPONENTS):
        mine = np.flatnonzero(comp == c)
        n = int(count[mine].sum())
        tokens = np.maximum(rng.lognormal(np.log(220), 0.8, n), 1).astype(np.int64)
        out.append(
            {
                "files": file[mine].astype(np.int32),
                "starts": start[mine],
                "counts": count[mine],
                "sizes": tokens,
            }
        )
    return out


def orders(parts: list[dict[str, np.ndarray]], *, tokens: bool) -> list[ComponentOrder]:
    """Fresh component orders (empty epoch caches)."""
    return [
        ComponentOrder(
            key=f"component={c}",
            files=p["files"],
            starts=p["starts"],
            counts=p["counts"],
            seed=11,
            sizes=p["sizes"] if tokens else None,
        )
        for c, p in enumerate(parts)
    ]


def planner(
    parts: list[dict[str, np.ndarray]], weights: np.ndarray, unit: Unit, chunk_size: int
) -> Planner:
    return Planner(
        orders(parts, tokens=unit == "tokens"), weights, unit=unit, chunk_size=chunk_size
    )


# -- measurements ------------------------------------------------------------------------------


def throughput(parts: list[dict[str, np.ndarray]], weights: np.ndarray, unit: Unit,
               chunk_size: int, chunks: int) -> tuple[float, int]:  # fmt: skip
    """(seconds, samples planned) for ``chunks`` chunks from a fresh planner."""
    seconds, (planned, _) = timed_with_snapshots(parts, weights, unit, chunk_size, chunks, ())
    return seconds, planned


def timed_with_snapshots(
    parts: list[dict[str, np.ndarray]],
    weights: np.ndarray,
    unit: Unit,
    chunk_size: int,
    chunks: int,
    at: tuple[int, ...],
) -> tuple[float, tuple[int, dict[int, tuple[bytes, ChunkSpec]]]]:
    """Plan ``chunks`` chunks from a fresh planner (timed) and, for each k in ``at``, the planner
    state before chunk k (msgpack) with chunk k itself; planning goes on past ``chunks`` untimed
    if some k needs it. Taking a state costs microseconds, a chunk a millisecond."""
    p = planner(parts, weights, unit, chunk_size)
    wanted = set(at)
    states: dict[int, Any] = {}
    specs: dict[int, ChunkSpec] = {}
    gc.collect()
    start = time.perf_counter()
    seconds = 0.0
    total = 0
    for k in range(max(chunks, max(at, default=-1) + 1)):
        if k == chunks:
            seconds = time.perf_counter() - start
        if k in wanted:
            states[k] = p.state_dict()
        spec = p.plan()
        assert spec is not None
        if k in wanted:
            specs[k] = spec
        if k < chunks:
            total += spec.num_samples
    if chunks >= max(at, default=-1) + 1:
        seconds = time.perf_counter() - start
    snapshots = {k: (msgpack.packb(states[k]), specs[k]) for k in at}
    return seconds, (total, snapshots)


def restore_mixplane(
    parts: list[dict[str, np.ndarray]], weights: np.ndarray, blob: bytes
) -> tuple[float, ChunkSpec]:
    fresh = orders(parts, tokens=False)  # outside the timer: a restart rebuilds these anyway
    gc.collect()
    start = time.perf_counter()
    p = Planner(fresh, weights, unit="samples", chunk_size=SAMPLE_CHUNK)
    p.load_state_dict(msgpack.unpackb(blob))
    spec = p.plan()
    seconds = time.perf_counter() - start
    assert spec is not None
    return seconds, spec


def restore_naive(
    parts: list[dict[str, np.ndarray]], weights: np.ndarray, k: int
) -> tuple[float, ChunkSpec]:
    """The baseline: replay chunks 0..k-1 to re-derive the cursors, then plan chunk k."""
    fresh = orders(parts, tokens=False)
    gc.collect()
    start = time.perf_counter()
    p = Planner(fresh, weights, unit="samples", chunk_size=SAMPLE_CHUNK)
    for _ in range(k):
        p.plan()
    spec = p.plan()
    seconds = time.perf_counter() - start
    assert spec is not None
    return seconds, spec


def job_corpus(directory: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    languages = np.array(["en", "de", "fr"])[rng.integers(0, 3, JOB_SAMPLES)].tolist()
    paths = []
    per_file = JOB_SAMPLES // 4
    for f in range(4):
        path = directory / f"small-{f}.jsonl"
        with path.open("wb") as out:
            for i in range(f * per_file, (f + 1) * per_file):
                out.write(
                    orjson.dumps(
                        {"id": i, "text": f"sample {i} " * 8, "meta": {"language": languages[i]}},
                        option=orjson.OPT_APPEND_NEWLINE,
                    )
                )
        paths.append(path)
    return paths


def job_resume(client: Client, k: int, repeat: int) -> tuple[list[float], int, float]:
    """Stream k chunks, save, restore ``repeat`` times: (restore seconds, state bytes, stream s)."""

    def submit() -> Any:
        return client.submit(
            "resume", unit="samples", mixture=JOB_MIXTURE, chunk_size=JOB_CHUNK, seed=5
        )

    job = submit()
    stream = iter(job.stream(0, 0, 0))
    start = time.perf_counter()
    for _ in range(k * JOB_CHUNK):
        next(stream)
    streamed = time.perf_counter() - start
    blob = msgpack.packb(job.state_dict())
    expected = next(stream)
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        restored = submit()
        restored.load_state_dict(msgpack.unpackb(blob))
        first = next(iter(restored.stream(0, 0, 0)))
        times.append(time.perf_counter() - start)
        got = (first.chunk, first.file_id, first.ordinal)
        assert got == (expected.chunk, expected.file_id, expected.ordinal), (got, expected)
    return times, len(blob), streamed


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="sample-mode chunks planned")
    parser.add_argument("--token-chunks", type=int, default=20_000, help="token-mode chunks")
    parser.add_argument("--repeat", type=int, default=5, help="restores timed (median kept)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp folder")
    args = parser.parse_args()
    if min(args.chunks, args.token_chunks, args.repeat) < 1:
        parser.error("--chunks, --token-chunks and --repeat must be at least 1")
    print(
        f"mixplane plan benchmark: {SAMPLES:,} samples in {COMPONENTS} components over {FILES} "
        f"files, {os.cpu_count()} CPUs, python {platform.python_version()}, numpy "
        f"{np.__version__}; load average {load()}"
    )
    with scratch("mixplane-plan-", args.workdir) as workdir:
        run(args, workdir)


def run(args: argparse.Namespace, workdir: Path) -> None:
    parts = layout()
    weights = np.random.default_rng(1).dirichlet(np.ones(COMPONENTS))
    sizes = np.array([len(p["sizes"]) for p in parts])
    runs = sum(len(p["counts"]) for p in parts)
    print(
        f"components: {sizes.min():,} to {sizes.max():,} samples, {runs:,} runs; weight / natural "
        f"share from {(weights / (sizes / SAMPLES)).min():.2f} to "
        f"{(weights / (sizes / SAMPLES)).max():.2f}"
    )

    print("\n## Planning throughput")
    seconds, (planned, snapshots) = timed_with_snapshots(
        parts,
        weights,
        "samples",
        SAMPLE_CHUNK,
        args.chunks,
        tuple(k + i for k in RESUME_AT for i in range(RESUME_POINTS)),
    )
    sample_rate = args.chunks / seconds
    print(
        f"  samples mode, chunk {SAMPLE_CHUNK:,} samples: {args.chunks:,} chunks in "
        f"{seconds:.2f} s = {sample_rate:,.0f} chunks/s ({planned / seconds:,.0f} samples/s "
        f"planned)  load {load()}"
    )
    token_seconds, token_planned = throughput(
        parts, weights, "tokens", TOKEN_CHUNK, args.token_chunks
    )
    token_rate = args.token_chunks / token_seconds
    print(
        f"  tokens mode, chunk {TOKEN_CHUNK:,} tokens: {args.token_chunks:,} chunks in "
        f"{token_seconds:.2f} s = {token_rate:,.0f} chunks/s ({token_planned / token_seconds:,.0f} "
        f"samples/s planned)  load {load()}"
    )

    print("\n## Planner resume (mixplane restore vs naive replay)")
    restore: dict[int, float] = {}
    naive: dict[int, float] = {}
    state_bytes: dict[int, int] = {}
    for k in RESUME_AT:
        state_bytes[k] = len(snapshots[k][0])
        points = []  # per restore point k+i: the best of --repeat restores
        for i in range(RESUME_POINTS):
            blob, expected = snapshots[k + i]  # taken during the throughput run above
            times = []
            for _ in range(args.repeat):
                seconds, spec = restore_mixplane(parts, weights, blob)
                assert spec == expected, k + i
                times.append(seconds)
            points.append(min(times))
        restore[k] = statistics.median(points)
        seconds, spec = restore_naive(parts, weights, k)
        assert spec == snapshots[k][1], k
        naive[k] = seconds
        print(
            f"  k={k:>7,}: state {state_bytes[k]:,} bytes (msgpack); restore {ms(restore[k])} "
            f"(median over chunks k..k+{RESUME_POINTS - 1} of the best of {args.repeat}; range "
            f"{ms(min(points))} to {ms(max(points))}); naive replay {ms(naive[k])}; "
            f"mixplane/naive {restore[k] / naive[k]:.5f}  load {load()}"
        )
    small, large = RESUME_AT
    ratio = restore[large] / restore[small]
    naive_ratio = naive[large] / naive[small]
    print(
        f"  restore after {large:,} / after {small:,} chunks: mixplane {ratio:.2f}, "
        f"naive replay {naive_ratio:.1f}"
    )

    print(f"\n## Whole-job resume through the catalog ({JOB_SAMPLES:,} samples, chunk {JOB_CHUNK})")
    paths = job_corpus(workdir)
    job_restore: dict[int, float] = {}
    job_bytes: dict[int, int] = {}
    with Client.local(workdir / "home") as client:
        client.catalog.register(
            "small", paths, properties={"language": "meta.language"}, progress=False
        )
        for k in JOB_RESUME_AT:
            times, nbytes, streamed = job_resume(client, k, args.repeat)
            job_restore[k] = statistics.median(times)
            job_bytes[k] = nbytes
            print(
                f"  k={k:>6,} chunks ({k * JOB_CHUNK:,} samples streamed in {streamed:.2f} s): "
                f"state {nbytes:,} bytes; restore median {ms(job_restore[k])} (min "
                f"{ms(min(times))}, max {ms(max(times))})  load {load()}"
            )
    job_small, job_large = JOB_RESUME_AT
    job_ratio = job_restore[job_large] / job_restore[job_small]
    print(f"  restore after {job_large:,} / after {job_small:,} chunks: {job_ratio:.2f}")

    rows = [
        (f"planning, samples mode (chunk {SAMPLE_CHUNK:,} samples, {args.chunks:,} chunks)",
         f"{sample_rate:,.0f} chunks/s", "-", None),
        (f"planning, tokens mode (chunk {TOKEN_CHUNK:,} tokens, {args.token_chunks:,} chunks)",
         f"{token_rate:,.0f} chunks/s", "-", None),
    ] + [
        (f"planner state after {k:,} chunks (msgpack)", f"{state_bytes[k]:,} bytes", "-", None)
        for k in RESUME_AT
    ] + [
        (f"planner restore after {k:,} chunks: mixplane / naive replay",
         f"{ms(restore[k])} / {ms(naive[k])} ({restore[k] / naive[k]:.5f})", "-", None)
        for k in RESUME_AT
    ] + [
        (f"planner restore ratio {large:,} / {small:,} chunks", f"{ratio:.2f} (naive "
         f"{naive_ratio:.1f})", "near 1 (<= 1.5)", ratio <= RATIO_TARGET),
    ] + [
        (f"job restore after {k:,} chunks (state {job_bytes[k]:,} bytes)", ms(job_restore[k]),
         "-", None)
        for k in JOB_RESUME_AT
    ] + [
        (f"job restore ratio {job_large:,} / {job_small:,} chunks", f"{job_ratio:.2f}",
         "near 1 (<= 1.5)", job_ratio <= RATIO_TARGET),
        ("load average (1/5/15 min) at end", load(), "-", None),
    ]  # fmt: skip
    print_summary("planning and resume", ["metric", "value", "target", "met"], rows)


if __name__ == "__main__":
    main()
