"""The paired loss's refusals, in one process of torchtitan's venv (``test_torchtitan.py`` runs
it; prints a JSON object): the loss value is the plain loss's, a step's feedback reaches the job
once per ``send``, and each misuse raises ``PlanError`` naming it."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import torchtitan_loader

torchtitan_loader.cpu_workarounds()  # before torchtitan is imported

import torch  # noqa: E402
from torchtitan.components.loss import CrossEntropyLoss  # noqa: E402
from torchtitan.distributed import ParallelDims  # noqa: E402

from mixplane.errors import PlanError  # noqa: E402
from mixplane.integrations.torchtitan import (  # noqa: E402
    MixplaneDataLoader,
    MixplaneLoss,
    SendFeedback,
)


def refusal(action: Any) -> str:
    """The PlanError message of ``action()``, or "" when it raised none."""
    try:
        action()
    except PlanError as exc:
        return str(exc)
    return ""


def main() -> None:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torchtitan_loader.write_data(root, 1, "ado")
        loss = MixplaneLoss.Config(loss=CrossEntropyLoss.Config()).build()
        plain = CrossEntropyLoss.Config().build()
        config = MixplaneDataLoader.Config(
            job_path=str(root / "job1"), tokenizer_path=str(root / "assets" / "tokenizer.json")
        )
        loader = config.build(
            dp_world_size=1, dp_rank=0, tokenizer=None, seq_len=64, local_batch_size=4
        )
        batches = iter(loader)
        torch.manual_seed(0)
        total = torch.tensor(4 * 64)
        same = True
        for _ in range(2):  # two micro-batches of one step (gradient accumulation)
            _, labels = next(batches)
            pred = torch.randn(4, 64, 300, requires_grad=True)
            value, _ = loss(pred, labels, total)
            same = same and torch.equal(value, plain(pred, labels, total)[0])
            value.backward()
        loss(torch.randn(4, 64, 300), labels)  # validation: no global_valid_tokens, not kept
        out["kept"] = len(loss.kept)
        loss.send()
        job = loader.dataset.planner
        out["same_loss"] = same
        out["sent"] = [loader.feedback_steps, job.feedback_received]
        _, labels = next(batches)
        loss(torch.randn(4, 64, 300), (labels + 1) % 300, total)
        out["wrong_labels"] = refusal(loss.send)
        next(batches)
        out["unseen_batch"] = refusal(loss.send)
        out["second_loader"] = refusal(
            lambda: config.build(
                dp_world_size=1, dp_rank=0, tokenizer=None, seq_len=64, local_batch_size=4
            )
        )
        for name, dims in (("pipeline", {"pp": 2}), ("context", {"cp": 2})):
            parallel = ParallelDims(
                **{"dp_replicate": 1, "dp_shard": 1, "cp": 1, "tp": 1, "pp": 1, "ep": 1} | dims,
                world_size=2,
            )
            out[name] = refusal(lambda p=parallel: SendFeedback()(None, [], p))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
