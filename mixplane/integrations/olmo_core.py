"""OLMo-core: a mixplane job as the ``Trainer``'s data loader, and loss feedback from its loop.

``MixplaneDataLoader(job, tokenizer, sequence_length=S, global_batch_size=T, work_dir=...,
dp_world_size=D, dp_rank=d)`` is an OLMo-core ``TextDataLoaderBase``: each batch holds this DP
rank's ``T / (D * S)`` windows of the job (``TokenWindowDataset`` with ``dp_group=d``) as
``input_ids``, ``labels`` and ``domain_ids`` (``[B, S]`` int64). mixplane's ``labels`` are
already the next tokens, so the train module uses them as given (it shifts only when a batch has
no ``labels``). The job's topology must have ``dp_groups=D``; the ranks of one DP group
(tensor/context-parallel peers) pass their position as ``group_rank`` and get the same batches.

Resume: the trainer saves each rank's ``state_dict()`` in its own file of the checkpoint
(``train/rank<R>.pt``) and gives it back to that rank on load, so every DP rank continues its
own stream. The state is the dataset's (job part and window stream positions: O(components x
seq_len), JSON-able) plus OLMo-core's counters; the trainer asks for it between steps (it reads
the loader without prefetching), so it is exactly the last trained batch's. A mixplane stream is
one endless epoch (``total_batches`` is None): give the trainer a duration in steps or tokens.

Feedback: ``DomainLossTrainModule`` is OLMo-core's ``TransformerTrainModule`` that takes the
``domain_ids`` out of each micro-batch before the model sees them and keeps the per-token
cross-entropy of the step (from the logits the forward already computes; one extra
``[tokens, vocab]`` log-softmax, no second forward). ``MixplaneFeedback`` (an OLMo-core
``Callback``) hands them after each backward pass to ``LossFeedback``: summed per component,
all-reduced over the trainer's DP process group and sent by one rank to ``job.feedback`` (a job
on the server, or one rank); an adaptive ``Job`` that every rank runs in-process (each opened
from the same snapshot) gets the same numbers on every rank, applied from the same chunk, so the
ranks keep one plan (the DP group must hold every rank: one rank per DP group). It sends
in ``pre_optim_step``: in ``post_train_batch`` the checkpointer runs first (higher priority) and
a checkpoint of that step would miss the step's feedback (the resumed mixture would differ).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import Any, TypedDict

from mixplane.client.remote import RemoteJob
from mixplane.client.snapshot import JobSnapshot
from mixplane.errors import DependencyError, PlanError, StateError, shown
from mixplane.job import Job
from mixplane.tokens.tokenizer import Tokenizer

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from olmo_core.data.collator import DataCollator
    from olmo_core.data.data_loader import TextDataLoaderBase
    from olmo_core.nn.lm_head import LMOutputWithLoss
    from olmo_core.train.callbacks import Callback
    from olmo_core.train.train_module import TransformerTrainModule

    from mixplane.integrations.pytorch import LossFeedback, TokenWindowDataset
except ImportError as exc:  # pragma: no cover - the olmo extra is installed in development
    msg = "mixplane.integrations.olmo_core needs OLMo-core: pip install 'mixplane[olmo]'"
    raise DependencyError(msg) from exc

STATE_VERSION = 1
DOMAIN_IDS = "domain_ids"


class LoaderState(TypedDict):
    version: int
    dp_rank: int
    batches_processed: int
    tokens_processed: int
    epoch: int | None
    dataset: dict[str, Any]


class MixplaneDataLoader(TextDataLoaderBase):  # type: ignore[misc]
    """One DP rank's batches of a mixplane job for OLMo-core's ``Trainer`` (see the module)."""

    def __init__(
        self,
        job: Job | JobSnapshot | RemoteJob | str | os.PathLike[str],
        tokenizer: Tokenizer | str,
        *,
        sequence_length: int,
        global_batch_size: int,
        work_dir: str | os.PathLike[str],
        dp_world_size: int = 1,
        dp_rank: int = 0,
        group_rank: int = 0,
        fs_local_rank: int | None = None,
        domain_ids: bool = True,
        bos: bool = False,
    ) -> None:
        per_step = dp_world_size * sequence_length
        if global_batch_size <= 0 or global_batch_size % per_step:
            msg = (
                f"global_batch_size={global_batch_size} tokens must be a positive multiple of "
                f"dp_world_size * sequence_length = {per_step} (whole windows on every DP rank)"
            )
            raise PlanError(msg)
        super().__init__(
            collator=DataCollator(pad_token_id=0),  # unused: windows are full, never padded
            work_dir=Path(work_dir),
            global_batch_size=global_batch_size,
            dp_world_size=dp_world_size,
            dp_rank=dp_rank,
            fs_local_rank=fs_local_rank,
        )
        self.sequence_length = sequence_length
        self.instances = global_batch_size // per_step
        self.domain_ids = domain_ids
        self.dataset = TokenWindowDataset(
            job,
            tokenizer,
            sequence_length,
            dp_group=dp_rank,
            group_rank=group_rank,
            bos=bos,
            batch_size=self.instances,
        )
        if self.dataset.topology.dp_groups != dp_world_size:
            msg = (
                f"the trainer has dp_world_size={dp_world_size} but the job's topology has "
                f"dp_groups={self.dataset.topology.dp_groups}; submit the job with "
                f"topology=Topology(dp_groups={dp_world_size}, ...)"
            )
            raise PlanError(msg)

    @property
    def total_batches(self) -> int | None:
        return None  # one endless epoch: the job repeats its components (or ends the stream)

    def _iter_batches(self) -> Iterable[dict[str, Any]]:
        windows = iter(self.dataset)
        while True:
            items = list(islice(windows, self.instances))
            if len(items) < self.instances:
                return  # the job's stream ended (policy "stop")
            batch = {
                "input_ids": torch.stack([w["input_ids"] for w in items]),
                "labels": torch.stack([w["labels"] for w in items]),
            }
            if self.domain_ids:
                batch[DOMAIN_IDS] = torch.stack([w["domain_ids"] for w in items])
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return dict(
            LoaderState(
                version=STATE_VERSION,
                dp_rank=self.dp_rank,
                batches_processed=self.batches_processed,
                tokens_processed=self.tokens_processed,
                epoch=self._epoch,
                dataset=self.dataset.state_dict(),
            )
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("version") != STATE_VERSION:
            msg = (
                f"an OLMo-core checkpoint's data loader state is not a mixplane loader state "
                f"(version {STATE_VERSION}), got {shown(state_dict)}; resume with the loader "
                "that saved it, or start without load_trainer_state"
            )
            raise StateError(msg)
        if state_dict["dp_rank"] != self.dp_rank:
            msg = (
                f"this loader is dp_rank={self.dp_rank} but the checkpoint's state is of "
                f"dp_rank={state_dict['dp_rank']}; OLMo-core keeps one file per rank "
                "(train/rank<R>.pt): resume with the same number of ranks"
            )
            raise StateError(msg)
        self.dataset.load_state_dict(state_dict["dataset"])
        self.batches_processed = int(state_dict["batches_processed"])
        self.tokens_processed = int(state_dict["tokens_processed"])
        self._epoch = state_dict["epoch"] if state_dict["epoch"] is not None else self._epoch

    def reshuffle(self, epoch: int | None = None, **kwargs: Any) -> None:
        """Set the trainer's epoch; mixplane's order is planned per component (each has its own
        epochs and seeded order), so nothing is reshuffled here and the position stays."""
        del kwargs
        self._epoch = 1 if epoch is None else epoch

    def get_mock_batch(self) -> dict[str, Any]:
        """Token 0 in the batch's shape for the trainer's dry run (a forward and backward of
        the real size: no job data read, no RNG touched; no ``domain_ids``, so no feedback)."""
        shape = (self.instances, self.sequence_length)
        zeros = torch.zeros(shape, dtype=torch.int64)
        return {"input_ids": zeros, "labels": zeros.clone()}


class DomainLossTrainModule(TransformerTrainModule):  # type: ignore[misc]
    """OLMo-core's ``TransformerTrainModule`` keeping each step's per-token loss by component:
    ``domain_ids`` leave the micro-batch before the model (which would refuse them), and the
    cross-entropy per token is taken from the forward's logits (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.domain_losses: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def train_batch(self, batch: dict[str, Any], dry_run: bool = False) -> None:
        self.domain_losses = []  # this step's only, whether or not a callback took the last
        super().train_batch(batch, dry_run=dry_run)

    def model_forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        domain_ids = kwargs.pop(DOMAIN_IDS, None)
        if domain_ids is None or labels is None:
            return super().model_forward(input_ids, labels, **kwargs)
        wanted = kwargs.get("return_logits")
        out = super().model_forward(input_ids, labels, **{**kwargs, "return_logits": True})
        if not isinstance(out, LMOutputWithLoss) or out.logits is None:
            msg = (
                "DomainLossTrainModule needs the model's logits with its loss (an LM head with "
                "the default loss implementation); use TransformerTrainModule without "
                "domain_ids (MixplaneDataLoader(..., domain_ids=False)) otherwise"
            )
            raise PlanError(msg)
        logits = out.logits.detach()
        ignore = int(kwargs.get("ignore_index", self.label_ignore_index))
        flat = labels.reshape(-1)
        loss = F.cross_entropy(
            logits.reshape(flat.numel(), -1).float(), flat, ignore_index=ignore, reduction="none"
        )
        self.domain_losses.append((loss, domain_ids.reshape(-1), flat != ignore))
        return out if wanted else out._replace(logits=None)

    def step_domain_losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """This step's per-token losses, domain ids and loss mask (concatenated over its
        micro-batches; kept until the next ``train_batch``); None when the step had no
        ``domain_ids``."""
        if not self.domain_losses:
            return None
        loss, domains, mask = (torch.cat(parts) for parts in zip(*self.domain_losses, strict=True))
        return loss, domains, mask


