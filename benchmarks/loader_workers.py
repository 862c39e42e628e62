"""``TokenWindowDataset`` + ``collate_windows`` in one process and through 2 DataLoader worker
processes, against the previous item and collate code (kept below as the baseline), side by
side in one run (issue 16, docs/benchmarks.md "Peers", item 2).

Corpus: ``benchmarks/pretokenized.py``'s generated Megatron-Core datasets (four sources, int32
ids, ``--tokens`` ids each), registered with the ``deepseek`` tokenizer, so no text is
tokenized. One job (token shares 0.4/0.3/0.2/0.1, ``Topology(workers=2)``); every run starts
from its snapshot, so every run streams the same windows.

Paths: ``baseline`` is the code before the fix (per window four int64 tensors, ``cu_seqlens``
and a ``component`` tensor; the collate stacks each field: six tensors per batch, each its own
shared-memory segment through the DataLoader's queue); ``now`` is the package's
``window_tensors`` / ``collate_windows`` (one buffer per batch, sent as one segment); with
workers also ``views``, the same buffer but the batch as a plain dict (the views are passed as
one segment, ``cu_seqlens`` as a second: what ``SharedBatch`` saves). Modes: one
process (``num_workers=0``) and 2 worker processes, batches of 8 and 64 windows; and, less noisy, the
items and the collate alone over 1,024 windows held in memory (no stream, no DataLoader;
``3 x --repeat`` runs). Each loader cell runs ``--repeat`` times, the paths in turn; M tokens/s
from the first batch to the last (the job's start apart), medians, and the medians of the
per-round ratios. Both paths' batches are checked
equal (keys, dtypes, shapes, values) on the first batches of every configuration.

Usage::

    .venv/bin/python benchmarks/loader_workers.py [--tokens 3000000] [--windows 2048] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import pretokenized
from benchmarks.common import load, scratch

SEQ = 2048


# -- the baseline: the item and collate code before the fix ---------------------------------


def baseline_window_tensors(window: Any) -> dict[str, Any]:
    import torch

    from mixplane.integrations.pytorch import FIELDS

    out = {name: torch.from_numpy(getattr(window, name).astype(np.int64)) for name in FIELDS}
    out["cu_seqlens"] = torch.from_numpy(np.ascontiguousarray(window.cu_seqlens, dtype=np.int32))
    out["component"] = torch.tensor(window.component, dtype=torch.int64)
    return out


def baseline_collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from mixplane.integrations.pytorch import FIELDS

    out: dict[str, Any] = {name: torch.stack([b[name] for b in batch]) for name in FIELDS}
    length = out["input_ids"].shape[1]
    starts = [b["cu_seqlens"][:-1] + i * length for i, b in enumerate(batch)]
    cu = torch.cat([*starts, torch.tensor([len(batch) * length], dtype=torch.int32)])
    out["cu_seqlens"] = cu.to(torch.int32)
    out["max_seqlen"] = int((cu[1:] - cu[:-1]).max())
    out["component"] = torch.stack([b["component"] for b in batch])
    return out


def plain_views(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``collate_windows`` returning a plain dict (views of the one buffer, ``cu_seqlens`` a
    tensor of its own): what one buffer without ``SharedBatch`` sends."""
    from mixplane.integrations.pytorch import collate_windows

    return dict(collate_windows(batch))


def dataset(snapshot: Any, tok: Any, batch: int, *, baseline: bool) -> Any:
    from mixplane.integrations.pytorch import TokenWindowDataset

    class Baseline(TokenWindowDataset):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            windows = self._windows()
            return (baseline_window_tensors(w) for w in windows)

    kind = Baseline if baseline else TokenWindowDataset
    return kind(snapshot, tok, SEQ, rank=0, world_size=1, batch_size=batch)


def loader(snapshot: Any, tok: Any, batch: int, workers: int, path: str) -> Any:
    import torch

    from mixplane.integrations.pytorch import collate_windows

    collate = {"baseline": baseline_collate, "views": plain_views, "now": collate_windows}[path]
    return torch.utils.data.DataLoader(
        dataset(snapshot, tok, batch, baseline=path == "baseline"),
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate,
    )


def one_run(snapshot: Any, tok: Any, batch: int, workers: int, windows: int, path: str) -> float:
    """M tokens/s from the first batch to the batch that reaches ``windows``."""
    seen = 0
    started = 0.0
    for n, b in enumerate(loader(snapshot, tok, batch, workers, path)):
        if n == 0:
            started = time.perf_counter()
        else:
            seen += b["input_ids"].shape[0]
        if seen + batch > windows:
            break
    return seen * SEQ / (time.perf_counter() - started) / 1e6


