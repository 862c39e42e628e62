"""One rank sending per-domain loss feedback through a gloo group (run by test_pytorch).

python -m tests.integrations.feedback_proc SNAPSHOT TOKENIZER OUT.json
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mixplane.client.rank import RankWindows
from mixplane.client.snapshot import JobSnapshot
from mixplane.integrations.pytorch import LossFeedback, domain_loss_sums, window_tensors
from mixplane.job import Job
from mixplane.tokens import load_tokenizer


def main() -> None:
    snapshot, tokenizer, out = sys.argv[1:4]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    job = Job.from_snapshot(JobSnapshot.load(snapshot))
    windows = RankWindows(job, load_tokenizer(tokenizer), 32, dp_group=rank)
    batch = [window_tensors(w) for w in itertools.islice(windows, 6)]
    domain_ids = torch.stack([b["domain_ids"] for b in batch])
    loss = (torch.stack([b["input_ids"] for b in batch]) % 7).to(torch.float32) / 3
    local = domain_loss_sums(loss, domain_ids, job.num_components)
    LossFeedback(job)(5, loss, domain_ids)
    logged = [(s, lo.tolist(), c.tolist()) for s, lo, c in job.feedback_log]
    Path(out).write_text(
        json.dumps({"local": [t.tolist() for t in local], "logged": logged, "rank": rank})
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