class MixplaneFeedback(Callback):  # type: ignore[misc]
    """Sends each step's per-component loss of a ``DomainLossTrainModule`` to the job
    (``LossFeedback`` over the trainer's DP process group: one sender, or every rank for an
    in-process adaptive job on several ranks; see the module)."""

    def __init__(self, job: Job | RemoteJob) -> None:
        super().__init__()
        self.job = job
        self.feedback: LossFeedback | None = None
        self.sent = 0

    def pre_train(self) -> None:
        module = self.trainer.train_module
        if not isinstance(module, DomainLossTrainModule):
            msg = (
                f"MixplaneFeedback needs the per-domain losses of DomainLossTrainModule, the "
                f"trainer's train module is {type(module).__name__}; build the train module as "
                "DomainLossTrainModule(model, optim, ...) (same arguments)"
            )
            raise PlanError(msg)
        self.feedback = LossFeedback(self.job, group=self.trainer.dp_process_group)

    def pre_optim_step(self) -> None:
        """Sends right after the backward pass: before ``post_train_batch``, where OLMo-core's
        checkpointer (priority 1) runs ahead of default-priority callbacks, so a checkpoint of
        this step holds the mixture this feedback made."""
        module = self.trainer.train_module
        assert self.feedback is not None and isinstance(module, DomainLossTrainModule)
        taken = module.step_domain_losses()
        if taken is None:
            return
        loss, domains, mask = taken
        self.feedback(self.trainer.global_step, loss, domains, mask)
        self.sent += 1
