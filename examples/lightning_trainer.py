"""Lightning on a mixplane ADO job: 2 CPU processes with DDP on gloo (torchrun), every rank's
data state of its last trained batch in Lightning's checkpoints, per-domain loss feedback from a
``Callback``. Ends in asserts.

Run: ``.venv/bin/python examples/lightning_trainer.py`` (about a minute on 2 cores). It trains a
tiny causal LM for 8 steps uninterrupted, then 4 steps, stops, resumes Lightning's checkpoint in
new processes and trains the rest, and checks every rank's batches and losses against the
uninterrupted run (``trainer_harness.prove``); then 4 steps with both processes in one DP group
(``dp_groups=1``), whose ranks must get the same batches. Prints the share of the training loop
spent waiting for data and whether the resume matched.

The part a user writes is ``run`` below: ``MixplaneDataModule`` (a ``TokenWindowDataset`` per
rank), ``MixplaneCallback`` with a ``LossFeedback``, and a ``training_step`` that returns the
per-token loss next to the loss.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_harness import BATCH, SEQ, STEPS, batch_hash, finish, prefetch, prove, write_records


def train(options: argparse.Namespace) -> None:
    from mixplane.client import Client

    client = Client.remote(options.server)
    steps, wait, rank = run(
        client.job(options.job), options, options.dir, restore=not options.no_data_state
    )
    record: dict[str, Any] = {"steps": steps, "wait": wait}
    if options.control_job:  # resume again, without the data state, on a fresh job
        record["control_steps"], _, _ = run(
            client.job(options.control_job), options, options.control_dir, restore=False
        )
    write_records(Path(options.records), rank, record)
    client.close()
    finish()


def run(job: Any, options: argparse.Namespace, folder: str, *, restore: bool) -> Any:
    """Train (or resume) one run on ``job``; every batch's hash and loss, the data wait."""
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F  # noqa: N812
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mixplane.integrations.lightning import MixplaneCallback, MixplaneDataModule
    from mixplane.integrations.pytorch import TokenWindowDataset

    steps: list[dict[str, Any]] = []

    class TinyLM(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(300, 32)
            self.mix = torch.nn.Linear(32, 32)
            self.out = torch.nn.Linear(32, 300)

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
            hidden = torch.tanh(self.mix(self.embed(batch["input_ids"])))
            logits = self.out(hidden)
            labels = batch["labels"]  # already shifted by mixplane: no shift here
            token_loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
            ).view_as(labels)
            loss = token_loss.mean()
            steps.append(
                {"hash": batch_hash(batch["input_ids"], labels), "loss": float(loss.detach())}
            )
            return {"loss": loss, "token_loss": token_loss}

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    def make_dataset(rank: int, world_size: int) -> TokenWindowDataset:
        return TokenWindowDataset(
            job,
            options.tokenizer,
            SEQ,
            rank=rank,
            world_size=world_size,
            batch_size=BATCH,
            **prefetch(options),
        )

    data = MixplaneDataModule(make_dataset, BATCH)
    stop = options.stop_at or options.steps
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=stop,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            MixplaneCallback(data, feedback=job, restore_data_state=restore),
            ModelCheckpoint(
                dirpath=folder,
                filename="{step}",
                every_n_train_steps=options.steps // 2,
                save_top_k=-1,
            ),
        ],
    )
    resume = f"{folder}/step={options.resume}.ckpt" if options.resume else None
    trainer.fit(TinyLM(), datamodule=data, ckpt_path=resume)
    return steps, data.wait.as_dict(), trainer.global_rank


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mixplane-lightning-") as tmp:
        result = prove(Path(__file__).resolve(), Path(tmp), [], same_group=True)
    assert result["matched"] and result["same_weights"], "the resume did not match"
    assert result["control_differs"], "resuming without the data state should differ"
    assert result["adapted"], "ADO did not change the weights"
    assert result["disjoint"], "the two DP ranks read the same windows"
    steps = [[s["hash"] for s in rank["steps"]] for rank in result["group"]]
    assert steps[0] and steps[0] == steps[1], "the ranks of one DP group got different batches"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        parser = argparse.ArgumentParser()
        parser.add_argument("train")
        parser.add_argument("--records", required=True)
        parser.add_argument("--server", required=True)
        parser.add_argument("--tokenizer", required=True)
        parser.add_argument("--job", required=True)
        parser.add_argument("--dir", required=True)
        parser.add_argument("--stop-at", type=int, default=0)
        parser.add_argument("--resume", type=int, default=0)
        parser.add_argument("--no-data-state", action="store_true")
        parser.add_argument("--control-job", default="")
        parser.add_argument("--control-dir", default="")
        parser.add_argument("--steps", type=int, default=STEPS)
        parser.add_argument("--prefetch", type=int, default=-1)  # -1: the dataset's default
        train(parser.parse_args())
    else:
        main()
