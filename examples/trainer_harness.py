"""Shared by ``hf_trainer.py`` and ``lightning_trainer.py``: a tiny corpus and tokenizer, a
mixplane server with an ADO job per run, ``torchrun`` launches of 2 CPU processes (gloo), and
the resume protocol every trainer example proves.

Protocol (``prove``): train ``STEPS`` steps uninterrupted (job ``full``); train the same run to
``STEPS // 2`` with a checkpoint there and stop the processes (job ``split``); resume that
checkpoint in new processes and train the rest; resume it again without the data state (job
``control``, a negative control). Every rank's per-step batch hashes and the losses after the
resume must equal the uninterrupted run's, the control's must differ, ADO must have changed the
weights, and the two ranks (``dp_groups=2``) must have read disjoint windows.

Run directly it prints what it is for; the examples run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.tokens import train_bpe

STEPS = 8
BATCH = 4
SEQ = 32
NPROC = 2
MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
ADO = {
    "start_step": 2,
    "refit_interval": 2,
    "ignore_steps": 0,
    "subsample": 1,
    "savgol_window": 3,
    "savgol_order": 1,
    "seq_len": SEQ,
}
LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


def write_corpus(root: Path, docs: int = 900) -> Path:
    rng = random.Random(0)
    words = {"en": "the river runs", "de": "der fluss fliesst", "fr": "la riviere coule"}
    path = root / "data.jsonl"
    with path.open("wb") as f:
        for i in range(docs):
            language = ("en", "de", "fr")[i % 3]
            text = f"{i} " + " ".join(words[language] for _ in range(rng.randint(3, 20)))
            f.write(orjson.dumps({"text": text, "meta": {"language": language}}) + b"\n")
    return path


LANGUAGES = {"en": "the of and to in is was for", "de": "der die und das ist nicht mit",
             "fr": "le la les et est pas une dans"}  # fmt: skip


def write_language_corpus(root: Path, tokenizer_path: Path) -> Any:
    """900 JSONL documents of three languages (``root/corpus.jsonl``, random words of each)
    registered as ``corpus`` (property ``language``) in the catalog at ``root/home``, and a
    300-token BPE trained on the first 300, saved at ``tokenizer_path`` and returned (the
    OLMo-core and torchtitan examples)."""
    rng = random.Random(0)
    path = root / "corpus.jsonl"
    texts = []
    with path.open("wb") as f:
        for i in range(900):
            language = ("en", "de", "fr")[i % 3]
            words = LANGUAGES[language].split()
            text = f"{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(10, 80)))
            texts.append(text)
            f.write(orjson.dumps({"text": text, "meta": {"language": language}}) + b"\n")
    tokenizer = train_bpe(texts[:300], vocab_size=300)
    tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tokenizer_path)
    with Client.local(root / "home") as client:
        client.catalog.register(
            "corpus", path, properties={"language": "meta.language"}, progress=False
        )
    return tokenizer


@dataclass
class Setup:
    root: Path
    home: Path
    tokenizer: Path


def prepare(root: Path) -> Setup:
    """A catalog with dataset ``tiny`` (900 documents in 3 languages) and a 300-token BPE."""
    data = write_corpus(root)
    home = root / "home"
    with Client.local(home) as client:
        client.catalog.register(
            "tiny", data, properties={"language": "meta.language"}, progress=False
        )
    texts = [orjson.loads(line)["text"] for line in data.read_bytes().splitlines()[:300]]
    tokenizer = root / "tokenizer.json"
    train_bpe(texts, vocab_size=300).save(tokenizer)
    return Setup(root, home, tokenizer)


class Server:
    """``mixplane --home HOME serve --port 0`` on loopback (run by ``python``: another venv's
    interpreter where this one lacks the server extra)."""

    def __init__(self, home: Path, python: str = sys.executable) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME", "MIXPLANE_SERVER")}
        self.proc = subprocess.Popen(
            [python, "-m", "mixplane.cli", "--home", str(home), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        self.url = ""
        while time.monotonic() < deadline and not self.url:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
        if not self.url:
            self.stop()
            msg = "the mixplane server did not start"
            raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def submit(url: str, job_id: str, tokenizer: Path, *, dp_groups: int = NPROC) -> list[float]:
    """An ADO job on the server; returns its first weights."""
    with Client.remote(url) as client:
        job = client.submit(
            job_id,
            mixture=MIX,
            topology=Topology(dp_groups=dp_groups, ranks_per_group=NPROC // dp_groups),
            tokenizer=str(tokenizer),
            chunk_size=2048,
            seed=3,
            algorithm="ado",
            algorithm_options=ADO,
        )
        return [float(w) for w in job.weights]


def job_weights(url: str, job_id: str) -> tuple[list[float], int]:
    """The job's weights now and how many times ADO changed them."""
    with Client.remote(url) as client:
        job = client.job(job_id)
        changes = sum(e.get("cause") == "adapt" for e in job.mixture_log)
        return [float(w) for w in job.weights], changes


