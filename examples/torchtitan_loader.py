"""torchtitan's ``torchtitan.train`` on a mixplane job: its smallest llama3 on the CPU (gloo).

``mixplane_llama3()`` is a torchtitan config function (``--module torchtitan_loader --config
mixplane_llama3``): llama3's ``debugmodel`` with ``MixplaneDataLoader.Config`` as the data
loader, so ``torchtitan.train`` runs unedited. For 1 and 2 ranks this script trains ``--steps``
steps uninterrupted (a checkpoint at half of them), resumes from that checkpoint in new
processes, and checks that every rank's batches (token hashes) and losses after the resume are
the uninterrupted run's, that the DP ranks read disjoint windows, and that resuming without the
data state differs. It prints the share of step time spent waiting for the next batch.

torchtitan 0.3.0 on a CPU needs workarounds, all here (``cpu_workarounds``), none in mixplane:
``triton`` installed (imported unconditionally), the device probe of ``torchtitan.tools.utils``
(CUDA when no accelerator) answered "cpu" before torchtitan is imported,
``torch.distributed.set_timeout`` (absent from torch 2.13) aliased, and SDPA attention (the
default flex attention does not train on the CPU).

Run (torchtitan pins datasets<4.8, so it has its own venv)::

    python3.11 -m venv .venv-torchtitan && .venv-torchtitan/bin/pip install -e '.[torchtitan]'
    .venv-torchtitan/bin/python examples/torchtitan_loader.py [--ranks 1 2] [--steps 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.tokens.tokenizer import train_bpe

SEQ = 64
BATCH = 4  # windows per rank per step
LANGUAGES = {"en": "the of and to in is was for", "de": "der die und das ist nicht mit",
             "fr": "le la les et est pas une dans"}  # fmt: skip
MIXTURE = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}


def write_data(root: Path, ranks: int) -> None:
    """A JSONL corpus of three languages, a 300-token BPE (also as torchtitan's assets) and a
    saved snapshot of a job for ``ranks`` DP ranks."""
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
    (root / "assets").mkdir(exist_ok=True)
    tokenizer.save(root / "assets" / "tokenizer.json")
    with Client.local(root / "home") as client:
        client.catalog.register(
            "corpus", path, properties={"language": "meta.language"}, progress=False
        )
        for n in (1, 2) if ranks == 0 else (ranks,):
            job = client.submit(
                f"titan{n}", topology=Topology(dp_groups=n), tokenizer=tokenizer,
                mixture=MIXTURE, unit="tokens", chunk_size=512, seed=0,
            )  # fmt: skip
            job.snapshot().save(root / f"job{n}")


# ---------------------------------------------------------------- inside a torchtitan process


def cpu_workarounds() -> None:
    """torchtitan 0.3.0 on a CPU (see the module); before torchtitan is imported."""
    import torch
    import torch._utils
    import torch.distributed

    original = torch._utils._get_available_device_type
    torch._utils._get_available_device_type = lambda: original() or "cpu"
    # what torchtitan asks of its device module, for the CPU (memory figures: none)
    cpu = torch.cpu
    for name, value in {
        "get_device_name": lambda device=None: "cpu",
        "get_device_properties": lambda device=None: type(
            "Properties", (), {"total_memory": 1 << 40, "name": "cpu"}
        )(),
        "reset_peak_memory_stats": lambda device=None: None,
        "empty_cache": lambda: None,
        "memory_stats": lambda device=None: {},
    }.items():
        if not hasattr(cpu, name):
            setattr(cpu, name, value)
    cpu.current_device = lambda: 0  # an index (barrier device_ids), not torch.cpu's "cpu"
    if not hasattr(torch.distributed, "set_timeout"):
        from torch.distributed.distributed_c10d import _set_pg_timeout

        torch.distributed.set_timeout = lambda timeout, group=None: _set_pg_timeout(timeout, group)  # type: ignore[attr-defined]


def cpu_attention() -> None:
    """Flex attention has no backward on the CPU: the same masks, dense, through SDPA; and
    FSDP's gradient reduction as sums (gloo)."""
    import torch.nn.functional as F  # noqa: N812
    from torch.nn.attention.flex_attention import create_block_mask, create_mask
    from torchtitan.models.common import attention
    from torchtitan.models.common.attention import FlexAttention

    def dense(q: Any, k: Any, v: Any, *, block_mask: Any, scale: Any, enable_gqa: bool,
              **kwargs: Any) -> tuple[Any, None]:  # fmt: skip
        mask = create_mask(block_mask.mask_mod, q.shape[0], 1, q.shape[2], k.shape[2], q.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa
        )
        return out, None

    FlexAttention._compiled_flex_attn = staticmethod(dense)
    attention._compiled_create_block_mask = create_block_mask  # no compile for tiny masks

    # gloo has no PREMUL_SUM: FSDP reduces gradients with plain sums (torchtitan already sets
    # the divide factor to 1 and scales by the global token count itself)
    from torch.distributed.fsdp import FSDPModule
    from torchtitan.distributed import fsdp

    undivided = fsdp.disable_fsdp_gradient_division

    def summed(model: Any) -> None:
        undivided(model)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)

    fsdp.disable_fsdp_gradient_division = summed


