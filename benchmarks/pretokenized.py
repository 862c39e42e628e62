"""Pre-tokenized streaming on one core: mixplane's ``WindowStream`` over four Megatron-Core
datasets, against a plain numpy memmap copy of the same ranges (the ceiling), Megatron-Core's
own ``GPTDataset``/``BlendedDataset`` and LitData's ``TokensLoader``.

Corpus (generated, not timed): four Megatron-Core indexed datasets (``.bin/.idx``, int32 ids,
written by megatron-core's own ``IndexedDatasetBuilder``), one per source, ``--tokens`` ids each;
document lengths are log-normal with a median per source (web 800, code 1,500, books 6,000,
forum 250 ids), every document ends with the EOS. Source k draws its ids from its own range
(``FIRST_ID + k * RANGE ...``), so any method's token shares can be read off the ids it yields.
The ids belong to DeepSeek-V3's tokenizer (``deepseek``, 129,280 ids, EOS 1), which the datasets
are registered with.

Mixture: web 0.4, code 0.3, books 0.2, forum 0.1 of the tokens; windows of ``--seq-len`` (2,048)
inputs plus one label token.

Measurements, each in a child process pinned to one CPU (``os.sched_setaffinity``, one torch
thread), run alternately for ``--repeat`` rounds, each streaming ``--windows`` windows, timed from
the first window on (the first one's latency, a reader's or dataset's set-up, is printed apart)
by the wall clock and by the child's CPU time (robust to other processes on the core); medians
and per-round ratios to the ceiling (runs adjacent in time) are printed:

(a) ceiling: the document ranges mixplane's stream reads (consumer 0, in its order, listed
    beforehand, untimed), sliced from numpy memory maps of the ``.bin`` files and copied into one
    array per chunk, cut into ``seq_len + 1`` windows (views; the carry to the next chunk kept):
    the copy every loader of these files must make, and nothing else.
(b) mixplane: the datasets registered in a scratch catalog (``--tokenizer deepseek``, property
    ``source`` from the path), a job with the mixture (token budget, ``--chunk-size`` ids per
    chunk, shuffled), ``WindowStream(job, tokenizer, seq_len, prefetch=0)``: windows with
    ``input_ids``, ``labels``, ``position_ids``, ``cu_seqlens``, ``domain_ids``. ``submit`` is
    timed apart.
(c) Megatron-Core: ``BlendedMegatronDatasetBuilder(GPTDataset, ...)`` with the same blend
    (weights), ``sequence_length=seq_len``, ``reset_position_ids=True`` (positions per document,
    as mixplane's), no attention mask; ``ds[i]`` for i in order (its ``__getitem__`` gives
    tokens, labels, loss mask and positions as torch tensors). Building its indices (numpy and
    its C++ helpers, cached under the scratch folder) is timed apart.
(b') mixplane through the server: ``mixplane serve`` on the catalog (a process on the other CPU,
    started for the run), ``Client.remote(url)``, the same job and ``WindowStream``: chunk
    descriptors (pointers) come over HTTP, the client reads and packs the ids itself.
(d) LitData: in its own venv (``benchmarks/.venvs/litdata``, made on first use: ``litdata`` and
    the CPU ``torch`` this project pins), each source converted once to LitData's chunks
    (``litdata.optimize`` with ``TokensLoader``, timed apart: LitData cannot read Megatron files),
    then ``CombinedStreamingDataset`` of four ``StreamingDataset(item_loader=
    TokensLoader(block_size=seq_len + 1), shuffle=True)`` with the weights; items are windows of
    ids only.

Token shares are measured the same way for every method: per source, the ids of the streamed
windows (mixplane: windows per component; the others: the source of each window's ids).

Targets (issue 15): mixplane >= 30 M tokens/s per core and >= 0.5 x ceiling, token shares
exact (within one document per component).

Usage (from the repository root; a few minutes on 2 cores, ~300 MB of scratch files)::

    .venv/bin/python benchmarks/pretokenized.py [--tokens 16777216] [--windows 20000]
        [--repeat 3] [--skip-litdata] [--skip-megatron] [--skip-server] [--keep] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

HERE = Path(__file__).resolve().parent
LITDATA_VENV = HERE / ".venvs" / "litdata"
#: source: (token share, median document length in ids, log-normal sigma)
SOURCES = {
    "web": (0.4, 800, 0.7),
    "code": (0.3, 1_500, 0.8),
    "books": (0.2, 6_000, 0.5),
    "forum": (0.1, 250, 0.8),
}
FIRST_ID = 1_000  # source k's ids: [FIRST_ID + k * RANGE, FIRST_ID + (k + 1) * RANGE)
RANGE = 30_000
EOS = 1  # DeepSeek-V3's <｜end▁of▁sentence｜>
SEED = 7
TARGET_RATE = 30e6  # tokens per CPU second
TARGET_CEILING = 0.5


def source_of(ids: np.ndarray) -> np.ndarray:
    """The source index of each id (-1 for the EOS)."""
    return np.where(ids == EOS, -1, (ids.astype(np.int64) - FIRST_ID) // RANGE)


# -- corpus (main venv) ------------------------------------------------------------------------


def generate(folder: Path, tokens: int) -> dict[str, Path]:
    """One Megatron-Core dataset per source, by megatron-core's own builder."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    out = {}
    for k, (source, (_share, median, sigma)) in enumerate(SOURCES.items()):
        prefix = folder / source
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
        written = 0
        while written < tokens:
            n = int(np.clip(rng.lognormal(np.log(median), sigma), 2, 60_000))
            doc = rng.integers(FIRST_ID + k * RANGE, FIRST_ID + (k + 1) * RANGE, n, dtype=np.int32)
            doc[-1] = EOS
            builder.add_document(doc, [n])  # type: ignore[arg-type]
            written += n
        builder.finalize(f"{prefix}.idx")
        out[source] = prefix
    return out