def batch_hash(input_ids: Any, labels: Any) -> str:
    digest = hashlib.sha256(np.asarray(input_ids, dtype=np.int64).tobytes())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def launch(script: Path, out: Path, *args: str) -> list[dict[str, Any]]:
    """``torchrun`` 2 CPU processes of ``script train ...``; every rank's records."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={NPROC}",
        str(script),
        "train",
        "--records",
        str(out),
        *args,
    ]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    if run.returncode != 0:
        msg = f"{' '.join(command)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
        raise RuntimeError(msg)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(NPROC)]


def prefetch(options: Any) -> dict[str, int]:
    """``prefetch=`` for the dataset when the command line set one (``--prefetch N``)."""
    return {"prefetch": options.prefetch} if options.prefetch >= 0 else {}


def measure(script: Path, root: Path, steps: int, prefetches: list[int]) -> list[list[Any]]:
    """Uninterrupted runs of ``steps`` steps, one per prefetch setting (-1: the default), each
    on a fresh job; every rank's data-wait figures of each."""
    setup = prepare(root)
    server = Server(setup.home)
    waits = []
    try:
        base = ["--server", server.url, "--tokenizer", str(setup.tokenizer)]
        for i, depth in enumerate(prefetches):
            job = f"measure{i}"
            submit(server.url, job, setup.tokenizer)
            records = launch(
                script,
                root / job,
                *base,
                "--job",
                job,
                "--dir",
                str(root / f"ck-{job}"),
                "--steps",
                str(steps),
                "--prefetch",
                str(depth),
            )
            waits.append([r["wait"] for r in records])
    finally:
        server.stop()
    return waits


def finish() -> None:
    """Leave the process group before exit (gloo's threads abort an exit that skips it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def write_records(out: Path, rank: int, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def prove(
    script: Path, root: Path, common: list[str], *, same_group: bool = False
) -> dict[str, Any]:
    """The protocol (see the module); prints the data-wait fraction and whether the resume
    matched; returns every run's records for tests. ``same_group``: also train ``STEPS // 2``
    steps with both processes in one DP group (``dp_groups=1``, ``ranks_per_group=2``: the
    tensor-parallel case), whose ranks must get identical batches."""
    setup = prepare(root)
    server = Server(setup.home)
    try:
        base = ["--server", server.url, "--tokenizer", str(setup.tokenizer), *common]
        weights0 = {j: submit(server.url, j, setup.tokenizer) for j in ("full", "split", "control")}
        full = launch(script, root / "full", *base, "--job", "full", "--dir", str(root / "ck-full"))
        split_dir = str(root / "ck-split")
        half = STEPS // 2
        first = launch(
            script,
            root / "first",
            *base,
            "--job",
            "split",
            "--dir",
            split_dir,
            "--stop-at",
            str(half),
        )
        # the negative control (in the same processes, after the resumed run): a second
        # trainer resumes a copy of the same checkpoint without the data state, on a fresh job
        # of the same definition
        control_dir = str(root / "ck-control")
        shutil.copytree(split_dir, control_dir)
        rest = launch(
            script,
            root / "rest",
            *base,
            "--job",
            "split",
            "--dir",
            split_dir,
            "--resume",
            str(half),
            "--control-job",
            "control",
            "--control-dir",
            control_dir,
        )
        control = [{"steps": r["control_steps"]} for r in rest]
        group: list[dict[str, Any]] = []
        if same_group:
            weights0["group"] = submit(server.url, "group", setup.tokenizer, dp_groups=1)
            group = launch(
                script,
                root / "group",
                *base,
                "--job",
                "group",
                "--dir",
                str(root / "ck-group"),
                "--steps",
                str(half),
            )
        final = {j: job_weights(server.url, j) for j in weights0 if j != "control"}
    finally:
        server.stop()

    matched = True
    for r in range(NPROC):
        expected = full[r]["steps"]
        got = first[r]["steps"] + rest[r]["steps"]
        matched &= [s["hash"] for s in got] == [s["hash"] for s in expected]
        matched &= [s["loss"] for s in rest[r]["steps"]] == [s["loss"] for s in expected[half:]]
    hashes = [{s["hash"] for s in full[r]["steps"]} for r in range(NPROC)]
    disjoint = not (hashes[0] & hashes[1])
    control_differs = all(
        [s["hash"] for s in control[r]["steps"]] != [s["hash"] for s in full[r]["steps"][half:]]
        for r in range(NPROC)
    )
    adapted = final["full"][1] > 0 and final["full"][0] != weights0["full"]
    if group:  # one DP group: both ranks trained on the same batches, step by step
        hashes_in_group = [[s["hash"] for s in group[r]["steps"]] for r in range(NPROC)]
        identical = len(hashes_in_group[0]) == half and hashes_in_group[0] == hashes_in_group[1]
        print(
            f"one DP group of {NPROC} ranks ({half} steps): identical batches on every rank: "
            f"{identical}; ADO changes {final['group'][1]}"
        )
    same_weights = final["split"][0] == final["full"][0]
    waits = [full[r]["wait"] for r in range(NPROC)]
    print(
        "data wait (share of the training loop spent in the loader's next()): "
        + ", ".join(
            f"rank {r} {100 * w['fraction']:.1f}% ({100 * w['after_first']:.1f}% after the "
            "first batch)"
            for r, w in enumerate(waits)
        )
        + f"; {STEPS} steps of {BATCH}x{SEQ} tokens per rank"
    )
    print(
        f"ADO: weights {np.round(weights0['full'], 3).tolist()} -> "
        f"{np.round(final['full'][0], 3).tolist()} ({final['full'][1]} changes)"
    )
    print(
        f"resume {'matched' if matched and same_weights else 'DID NOT MATCH'} the uninterrupted "
        f"run on every rank (batches and losses after step {half}, final ADO weights); "
        f"without the data state it {'differs' if control_differs else 'DOES NOT DIFFER'}"
    )
    return {
        "full": full,
        "first": first,
        "rest": rest,
        "control": control,
        "matched": matched,
        "same_weights": same_weights,
        "disjoint": disjoint,
        "control_differs": control_differs,
        "adapted": adapted,
        "final": final,
        "weights0": weights0,
        "group": group,
    }


if __name__ == "__main__":
    print(__doc__)
