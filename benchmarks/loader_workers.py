"""``TokenWindowDataset`` + ``collate_windows`` through 2 DataLoader worker processes and in one
process, against a candidate that sends a worker's batch *compact* (kept below: tried for issue
16 and not kept in the package, docs/benchmarks.md "Peers", item 2), side by side in one run.

Corpus: ``benchmarks/pretokenized.py``'s generated Megatron-Core datasets (four sources, int32
ids, ``--tokens`` ids each), registered with the ``deepseek`` tokenizer, so no text is
tokenized. One job (token shares 0.4/0.3/0.2/0.1, ``Topology(workers=2)``); every run starts
from its snapshot, so every run streams the same windows.

Paths: ``segment`` (the package): in a worker the items of a block are rows of one int64 buffer
in shared memory (four int64 fields per token) and the batch travels as that one segment
(``SharedBatch``). ``compact`` (the candidate): the four int64 fields of a packed batch are
redundant (``labels`` are ``input_ids`` shifted by one, ``domain_ids`` repeat the component,
``position_ids`` count from each segment start), so the worker's batch, checked when it is
pickled, travels as ``[B, seq_len + 1]`` int32 ids, the segment starts and the components
(1/8 of the bytes, in a new shared-memory segment when over 64 KiB) and the main process
rebuilds the int64 fields when it unpickles it; a batch that fails a check (padding, edited
labels, ids beyond int32) travels as its buffer. The worker's items own private memory (one
buffer per window: an item pickled as it is, by another collate or ``batch_size=None``, must
not move memory a later item is written to), so its collate copies them into a private batch
buffer. In one process both paths run the package's code but for the items.

Measured: (1) a worker's milliseconds per batch for 1,024 windows already in memory (items,
collate and the pickling that hands the batch to the queue), in a DataLoader worker process;
(2) the loaders, batches of 8 and 64, ``--repeat`` rounds, the paths in turn: M tokens/s from
the first batch to the last and the main process's CPU seconds per M tokens
(``time.process_time``: the trainer's process pays the rebuild), medians and the median of the
per-round ratios. Both paths' batches are checked equal (keys, dtypes, shapes, values) on the
first batches of every configuration.

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
import torch
from torch.utils.data import get_worker_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import pretokenized
from benchmarks.common import load, scratch
from mixplane.errors import PlanError
from mixplane.integrations.pytorch import FIELDS, INLINE_BYTES, rows_of_one_buffer, window_items

SEQ = 2048
_INT32 = np.iinfo(np.int32)


# -- the candidate: a worker's batch sent compact, rebuilt in the main process ----------------


def compact_collate_windows(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack windows into a batch: ``[B, seq_len]`` token fields, ``component`` ``[B]``, and
    ``cu_seqlens`` over the flattened batch (each window's document starts shifted by its
    offset, then ``B * seq_len``) with ``max_seqlen``, for variable-length attention.

    The token fields and ``component`` are views of one buffer: the items' own buffer when
    they are its consecutive rows (``TokenWindowDataset``'s items in one process, batches
    aligned with its blocks: no copy), else a new one they are copied into. In a DataLoader
    worker process the batch is a ``CompactSharedBatch``: it reaches the main process compact or as
    one shared-memory segment (see the module), as the plain dict the in-process collate
    gives."""
    if not batch:
        msg = "compact_collate_windows got an empty batch"
        raise PlanError(msg)
    size = len(batch)
    length = int(batch[0]["input_ids"].shape[0])
    found = rows_of_one_buffer(batch)
    buffer, views = compact_copied(batch) if found is None else found
    parts = [b["cu_seqlens"].numpy() for b in batch]
    cu = np.empty(sum(len(c) - 1 for c in parts) + 1, dtype=np.int32)
    at = 0
    for i, c in enumerate(parts):
        cu[at : at + len(c) - 1] = c[:-1] + i * length
        at += len(c) - 1
    cu[at] = size * length
    out: dict[str, Any] = {name: views[name] for name in FIELDS}
    out["cu_seqlens"] = torch.from_numpy(cu)
    out["max_seqlen"] = int(np.diff(cu).max())
    out["component"] = views["component"]
    return CompactSharedBatch(out, buffer, views) if get_worker_info() is not None else out


