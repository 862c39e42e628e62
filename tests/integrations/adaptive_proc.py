"""One rank of an in-process adaptive job in a gloo group (run by test_inprocess_adaptive).

    python -m tests.integrations.adaptive_proc SNAPSHOT TOKENIZER OUT.json --steps N
        [--stop-after K --state-out F] [--resume-from F]  (F.<rank>: each rank's state) [--mode agree|own-at|diverge]

Every rank opens the job from the same snapshot in its own process (no server), streams its
windows through ``TokenWindowDataset`` and a ``StatefulDataLoader`` and sends each step's
per-token loss through ``LossFeedback``. The loss of a token is a power law of the tokens its
component has seen in all ranks (``step_loss``), so ADO has laws to fit and two runs that
receive the same windows send the same feedback. ``--mode own-at`` (a negative control)
reduces the numbers the same way but applies them at each rank's own change point;
``--mode diverge`` changes rank 1's mixture alone before training, ``--mode other-job`` opens
another job on rank 1, ``--mode subgroup`` reduces over each rank alone.

Writes {"steps": [{"batch", "weights", "log_len", "at"}, ...], "mixture_log", "chunks" (the
chunks read: index, mixture version, samples), "error"} to OUT.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from mixplane.client.snapshot import JobSnapshot
from mixplane.errors import PlanError
from mixplane.integrations.pytorch import (
    LossFeedback,
    TokenWindowDataset,
    collate_windows,
    domain_loss_sums,
)
from mixplane.job import Job
from mixplane.tokens import load_tokenizer

SEQ = 32
BATCH = 4


def loss_of(component: int, seen: float) -> float:
    return 2.0 + 0.25 * component + 4.0 * (1.0 + seen) ** -(0.2 + 0.1 * (component % 3))


def step_loss(domain_ids: torch.Tensor, seen: list[float]) -> torch.Tensor:
    """Each token's loss: its component's power law at the tokens that component has seen."""
    base = torch.tensor([loss_of(c, s) for c, s in enumerate(seen)], dtype=torch.float32)
    return base[domain_ids]


def batch_digest(input_ids: np.ndarray, components: np.ndarray) -> str:
    return hashlib.sha256(
        input_ids.astype(np.int64).tobytes() + components.astype(np.int64).tobytes()
    ).hexdigest()


def record(job: Job, batch: dict[str, Any], at: int | None) -> dict[str, Any]:
    ids, components = batch["input_ids"].numpy(), batch["component"].numpy()
    return {
        "batch": batch_digest(ids, components),
        "weights": job.weights.tolist(),
        "log_len": len(job.mixture_log),
        "at": at,
    }


def chunks_read(job: Job, dp_group: int) -> list[dict[str, Any]]:
    """The chunks this rank's consumer has read so far (the current one too): index, mixture
    version and samples (file, ordinal)."""
    consumer = job.topology.consumer(dp_group, 0)
    out = []
    for j in range(job.progress().positions[consumer]["j"] + 1):
        index, start = job.assignment.chunk(consumer, j)
        spec = job.chunk(index)
        assert spec is not None and start == 0
        samples = [
            [int(f), int(first) + i]
            for f, first, n in zip(spec.files, spec.starts, spec.lengths, strict=True)
            for i in range(int(n))
        ]
        out.append({"index": index, "version": spec.mixture_version, "samples": samples})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("snapshot")
    parser.add_argument("tokenizer")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--state-out")
    parser.add_argument("--resume-from")
    parser.add_argument(
        "--mode", choices=("agree", "own-at", "diverge", "other-job", "subgroup"), default="agree"
    )
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tokenizer = load_tokenizer(args.tokenizer)
    snapshot = Path(args.snapshot)
    if args.mode == "other-job" and rank == 1:
        snapshot = snapshot.with_name(snapshot.name + "-lp")  # another algorithm: another spec
    job = Job.from_snapshot(JobSnapshot.load(snapshot), tokenizer)
    dataset = TokenWindowDataset(job, tokenizer, SEQ, batch_size=BATCH)
    loader = StatefulDataLoader(dataset, batch_size=BATCH, collate_fn=collate_windows)
    step, seen = 1, [0.0] * job.num_components
    if args.resume_from:
        saved = json.loads(Path(f"{args.resume_from}.{rank}").read_text())
        loader.load_state_dict(saved["loader"])
        step, seen = saved["step"], saved["seen"]
    if args.mode == "diverge" and rank == 1:
        job.set_weights(job.weights)  # a mixture change on this rank alone
    steps: list[dict[str, Any]] = []
    out: dict[str, Any] = {"rank": rank, "steps": steps, "error": None}
    groups = [dist.new_group([r]) for r in range(2)]
    try:
        feedback = LossFeedback(job, group=groups[rank] if args.mode == "subgroup" else None)
    except PlanError as exc:
        out["error"] = str(exc)
        Path(args.out).write_text(json.dumps(out))
        return
    for batch in loader:
        domains = batch["domain_ids"]
        loss = step_loss(domains, seen)
        try:
            if args.mode == "own-at":
                both = torch.stack(domain_loss_sums(loss, domains, job.num_components))
                dist.all_reduce(both)
                at = job.feedback(step, both[0].numpy(), both[1].numpy())
            else:
                at = feedback(step, loss, domains)
        except PlanError as exc:
            out["error"] = str(exc)
            break
        counts = job.feedback_log[-1][2]  # the reduced token counts, as every rank applied them
        seen = [s + float(c) for s, c in zip(seen, counts, strict=True)]
        steps.append(record(job, batch, at))
        if step == args.stop_after:
            state = {"loader": loader.state_dict(), "step": step + 1, "seen": seen}
            Path(f"{args.state_out}.{rank}").write_text(json.dumps(state))
            break
        if step == args.steps:
            break
        step += 1
    out["mixture_log"] = job.mixture_log
    fresh = out["error"] is None and args.resume_from is None  # a restored job's plan starts later
    out["chunks"] = chunks_read(job, rank) if fresh else []
    Path(args.out).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
