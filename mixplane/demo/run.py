"""The demo: a small model trained on real multi-domain text, natural mixture vs ADO, through
the server.

Stages, with the defaults and their time on 2 cores (``docs/demo.md`` has the measured run):

1. Corpus (~3 s): ``build_corpus`` writes eight datasets of package text as JSONL (plain and
   zstd) and Parquet under ``HOME/demo-corpus``, documents cut into records of at most 1 KB
   (``piece_bytes``, see below); each dataset is registered with ``language``, ``source``,
   ``domain`` (constants) and ``split``, ``chars`` (record fields). About 5 % of the documents
   are held out (``split == 'validation'``), chosen per document id, so every domain keeps its
   share and no document straddles the splits.
2. Tokenizer (~15 s): a byte-level BPE of 4,096 tokens trained on up to 1 MB of training text
   per domain (``train_bpe``), saved as ``HOME/demo/tokenizer.json``; the catalog then stores
   exact token counts for it, so jobs are budgeted in tokens. Not DeepSeek's tokenizer: its
   129,280-token vocabulary would make the output layer 98 % of the model's work (``model.py``).
3. Server: the catalog is closed and ``mixplane serve`` starts on 127.0.0.1, port 0, as a
   subprocess over the same home, with a fresh bearer token (``HOME/demo/token``, mode 600);
   its log is ``HOME/demo/server.log``. It is stopped at the end, also after an error or Ctrl-C.
4. Training (~2 x 65 s): through ``Client.remote(url)``, two token-unit jobs over the training
   split grouped by ``domain``: the natural mixture (``Mixture.inferred``: weights
   proportional to each domain's tokens) and ADO starting from it, its step options scaled to
   the run (``ado_options``). The same model from the same initial weights trains on each for
   the same number of steps, sending per-domain losses every step (``train.py``); held-out
   windows of every domain, read through a third job over the validation split, are
   evaluated every ``eval_every`` steps.
5. Report (~3 s): ``HOME/report/`` holds ``index.html`` (self-contained), the PNGs and
   ``manifest.json`` with every plotted series (``report.py``); the console gets a summary.

Two choices keep the realized mixture close to the requested one. Jobs use ``block_size=1``:
the default draws 256 consecutive records of a component at a time (sequential reads), which
over a run this short would feed the model one stretch of one dataset (the standard library's
codec tables) for hundreds of steps. Documents are cut into records of at most 1 KB because a
token budget is met by whole records: each domain's delivered tokens are exact up to about one
record, and with whole files (up to 58k tokens) that is a large part of a 1 M-token run (docs
got 20.7k tokens of 12.9k requested); the report plots requested and delivered tokens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm import tqdm

from mixplane.catalog.catalog import Catalog
from mixplane.client.client import Client
from mixplane.demo import report
from mixplane.demo.corpus import SOURCES, CorpusPart, build_part
from mixplane.demo.train import (
    DemoError,
    RunRecord,
    TrainSettings,
    train_run,
    validation_windows,
)
from mixplane.mixture.mixture import Mixture
from mixplane.tokens.tokenizer import HFTokenizer, train_bpe

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

WHERE_TRAIN = "split == 'train'"
GROUP_BY = ("domain",)
JOBS = {"natural": "demo-natural", "ado": "demo-ado"}
LISTENING = re.compile(r"listening on (http://\S+)")
SERVER_START_SECONDS = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """Where the demo works and how big it is (``mixplane demo --help``)."""

    home: Path
    corpus: Path | None = None  # default HOME/demo-corpus
    out: Path | None = None  # the report folder, default HOME/report
    max_docs: int | None = None
    vocab_size: int = 4096
    tokenizer_bytes: int = 1 << 20  # training text per domain for the tokenizer
    piece_bytes: int = 1024  # longer documents are cut into records of at most this size
    chunk_tokens: int = 4096  # a chunk's token budget
    progress: bool | None = None  # None: bars when stderr is a terminal
    settings: TrainSettings = field(default_factory=TrainSettings)

    @property
    def corpus_dir(self) -> Path:
        return self.corpus or self.home / "demo-corpus"

    @property
    def report_dir(self) -> Path:
        return self.out or self.home / "report"

    @property
    def work_dir(self) -> Path:
        return self.home / "demo"


@dataclass(slots=True, kw_only=True)
class DemoResult:
    manifest: dict[str, Any]
    report: Path
    manifest_path: Path
    images: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)


def ado_options(steps: int, seq_len: int) -> dict[str, Any]:
    """ADO's step options scaled from the paper's (thousands of steps) to ``steps``: the first
    refit and new weights after a quarter of the run, refits every eighth, the first 5 % of
    the losses left out of the fits, a smoothing window of about a tenth of the run (odd, at
    least 5) and every point kept below 200 steps. ``seq_len`` makes n count windows."""
    window = max(5, steps // 10)
    return {
        "seq_len": seq_len,
        "start_step": max(2, steps // 4),
        "refit_interval": max(1, steps // 8),
        "ignore_steps": steps // 20,
        "savgol_window": window if window % 2 else window + 1,
        "subsample": max(1, steps // 200),
    }


# -- stages ------------------------------------------------------------------------------------
def _bar(total: int, desc: str, unit: str, progress: bool | None) -> tqdm[Any]:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        disable=not progress if progress is not None else None,
    )


def _build(options: DemoOptions) -> list[CorpusPart]:
    parts = []
    with _bar(len(SOURCES), "build corpus", "dataset", options.progress) as bar:
        for name in SOURCES:
            parts.append(
                build_part(
                    options.corpus_dir,
                    name,
                    max_docs=options.max_docs,
                    piece_bytes=options.piece_bytes,
                )
            )
            bar.update(1)
    return parts


def _tokenizer_texts(catalog: Catalog, limit: int) -> Iterator[str]:
    """Training-split texts, up to ``limit`` UTF-8 bytes per domain (every domain is
    represented; without the cap the code domain would dominate the merges)."""
    result = catalog.explain(WHERE_TRAIN, by=list(GROUP_BY))
    for component in result.components:
        size, start = 0, 0
        while size < limit and start < component.samples:
            stop = min(start + 64, component.samples)
            for text in catalog.sample_texts(component.runs, np.arange(start, stop)):
                yield text
                size += len(text.encode())
                if size >= limit:
                    break
            start = stop


def prepare(options: DemoOptions, echo: Echo) -> tuple[HFTokenizer, dict[str, Any]]:
    """Corpus, registration, tokenizer, token counts (stages 1-2 of the module); the catalog
    is closed on return. Returns the tokenizer and what the manifest says of it, including
    each domain's training tokens (``training_tokens``)."""
    started = time.perf_counter()
    parts = _build(options)
    echo(
        f"corpus: {len(parts)} datasets in {options.corpus_dir} ({time.perf_counter() - started:.1f} s)"
    )
    options.work_dir.mkdir(parents=True, exist_ok=True)
    with Catalog.open(options.home) as catalog:
        samples = 0
        for part in parts:
            info = part.register(catalog, progress=options.progress)
            samples += info.samples
        echo(
            f"registered {len(parts)} datasets, {samples:,} records (documents cut at "
            f"{options.piece_bytes:,} bytes), in {options.home}"
        )
        started = time.perf_counter()
        with _bar(1, "train tokenizer", "tokenizer", options.progress) as bar:
            tokenizer = train_bpe(
                _tokenizer_texts(catalog, options.tokenizer_bytes), vocab_size=options.vocab_size
            )
            bar.update(1)
        path = options.work_dir / "tokenizer.json"
        tokenizer.save(path)
        catalog.count_tokens(tokenizer, progress=options.progress)
        echo(
            f"tokenizer: byte-level BPE, {tokenizer.vocab_size:,} tokens, trained and counted in "
            f"{time.perf_counter() - started:.1f} s ({path})"
        )
        result = catalog.explain(WHERE_TRAIN, by=list(GROUP_BY))
        sizes = {
            c.properties["domain"]: catalog.sample_tokens(c.runs, tokenizer.fingerprint)
            for c in result.components
        }
    tokens = {d: int(s.sum()) if s is not None else 0 for d, s in sizes.items()}
    total = max(1, sum(tokens.values()))
    echo(f"training split: {sum(tokens.values()):,} tokens")
    for domain, count in tokens.items():
        echo(f"  {domain:<14} {count:>11,} tokens  {count / total:>6.1%}")
    info = {
        "kind": "byte-level BPE (mixplane.tokens.train_bpe)",
        "vocab_size": tokenizer.vocab_size,
        "path": str(path),
        "fingerprint": tokenizer.fingerprint,
        "trained_on_bytes_per_domain": options.tokenizer_bytes,
        "training_tokens": tokens,
    }
    return tokenizer, info


