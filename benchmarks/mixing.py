"""Mixing accuracy on the real demo corpus: token-share error per budget mode, and how evenly
components are spread over consecutive samples.

1. Token budgets: a job over the demo corpus (eight sources, four languages, real text) asks for
   a mixture in tokens. Realized shares are measured with the *true* token counts of a real
   tokenizer (a byte-level BPE trained on the corpus) after every chunk, for three ways of
   planning: exact counts (``count_tokens``), a bytes-per-token ratio sampled per component,
   and a fixed 4 bytes per token. Baseline: the same mixture planned in samples (what a
   sample-count mixer such as Mixtera's default delivers in tokens).
2. Spread: the worst deviation of any component's share over every window of 100 consecutive
   samples of a consumer's stream (the public Mixtera implementation reaches 0.60 in its
   default mode, which emits whole per-component blocks).
3. Through the packer: the token windows (``WindowStream``, seq_len 2048) of the exact-count and
   the sampled-ratio jobs, tokenized for real, until 10 M tokens: each component's share of the
   windows' tokens against the mixture, and the worst deviation of any component's share over
   every span of 32 consecutive windows (a batch; each window holds one component, so a span's
   shares move in steps of 1/32).

Run: ``.venv/bin/python benchmarks/mixing.py [--tokens 10000000]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np
from common import scratch

from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.demo.corpus import build_corpus
from mixplane.query.result import expand_runs
from mixplane.tokens import train_bpe

MIX = {
    "source=wikipedia": 0.2,
    "source=stdlib": 0.2,
    "source=reviews": 0.15,
    "source=peoples_daily": 0.15,
    "source=bible": 0.1,
    "source=lee": 0.1,
    "source=pydoc": 0.1,
}


def true_sizes(client: Client, fingerprint: str) -> dict[tuple[int, int], int]:
    runs = client.catalog.components().runs
    counts = client.catalog.sample_tokens(runs, fingerprint)
    assert counts is not None
    files, ordinals = expand_runs(
        runs.column("file_id").to_numpy(),
        runs.column("start").to_numpy(),
        runs.column("count").to_numpy(),
    )
    return dict(
        zip(zip(files.tolist(), ordinals.tolist(), strict=True), counts.tolist(), strict=True)
    )


def share_error(job, sizes: dict[tuple[int, int], int], tokens: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Worst |realized token share - target| (percentage points) once ``tokens`` are planned."""
    selectors = [c.selector for c in job.result.components]
    totals = np.zeros(len(selectors))
    for spec in job.plan(10**9):
        for comp, f, s, n in zip(
            spec.components.tolist(),
            spec.files.tolist(),
            spec.starts.tolist(),
            spec.lengths.tolist(),
            strict=True,
        ):
            totals[comp] += sum(sizes[(f, o)] for o in range(s, s + n))
        if totals.sum() >= tokens:
            break
    shares = totals / totals.sum()
    worst = max(abs(shares[selectors.index(sel)] - w) for sel, w in MIX.items())
    return 100 * worst, int(totals.sum())


def spread(job, n: int) -> float:  # type: ignore[no-untyped-def]
    comps = np.array([s.component for s in itertools.islice(job.stream(), n)])
    target = np.bincount(comps, minlength=len(job.result.components)) / len(comps)
    worst = 0.0
    window = np.zeros(len(target))
    for i, c in enumerate(comps):
        window[c] += 1
        if i >= 100:
            window[comps[i - 100]] -= 1
        if i >= 99:
            worst = max(worst, float(np.abs(window / 100 - target).max()))
    return worst