def mixplane_llama3() -> Any:
    """torchtitan config function: llama3 debugmodel (SDPA) trained on the mixplane job
    named by the environment (``MIXPLANE_JOB``, ``MIXPLANE_TOKENIZER``)."""
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    cpu_attention()
    config = llama3_debugmodel()
    config.hf_assets_path = os.environ["MIXPLANE_ASSETS"]
    config.dataloader = Recorder.Config(
        job_path=os.environ["MIXPLANE_JOB"], tokenizer_path=os.environ["MIXPLANE_TOKENIZER"]
    )
    config.training.local_batch_size = BATCH
    config.training.seq_len = SEQ
    config.validator.enable = False
    config.compile.enable = False
    return config


def _recorder() -> Any:
    from mixplane.integrations.torchtitan import MixplaneDataLoader

    class Recorder(MixplaneDataLoader):  # type: ignore[misc]
        """The loader, writing per step the batch's token hash and the time waited for it."""

        @dataclass(kw_only=True, slots=True)
        class Config(MixplaneDataLoader.Config):  # type: ignore[misc]
            """Its own Config: torchtitan builds the class that owns the Config."""

        def __iter__(self) -> Any:
            out = Path(os.environ["MIXPLANE_OUT"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"
            batches = super().__iter__()
            while True:
                asked = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    return
                inputs = batch[0]["input"]
                row = {
                    "hash": hashlib.sha256(inputs.numpy().tobytes()).hexdigest()[:16],
                    "windows": [
                        hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16] for w in inputs
                    ],
                    "wait": time.perf_counter() - asked,
                    "at": asked,
                }
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                yield batch

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if os.environ.get("MIXPLANE_FORGET") != "1":  # the negative control keeps nothing
                super().load_state_dict(state_dict)

    return Recorder


if "MIXPLANE_JOB" in os.environ:  # imported by torchtitan's config manager
    Recorder = _recorder()


def rank_main(argv: list[str]) -> None:
    cpu_workarounds()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torchtitan.train import main

    sys.argv = ["torchtitan.train", *argv]
    main()


# ---------------------------------------------------------------- the runs (this process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(root: Path, name: str, ranks: int, steps: int, *, forget: bool = False) -> list[str]:
    out = root / f"{name}-out"
    out.mkdir(exist_ok=True)
    port = _free_port()
    args = ["--module", "torchtitan_loader", "--config", "mixplane_llama3",
            "--training.steps", str(steps), "--dump_folder", str(root / name),
            "--checkpoint.enable", "--checkpoint.interval", str(steps // 2 if not forget and name.endswith("full") else steps),
            "--metrics.log_freq", "1"]  # fmt: skip
    if ranks > 1:  # FSDP over plain parameters (the default wants DTensors on the full mesh)
        args += ["--parallelism.spmd_backend", "partial_dtensor"]
    procs, logs = [], []
    for rank in range(ranks):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
                   LOCAL_WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", MIXPLANE_JOB=str(root / f"job{ranks}"),
                   MIXPLANE_TOKENIZER=str(root / "assets" / "tokenizer.json"),
                   MIXPLANE_ASSETS=str(root / "assets"), MIXPLANE_OUT=str(out),
                   MIXPLANE_FORGET="1" if forget else "0")  # fmt: skip
        logs.append(root / f"log-{name}-{time.monotonic_ns()}-rank{rank}.txt")
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "rank", *args],
                env=env,
                stdout=logs[-1].open("w"),
                stderr=subprocess.STDOUT,
            )
        )
    for rank, proc in enumerate(procs):
        if proc.wait(timeout=900) != 0:
            msg = f"rank {rank} of {name} failed:\n{logs[rank].read_text()[-4000:]}"
            raise RuntimeError(msg)
    return [log.read_text() for log in logs]


