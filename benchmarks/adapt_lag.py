"""Adaptation lag: from a feedback call that changes the weights to the first window drawn under
them, in windows and in training steps, and what it costs in throughput.

A simulated training loop on the demo corpus (real text, DeepSeek tokenizer, windows of 2,048
tokens, ``--batch`` windows a step, prefetch on as by default) drives an adaptive job
(``loss-proportional``, new weights every ``--interval`` steps). For each change the lag is the
number of windows the trainer takes after the feedback call that made it until the first window
whose chunk was planned under it (``mixture_version``). Throughput: windows/s of the same loop
with no simulated training time, where data is the bottleneck.

Compared side by side: the token chunks the docs recommended before (500,000 tokens, a new
mixture applying from the first chunk not planned yet, prefetch unbounded by consumption) and
this version's adaptive default (65,536-token chunks, ``read_ahead=1``, changes landing at the
consumed frontier). ``--before PATH`` also runs the loop with the package at PATH (a checkout
of an older commit) in a child process, for the lag of the old code at each chunk size.

Run: ``.venv/bin/python benchmarks/adapt_lag.py [--steps 300] [--batch 8] [--before PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SEQ = 2048
MIX = {"inferred": ["domain"]}


def loop(
    home: Path, chunk_size: int, steps: int, batch: int, interval: int, step_s: float
) -> dict[str, Any]:
    """One run of the training loop; lags in windows and throughput (see the module)."""
    from mixplane.client import Client
    from mixplane.client.windows import WindowStream
    from mixplane.tokens import load_tokenizer

    tokenizer = load_tokenizer("deepseek")
    with Client.local(home) as client:
        job = client.submit(
            f"lag-{chunk_size}-{step_s}",
            mixture=MIX,
            unit="tokens",
            chunk_size=chunk_size,
            tokenizer=tokenizer,
            block_size=1,
            seed=1,
            algorithm="loss-proportional",
            algorithm_options={"interval": interval, "mix": 0.5},
        )
        k = job.num_components
        stream = WindowStream(job, tokenizer, SEQ)
        it = iter(stream)
        pending: list[tuple[int, int]] = []  # (version, windows taken when it was made)
        lags: list[int] = []
        taken = 0
        start = time.perf_counter()
        for step in range(1, steps + 1):
            tokens = np.zeros(k)
            for _ in range(batch):
                window = next(it)
                taken += 1
                j = stream.state_dict()["stream"]["j"]
                index = job.assignment.chunk(0, j)[0]
                version = job.chunk(index).mixture_version  # type: ignore[union-attr]
                tokens[window.component] += SEQ
                while pending and version >= pending[0][0]:
                    lags.append(taken - pending[0][1])
                    pending.pop(0)
            loss = tokens * (2.0 + np.arange(k) * 0.1 + np.random.default_rng(step).random(k))
            if job.feedback(step, loss, tokens) is not None:
                pending.append((len(job.mixture_log) - 1, taken))
            if step_s:
                time.sleep(step_s)
        elapsed = time.perf_counter() - start
        it.close()  # type: ignore[attr-defined]
    return {
        "chunk_size": chunk_size,
        "windows": taken,
        "windows_per_s": taken / elapsed,
        "changes": len(lags) + len(pending),
        "lag_windows": lags,
    }


def run_here(args: argparse.Namespace, home: Path) -> list[dict[str, Any]]:
    out = []
    for chunk_size in args.chunk_sizes:
        lagged = loop(home, chunk_size, args.steps, args.batch, args.interval, args.step_ms / 1e3)
        fast = loop(home, chunk_size, args.steps // 2, args.batch, args.interval, 0.0)
        out.append({**lagged, "windows_per_s": fast["windows_per_s"]})
    return out


def summarize(label: str, rows: list[dict[str, Any]], batch: int) -> None:
    for r in rows:
        lags = np.asarray(r["lag_windows"], dtype=float)
        if not len(lags):
            print(f"| {label} | {r['chunk_size']:,} | - | - | - | {r['windows_per_s']:.1f} |")
            continue
        print(
            f"| {label} | {r['chunk_size']:,} | {np.median(lags):.0f} ({np.median(lags) / batch:.1f}) | "
            f"{lags.max():.0f} ({lags.max() / batch:.1f}) | {len(lags)} | {r['windows_per_s']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8, help="windows per training step")
    parser.add_argument("--interval", type=int, default=10, help="steps between weight changes")
    parser.add_argument("--step-ms", type=float, default=20.0, help="simulated training step")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[500_000, 65_536])
    parser.add_argument("--before", type=Path, help="an older checkout to compare with")
    parser.add_argument("--home", type=Path, help="(internal) a registered demo corpus")
    parser.add_argument("--json", action="store_true", help="(internal) print rows as JSON")
    args = parser.parse_args()
    if args.home is not None:  # a child run with another checkout
        print(json.dumps(run_here(args, args.home)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import load, scratch

    from mixplane.client import Client
    from mixplane.demo.corpus import build_corpus

    with scratch("mixplane-lag-") as work:
        parts = build_corpus(work / "corpus")
        with Client.local(work / "home") as client:
            for part in parts:
                part.register(client.catalog, progress=False)
        print(f"load {load()}; {args.steps} steps of {args.batch} windows of {SEQ} tokens")
        now = run_here(args, work / "home")
        before = None
        if args.before is not None:
            env = {**os.environ, "PYTHONPATH": str(args.before)}
            child = [sys.executable, __file__, "--home", str(work / "home"), "--steps"]
            child += [str(args.steps), "--batch", str(args.batch), "--interval"]
            child += [str(args.interval), "--step-ms", str(args.step_ms), "--chunk-sizes"]
            child += [str(c) for c in args.chunk_sizes]
            done = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
            before = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"load {load()}")
    print(
        "\n| code | chunk (tokens) | lag, median: windows (steps) | lag, max | changes | windows/s (no training) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    if before is not None:
        summarize("before", before, args.batch)
    summarize("this version", now, args.batch)


if __name__ == "__main__":
    main()