def window_shares(job, tokenizer, tokens: int, seq_len: int = 2048, span: int = 32):  # type: ignore[no-untyped-def]
    """(worst |share - target| in pp over the windows' tokens, tokens, worst span deviation)."""
    selectors = [c.selector for c in job.result.components]
    target = np.zeros(len(selectors))
    for sel, w in MIX.items():
        target[selectors.index(sel)] = w
    comps = []
    for window in WindowStream(job, tokenizer, seq_len):
        comps.append(window.component)
        if len(comps) * seq_len >= tokens:
            break
    series = np.array(comps)
    shares = np.bincount(series, minlength=len(selectors)) / len(series)
    onehot = np.eye(len(selectors))[series]
    sums = np.cumsum(np.vstack([np.zeros(len(selectors)), onehot]), axis=0)
    spans = (sums[span:] - sums[:-span]) / span
    deviation = np.abs(spans - target).max(axis=1)
    return (
        100 * float(np.abs(shares - target).max()),
        len(series) * seq_len,
        (float(deviation.max()), float(deviation.mean())),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--spread-samples", type=int, default=20_000)
    parser.add_argument(
        "--window-chunk", type=int, default=500_000, help="chunk size (tokens) of the window runs"
    )
    args = parser.parse_args()
    with scratch("mixplane-mixing-") as work:
        start = time.perf_counter()
        parts = build_corpus(work / "corpus")
        with Client.local(work / "home") as client:
            for part in parts:
                part.register(client.catalog, progress=False)
            texts = client.catalog.sample_texts(
                client.catalog.components().runs, np.arange(0, 8000, 4)
            )
            tokenizer = train_bpe(texts, vocab_size=4000)
            # submitted before count_tokens: no stored counts, so the job samples a ratio
            sampled = client.submit(
                "sampled",
                mixture=MIX,
                unit="tokens",
                chunk_size=20_000,
                seed=1,
                tokenizer=tokenizer,
            )
            sampled_windows = client.submit(
                "sampled-windows",
                mixture=MIX,
                unit="tokens",
                chunk_size=args.window_chunk,
                seed=1,
                tokenizer=tokenizer,
            )
            assert set(sampled.token_source.values()) == {"sampled"}
            client.catalog.count_tokens(tokenizer, progress=False)
            sizes = true_sizes(client, tokenizer.fingerprint)
            print(
                f"corpus + tokenizer + counts ready in {time.perf_counter() - start:.1f} s; "
                f"{sum(sizes.values()):,} tokens in {len(sizes):,} samples; load {os.getloadavg()}"
            )
            print(f"\n## token shares after {args.tokens:,} tokens (worst |realized - target|)")
            rows = []
            for label, kwargs in (
                ("exact counts (count_tokens)", {"unit": "tokens", "tokenizer": tokenizer}),
                ("sampled bytes/token ratio", {"unit": "tokens", "sampled": True}),
                ("fixed 4 bytes per token", {"unit": "tokens", "bytes_per_token": 4.0}),
                ("baseline: mixture in samples", {"unit": "samples"}),
            ):
                kw = dict(kwargs)
                if kw.pop("sampled", False):
                    job = sampled
                else:
                    chunk = 20_000 if kw["unit"] == "tokens" else 60
                    job = client.submit(label, mixture=MIX, chunk_size=chunk, seed=1, **kw)
                t = time.perf_counter()
                error, planned = share_error(job, sizes, args.tokens)
                rows.append((label, error, planned, time.perf_counter() - t))
                print(f"  {label:<32} {error:6.3f} pp  ({planned:,} tokens, {rows[-1][3]:.1f} s)")
            print("\n## spread over windows of 100 consecutive samples (worst share deviation)")
            job = client.submit("spread", unit="samples", mixture=MIX, chunk_size=1000, seed=1)
            worst = spread(job, args.spread_samples)
            print(f"  mixplane (interleaved chunks of 1000): {worst:.3f}  (Mixtera default: 0.60)")
            print(f"\n## through the packer: windows of 2048 tokens until {args.tokens:,} tokens")
            print("   (a span of 32 windows moves in steps of 1/32 = 3.1 pp per component)")
            packed = []

            def exact_windows(chunk: int):  # type: ignore[no-untyped-def]
                return client.submit(
                    f"exact-windows-{chunk}",
                    mixture=MIX,
                    unit="tokens",
                    chunk_size=chunk,
                    seed=1,
                    tokenizer=tokenizer,
                )

            big = args.window_chunk
            for label, job in (
                (f"exact counts, chunks of {big:,} tokens", exact_windows(big)),
                (f"sampled ratio, chunks of {big:,} tokens", sampled_windows),  # made uncounted
                ("exact counts, chunks of 20,000 tokens", exact_windows(20_000)),
            ):
                t = time.perf_counter()
                error, streamed, worst_span = window_shares(job, tokenizer, args.tokens)
                packed.append((label, error, streamed, worst_span))
                print(
                    f"  {label:<40} {error:6.3f} pp over {streamed:,} tokens; share deviation "
                    f"over 32 windows: worst {worst_span[0]:.3f}, mean {worst_span[1]:.3f} "
                    f"({time.perf_counter() - t:.1f} s)"
                )
            print("\n| measure | value |\n| --- | --- |")
            for label, error, planned, _ in rows:
                print(f"| token share error, {label} | {error:.3f} pp after {planned:,} tokens |")
            print(f"| worst share deviation over 100-sample windows | {worst:.3f} |")
            for label, error, streamed, worst_span in packed:
                print(
                    f"| windows' token share error, {label} | {error:.3f} pp after "
                    f"{streamed:,} tokens; over 32 windows worst {worst_span[0]:.3f}, "
                    f"mean {worst_span[1]:.3f} |"
                )


if __name__ == "__main__":
    main()