def in_memory(batch: int, windows: list[Any], *, baseline: bool) -> float:
    """M tokens/s of items + collate alone over windows already in memory (no stream, no
    DataLoader): the per-window cost of the two paths, less noisy than the loader runs."""
    from mixplane.integrations.pytorch import collate_windows, window_items

    started = time.perf_counter()
    items: Iterator[dict[str, Any]] = (
        (baseline_window_tensors(w) for w in windows) if baseline else window_items(windows, batch)
    )
    collate = baseline_collate if baseline else collate_windows
    while True:
        group = [item for _, item in zip(range(batch), items, strict=False)]
        if not group:
            break
        collate(group)
    return len(windows) * SEQ / (time.perf_counter() - started) / 1e6


def check_same(snapshot: Any, tok: Any, batch: int, workers: int) -> None:
    """The first batches of both paths: the same keys, dtypes, shapes and values."""
    import torch

    runs = [loader(snapshot, tok, batch, workers, path) for path in ("baseline", "now")]
    for n, (old, new) in enumerate(zip(*runs, strict=False)):
        assert type(new) is dict and list(old) == list(new), (list(old), list(new))
        for key in old:
            if isinstance(old[key], torch.Tensor):
                assert old[key].dtype == new[key].dtype and old[key].shape == new[key].shape, key
                assert torch.equal(old[key], new[key]), key
            else:
                assert old[key] == new[key], key
        if n == 3:
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=3_000_000, help="ids per source")
    parser.add_argument("--windows", type=int, default=2048, help="windows per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from mixplane.chunking.assign import Topology
    from mixplane.client import Client
    from mixplane.client.rank import RankWindows
    from mixplane.tokens import load_tokenizer

    torch.set_num_threads(1)
    with scratch("mixplane-loader-workers-") as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretokenized.generate(work / "megatron", args.tokens)
        tok = load_tokenizer("deepseek")
        with Client.local(work / "home") as client:
            client.catalog.register(
                "corpus",
                work / "megatron",
                tokenizer="deepseek",
                path_pattern=r"/(?P<source>[a-z]+)\.bin$",
                progress=False,
            )
            job = client.submit(
                "bench",
                mixture={f"source={s}": w for s, (w, _, _) in pretokenized.SOURCES.items()},
                unit="tokens",
                seed=pretokenized.SEED,
                tokenizer=tok,
                topology=Topology(workers=2),
            )
            snapshot = job.snapshot()
        print(f"torch {torch.__version__}, load {load()}, {args.windows} windows a run")
        kept = list(itertools.islice(RankWindows(snapshot, tok, SEQ, workers=[0]), 1024))
        rows = []
        for batch in (8, 64):
            rates: dict[str, list[float]] = {"baseline": [], "now": []}
            for _ in range(args.repeat * 3):
                for path, got in rates.items():
                    got.append(in_memory(batch, kept, baseline=path == "baseline"))
            rows.append(("items + collate, windows in memory", batch, rates))
        for workers in (0, 2):
            for batch in (8, 64):
                check_same(snapshot, tok, batch, workers)
                rates = {"baseline": [], "now": []} | ({"views": []} if workers else {})
                for _ in range(args.repeat):
                    for path, got in rates.items():
                        got.append(one_run(snapshot, tok, batch, workers, args.windows, path))
                rows.append(("1 process" if workers == 0 else f"{workers} workers", batch, rates))
                print(f"workers={workers} batch={batch}: {rates}", flush=True)
        print(f"\nload {load()}")
        print(
            "| mode | batch | baseline M tok/s | one buffer, plain dict | now M tok/s "
            "| now / baseline | now / plain dict |"
        )
        print("|---|---|---|---|---|---|---|")

        def ratio(rates: dict[str, list[float]], other: str) -> str:
            if other not in rates:
                return "-"
            pairs = zip(rates["now"], rates[other], strict=True)
            return f"{statistics.median(n / o for n, o in pairs):.2f}"

        for mode, batch, rates in rows:
            cells = [
                f"{statistics.median(rates[p]):.1f}" if p in rates else "-"
                for p in ("baseline", "views", "now")
            ]
            print(
                f"| {mode} | {batch} | {' | '.join(cells)} | {ratio(rates, 'baseline')} "
                f"| {ratio(rates, 'views')} |"
            )


if __name__ == "__main__":
    main()
