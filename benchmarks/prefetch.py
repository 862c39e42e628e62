"""Does training wait for data? A consumer that trains between windows, with and without prefetch.

A simulated training loop takes one window, then "trains" for a fixed time (sleeps, releasing
the CPU as a GPU step would). When the loader produces windows faster than training uses them,
prefetch should hide all of the data work: the loop's time blocked in ``next()`` after the first
chunk should be near zero. Named baseline in the same run: the same loop with ``prefetch=0``
(reads and tokenization happen in the training thread, between steps).

Run: ``.venv/bin/python benchmarks/prefetch.py [--windows 1500] [--step-ms 4]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import load, scratch

from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.demo.corpus import build_corpus
from mixplane.tokens import load_tokenizer

MIX = {"source=wikipedia": 0.4, "source=stdlib": 0.3, "source=bible": 0.3}


def run(client: Client, tokenizer: object, prefetch: int, windows: int, step: float) -> dict:  # type: ignore[type-arg]
    job = client.submit(f"p{prefetch}", unit="samples", mixture=MIX, chunk_size=200, seed=3)
    stream = WindowStream(job, tokenizer, 2048, prefetch=prefetch)  # type: ignore[arg-type]
    it = iter(stream)
    waits = []
    start = time.perf_counter()
    for _ in range(windows):
        t = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t)
        time.sleep(step)  # the training step
    total = time.perf_counter() - start
    it.close()  # type: ignore[attr-defined]
    first_chunk = max(1, int(np.argmax(np.cumsum(waits) > 0)) + 1)
    steady = np.array(waits[first_chunk:])
    return {
        "total": total,
        "waited": float(steady.sum()),
        "share": float(steady.sum() / total),
        "p99_ms": float(np.percentile(steady, 99) * 1e3),
        "starved": stream.stats.waits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1500)
    parser.add_argument("--step-ms", type=float, default=4.0)
    args = parser.parse_args()
    with scratch("mixplane-prefetch-") as work:
        parts = build_corpus(work / "corpus")
        with Client.local(work / "home") as client:
            for part in parts:
                part.register(client.catalog, progress=False)
            tokenizer = load_tokenizer("deepseek")
            print(f"load {load()}; {args.windows} windows of 2048 tokens, step {args.step_ms} ms")
            rows = {}
            for prefetch in (2, 0, 2, 0):
                r = run(client, tokenizer, prefetch, args.windows, args.step_ms / 1e3)
                rows.setdefault(prefetch, []).append(r)
                print(
                    f"  prefetch={prefetch}: total {r['total']:.2f} s, blocked after the first "
                    f"chunk {r['waited']:.3f} s ({100 * r['share']:.1f}% of the loop), p99 wait "
                    f"{r['p99_ms']:.2f} ms, consumer found nothing ready {r['starved']} times"
                )
            print("\n| prefetch | loop time (s) | time blocked on data | p99 wait (ms) |")
            print("| --- | --- | --- | --- |")
            for prefetch, runs in rows.items():
                best = min(runs, key=lambda r: r["share"])
                print(
                    f"| {prefetch} | {best['total']:.2f} | {100 * best['share']:.1f}% | "
                    f"{best['p99_ms']:.2f} |"
                )


if __name__ == "__main__":
    main()
