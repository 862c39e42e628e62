"""One rank (or one resume step) of a training process, run by the integration tests.

    python -m tests.integrations.rank_proc SNAPSHOT TOKENIZER OUT.json --batches N
        [--workers W] [--batch-size B] [--seq-len L] [--stop-after K --state-out F]
        [--resume-from F] [--dist] [--mesh DP,TP]

Writes {"batches": [sha256 of each batch's tensors ...], "rank": r} to OUT.json. With --dist
it joins a gloo process group from the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from mixplane.integrations.pytorch import TokenWindowDataset, collate_windows


def digest(batch: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in ("input_ids", "labels", "domain_ids", "position_ids", "cu_seqlens", "component"):
        h.update(batch[name].numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("snapshot")
    parser.add_argument("tokenizer")
    parser.add_argument("out")
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--state-out")
    parser.add_argument("--resume-from")
    parser.add_argument("--dist", action="store_true")
    parser.add_argument("--mesh")
    args = parser.parse_args()
    mesh = None
    if args.dist:
        dist.init_process_group("gloo")
        if args.mesh:
            from torch.distributed.device_mesh import init_device_mesh

            shape = tuple(int(x) for x in args.mesh.split(","))
            mesh = init_device_mesh("cpu", shape, mesh_dim_names=("dp", "tp"))
    dataset = TokenWindowDataset(
        args.snapshot, args.tokenizer, args.seq_len, batch_size=args.batch_size, device_mesh=mesh
    )
    loader = StatefulDataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=collate_windows,
    )
    if args.resume_from:
        loader.load_state_dict(json.loads(Path(args.resume_from).read_text()))
    out = []
    for i, batch in enumerate(loader):
        if i == args.batches:
            break
        out.append(digest(batch))
        if args.stop_after is not None and i + 1 == args.stop_after:
            Path(args.state_out).write_text(json.dumps(loader.state_dict()))
            break
    rank = dist.get_rank() if args.dist else 0
    Path(args.out).write_text(json.dumps({"batches": out, "rank": rank, "pid": os.getpid()}))
    if args.dist:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
