"""Hugging Face ``Trainer`` on a mixplane ADO job: 2 CPU processes (torchrun, gloo), data state
in HF's checkpoints, resume without replay, per-domain loss feedback. Ends in asserts.

Run: ``.venv/bin/python examples/hf_trainer.py`` (about a minute on 2 cores). It trains a tiny
Llama (1 layer, 32 wide) for 8 steps uninterrupted, then 4 steps, stops, resumes HF's
``checkpoint-4`` in new processes and trains the rest, and checks every rank's batches and
losses against the uninterrupted run (``trainer_harness.prove``). Prints the share of the
training loop spent waiting for data and whether the resume matched.

The part a user writes is ``train`` below: a ``TokenWindowDataset`` per rank, ``MixplaneTrainer``
instead of ``Trainer``, ``LossFeedback`` for the adaptive mixture.
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
    from transformers import TrainingArguments

    from mixplane.client import Client

    def arguments(output_dir: str) -> TrainingArguments:
        return TrainingArguments(
            output_dir=output_dir,
            max_steps=options.steps,
            per_device_train_batch_size=BATCH,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            save_strategy="steps",
            save_steps=options.steps // 2,
            report_to=[],
            use_cpu=True,
            ddp_backend="gloo",
            seed=0,
            disable_tqdm=True,
            remove_unused_columns=False,  # mixplane's fields reach compute_loss
            ddp_find_unused_parameters=False,
        )

    args = arguments(options.dir)
    client = Client.remote(options.server)
    steps, wait = run(client.job(options.job), options, args, restore=not options.no_data_state)
    record: dict[str, Any] = {"steps": steps, "wait": wait}
    if options.control_job:  # resume again, without the data state, on a fresh job
        record["control_steps"], _ = run(
            client.job(options.control_job), options, arguments(options.control_dir), restore=False
        )
    write_records(Path(options.records), args.process_index, record)
    client.close()
    finish()


def run(job: Any, options: argparse.Namespace, args: Any, *, restore: bool) -> tuple[Any, Any]:
    """Train (or resume) one run on ``job``; every micro-batch's hash and loss, the data wait."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from mixplane.integrations.hf_trainer import MixplaneTrainer
    from mixplane.integrations.pytorch import TokenWindowDataset

    dataset = TokenWindowDataset(
        job,
        options.tokenizer,
        SEQ,
        rank=args.process_index,
        world_size=args.world_size,
        batch_size=BATCH,
        **prefetch(options),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=SEQ,
        )
    )
    steps: list[dict[str, Any]] = []

    class Recorder(MixplaneTrainer):
        def compute_loss(self, model: Any, inputs: Any, **kw: Any) -> Any:
            loss = super().compute_loss(model, inputs, **kw)
            steps.append(
                {
                    "hash": batch_hash(inputs["input_ids"].cpu(), inputs["labels"].cpu()),
                    "loss": float(loss.detach()),
                }
            )
            return loss

    class StopAt(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if options.stop_at and state.global_step >= options.stop_at:
                control.should_training_stop = True

    trainer = Recorder(
        model=model,
        args=args,
        train_dataset=dataset,
        feedback=job,
        restore_data_state=restore,
        callbacks=[StopAt()],
    )
    resume = f"{args.output_dir}/checkpoint-{options.resume}" if options.resume else None
    trainer.train(resume_from_checkpoint=resume)
    return steps, trainer.data_wait.as_dict()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mixplane-hf-trainer-") as tmp:
        result = prove(Path(__file__).resolve(), Path(tmp), [])
    assert result["matched"] and result["same_weights"], "the resume did not match"
    assert result["control_differs"], "resuming without the data state should differ"
    assert result["adapted"], "ADO did not change the weights"
    assert result["disjoint"], "the two DP ranks read the same windows"


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
