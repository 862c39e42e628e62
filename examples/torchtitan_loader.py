"""torchtitan's ``torchtitan.train`` on a mixplane job: its smallest llama3 on the CPU (gloo).

``mixplane_llama3()`` is a torchtitan config function (``--module torchtitan_loader --config
mixplane_llama3``): llama3's ``debugmodel`` with ``MixplaneDataLoader.Config`` as the data
loader and ``with_loss_feedback`` pairing its loss with it (per-component loss to the job once
per optimizer step), so ``torchtitan.train`` runs unedited. For 1 and 2 ranks this script trains
``--steps`` steps uninterrupted (a checkpoint at half of them), resumes from that checkpoint in
new processes, and checks that every rank's batches (token hashes) and losses after the resume
are the uninterrupted run's, that the DP ranks read disjoint windows, that resuming without the
data state differs, and that feedback went out at every step, numbered alike after the resume,
with every loss value the plain loss's. ``--algorithm ado`` (the default) makes the 1-rank job
adaptive: feedback must move its weights, and the resumed run must end with the uninterrupted
run's weights and mixture log. ``--server``: 2 ranks on an ADO job of a ``mixplane serve``
(stop at half, resume; see ``run_remote``). It prints the share of step time spent waiting for
the next batch.

torchtitan 0.3.0 on a CPU needs workarounds, all here (``cpu_workarounds``), none in mixplane:
``triton`` installed (imported unconditionally), the device probe of ``torchtitan.tools.utils``
(CUDA when no accelerator) answered "cpu" before torchtitan is imported,
``torch.distributed.set_timeout`` (absent from torch 2.13) aliased, and SDPA attention (the
default flex attention does not train on the CPU).

Run (torchtitan pins datasets<4.8, so it has its own venv)::

    python3.11 -m venv .venv-torchtitan && .venv-torchtitan/bin/pip install -e '.[torchtitan]'
    .venv-torchtitan/bin/python examples/torchtitan_loader.py [--ranks 1 2] [--steps 8] [--server]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
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

from mixplane.chunking import Topology
from mixplane.client import Client

SEQ = 64
BATCH = 4  # windows per rank per step
MIXTURE = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
ADO = {"start_step": 2, "refit_interval": 2, "ignore_steps": 0, "subsample": 1,
       "savgol_window": 3, "savgol_order": 1, "seq_len": SEQ}  # fmt: skip


def write_data(root: Path, ranks: int, algorithm: str = "static") -> None:
    """A JSONL corpus of three languages, a 300-token BPE (also as torchtitan's assets) and a
    saved snapshot of a job for ``ranks`` DP ranks (0: 1 and 2); ``algorithm="ado"``: the
    1-rank job adapts (in-process adaptive mixing needs one rank: one planner)."""
    from trainer_harness import write_language_corpus

    tokenizer = write_language_corpus(root, root / "assets" / "tokenizer.json")
    with Client.local(root / "home") as client:
        for n in (1, 2) if ranks == 0 else (ranks,):
            adaptive = algorithm == "ado" and n == 1
            job = client.submit(
                f"titan{n}", topology=Topology(dp_groups=n), tokenizer=tokenizer,
                mixture=MIXTURE, unit="tokens", chunk_size=512 if not adaptive else 128, seed=0,
                algorithm="ado" if adaptive else None, algorithm_options=ADO if adaptive else None,
            )  # fmt: skip
            job.snapshot().save(root / f"job{n}")
        if ranks == 0:  # one DP group of 2 ranks (tensor parallel), static
            job = client.submit(
                "titan-tp", topology=Topology(dp_groups=1, ranks_per_group=2),
                tokenizer=tokenizer, mixture=MIXTURE, unit="tokens", chunk_size=512, seed=0,
            )  # fmt: skip
            job.snapshot().save(root / "jobtp")


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

    from mixplane.integrations.torchtitan import with_loss_feedback

    cpu_attention()
    config = llama3_debugmodel()
    config.hf_assets_path = os.environ["MIXPLANE_ASSETS"]
    tokenizer = os.environ["MIXPLANE_TOKENIZER"]
    if "MIXPLANE_JOB_ID" in os.environ:  # a job of a mixplane server
        config.dataloader = Recorder.Config(
            server=os.environ["MIXPLANE_SERVER"], job_id=os.environ["MIXPLANE_JOB_ID"],
            tokenizer_path=tokenizer,
        )  # fmt: skip
    else:
        config.dataloader = Recorder.Config(
            job_path=os.environ["MIXPLANE_JOB"], tokenizer_path=tokenizer
        )
    # llama3's chunked loss, its per-chunk loss recorded (a MixplaneLoss: with_loss_feedback
    # keeps it) and paired with the loader
    config.loss.loss_fn = LossRecorder.Config(loss=config.loss.loss_fn)
    with_loss_feedback(config)
    config.training.local_batch_size = BATCH
    config.training.seq_len = SEQ
    config.validator.enable = False
    config.debug.seed = 0  # the same initial model in every run (runs on 2 jobs compare)
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
            stop_at = int(os.environ.get("MIXPLANE_STOP_AT", "0"))  # stop the run there
            for count in itertools.count():
                if stop_at and count == stop_at:
                    return  # torchtitan: "ran out of data", after the checkpoint of stop_at
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


def _loss_recorder() -> Any:
    import torch

    from mixplane.integrations.torchtitan import MixplaneLoss

    class LossRecorder(MixplaneLoss):  # type: ignore[misc]
        """The paired loss, writing after each feedback the job's weights and mixture log,
        and whether every loss value was the plain loss's."""

        @dataclass(kw_only=True, slots=True)
        class Config(MixplaneLoss.Config):  # type: ignore[misc]
            """Its own Config (see Recorder)."""

        def __init__(self, config: Any, *, compile_config: Any = None) -> None:
            super().__init__(config, compile_config=compile_config)
            self.plain = config.loss.build(compile_config=compile_config)
            self.same = True

        def __call__(self, pred: Any, labels: Any, global_valid_tokens: Any = None,
                     **kwargs: Any) -> Any:  # fmt: skip
            value, metrics = super().__call__(pred, labels, global_valid_tokens, **kwargs)
            with torch.no_grad():
                plain, _ = self.plain(pred.detach(), labels, global_valid_tokens, **kwargs)
            self.same = self.same and bool(torch.equal(value.detach(), plain))
            return value, metrics

        def send(self) -> None:
            super().send()
            loader = self.loader()
            job = loader.dataset.planner
            row = {"step": loader.feedback_steps, "same_loss": self.same,
                   "weights": [float(w) for w in job.weights], "log": job.mixture_log}  # fmt: skip
            name = f"rank{os.environ.get('RANK', '0')}-feedback.jsonl"
            with (Path(os.environ["MIXPLANE_OUT"]) / name).open("a") as f:
                f.write(json.dumps(row, default=lambda v: v.tolist()) + "\n")

    return LossRecorder


# torchtitan's config manager imports this file as a module in the rank processes (after
# cpu_workarounds: these import torchtitan)
if {"MIXPLANE_JOB", "MIXPLANE_JOB_ID"} & set(os.environ) and __name__ != "__main__":
    Recorder = _recorder()
    LossRecorder = _loss_recorder()


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


def launch(root: Path, name: str, ranks: int, steps: int, *, forget: bool = False,
           every: int = 0, server: str = "", job_id: str = "", stop_at: int = 0,
           job: str = "", extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """``ranks`` processes of ``torchtitan.train`` for ``steps`` steps on the job snapshot of
    ``ranks`` DP ranks (or ``job_id`` of ``server``), a checkpoint every ``every`` steps
    (default: half of them for the uninterrupted runs), stopping after ``stop_at`` batches;
    ``job``: another snapshot folder, ``extra``: more torchtitan arguments."""
    out = root / f"{name}-out"
    out.mkdir(exist_ok=True)
    port = _free_port()
    every = every or (steps // 2 if not forget and name.endswith("full") else steps)
    args = ["--module", "torchtitan_loader", "--config", "mixplane_llama3",
            "--training.steps", str(steps), "--dump_folder", str(root / name),
            "--checkpoint.enable", "--checkpoint.interval", str(every),
            "--metrics.log_freq", "1"]  # fmt: skip
    source = {"MIXPLANE_SERVER": server, "MIXPLANE_JOB_ID": job_id} if server else {
        "MIXPLANE_JOB": job or str(root / f"job{ranks}")}  # fmt: skip
    if ranks > 1:  # FSDP over plain parameters (the default wants DTensors on the full mesh)
        args += ["--parallelism.spmd_backend", "partial_dtensor"]
    args += extra
    procs, logs = [], []
    for rank in range(ranks):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
                   LOCAL_WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", MIXPLANE_TOKENIZER=str(root / "assets" / "tokenizer.json"),
                   MIXPLANE_ASSETS=str(root / "assets"), MIXPLANE_OUT=str(out),
                   MIXPLANE_FORGET="1" if forget else "0", MIXPLANE_STOP_AT=str(stop_at),
                   **source)  # fmt: skip
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


def rows(out: Path, ranks: int, kind: str = "") -> list[list[dict[str, Any]]]:
    return [
        [json.loads(line) for line in (out / f"rank{r}{kind}.jsonl").open()] for r in range(ranks)
    ]


def feedback_report(root: Path, ranks: int, steps: int) -> dict[str, Any]:
    """What the paired loss sent (rank 0's job after each step's feedback), uninterrupted and
    resumed: the steps numbered alike, the loss values the plain loss's, the final weights
    and mixture log equal, and how often the weights changed."""
    full = rows(root / f"{ranks}-full-out", ranks, "-feedback")
    resumed = rows(root / f"{ranks}-resumed-out", ranks, "-feedback")
    last, again = full[0][-1], resumed[0][-1]
    return {
        "steps": [r["step"] for r in full[0]],
        "resumed_steps": [r["step"] for r in resumed[0]],
        "same_loss": all(r["same_loss"] for part in (full, resumed) for rank in part for r in rank),
        "weights0": last["log"][0]["weights"],
        "weights": last["weights"],
        "changes": sum(entry.get("cause") == "adapt" for entry in last["log"]),
        "resumed_weights": again["weights"],
        "log_matched": again["log"] == last["log"] and again["weights"] == last["weights"],
        "sent_every_step": [r["step"] for r in full[0]] == list(range(1, steps + 1))
        and [r["step"] for r in resumed[0]] == list(range(steps // 2 + 1, steps + 1)),
    }


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
    report["feedback"] = feedback_report(root, ranks, steps)
    return report


def run_tensor_parallel(root: Path, steps: int) -> dict[str, Any]:
    """2 ranks in one DP group (tensor parallel degree 2: torchtitan hands the loader
    ``dp_world_size=1``) on a static job: both ranks must get the same batch at every step,
    and both take part in the feedback (all-reduced, divided by the 2 ranks of the group)."""
    launch(root, "tp", 2, steps, job=str(root / "jobtp"),
           extra=("--parallelism.tensor_parallel_degree", "2"))  # fmt: skip
    hashes = [[r["hash"] for r in rank] for rank in rows(root / "tp-out", 2)]
    sent = rows(root / "tp-out", 2, "-feedback")
    return {
        "tp": 2,
        "steps": len(hashes[0]),
        "identical": len(hashes[0]) == steps and hashes[0] == hashes[1],
        "sent": [[r["step"] for r in rank] for rank in sent],
        "same_loss": all(r["same_loss"] for rank in sent for r in rank),
    }


def run_remote(root: Path, steps: int) -> dict[str, Any]:
    """2 DP ranks on an ADO job of a mixplane server (adaptive mixing on several ranks needs
    one planner): ``steps`` steps uninterrupted on job ``full``; on job ``split`` half of them,
    the processes stopped after torchtitan's checkpoint there, then resumed in new processes.
    Every rank's batches and the losses after the resume must be the uninterrupted run's, and
    both jobs must end with the same ADO weights and mixture log."""
    from trainer_harness import Server  # a ``mixplane serve`` subprocess on loopback

    half = steps // 2
    # torchtitan's venv has no server extra (FastAPI, uvicorn): the server runs where it is
    # installed (MIXPLANE_SERVER_PYTHON, default the repository's .venv); ranks only speak HTTP
    main_venv = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    python = os.environ.get("MIXPLANE_SERVER_PYTHON") or (
        str(main_venv) if main_venv.exists() else sys.executable
    )
    server = Server(root / "home", python)
    try:
        weights0 = {}
        with Client.remote(server.url) as client:
            for job_id in ("full", "split"):
                job = client.submit(
                    job_id, topology=Topology(dp_groups=2), mixture=MIXTURE, unit="tokens",
                    tokenizer=str(root / "assets" / "tokenizer.json"), chunk_size=128, seed=0,
                    algorithm="ado", algorithm_options=ADO,
                )  # fmt: skip
                weights0[job_id] = [float(w) for w in job.weights]
        common = {"server": server.url, "every": half}
        full_logs = launch(root, "remote-full", 2, steps, job_id="full", **common)
        launch(root, "remote-first", 2, steps, job_id="split", stop_at=half, **common)
        checkpoint = root / "remote-first" / "checkpoint" / f"step-{half}"
        shutil.copytree(checkpoint, root / "remote-rest" / "checkpoint" / f"step-{half}")
        rest_logs = launch(root, "remote-rest", 2, steps, job_id="split", **common)
        with Client.remote(server.url) as client:
            final = {
                j: ([float(w) for w in client.job(j).weights], client.job(j).mixture_log)
                for j in ("full", "split")
            }
    finally:
        server.stop()
    full = rows(root / "remote-full-out", 2)
    split = [a + b for a, b in zip(rows(root / "remote-first-out", 2),
                                   rows(root / "remote-rest-out", 2), strict=True)]  # fmt: skip
    want = [{s: v for s, v in losses(t).items() if s > half} for t in full_logs]
    seen = [{w for row in rank_rows for w in row["windows"]} for rank_rows in full]
    sent = rows(root / "remote-rest-out", 2, "-feedback")[0]
    return {
        "resumed_matched": [[r["hash"] for r in rank] for rank in split]
        == [[r["hash"] for r in rank] for rank in full],
        "losses_matched": bool(want[0]) and want == [losses(t) for t in rest_logs],
        "dp_disjoint": not (seen[0] & seen[1]),
        "weights0": weights0["full"],
        "weights": final["full"][0],
        "changes": sum(e.get("cause") == "adapt" for e in final["full"][1]),
        "log_matched": final["split"] == final["full"],
        "resumed_steps": [r["step"] for r in sent],
        "same_loss": all(r["same_loss"] for r in sent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--report", type=Path, help="write the runs' figures here (JSON)")
    parser.add_argument(
        "--algorithm", choices=["static", "ado"], default="ado",
        help="the 1-rank job's mixture: ADO (adapted by the paired loss's feedback) or static",
    )  # fmt: skip
    parser.add_argument(
        "--tp", action="store_true",
        help="also 2 ranks in one DP group (tensor parallel 2): the same batches on both",
    )  # fmt: skip
    parser.add_argument(
        "--server", action="store_true",
        help="also 2 ranks on an ADO job of a mixplane server, stopped and resumed",
    )  # fmt: skip
    args = parser.parse_args()
    reports = []
    with tempfile.TemporaryDirectory(prefix="mixplane-titan-") as tmp:
        root = Path(os.environ.get("MIXPLANE_EXAMPLE_DIR") or tmp)
        write_data(root, 0, args.algorithm)
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
            fed = report["feedback"]
            adaptive = ranks == 1 and args.algorithm == "ado"
            print(
                f"  loss feedback: sent at steps {fed['steps']} (resumed: "
                f"{fed['resumed_steps']}), loss values the plain loss's: {fed['same_loss']}"
                + (
                    f"; ADO weights {[round(w, 3) for w in fed['weights0']]} -> "
                    f"{[round(w, 3) for w in fed['weights']]} ({fed['changes']} changes), "
                    f"resumed run's weights and mixture log "
                    f"{'equal' if fed['log_matched'] else 'DIFFER'}"
                    if adaptive
                    else ""
                )
            )
            assert ok, report
            assert fed["sent_every_step"] and fed["same_loss"] and fed["log_matched"], fed
            assert not adaptive or (fed["changes"] > 0 and fed["weights"] != fed["weights0"])
            assert report["control_differs"] or ranks != args.ranks[0]
            assert ranks != 2 or report["dp_disjoint"]
        if args.tp:
            tp = run_tensor_parallel(root, args.steps // 2)
            reports.append(tp)
            if args.report is not None:
                args.report.write_text(json.dumps(reports))
            print(
                f"torchtitan, 2 ranks in one DP group (TP 2), {tp['steps']} steps: the same "
                f"batches on both ranks: {tp['identical']}; feedback sent at steps {tp['sent']}"
            )
            assert tp["identical"] and tp["same_loss"], tp
            assert tp["sent"] == [list(range(1, args.steps // 2 + 1))] * 2, tp
        if args.server:
            remote = run_remote(root, args.steps)
            reports.append({"ranks": 2, "server": True, **remote})
            if args.report is not None:
                args.report.write_text(json.dumps(reports))
            print(
                f"torchtitan, 2 ranks on a server's ADO job, {args.steps} steps: stopped at "
                f"{args.steps // 2} and resumed: batches "
                f"{'matched' if remote['resumed_matched'] else 'DIFFERED'}, losses "
                f"{'matched' if remote['losses_matched'] else 'DIFFERED'}; ADO weights "
                f"{[round(w, 3) for w in remote['weights0']]} -> "
                f"{[round(w, 3) for w in remote['weights']]} ({remote['changes']} changes), "
                f"split run's weights and mixture log "
                f"{'equal' if remote['log_matched'] else 'DIFFER'}; dp ranks disjoint: "
                f"{remote['dp_disjoint']}"
            )
            assert remote["resumed_matched"] and remote["losses_matched"], remote
            assert remote["log_matched"] and remote["changes"] > 0 and remote["dp_disjoint"]
            assert remote["same_loss"] and remote["resumed_steps"] == list(
                range(args.steps // 2 + 1, args.steps + 1)
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "rank":
        rank_main(sys.argv[2:])
    else:
        main()