# -- the server --------------------------------------------------------------------------------
def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@contextlib.contextmanager
def served(home: Path, work: Path) -> Iterator[tuple[str, str]]:
    """``mixplane serve`` on 127.0.0.1, any free port, over ``home``: yields (url, token) once
    it listens; terminated (SIGTERM: jobs are checkpointed) when the block ends, however."""
    work.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    token_file = work / "token"
    token_file.touch(mode=0o600)
    token_file.chmod(0o600)
    token_file.write_text(token + "\n")
    log_path = work / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME", "MIXPLANE_SERVER")}
    command = [
        sys.executable, "-m", "mixplane.cli", "--home", str(home), "serve",
        "--host", "127.0.0.1", "--port", "0", "--token-file", str(token_file),
    ]  # fmt: skip
    with log_path.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
            env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(
                target=_read_lines, args=(proc.stdout, lines), name="demo-server-stdout",
                daemon=True,
            ).start()  # fmt: skip
            deadline = time.monotonic() + SERVER_START_SECONDS
            url = None
            while url is None:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    line = None
                if line is None:
                    err.flush()
                    msg = (
                        f"the mixplane server did not start ({_tail(log_path) or 'no output'}); "
                        f"see {log_path}, and run 'mixplane --home {home} serve' to try it"
                    )
                    raise DemoError(msg)
                match = LISTENING.search(line)
                if match:
                    url = match.group(1)
            log.info("demo server at %s (pid %d)", url, proc.pid)
            yield url, token
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)


