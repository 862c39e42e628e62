"""Lightning on a mixplane job: the last trained batch's data state of every rank in Lightning's
checkpoints, and loss feedback from the training loop.

``MixplaneDataModule(make_dataset, batch_size)`` builds each rank's ``TokenWindowDataset``
(``make_dataset(rank, world_size)``, called in ``setup``) and its loader;
``MixplaneCallback(datamodule, feedback=...)`` removes Lightning's traps
(``restore_data_state=False`` resumes the model but restarts the stream):

- **Prefetch.** Lightning's fetcher reads one batch ahead (to know the last one), so a stateful
  loader's own ``state_dict()`` at a checkpoint is one batch past the last trained one, and the
  resumed run skips a batch. Here the loader records its state after each batch it yields, in
  order; the callback takes the oldest record as each batch finishes training (any prefetch
  depth), so it always holds the state of the last trained batch. The loader Lightning sees has
  no ``state_dict`` of its own, so Lightning saves and restores nothing of it.
- **One writer.** Under DDP only rank 0 writes the checkpoint, so a loader state saved the
  usual way is rank 0's, restored on every rank (mixplane refuses it: ``StateError ... saved
  by dp_group=0 ... this one is dp_group=1``). At save the callback gathers every rank's state
  (JSON bytes through ``all_gather`` of uint8 tensors, no pickle) into ``checkpoint["mixplane"]``;
  at load each rank takes its own (``StateError`` when the world size differs).
- **Feedback.** The ``LightningModule``'s ``training_step`` returns ``{"loss": loss,
  "token_loss": per_token_loss}`` (``cross_entropy(..., reduction="none")`` against the batch's
  ``labels``, which mixplane has already shifted); the callback sends a step's per-component
  sums to ``feedback`` (the job: a ``LossFeedback`` made once the process group is up,
  all-reduced over the DP ranks, sent by one) once per optimizer step, and every rank waits for
  the answer (a new mixture applies from the consumed frontier, so none may read on while the
  message is in flight). The job of an adaptive mixture runs on the server (``Client.remote``):
  an in-process job's state is taken with each batch, before the feedback of the steps the
  fetcher is ahead of, so it is refused here.

``wait`` holds the seconds spent waiting for batches and the training loop's wall time.
Cost per checkpoint: one all-gather of a few KB per rank.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

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
    import lightning.pytorch as pl
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError as exc:  # pragma: no cover - the trainers extra is installed in development
    msg = "mixplane.integrations.lightning needs Lightning: pip install 'mixplane[trainers]'"
    raise DependencyError(msg) from exc

STATE_KEY = "mixplane"
STATE_VERSION = 1


class RecordingLoader:
    """A ``StatefulDataLoader`` that records its state after each batch it yields (FIFO in
    ``states``) and the time spent waiting in ``wait``. No ``state_dict``: Lightning leaves it
    alone."""

    def __init__(self, loader: StatefulDataLoader, wait: DataWait) -> None:
        self.loader, self.wait = loader, wait
        self.states: deque[dict[str, Any]] = deque()

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.states.append(self.loader.state_dict())
            self.wait.add(start, time.perf_counter())
            yield batch


class MixplaneDataModule(pl.LightningDataModule):  # type: ignore[misc]
    """Each rank's ``TokenWindowDataset`` (``make_dataset(rank, world_size)``) in batches of
    ``batch_size`` windows (``collate_windows``)."""

    def __init__(
        self,
        make_dataset: Callable[[int, int], TokenWindowDataset],
        batch_size: int,
        *,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.make_dataset, self.batch_size, self.num_workers = make_dataset, batch_size, num_workers
        self.dataset: TokenWindowDataset | None = None
        self.loader: RecordingLoader | None = None
        self.wait = DataWait()
        self.pending: dict[str, Any] | None = None  # a restored loader state, for the next loader

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        assert trainer is not None, "setup runs inside a Trainer"
        if self.dataset is None:
            self.dataset = self.make_dataset(trainer.global_rank, trainer.world_size)

    def train_dataloader(self) -> RecordingLoader:
        assert self.dataset is not None
        loader = StatefulDataLoader(
            self.dataset,
            batch_size=self.batch_size,
            collate_fn=collate_windows,
            num_workers=self.num_workers,
        )
        if self.pending is not None:
            loader.load_state_dict(self.pending)
            self.pending = None
        self.loader = RecordingLoader(loader, self.wait)
        return self.loader


class MixplaneCallback(pl.Callback):  # type: ignore[misc]
    """Per-rank data state of the last trained batch in checkpoints, and feedback (see the
    module)."""

    def __init__(
        self,
        datamodule: MixplaneDataModule,
        *,
        feedback: Job | RemoteJob | LossFeedback | None = None,
        restore_data_state: bool = True,
    ) -> None:
        job = feedback.job if isinstance(feedback, LossFeedback) else feedback
        if isinstance(job, Job) and job.algorithm is not None:
            msg = (
                "an adaptive job under Lightning runs on the server (Client.remote): the state "
                "of an in-process job is taken as each batch is fetched, before the feedback of "
                "the steps Lightning's fetcher is ahead of"
            )
            raise PlanError(msg)
        self.datamodule, self.feedback_to = datamodule, feedback
        self.feedback: LossFeedback | None = None
        self.restore_data_state = restore_data_state
        self.trained: dict[str, Any] | None = None  # the loader state after the last trained batch
        self._losses: list[torch.Tensor] = []
        self._domains: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []

    @property
    def wait(self) -> DataWait:
        return self.datamodule.wait

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.feedback_to is not None:  # the process group is up now
            self.feedback = loss_feedback(self.feedback_to)
        self.wait.begin(time.perf_counter())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.wait.end(time.perf_counter())

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loader = self.datamodule.loader
        if loader is not None and loader.states:
            self.trained = loader.states.popleft()
        if self.feedback is None:
            return
        if not isinstance(outputs, dict) or "token_loss" not in outputs:
            msg = (
                "MixplaneCallback(feedback=...) needs training_step to return {'loss': loss, "
                "'token_loss': cross_entropy(..., reduction='none')}"
            )
            raise PlanError(msg)
        labels = batch["labels"]
        self._losses.append(outputs["token_loss"].detach().reshape(-1))
        self._domains.append(batch["domain_ids"].reshape(-1))
        self._masks.append((labels != -100).reshape(-1))
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.feedback(
                trainer.global_step,
                torch.cat(self._losses),
                torch.cat(self._domains),
                torch.cat(self._masks),
            )
            self._losses, self._domains, self._masks = [], [], []
            settle_feedback()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        mine = json.dumps(self.trained).encode()
        checkpoint[STATE_KEY] = {
            "version": STATE_VERSION,
            "ranks": [part.decode() for part in gather_bytes(mine, trainer.world_size)],
        }

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if not self.restore_data_state:  # on purpose: the stream starts afresh
            return
        saved = checkpoint.get(STATE_KEY)
        if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
            msg = (
                f"the checkpoint has no mixplane data state (key {STATE_KEY!r}, version "
                f"{STATE_VERSION}); resume from a checkpoint saved with MixplaneCallback"
            )
            raise StateError(msg)
        ranks = saved["ranks"]
        if len(ranks) != trainer.world_size:
            msg = (
                f"the checkpoint's mixplane data state is of {len(ranks)} ranks, this run has "
                f"{trainer.world_size}; resume with the same number of processes"
            )
            raise StateError(msg)
        state = json.loads(ranks[trainer.global_rank])
        self.trained = state
        self.datamodule.pending = state


def settle_feedback() -> None:
    """Every rank waits until the sender's feedback is answered: a new mixture applies from
    the job's consumed frontier, so no rank may read on while the message is in flight (else
    where it lands depends on timing)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def gather_bytes(data: bytes, world_size: int) -> list[bytes]:
    """Every rank's ``data`` (uint8 tensors through ``all_gather``; any backend)."""
    if world_size == 1 or not torch.distributed.is_initialized():
        return [data]
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    device = torch.device("cuda") if torch.distributed.get_backend() == "nccl" else None
    size = torch.tensor([tensor.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    torch.distributed.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: tensor.numel()] = tensor.to(padded.device)
    parts = [torch.zeros_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(parts, padded)
    return [bytes(p[: int(s)].cpu().numpy()) for p, s in zip(parts, sizes, strict=True)]