def submit(client: Any, chunk_size: int, job_id: str = "bench") -> Any:
    return client.submit(
        job_id,
        mixture={f"source={s}": w for s, (w, _, _) in SOURCES.items()},
        unit="tokens",
        chunk_size=chunk_size,
        seed=SEED,
        tokenizer=tokenizer(),
    )


def tokenizer() -> Any:
    from mixplane.tokens import load_tokenizer

    return load_tokenizer("deepseek")


def prepare(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Corpus, catalog, the ceiling's ranges and LitData's inputs (untimed)."""
    from mixplane.client import Client

    started = time.perf_counter()
    prefixes = generate(work / "megatron", args.tokens)
    print(f"generated {len(prefixes)} Megatron datasets in {time.perf_counter() - started:.1f} s")
    home = work / "home"
    started = time.perf_counter()
    with Client.local(home) as client:
        info = client.catalog.register(
            "corpus",
            work / "megatron",
            tokenizer="deepseek",
            path_pattern=r"/(?P<source>[a-z]+)\.bin$",
            progress=False,
        )
        seconds = time.perf_counter() - started
        print(
            f"registered {info.files} files, {info.samples:,} documents, "
            f"{info.bytes / 4e6:.1f} M ids in {seconds:.1f} s ({info.samples / seconds:,.0f} docs/s)"
        )
        ranges = ceiling_ranges(client, args)
    np.savez(work / "ranges.npz", **ranges)
    spec = {
        "work": str(work),
        "home": str(home),
        "seq_len": args.seq_len,
        "windows": args.windows,
        "chunk_size": args.chunk_size,
        "prefixes": {s: str(p) for s, p in prefixes.items()},
        "weights": {s: w for s, (w, _, _) in SOURCES.items()},
        "profile": args.profile,
    }
    return spec


def ceiling_ranges(client: Any, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The document ranges consumer 0 of the job reads, in its order, with chunk numbers."""
    job = submit(client, args.chunk_size)
    files = {row["file_id"]: row for row in client.catalog.files().to_pylist()}
    order = {s: k for k, s in enumerate(SOURCES)}
    pointers = {f: client.catalog.pointers(f) for f in files}
    need = args.windows * args.seq_len + args.seq_len
    src, start, length, chunk = [], [], [], []
    total = 0
    for sample in job.stream():
        ptr = pointers[sample.file_id]
        n = int(ptr["length"][sample.ordinal]) // 4
        src.append(order[Path(files[sample.file_id]["path"]).stem])
        start.append(int(ptr["offset"][sample.ordinal]) // 4)
        length.append(n)
        chunk.append(sample.chunk)
        total += n
        if total >= need * 1.2:
            break
    job.close()
    return {
        "source": np.asarray(src, np.int64),
        "start": np.asarray(start, np.int64),
        "length": np.asarray(length, np.int64),
        "chunk": np.asarray(chunk, np.int64),
    }


# -- children ---------------------------------------------------------------------------------


def child_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    seq, want = spec["seq_len"], spec["windows"]
    ranges = np.load(Path(spec["work"]) / "ranges.npz")
    ids = [
        np.frombuffer(np.memmap(f"{p}.bin", dtype=np.uint8, mode="r"), dtype=np.int32)
        for p in spec["prefixes"].values()
    ]
    bounds = np.flatnonzero(np.diff(ranges["chunk"])) + 1
    groups = [
        list(zip(s.tolist(), a.tolist(), n.tolist(), strict=True))
        for s, a, n in zip(
            np.split(ranges["source"], bounds),
            np.split(ranges["start"], bounds),
            np.split(ranges["length"], bounds),
            strict=True,
        )
    ]
    counts = np.zeros(len(ids), dtype=np.int64)
    start, cpu = time.perf_counter(), time.process_time()
    rest = ids[0][:0]
    windows = 0
    for group in groups:
        buffer = np.concatenate([rest, *(ids[s][a : a + n] for s, a, n in group)])
        n = min((len(buffer) - 1) // seq, want - windows)
        inputs = buffer[: n * seq].reshape(n, seq)
        labels = buffer[1 : n * seq + 1].reshape(n, seq)
        for x, y in zip(inputs, labels, strict=True):
            del x, y
        windows += n
        rest = buffer[n * seq :]
        if windows >= want:
            break
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    # shares of the same windows (after timing): ids of each source
    flat = np.concatenate([ids[s][a : a + n] for s, a, n in (r for g in groups for r in g)])
    kinds = source_of(flat[: windows * seq + 1])
    counts = np.bincount(kinds[kinds >= 0], minlength=len(ids))
    return {
        "tokens": windows * seq,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "shares": (counts / counts.sum()).tolist(),
    }


def child_mixplane(spec: dict[str, Any]) -> dict[str, Any]:
    from mixplane.client import Client
    from mixplane.client.windows import WindowStream

    seq, want = spec["seq_len"], spec["windows"]
    tok = tokenizer()
    remote = spec.get("server")
    opened = Client.remote(remote) if remote else Client.local(spec["home"], read_only=True)
    with opened as client:
        began = time.perf_counter()
        job = submit(client, spec["chunk_size"], f"bench-{os.getpid()}")
        submit_seconds = time.perf_counter() - began
        order = {s: k for k, s in enumerate(SOURCES)}
        of_component = [order[s.split("=")[1]] for s in job.selectors]
        stream = WindowStream(job, tok, seq, prefetch=0)
        components = np.zeros(len(of_component), dtype=np.int64)
        profile = None
        if spec.get("profile"):
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        began = time.perf_counter()
        windows_iter = iter(stream)
        first = next(windows_iter)  # the reader's set-up: pointers, file checks (apart)
        components[first.component] += 1
        first_seconds = time.perf_counter() - began
        start, cpu = time.perf_counter(), time.process_time()
        windows = 1
        for window in windows_iter:
            components[window.component] += 1
            windows += 1
            if windows >= want:
                break
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        if profile is not None:
            import pstats

            profile.disable()
            pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    counts = np.zeros(len(SOURCES))
    for c, k in enumerate(of_component):
        counts[k] += components[c]
    return {
        "tokens": (windows - 1) * seq,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "submit_seconds": submit_seconds,
        "first_seconds": first_seconds,
        "shares": (counts / counts.sum()).tolist(),
    }


class _MegatronTokenizer:
    """What Megatron-Core's GPT dataset asks of a tokenizer (vocabulary size, EOD, pad)."""

    vocab_size = 129_280
    eod = EOS
    pad = -1
    unique_identifiers: ClassVar[dict[str, Any]] = {"class": "deepseek-v3 ids", "vocab": 129_280}


def child_megatron(spec: dict[str, Any]) -> dict[str, Any]:
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    seq, want = spec["seq_len"], spec["windows"]
    names = list(spec["prefixes"])
    config = GPTDatasetConfig(
        random_seed=SEED,
        sequence_length=seq,
        blend=([spec["prefixes"][s] for s in names], [spec["weights"][s] for s in names]),
        split="1,0,0",
        path_to_cache=None,  # indices built in memory (a cache needs torch.distributed)
        tokenizer=_MegatronTokenizer(),  # type: ignore[arg-type]
        reset_position_ids=True,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, _, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [want, 0, 0], lambda: True, config
        ).build()
    build_seconds = time.perf_counter() - began
    assert train is not None
    first_ids = np.zeros(want, dtype=np.int64)
    began = time.perf_counter()
    first_ids[0] = _first_id(train[0]["tokens"])
    first_seconds = time.perf_counter() - began
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(1, want):
        first_ids[i] = _first_id(train[i]["tokens"])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    counts = np.bincount(source_of(first_ids), minlength=len(names))
    return {
        "tokens": (want - 1) * seq,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "build_seconds": build_seconds,
        "first_seconds": first_seconds,
        "shares": (counts / counts.sum()).tolist(),
    }


def _first_id(ids: Any) -> int:
    """A window's first id that is not the EOS (it names the window's source)."""
    return int(ids[0]) if int(ids[0]) != EOS else int(ids[1])


def child_litdata_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Convert each source to LitData's chunks (runs in the LitData venv)."""
    import struct

    from litdata import TokensLoader, optimize

    began = time.perf_counter()
    for source, prefix in spec["prefixes"].items():
        raw = np.fromfile(f"{prefix}.idx", dtype=np.uint8)
        sequences, documents = struct.unpack("<QQ", raw[18:34].tobytes())
        lengths = np.frombuffer(raw, "<i4", sequences, 34).astype(np.int64)
        ids = np.fromfile(f"{prefix}.bin", dtype=np.int32)
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        np.save(Path(spec["work"]) / f"lit-{source}-ids.npy", ids)
        np.save(Path(spec["work"]) / f"lit-{source}-bounds.npy", bounds)
        del documents
        optimize(
            fn=_lit_documents,
            inputs=[
                (str(Path(spec["work"]) / f"lit-{source}"), a, b)
                for a, b in _batches(len(lengths), 512)
            ],
            output_dir=str(Path(spec["work"]) / "litdata" / source),
            chunk_bytes="64MB",
            item_loader=TokensLoader(),
            num_workers=1,
        )
    return {"prepare_seconds": time.perf_counter() - began}


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _lit_documents(item: tuple[str, int, int]) -> Any:
    import torch

    stem, a, b = item
    ids = np.load(f"{stem}-ids.npy", mmap_mode="r")
    bounds = np.load(f"{stem}-bounds.npy")
    for d in range(a, b):
        yield torch.from_numpy(np.array(ids[bounds[d] : bounds[d + 1]]))


def child_litdata(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from litdata import CombinedStreamingDataset, StreamingDataset, TokensLoader

    torch.set_num_threads(1)
    seq, want = spec["seq_len"], spec["windows"]
    names = list(spec["prefixes"])
    sets = [
        StreamingDataset(
            input_dir=f"local:{Path(spec['work']) / 'litdata' / s}",
            item_loader=TokensLoader(block_size=seq + 1),
            shuffle=True,
            seed=SEED,
        )
        for s in names
    ]
    combined = CombinedStreamingDataset(
        sets, seed=SEED, weights=[spec["weights"][s] for s in names], iterate_over_all=False
    )
    first_ids = np.zeros(want, dtype=np.int64)
    began = time.perf_counter()
    items = iter(combined)
    first_ids[0] = _first_id(next(items))  # the datasets' set-up: indices, chunks (apart)
    first_seconds = time.perf_counter() - began
    start, cpu = time.perf_counter(), time.process_time()
    windows = 1
    for item in items:
        first_ids[windows] = _first_id(item)
        windows += 1
        if windows >= want:
            break
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    counts = np.bincount(source_of(first_ids[:windows]), minlength=len(names))
    return {
        "tokens": (windows - 1) * seq,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "first_seconds": first_seconds,
        "shares": (counts / counts.sum()).tolist(),
    }


CHILDREN = {
    "ceiling": child_ceiling,
    "mixplane": child_mixplane,
    "mixplane-server": child_mixplane,
    "megatron": child_megatron,
    "litdata-prepare": child_litdata_prepare,
    "litdata": child_litdata,
}


def child_main(kind: str, raw: str) -> None:
    print(json.dumps(CHILDREN[kind](json.loads(raw))))


def run_child(kind: str, spec: dict[str, Any], core: int, python: str | Path = sys.executable) -> dict[str, Any]:
    """One measurement in a fresh process pinned to ``core``; its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [str(python), __file__, "--child", kind, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        check=False,
    )
    if spec.get("profile") and kind.startswith("mixplane"):
        print(done.stderr[-6000:])
    if done.returncode != 0:
        msg = f"{kind} child failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def litdata_python() -> Path:
    """The LitData venv's python, made on first use (litdata and this project's CPU torch)."""
    python = LITDATA_VENV / "bin" / "python"
    check = [str(python), "-c", "import litdata, torch"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    print(f"making the LitData venv {LITDATA_VENV} (litdata, torch==2.13.0 CPU) ...")
    subprocess.run([sys.executable.replace(".venv/bin/python", "") or "python3.11", "-V"], check=False)
    subprocess.run(["python3.11", "-m", "venv", str(LITDATA_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "litdata", "torch==2.13.0"], check=True)
    return python


# -- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1 << 24, help="ids per source")
    parser.add_argument("--windows", type=int, default=20_000, help="windows streamed per run")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=1 << 20, help="ids per chunk")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-megatron", action="store_true")
    parser.add_argument("--skip-litdata", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--profile", action="store_true", help="cProfile the mixplane runs")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the scratch folder")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return
    sys.path.insert(0, str(HERE))
    from common import Server, load, print_summary, scratch

    core = sorted(os.sched_getaffinity(0))[-1]
    lit = None if args.skip_litdata else litdata_python()
    with scratch("mixplane-pretokenized-", args.workdir, keep=args.keep) as work:
        print(
            f"mixplane pre-tokenized benchmark: 4 Megatron datasets x {args.tokens:,} ids, "
            f"{args.windows:,} windows of {args.seq_len} per run, chunk {args.chunk_size:,} ids, "
            f"repeat {args.repeat}; children pinned to CPU {core} of {os.cpu_count()}; python "
            f"{platform.python_version()}; workdir {work}; load {load()}"
        )
        spec = prepare(work, args)
        if lit is not None:
            done = run_child("litdata-prepare", spec, core, lit)
            print(f"LitData conversion (optimize, TokensLoader): {done['prepare_seconds']:.1f} s")
        kinds = ["ceiling", "mixplane"]
        kinds += [] if args.skip_megatron else ["megatron"]
        kinds += [] if lit is None else ["litdata"]
        if not args.skip_server:
            kinds.append("mixplane-server")
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for round_ in range(args.repeat):
            for kind in kinds:
                python = lit if kind == "litdata" and lit is not None else sys.executable
                server = Server(spec["home"]) if kind == "mixplane-server" else None
                try:
                    run_spec = dict(spec, server=server.url) if server is not None else spec
                    result = run_child(kind, run_spec, core, python)
                finally:
                    if server is not None:
                        server.stop()
                results[kind].append(result)
                extra = "".join(
                    f", {key} {result[key]:.2f} s"
                    for key in ("submit_seconds", "build_seconds", "first_seconds")
                    if key in result
                )
                print(
                    f"round {round_ + 1} {kind:9s}: {result['tokens'] / result['cpu_seconds'] / 1e6:7.1f} M "
                    f"tokens/CPU-s, {result['tokens'] / result['seconds'] / 1e6:7.1f} M tokens/s wall"
                    f"{extra}; load {load()}"
                )
        report(results, spec, load)
        del print_summary


def report(results: dict[str, list[dict[str, Any]]], spec: dict[str, Any], load: Any) -> None:
    weights = np.array(list(spec["weights"].values()))
    ceiling = results["ceiling"]
    print(f"\n## Summary (pre-tokenized streaming, {spec['windows']:,} windows of {spec['seq_len']}, load {load()})\n")
    print("| method | M tokens/CPU-s (median) | M tokens/s wall | x ceiling (per round, CPU) | share error (pp, max) |")
    print("|---|---|---|---|---|")
    for kind, runs in results.items():
        cpu = statistics.median(r["tokens"] / r["cpu_seconds"] for r in runs) / 1e6
        wall = statistics.median(r["tokens"] / r["seconds"] for r in runs) / 1e6
        ratios = [
            (r["tokens"] / r["cpu_seconds"]) / (c["tokens"] / c["cpu_seconds"])
            for r, c in zip(runs, ceiling, strict=True)
        ]
        error = max(float(np.abs(np.array(r["shares"]) - weights).max()) for r in runs) * 100
        print(
            f"| {kind} | {cpu:.1f} | {wall:.1f} | {statistics.median(ratios):.2f} "
            f"({', '.join(f'{x:.2f}' for x in ratios)}) | {error:.2f} |"
        )
    mix = results["mixplane"]
    rate = statistics.median(r["tokens"] / r["cpu_seconds"] for r in mix)
    ratio = statistics.median(
        (r["tokens"] / r["cpu_seconds"]) / (c["tokens"] / c["cpu_seconds"])
        for r, c in zip(mix, ceiling, strict=True)
    )
    print(
        f"\ntargets: mixplane >= {TARGET_RATE / 1e6:.0f} M tokens/CPU-s: "
        f"{'yes' if rate >= TARGET_RATE else 'no'} ({rate / 1e6:.1f}); >= {TARGET_CEILING} x ceiling: "
        f"{'yes' if ratio >= TARGET_CEILING else 'no'} ({ratio:.2f})"
    )


if __name__ == "__main__":
    main()