LOSS = re.compile(r"step:\s*(\d+)\s.*?loss:\s*([0-9.]+)")


def losses(text: str) -> dict[int, str]:
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return {int(step): loss for step, loss in LOSS.findall(plain)}


def rows(out: Path, ranks: int) -> list[list[dict[str, Any]]]:
    return [[json.loads(line) for line in (out / f"rank{r}.jsonl").open()] for r in range(ranks)]


def run(root: Path, ranks: int, steps: int, *, control: bool) -> dict[str, Any]:
    half = steps // 2
    full_logs = launch(root, f"{ranks}-full", ranks, steps)
    full = rows(root / f"{ranks}-full-out", ranks)
    checkpoint = root / f"{ranks}-full" / "checkpoint" / f"step-{half}"
    report: dict[str, Any] = {"ranks": ranks, "steps": steps}
    for name in ["resumed", "forgetful"] if control else ["resumed"]:
        target = root / f"{ranks}-{name}" / "checkpoint" / f"step-{half}"
        shutil.copytree(checkpoint, target)
        logs = launch(root, f"{ranks}-{name}", ranks, steps, forget=name == "forgetful")
        again = rows(root / f"{ranks}-{name}-out", ranks)
        same = [
            [r["hash"] for r in a] == [r["hash"] for r in f[half:]]
            for a, f in zip(again, full, strict=True)
        ]
        report[f"{name}_matched"] = all(same)
        if name == "resumed":
            want = [{s: v for s, v in losses(t).items() if s > half} for t in full_logs]
            got = [losses(t) for t in logs]
            report["losses"] = {"full": want, "resumed": got}
            report["losses_matched"] = bool(want[0]) and want == got
    report["control_differs"] = control and not report["forgetful_matched"]
    # step k runs from asking for its batch to asking for the next; the first (start-up) and
    # the last (no next) are left out
    waited = sum(rank_rows[k]["wait"] for rank_rows in full for k in range(1, len(rank_rows) - 1))
    spent = sum(b["at"] - a["at"] for rank_rows in full for a, b in pairwise(rank_rows[1:]))
    report["waiting"] = waited / spent
    steps_counted = sum(max(len(rank_rows) - 2, 0) for rank_rows in full)
    report["step_ms"] = 1000 * spent / steps_counted
    report["wait_ms"] = 1000 * waited / steps_counted
    if ranks == 2:
        seen = [{w for row in rank_rows for w in row["windows"]} for rank_rows in full]
        report["dp_disjoint"] = not (seen[0] & seen[1])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--report", type=Path, help="write the runs' figures here (JSON)")
    args = parser.parse_args()
    reports = []
    with tempfile.TemporaryDirectory(prefix="mixplane-titan-") as tmp:
        root = Path(os.environ.get("MIXPLANE_EXAMPLE_DIR") or tmp)
        write_data(root, 0)
        for ranks in args.ranks:
            report = run(root, ranks, args.steps, control=ranks == args.ranks[0])
            reports.append(report)
            if args.report is not None:
                args.report.write_text(json.dumps(reports))
            ok = report["resumed_matched"] and report["losses_matched"]
            print(
                f"torchtitan, {ranks} rank(s), {args.steps} steps: resume "
                f"{'matched' if ok else 'DIFFERED'} (batches and losses after resuming at step "
                f"{args.steps // 2}); without data state: "
                f"{'differs' if report['control_differs'] else 'SAME/not run'}; waiting for "
                f"data: {report['waiting']:.1%} of step time"
            )
            if ranks == 2:
                print(f"  dp ranks read disjoint windows: {report['dp_disjoint']}")
            assert ok, report
            assert report["control_differs"] or ranks != args.ranks[0]
            assert ranks != 2 or report["dp_disjoint"]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "rank":
        rank_main(sys.argv[2:])
    else:
        main()
