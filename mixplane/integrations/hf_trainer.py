"""Hugging Face ``transformers.Trainer`` on a mixplane job: data state in its checkpoints, no
replay on resume, labels as mixplane shifts them, per-rank streams, and loss feedback.

``MixplaneTrainer`` (or ``MixplaneTrainerMixin`` before your own ``Trainer`` subclass) takes a
``TokenWindowDataset`` as ``train_dataset`` and removes the traps of a plain ``Trainer``:

- **Data state.** A plain ``Trainer`` saves no loader state; ``resume_from_checkpoint`` replays
  and discards the batches already trained (cost grows with the step). Here every rank writes
  its ``StatefulDataLoader`` state to ``mixplane-data/rank<R>.json`` inside each
  ``checkpoint-<step>`` folder (JSON, written atomically, then a barrier), and ``train(
  resume_from_checkpoint=...)`` loads it into that rank's loader and sets
  ``args.ignore_data_skip = True``: nothing is replayed. A checkpoint without the files raises
  ``StateError`` (pass ``restore_data_state=False`` to start the stream afresh on purpose).
- **Labels.** mixplane's ``labels`` are already shifted (``labels[t]`` is the token after
  ``input_ids[t]``); a causal LM's own loss would shift them again. The collate passes them
  also as ``shift_labels`` (which HF's causal-LM loss and its token count for gradient
  accumulation take as given) and ``compute_loss`` computes the token cross-entropy itself
  from the logits, once, without a shift.
- **Per-rank streams.** The loader is built here and never handed to ``accelerate.prepare``:
  accelerate's ``dispatch_batches`` (rank 0 reads an ``IterableDataset`` and scatters) and
  ``split_batches`` never apply, each rank reads its own stream, and no wrapper reads a batch
  ahead (so the loader's state after a step is exactly that of the last trained batch).
- **Feedback.** With ``feedback=job`` (a ``LossFeedback`` is made when training starts, once
  the process group is up), the per-token losses and ``domain_ids``
  of a step's micro-batches go to ``job.feedback`` once per optimizer step (all-reduced over
  the data-parallel ranks, sent by one; every rank waits for the answer, since a new mixture
  applies from the consumed frontier), so ``algorithm="ado"`` adapts inside the Trainer. The
  job may be in-process (its state travels in the rank's data state; with several processes
  every rank applies the reduced numbers to its own job from the same chunk, see
  ``LossFeedback``) or on the server (``Client.remote``).

``data_wait`` holds the seconds spent waiting for the next batch and the wall time of the
training loop (``fraction``). Cost per checkpoint: one JSON file per rank (a few KB; an
in-process job's state grows with its mixture log).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mixplane.atomic import write_atomic
from mixplane.client.remote import RemoteJob
from mixplane.errors import DependencyError, PlanError, StateError
from mixplane.integrations.pytorch import (
    DataWait,
    LossFeedback,
    TokenWindowDataset,
    collate_windows,
    loss_feedback,
)
from mixplane.job import Job

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torchdata.stateful_dataloader import StatefulDataLoader
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
except ImportError as exc:  # pragma: no cover - the trainers extra is installed in development
    msg = "mixplane.integrations.hf_trainer needs transformers: pip install 'mixplane[trainers]'"
    raise DependencyError(msg) from exc

STATE_DIR = "mixplane-data"
STATE_VERSION = 1
AUX_KEYS = ("labels", "shift_labels", "domain_ids", "component", "cu_seqlens", "max_seqlen")


def collate_for_trainer(batch: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """``collate_windows`` plus ``shift_labels`` (the same tensor as ``labels``): HF counts
    and uses them as already shifted."""
    out = collate_windows(batch)
    out["shift_labels"] = out["labels"]
    return out


class TimedLoader:
    """A ``StatefulDataLoader`` whose ``next()`` time is added to ``wait``."""

    def __init__(self, loader: StatefulDataLoader, wait: DataWait) -> None:
        self.loader, self.wait = loader, wait

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait.add(start, time.perf_counter())
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def state_path(checkpoint: str | os.PathLike[str], rank: int) -> Path:
    return Path(checkpoint) / STATE_DIR / f"rank{rank}.json"


class _Hooks(TrainerCallback):  # type: ignore[misc]
    """Sends a step's feedback after the optimizer step and writes the data state after HF's
    checkpoint; both on every rank."""

    def __init__(self, trainer: MixplaneTrainerMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.trainer.feedback_to is not None:  # the process group is up now
            self.trainer.feedback = loss_feedback(self.trainer.feedback_to)
        self.trainer.data_wait.begin(time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.trainer.send_feedback(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.trainer.save_data_state(folder)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.trainer.data_wait.end(time.perf_counter())


class MixplaneTrainerMixin:
    """Put before ``transformers.Trainer`` (see the module): ``train_dataset`` a
    ``TokenWindowDataset``; ``feedback`` the job (or a ``LossFeedback``, or None);
    ``restore_data_state=False`` resumes the model but restarts the stream."""

    train_dataset: Any
    args: Any
    state: Any
    accelerator: Any

    def __init__(
        self,
        *args: Any,
        feedback: Job | RemoteJob | LossFeedback | None = None,
        restore_data_state: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.train_dataset, TokenWindowDataset):
            msg = (
                "MixplaneTrainer needs train_dataset=TokenWindowDataset(job, tokenizer, seq_len, "
                f"rank=..., world_size=...), got {type(self.train_dataset).__name__}"
            )
            raise PlanError(msg)
        self.feedback_to = feedback
        self.feedback: LossFeedback | None = None
        self.restore_data_state = restore_data_state
        self.data_wait = DataWait()
        self._loader: TimedLoader | None = None
        self._pending_state: dict[str, Any] | None = None
        self._step_losses: list[torch.Tensor] = []
        self._step_domains: list[torch.Tensor] = []
        self._step_masks: list[torch.Tensor] = []
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the step's token count
        self.add_callback(_Hooks(self))  # type: ignore[attr-defined]

    # -- loader ------------------------------------------------------------------------------
    def get_train_dataloader(self) -> Any:
        loader = StatefulDataLoader(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            collate_fn=collate_for_trainer,
            num_workers=self.args.dataloader_num_workers,
        )
        if self._pending_state is not None:
            loader.load_state_dict(self._pending_state)
            self._pending_state = None
        self._loader = TimedLoader(loader, self.data_wait)
        return self._loader

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """Never skip by replaying: the loader continues from its own state."""
        return dataloader

    # -- resume ------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)  # type: ignore[no-untyped-call]
            if resume_from_checkpoint is None:
                msg = f"no checkpoint-<step> folder in {self.args.output_dir} to resume from"
                raise StateError(msg)
        if isinstance(resume_from_checkpoint, str):
            self.args.ignore_data_skip = True  # no replay: the loader resumes from its state
            if self.restore_data_state:
                self._pending_state = self.load_data_state(resume_from_checkpoint)
        return super().train(  # type: ignore[misc]
            resume_from_checkpoint=resume_from_checkpoint or None, **kwargs
        )

    def save_data_state(self, folder: Path) -> None:
        """This rank's loader state (after its last trained batch) into ``folder``."""
        if self._loader is None:
            return
        rank = self.args.process_index
        record = {
            "version": STATE_VERSION,
            "rank": rank,
            "world_size": self.args.world_size,
            "loader": self._loader.state_dict(),
        }
        write_atomic(state_path(folder, rank), json.dumps(record).encode())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's file is there before training goes on

    def load_data_state(self, checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
        rank = self.args.process_index
        path = state_path(checkpoint, rank)
        if not path.is_file():
            msg = (
                f"{path} is missing: the checkpoint holds no mixplane data state for rank {rank} "
                "(saved by a plain Trainer or another world size); resume from a checkpoint "
                "written by MixplaneTrainer, or pass restore_data_state=False to restart the "
                "stream"
            )
            raise StateError(msg)
        record = json.loads(path.read_text())
        if record.get("version") != STATE_VERSION or record.get("rank") != rank:
            msg = (
                f"{path}: version {record.get('version')!r} rank {record.get('rank')!r}, "
                f"expected version {STATE_VERSION} rank {rank}"
            )
            raise StateError(msg)
        if record.get("world_size") != self.args.world_size:
            msg = (
                f"{path} was saved with world_size={record.get('world_size')}, this run has "
                f"{self.args.world_size}; resume with the same number of processes"
            )
            raise StateError(msg)
        return record["loader"]  # type: ignore[no-any-return]

    # -- loss and feedback -------------------------------------------------------------------
    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Token cross-entropy against mixplane's (already shifted) labels, summed and divided
        by the step's token count (over all ranks when HF averages tokens across devices)."""
        labels = inputs["labels"]
        domain_ids = inputs["domain_ids"]
        model_inputs = {k: v for k, v in inputs.items() if k not in AUX_KEYS}
        outputs = model(**model_inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        per_token = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            reduction="none",
            ignore_index=-100,
        ).view_as(labels)
        mask = labels != -100
        if model.training:
            self._step_losses.append(per_token.detach())
            self._step_domains.append(domain_ids)
            self._step_masks.append(mask)
        if num_items_in_batch is None:  # this micro-batch's mean, scaled for accumulation
            steps = getattr(self, "current_gradient_accumulation_steps", 1)
            loss = per_token.sum() / (mask.sum().clamp(min=1) * steps)
        else:  # HF counted the step's tokens (shift_labels), over all ranks when averaging
            loss = per_token.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages the gradients
        return (loss, outputs) if return_outputs else loss

    def send_feedback(self, step: int) -> None:
        """The optimizer step ``step``'s per-component losses to the job (one message)."""
        losses, domains, masks = self._step_losses, self._step_domains, self._step_masks
        self._step_losses, self._step_domains, self._step_masks = [], [], []
        if self.feedback is None or not losses:
            return
        self.feedback(
            step,
            torch.cat([t.reshape(-1) for t in losses]),
            torch.cat([t.reshape(-1) for t in domains]),
            torch.cat([t.reshape(-1) for t in masks]),
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank waits for the sender's answer: a new mixture applies from the job's
            # consumed frontier, so no rank may read on while the message is in flight
            torch.distributed.barrier()


class MixplaneTrainer(MixplaneTrainerMixin, Trainer):  # type: ignore[misc]
    """``transformers.Trainer`` with ``MixplaneTrainerMixin`` (see the module)."""