def compact_copied(
    batch: Sequence[dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A new buffer with the items' fields stacked in it (numpy row copies: ~5x faster than
    ``torch.stack(..., out=)`` for 64 windows of 2,048 tokens)."""
    names = (*FIELDS, "component")
    places = []
    offset = 0
    for name in names:
        first = batch[0][name]
        places.append((offset, first.dtype, (len(batch), *first.shape)))
        offset += (len(batch) * first.numel() * first.element_size() + 7) // 8 * 8
    buffer = torch.empty(offset, dtype=torch.uint8)
    views = {}
    for name, (at, dtype, shape) in zip(names, places, strict=True):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        views[name] = buffer[at : at + nbytes].view(dtype).view(shape)
        rows = [b[name] for b in batch]
        plain = (r.device.type == "cpu" and not r.requires_grad for r in rows)
        if all(r.dtype == dtype and r.shape == shape[1:] for r in rows) and all(plain):
            array = views[name].numpy()
            for i, r in enumerate(rows):
                array[i] = r.numpy()
        else:
            torch.stack(rows, out=views[name])
    return buffer, views


def compact_shared(array: np.ndarray) -> torch.Tensor | np.ndarray:
    """``array`` as it travels: inline up to ``INLINE_BYTES``, else copied into one new
    shared-memory segment (as ``default_collate`` allocates in a DataLoader worker)."""
    if array.nbytes <= INLINE_BYTES:
        return array
    storage = torch.UntypedStorage._new_shared(array.nbytes)  # type: ignore[no-untyped-call]
    out = torch.empty(0, dtype=torch.uint8).set_(storage).view(torch.from_numpy(array).dtype)
    np.copyto(out.view(array.shape).numpy(), array)
    return out.view(array.shape)


class CompactSharedBatch(dict[str, Any]):
    """A batch from ``compact_collate_windows`` in a DataLoader worker: a dict whose big tensors are
    views of one buffer. Pickled compact when its values allow (see the module), else as the
    buffer (in shared memory: one segment) and each view's place in it; small tensors as
    arrays and the other entries as usual (a key added after collating travels too; one
    holding the same tensor as a field, like ``shift_labels``, stays that tensor). It unpickles
    to a plain dict."""

    def __init__(
        self, items: dict[str, Any], buffer: torch.Tensor, views: dict[str, torch.Tensor]
    ) -> None:
        super().__init__(items)
        self.buffer, self.views = buffer, views
        self.sent_compact = False

    def __reduce__(self) -> tuple[Any, ...]:
        of_view = {id(t): name for name, t in self.views.items()}
        keys: list[tuple[str, str, Any]] = []
        for key, value in self.items():
            if id(value) in of_view:
                keys.append((key, "view", of_view[id(value)]))
            elif isinstance(value, torch.Tensor) and compact_inline(value):
                keys.append((key, "inline", value.numpy()))
            else:
                keys.append((key, "value", value))
        compact = compact_encode(self.views)
        self.sent_compact = compact is not None
        if compact is not None:
            return (compact_unpack_compact, (*compact, keys))
        base = self.buffer.data_ptr()
        places = {
            name: (t.data_ptr() - base, t.dtype, tuple(t.shape)) for name, t in self.views.items()
        }
        return (compact_unpack_batch, (self.buffer, places, keys))


def compact_inline(value: torch.Tensor) -> bool:
    return value.device.type == "cpu" and not value.requires_grad and value.nbytes <= INLINE_BYTES


def compact_encode(
    views: dict[str, torch.Tensor],
) -> tuple[torch.Tensor | np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids ``[B, L + 1]`` int32: the inputs then each row's last label, the flat segment
    starts, ``component``) when the batch's fields are derived from them, else None."""
    if set(views) != {*FIELDS, "component"}:
        return None
    fields = [views[name] for name in FIELDS]
    component = views["component"]
    if component.dtype != torch.int64 or component.ndim != 1:
        return None
    rows = component.shape[0]
    for t in fields:
        if t.dtype != torch.int64 or t.ndim != 2 or t.shape != fields[0].shape:
            return None
    if rows != fields[0].shape[0] or fields[0].shape[1] == 0:
        return None
    ids, labels, domains, positions = (t.numpy() for t in fields)
    last = labels[:, -1]
    fits = int(min(ids.min(), last.min())) >= _INT32.min
    fits = fits and int(max(ids.max(), last.max())) <= _INT32.max
    if not (fits and np.array_equal(labels[:, :-1], ids[:, 1:])):
        return None
    of_rows = component.numpy()
    if not (domains == of_rows[:, None]).all():
        return None
    flat = positions.reshape(-1)
    starts = np.flatnonzero(flat == 0)
    if (
        not len(starts)
        or starts[0] != 0
        or not np.array_equal(flat, compact_positions(starts, flat.size))
    ):
        return None
    out = np.empty((rows, ids.shape[1] + 1), dtype=np.int32)
    out[:, :-1] = ids
    out[:, -1] = last
    return compact_shared(out), starts.astype(np.int64), of_rows.copy()


def compact_positions(starts: np.ndarray, size: int) -> np.ndarray:
    """Each of ``size`` indices minus the latest of ``starts`` (ascending, from 0) at or
    before it."""
    spans = np.diff(starts, append=size)
    return np.arange(size, dtype=np.int64) - np.repeat(starts.astype(np.int64), spans)


def compact_unpack_compact(
    ids: torch.Tensor | np.ndarray,
    starts: np.ndarray,
    component: np.ndarray,
    keys: list[tuple[str, str, Any]],
) -> dict[str, Any]:
    """A compact ``CompactSharedBatch`` as a plain dict: the four int64 fields rebuilt in one buffer
    (the layout of ``window_items``' blocks)."""
    ids = ids.numpy() if isinstance(ids, torch.Tensor) else ids
    rows, length = ids.shape[0], ids.shape[1] - 1
    flat = torch.empty(len(FIELDS) * rows * length + rows, dtype=torch.int64)
    tokens = flat[: len(FIELDS) * rows * length].view(len(FIELDS), rows, length)
    array = tokens.numpy()
    array[0] = ids[:, :-1]
    array[1] = ids[:, 1:]
    array[2] = component[:, None]
    array[3] = compact_positions(starts, rows * length).reshape(rows, length)
    views = dict(zip(FIELDS, tokens.unbind(0), strict=True))
    views["component"] = flat[len(FIELDS) * rows * length :]
    views["component"].numpy()[:] = component
    return compact_with_keys(views, keys)


def compact_unpack_batch(
    buffer: torch.Tensor,
    places: dict[str, tuple[int, torch.dtype, tuple[int, ...]]],
    keys: list[tuple[str, str, Any]],
) -> dict[str, Any]:
    """A ``CompactSharedBatch`` sent as its buffer, as a plain dict in the receiving process."""
    views: dict[str, torch.Tensor] = {}
    for name, (at, dtype, shape) in places.items():
        nbytes = int(np.prod(shape)) * dtype.itemsize
        views[name] = buffer[at : at + nbytes].view(dtype).view(shape)
    return compact_with_keys(views, keys)


def compact_with_keys(
    views: dict[str, torch.Tensor], keys: list[tuple[str, str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind, value in keys:
        if kind == "view":
            out[key] = views[value]
        else:
            out[key] = torch.from_numpy(value) if kind == "inline" else value
    return out


# -- the runs ------------------------------------------------------------------------------


def dataset(snapshot: Any, tok: Any, batch: int, path: str) -> Any:
    from mixplane.integrations.pytorch import TokenWindowDataset

    class Compact(TokenWindowDataset):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            windows = self._windows()
            # in a worker every item owns its memory (see the module): blocks of one window
            return window_items(windows, 1 if get_worker_info() is not None else batch)

    kind = Compact if path == "compact" else TokenWindowDataset
    return kind(snapshot, tok, SEQ, rank=0, world_size=1, batch_size=batch)


def loader(snapshot: Any, tok: Any, batch: int, workers: int, path: str) -> Any:
    from mixplane.integrations.pytorch import collate_windows

    collate = compact_collate_windows if path == "compact" else collate_windows
    return torch.utils.data.DataLoader(
        dataset(snapshot, tok, batch, path),
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate,
    )


def one_run(
    snapshot: Any, tok: Any, batch: int, workers: int, windows: int, path: str
) -> tuple[float, float]:
    """(M tokens/s, main-process CPU s per M tokens) from the first batch to the batch that
    reaches ``windows``; every batch's fields are read once (a trainer copies them to the
    device)."""
    seen = 0
    started = cpu = 0.0
    for n, b in enumerate(loader(snapshot, tok, batch, workers, path)):
        for name in FIELDS:
            b[name].sum()
        if n == 0:
            started, cpu = time.perf_counter(), time.process_time()
        else:
            seen += b["input_ids"].shape[0]
        if seen + batch > windows:
            break
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return seen * SEQ / wall / 1e6, cpu / (seen * SEQ / 1e6)


def worker_side(batch: int, windows: list[Any], path: str) -> float:
    """A worker's milliseconds per batch for windows already in memory: items, collate and
    the pickling that hands the batch to the DataLoader's queue (the segment path fills shared
    memory in its items, the compact path in its pickling). Run in a DataLoader worker, so
    the code takes its worker branches."""
    from multiprocessing.reduction import ForkingPickler

    from mixplane.integrations.pytorch import collate_windows

    def measure(_: Any) -> Any:
        if path == "segment":
            items = window_items(windows, batch, shared=True)
            collate: Any = collate_windows
        else:
            items = window_items(windows, 1)  # as in a worker: private, one window each
            collate = compact_collate_windows
        started, compact, n = time.perf_counter(), 0.0, 0
        while group := [item for _, item in zip(range(batch), items, strict=False)]:
            made = collate(group)
            ForkingPickler.dumps(made)
            compact += isinstance(made, CompactSharedBatch) and made.sent_compact
            n += 1
        return torch.tensor([(time.perf_counter() - started) / n * 1e3, compact / n])

    out: Any = torch.utils.data.DataLoader(
        [0],  # type: ignore[arg-type]
        batch_size=None,
        num_workers=1,
        collate_fn=measure,
    )
    ms, compact = next(iter(out)).tolist()
    assert compact == (path == "compact"), compact  # every candidate batch went compact
    return float(ms)


def check_same(snapshot: Any, tok: Any, batch: int, workers: int) -> None:
    """The first batches of both paths: the same keys, dtypes, shapes and values."""
    runs = [loader(snapshot, tok, batch, workers, path) for path in ("segment", "compact")]
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

    from mixplane.chunking.assign import Topology
    from mixplane.client import Client
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
        from mixplane.client.rank import RankWindows

        kept = list(itertools.islice(RankWindows(snapshot, tok, SEQ, workers=[0]), 1024))
        print("| batch | worker ms per batch, segment | compact | compact / segment |")
        print("|---|---|---|---|")
        for batch in (8, 64):
            ms: dict[str, list[float]] = {"segment": [], "compact": []}
            for _ in range(args.repeat):
                for path, times in ms.items():
                    times.append(worker_side(batch, kept, path))
            seg, com = (statistics.median(ms[p]) for p in ("segment", "compact"))
            ratio = statistics.median(
                c / s for c, s in zip(ms["compact"], ms["segment"], strict=True)
            )
            print(f"| {batch} | {seg:.2f} | {com:.2f} | {ratio:.2f} |", flush=True)
        rows = []
        for workers in (2, 0):
            for batch in (8, 64):
                check_same(snapshot, tok, batch, workers)
                rates: dict[str, list[tuple[float, float]]] = {"segment": [], "compact": []}
                for _ in range(args.repeat):
                    for path, got in rates.items():
                        got.append(one_run(snapshot, tok, batch, workers, args.windows, path))
                rows.append(("1 process" if workers == 0 else f"{workers} workers", batch, rates))
                print(f"workers={workers} batch={batch}: {rates}", flush=True)
        print(f"\nload {load()}")
        print(
            "| mode | batch | segment M tok/s | compact M tok/s | compact / segment "
            "| main CPU s per M tok, segment | compact |"
        )
        print("|---|---|---|---|---|---|---|")
        for mode, batch, rates in rows:
            tps = {p: statistics.median(r[0] for r in runs) for p, runs in rates.items()}
            cpu = {p: statistics.median(r[1] for r in runs) for p, runs in rates.items()}
            ratio = statistics.median(
                c[0] / s[0] for c, s in zip(rates["compact"], rates["segment"], strict=True)
            )
            print(
                f"| {mode} | {batch} | {tps['segment']:.1f} | {tps['compact']:.1f} | {ratio:.2f} "
                f"| {cpu['segment']:.3f} | {cpu['compact']:.3f} |"
            )


if __name__ == "__main__":
    main()