# -- the whole demo ----------------------------------------------------------------------------
def run_demo(
    options: DemoOptions,
    *,
    echo: Echo = print,
    on_batch: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Run every stage (see the module); ``on_batch(run, step, batch)`` sees each trained
    batch."""
    settings = options.settings
    times: dict[str, float] = {}
    started = time.perf_counter()
    tokenizer, tokenizer_info = prepare(options, echo)
    times["prepare"] = time.perf_counter() - started
    chunk_size = options.chunk_tokens
    ado = ado_options(settings.steps, settings.seq_len)
    runs: dict[str, RunRecord] = {}
    torch.set_flush_denormal(True)  # denormal softmax tails make CPU matmuls 20x slower
    try:
        with served(options.home, options.work_dir) as (url, token):
            echo(f"server: {url} (log {options.work_dir / 'server.log'})")
            client = Client.remote(url, token=token)
            try:
                validation = validation_windows(
                    client, tokenizer, seq_len=settings.seq_len,
                    per_domain=settings.eval_windows, seed=settings.seed,
                    progress=options.progress,
                )  # fmt: skip
                counts = ", ".join(f"{d} {len(b['input_ids'])}" for d, b in validation.items())
                echo(f"validation: held-out windows per domain: {counts or 'none'}")
                for name in ("natural", "ado"):
                    job = client.submit(
                        JOBS[name],
                        where=WHERE_TRAIN,
                        mixture=Mixture.inferred(list(GROUP_BY)),
                        unit="tokens",
                        chunk_size=chunk_size,
                        tokenizer=tokenizer,
                        block_size=1,  # every sample drawn on its own (see the module)
                        seed=settings.seed,
                        algorithm="ado" if name == "ado" else None,
                        algorithm_options=ado if name == "ado" else None,
                        replace=True,
                    )
                    echo(
                        f"run {name}: job {job.job_id!r}, {settings.steps} steps x "
                        f"{settings.tokens_per_step} tokens"
                    )
                    callback = None
                    if on_batch is not None:
                        callback = _bind(on_batch, name)
                    runs[name] = train_run(
                        name, job, tokenizer, settings, validation,
                        vocab_size=tokenizer.vocab_size, progress=options.progress,
                        on_batch=callback,
                    )  # fmt: skip
                    times[name] = runs[name].seconds
                    echo(f"run {name}: {runs[name].seconds:.1f} s")
            finally:
                client.close()
    finally:
        torch.set_flush_denormal(False)
    started = time.perf_counter()
    manifest = report.build_manifest(
        runs=runs,
        settings=settings,
        chunk_size=chunk_size,
        ado_options=ado,
        tokenizer=tokenizer_info,
        corpus={
            "folder": str(options.corpus_dir),
            "max_docs": options.max_docs,
            "piece_bytes": options.piece_bytes,
        },
        notes=_notes,
    )
    files = report.write_report(manifest, options.report_dir, progress=options.progress)
    times["report"] = time.perf_counter() - started
    echo("")
    echo(report.summary_text(manifest))
    echo(f"\n{report.verdict(manifest)}.")
    echo(f"report: {files.html}")
    return DemoResult(
        manifest=manifest,
        report=files.html,
        manifest_path=files.manifest,
        images=files.images,
        seconds=times,
    )


def _bind(
    on_batch: Callable[[str, int, dict[str, Any]], None], name: str
) -> Callable[[int, dict[str, Any]], None]:
    return lambda step, batch: on_batch(name, step, batch)


def _notes(manifest: Mapping[str, Any]) -> list[str]:
    s = manifest["settings"]
    tok = manifest["tokenizer"]
    corpus = manifest["corpus"]
    return [
        "Corpus: eight datasets of text shipped in installed packages (English, Bulgarian, "
        "Chinese, Python), registered with language, source and domain and grouped by domain "
        f"({', '.join(manifest['domains'])}); documents cut into records of at most "
        f"{corpus['piece_bytes']:,} bytes; about 5% of the documents of every dataset held "
        "out as the validation split.",
        f"Tokenizer: a byte-level BPE of {tok['vocab_size']:,} tokens trained on up to "
        f"{tok['trained_on_bytes_per_domain'] / 1e6:.1f} MB of training text per domain. "
        "DeepSeek's 129,280-token vocabulary would make the output layer about 98% of the "
        "model's work, each step some 18 times slower on the CPU; with 4k it is about 57%.",
        f"Model: GPT-style decoder, {s['layers']} layers, d_model {s['d_model']}, "
        f"{s['heads']} heads, learned positions from position_ids, output tied to the "
        "embeddings; causal attention masked per document (segments from position_ids, the "
        "ones cu_seqlens lists), so packed documents do not see each other. AdamW "
        f"(lr {s['lr']}, linear warm-up over {s['warmup']} steps, then constant), gradient "
        "clipping at 1, float32 on the CPU, the same initial weights in both runs.",
        f"Data: token-unit jobs (chunks of {s['chunk_size']:,} tokens, every record drawn on "
        "its own: block_size=1) over the training split, planned by the server and read here "
        "through TokenWindowDataset (Client.remote); per-domain loss (reduction='none' with the "
        "batch's domain_ids) sent every step through LossFeedback in both runs; only the ADO "
        "job acts on it. New weights apply from the next chunk the server plans; the client "
        "asks for 8 chunks at a time, so they reach the data in steps of about 8 chunks.",
        f"Validation: up to {s['eval_windows']} windows of every domain from the validation "
        "split (a job over split == 'validation', read through the server), evaluated every "
        f"{s['eval_every']} steps in both runs.",
        "One seed, one run each: differences of a few hundredths of a nat per token are within "
        "what another seed could change.",
    ]
