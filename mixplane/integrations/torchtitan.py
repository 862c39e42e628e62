"""torchtitan: a mixplane job as the ``Trainer``'s data loader, its state per DP rank in DCP.

``MixplaneDataLoader.Config(job_path=SNAPSHOT, tokenizer_path=TOKENIZER)`` is a torchtitan
``BaseDataLoader.Config``: a config function sets it as ``Trainer.Config.dataloader`` and
``torchtitan.train --module M --config F`` builds it with ``(dp_world_size, dp_rank, tokenizer,
seq_len, local_batch_size, ...)`` (config fields may not reuse those names, so they are
``job_path``/``tokenizer_path``/``group_rank``). Each batch is ``({"input": input_ids,
"positions": position_ids}, labels)``, ``[local_batch_size, seq_len]`` int64 (``positions``
restart at every document: torchtitan's flex and varlen attention mask per document from them), from ``TokenWindowDataset`` with
``dp_group=dp_rank`` (``job_path``: a ``JobSnapshot`` saved by the process that submitted the
job; ``tokenizer_path``: the stream's tokenizer, default torchtitan's own ``tokenizer.json`` is
not assumed: give it). mixplane's ``labels`` are already shifted, as torchtitan expects.

Resume: ``state_dict()`` is ``{"dp_rank_<d>": JSON text, "world_size": D}``: torchtitan's
checkpointer saves each DP rank's key through DCP and gives it back on load, so every DP rank
continues its own stream (no pickle: the state is JSON text). The trainer pulls one batch per
step and saves between steps, so the state is exactly after the last trained batch. A job on a
mixplane server: ``server=URL, job_id=ID`` instead of ``job_path`` (its token from
``MIXPLANE_TOKEN_FILE``); adaptive mixing with several ranks needs it (one planner).

Loss feedback: torchtitan's loss sees ``(pred, labels)`` only, so the loader keeps the
``domain_ids`` of every batch it yields (FIFO, with the labels to check the pairing) and
``MixplaneLoss`` takes them back in the same order. ``with_loss_feedback(config)`` installs it
through torchtitan's own mechanisms: the config's loss is wrapped in ``MixplaneLoss.Config(loss=
...)`` (inside a ``ChunkedLossWrapper``, llama3's default, its per-chunk loss is: the wrapper
then calls it with each sequence chunk's logits, in order). Its value and gradient are the
wrapped loss's, untouched; from the detached logits it also computes, under ``no_grad``, the
per-token cross-entropy (one extra log-softmax over the ``[tokens, vocab]`` logits, in blocks of
``ROWS`` tokens; of DTensors, this rank's rows, vocab-sharded logits gathered over the vocab
first). ``config.model_spec.post_optimizer_build_fn`` (chained after the model's own) registers
an optimizer step pre-hook: once per optimizer step, after every micro-batch of gradient
accumulation went through the loss and before torchtitan's checkpoint of that step, the step's
per-token losses go to ``LossFeedback`` (summed per component, all-reduced over all ranks and divided by the ranks per
DP group, sent by rank 0; then a barrier: a new mixture applies from the consumed frontier, so
no rank reads on while the message is in flight). The step number counts sends and travels in
the loader's state, so a resumed run numbers (and adapts) as the uninterrupted one. Cost per
step: the extra log-softmax, one 1-element and one ``2 x components`` all-reduce, a barrier.
Refused with a ``PlanError``: pipeline parallelism (the loss runs on the last stage only, on
micro-batches) and context parallelism (labels sharded and reordered); labels at the loss that
are not the recorded batch's. Validation batches (no ``global_valid_tokens``, no grad) are not
fed back; a validation ``MixplaneDataLoader`` takes ``feedback=False``.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from mixplane.errors import DependencyError, PlanError, StateError, shown
from mixplane.tokens.tokenizer import load_tokenizer

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torchtitan.components.dataloader import BaseDataLoader
    from torchtitan.components.loss import (
        IGNORE_INDEX,
        BaseLoss,
        ChunkedLossWrapper,
        CrossEntropyLoss,
    )

    from mixplane.integrations.pytorch import LossFeedback, TokenWindowDataset
except ImportError as exc:  # pragma: no cover - its tests build a venv with torchtitan
    msg = "mixplane.integrations.torchtitan needs torchtitan: pip install 'mixplane[torchtitan]'"
    raise DependencyError(msg) from exc

STATE_VERSION = 1
ROWS = 1024  # tokens per block of the feedback's cross-entropy (bounds its extra memory)
RECORDED_MAX = 4096  # batches a loader keeps for a loss that never takes them: an error beyond


class Pairing:
    """The process's ``MixplaneLoss`` and the training ``MixplaneDataLoader`` it takes
    ``domain_ids`` from (torchtitan builds the loss first, the loader later, and hands neither
    to the other). A new loss (a new trainer) starts a new pairing."""

    loss: weakref.ref[MixplaneLoss] | None = None
    loader: weakref.ref[MixplaneDataLoader] | None = None

    @classmethod
    def add_loss(cls, loss: MixplaneLoss) -> None:
        cls.loss, cls.loader = weakref.ref(loss), None

    @classmethod
    def add_loader(cls, loader: MixplaneDataLoader) -> bool:
        """Pair ``loader`` with the process's loss; False when there is no loss to pair."""
        if cls.loss is None or cls.loss() is None:
            return False
        if cls.loader is not None and cls.loader() is not None:
            msg = (
                "a second MixplaneDataLoader with feedback=True for one MixplaneLoss; give "
                "the validation loader MixplaneDataLoader.Config(..., feedback=False)"
            )
            raise PlanError(msg)
        cls.loader = weakref.ref(loader)
        return True


class MixplaneDataLoader(BaseDataLoader):  # type: ignore[misc]
    """One DP rank's batches of a mixplane job for torchtitan's ``Trainer`` (see the module)."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):  # type: ignore[misc]
        job_path: str = ""
        """A job snapshot (``job.snapshot().save(path)``)."""

        server: str = ""
        """Instead of ``job_path``: a mixplane server's URL, with ``job_id``."""

        job_id: str = ""
        """The job on ``server``."""

        tokenizer_path: str = ""
        """The stream's tokenizer (a ``tokenizer.json``, or a name such as ``"deepseek"``)."""

        group_rank: int = 0
        """This rank's position among the ranks of its DP group (TP/PP/CP peers)."""

        feedback: bool = True
        """Hand each batch's ``domain_ids`` to the process's ``MixplaneLoss`` (if there is
        one); False for a validation loader."""

    def __init__(
        self,
        config: MixplaneDataLoader.Config,
        *,
        dp_world_size: int,
        dp_rank: int,
        tokenizer: Any,
        seq_len: int,
        local_batch_size: int,
        **kwargs: Any,
    ) -> None:
        del tokenizer, kwargs  # mixplane tokenizes with the job's tokenizer (tokenizer_path)
        remote = bool(config.server and config.job_id)
        if not config.tokenizer_path or remote == bool(config.job_path):
            msg = (
                "MixplaneDataLoader.Config needs tokenizer_path and either job_path (a saved "
                f"job snapshot) or server and job_id, got job_path={config.job_path!r}, "
                f"server={config.server!r}, job_id={config.job_id!r}, "
                f"tokenizer_path={config.tokenizer_path!r}"
            )
            raise PlanError(msg)
        self.config = config
        self.dp_world_size, self.dp_rank = dp_world_size, dp_rank
        self.local_batch_size = local_batch_size
        job: Any = config.job_path
        if remote:
            from mixplane.client import Client

            job = Client.remote(config.server).job(config.job_id)
        self.dataset = TokenWindowDataset(
            job,
            load_tokenizer(config.tokenizer_path),
            seq_len,
            dp_group=dp_rank,
            group_rank=config.group_rank,
            batch_size=local_batch_size,
        )
        if self.dataset.topology.dp_groups != dp_world_size:
            msg = (
                f"torchtitan has {dp_world_size} data-parallel ranks but the job's topology has "
                f"dp_groups={self.dataset.topology.dp_groups}; submit the job with "
                f"topology=Topology(dp_groups={dp_world_size}, ...)"
            )
            raise PlanError(msg)
        self.key = f"dp_rank_{dp_rank}"
        #: (domain_ids, labels) of the batches yielded and not yet through the loss
        self.recorded: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
        self.paired = config.feedback and Pairing.add_loader(self)
        self.feedback_steps = 0  # optimizer steps whose feedback was sent (in the state)

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        windows = iter(self.dataset)
        while True:
            items = list(islice(windows, self.local_batch_size))
            if len(items) < self.local_batch_size:
                return  # the job's stream ended (policy "stop")
            inputs = {
                "input": torch.stack([w["input_ids"] for w in items]),
                "positions": torch.stack([w["position_ids"] for w in items]),
            }
            labels = torch.stack([w["labels"] for w in items])
            if self.paired:
                if len(self.recorded) >= RECORDED_MAX:
                    msg = (
                        f"{RECORDED_MAX} batches went out without reaching the MixplaneLoss; "
                        "install it with with_loss_feedback(config), or set "
                        "MixplaneDataLoader.Config(..., feedback=False)"
                    )
                    raise PlanError(msg)
                self.recorded.append((torch.stack([w["domain_ids"] for w in items]), labels))
            yield inputs, labels

    def state_dict(self) -> dict[str, Any]:
        state = {
            "version": STATE_VERSION,
            "dataset": self.dataset.state_dict(),
            "feedback_steps": self.feedback_steps,
        }
        return {self.key: json.dumps(state), "world_size": self.dp_world_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return  # torchtitan loads an empty state when a checkpoint has none
        if state_dict.get("world_size") != self.dp_world_size or self.key not in state_dict:
            msg = (
                f"the checkpoint's data state is of {shown(state_dict.get('world_size'))} DP "
                f"ranks, without {self.key!r}; this run has {self.dp_world_size}: resume with "
                "the same data-parallel degree"
            )
            raise StateError(msg)
        try:
            state = json.loads(state_dict[self.key])
        except (TypeError, ValueError) as exc:
            msg = f"the checkpoint's {self.key!r} is not a mixplane loader state ({exc})"
            raise StateError(msg) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            msg = f"a mixplane loader state has version {STATE_VERSION}, got {shown(state)}"
            raise StateError(msg)
        self.dataset.load_state_dict(state["dataset"])
        self.feedback_steps = int(state.get("feedback_steps", 0))


class MixplaneLoss(BaseLoss):  # type: ignore[misc]
    """The config's loss, unchanged, keeping each training batch's per-token cross-entropy
    with its ``domain_ids`` for one feedback message per optimizer step (see the module)."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseLoss.Config):  # type: ignore[misc]
        loss: BaseLoss.Config = field(default_factory=CrossEntropyLoss.Config)
        """The loss the model trains on (its value and gradient, untouched)."""

    def __init__(self, config: MixplaneLoss.Config, *, compile_config: Any = None) -> None:
        self.loss = config.loss.build(compile_config=compile_config)
        if isinstance(self.loss, ChunkedLossWrapper):
            msg = (
                "MixplaneLoss needs the logits, a chunked loss gets hidden states: put it "
                "inside (ChunkedLossWrapper.Config(loss_fn=MixplaneLoss.Config(...)), as "
                "with_loss_feedback does)"
            )
            raise PlanError(msg)
        self.ranks_per_group = 1  # ranks sharing a DP rank's data (set by the optimizer hook)
        self.column = 0  # where in the loader's oldest recorded batch the next labels start
        self.kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.wrong: torch.Tensor | None = None  # on the device: a batch's labels differed
        self.feedback: LossFeedback | None = None
        Pairing.add_loss(self)

    def __call__(
        self,
        pred: torch.Tensor,
        labels: torch.Tensor,
        global_valid_tokens: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out: tuple[torch.Tensor, dict[str, torch.Tensor]] = self.loss(
            pred, labels, global_valid_tokens, **kwargs
        )
        if global_valid_tokens is not None and torch.is_grad_enabled():  # a training batch
            self.keep(pred, labels)
        return out

    def loader(self) -> MixplaneDataLoader:
        loader = Pairing.loader() if Pairing.loader is not None else None
        if loader is None:
            msg = (
                "MixplaneLoss has no MixplaneDataLoader to take domain_ids from; make "
                "MixplaneDataLoader.Config (feedback=True) the trainer's dataloader"
            )
            raise PlanError(msg)
        return loader

    def keep(self, pred: torch.Tensor, labels: torch.Tensor) -> None:
        """This training batch's per-token loss and its ``domain_ids``: the next columns of
        the loader's oldest batch not yet taken (torchtitan computes the loss of its batches
        in loading order; a chunked loss, of their sequence chunks in order)."""
        loader = self.loader()
        if not loader.recorded:
            msg = (
                "the loss got a training batch its MixplaneDataLoader did not hand out; a "
                "validation loader needs MixplaneDataLoader.Config(..., feedback=False)"
            )
            raise PlanError(msg)
        domain_ids, expected = loader.recorded[0]
        labels = local_rows(labels, vocab=False)
        start, stop = self.column, self.column + (labels.shape[-1] if labels.ndim == 2 else -1)
        if labels.ndim != 2 or labels.shape[0] != expected.shape[0] or stop > expected.shape[1]:
            msg = (
                f"the loss got labels of shape {tuple(labels.shape)} at column {start} of a "
                f"batch of {tuple(expected.shape)}: context or pipeline parallelism splits "
                "batches, which loss feedback does not support"
            )
            raise PlanError(msg)
        self.column = stop
        if stop == expected.shape[1]:
            loader.recorded.popleft()
            self.column = 0
        with torch.no_grad():
            logits = local_rows(pred.detach(), vocab=True)
            flat = labels.reshape(-1)
            logits = logits.reshape(flat.numel(), -1)
            token_loss = torch.cat(
                [
                    F.cross_entropy(
                        logits[i : i + ROWS].float(),
                        flat[i : i + ROWS],
                        ignore_index=IGNORE_INDEX,
                        reduction="none",
                    )
                    for i in range(0, flat.numel(), ROWS)
                ]
            )
            want = expected[:, start:stop].reshape(-1).to(flat.device)
            wrong = (flat != want).any()
        self.wrong = wrong if self.wrong is None else self.wrong | wrong
        domains = domain_ids[:, start:stop].reshape(-1).to(token_loss.device)
        self.kept.append((token_loss, domains, flat != IGNORE_INDEX))

    def send(self) -> None:
        """The step's feedback (the optimizer step pre-hook): every rank calls it."""
        loader = self.loader()
        if not self.kept and not loader.recorded:
            return  # nothing trained since the last send (on every rank alike)
        bad = int(self.wrong is not None and bool(self.wrong)) + 2 * int(bool(loader.recorded))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:  # every rank stops on the same problem, none waits in a collective
            flag = torch.tensor([bad], dtype=torch.int64, device=self.device())
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = int(flag.item())
        kept, self.kept, self.wrong = self.kept, [], None
        if bad & 1:
            msg = "a batch's labels at the loss differ from the batch the loader recorded"
            raise PlanError(msg)
        if bad & 2:
            msg = (
                "an optimizer step came before the loss saw every batch the loader handed "
                "out; loss feedback needs the loss of every batch on every rank (no pipeline "
                "parallelism)"
            )
            raise PlanError(msg)
        if self.feedback is None:
            job = loader.dataset.planner
            assert job is not None  # a batch went through the loss: the loader iterates
            self.feedback = LossFeedback(job, ranks_per_group=self.ranks_per_group)
        loss, domains, mask = (torch.cat(parts) for parts in zip(*kept, strict=True))
        loader.feedback_steps += 1
        self.feedback(loader.feedback_steps, loss, domains, mask)
        if distributed and not self.feedback.in_process:  # one rank sent to the server: a new
            torch.distributed.barrier()  # mixture applies from the consumed frontier, so no
            # rank reads on while the message is in flight (in-process ranks agree in the call)

    def device(self) -> torch.device:
        return self.kept[0][0].device if self.kept else torch.device("cpu")


def local_rows(tensor: torch.Tensor, *, vocab: bool) -> torch.Tensor:
    """This rank's rows of a batch that may be a DTensor (``full_dtensor``: sharded over the
    DP ranks), with the whole vocabulary (``vocab``: the last dimension, gathered where tensor
    parallelism shards it, as loss parallelism does)."""
    if not isinstance(tensor, DTensor):
        return tensor
    if vocab:
        last = tensor.ndim - 1
        placements = [
            Replicate() if isinstance(p, Shard) and p.dim in (-1, last) else p
            for p in tensor.placements
        ]
        tensor = tensor.redistribute(placements=placements)
    return tensor.to_local()


@dataclass(frozen=True, slots=True)
class SendFeedback:
    """A ``ModelSpec.post_optimizer_build_fn``: the model's own (if any), then an optimizer
    step pre-hook that sends the step's loss feedback (``MixplaneLoss.send``)."""

    then: Callable[..., None] | None = None

    def __call__(self, optimizers: Any, model_parts: Any, parallel_dims: Any) -> None:
        if self.then is not None:
            self.then(optimizers, model_parts, parallel_dims)
        for name, enabled in (("pipeline", parallel_dims.pp_enabled),
                              ("context", parallel_dims.cp_enabled)):  # fmt: skip
            if enabled:
                msg = (
                    f"loss feedback does not support {name} parallelism (the loss no longer "
                    "sees whole batches in loading order); train without with_loss_feedback "
                    f"or without {name} parallelism"
                )
                raise PlanError(msg)
        reference = Pairing.loss
        loss = reference() if reference is not None else None
        if loss is None:
            msg = "with_loss_feedback's hook found no MixplaneLoss: config.loss was replaced"
            raise PlanError(msg)
        dp = parallel_dims.dp_replicate * parallel_dims.dp_shard
        loss.ranks_per_group = parallel_dims.world_size // dp
        optimizers.register_step_pre_hook(lambda *args, **kwargs: loss.send())


def with_loss_feedback(config: Any) -> Any:
    """``config`` (a torchtitan ``Trainer.Config`` with a ``MixplaneDataLoader.Config``) with
    per-component loss feedback: ``MixplaneLoss`` around its loss and ``SendFeedback`` after
    its model's optimizer hook (see the module)."""
    if not isinstance(config.dataloader, MixplaneDataLoader.Config):
        msg = (
            f"with_loss_feedback needs MixplaneDataLoader.Config as config.dataloader, got "
            f"{type(config.dataloader).__name__}; set the dataloader first"
        )
        raise PlanError(msg)
    if config.model_spec is None:
        msg = "with_loss_feedback needs config.model_spec (set by the model's config function)"
        raise PlanError(msg)
    if isinstance(config.loss, ChunkedLossWrapper.Config):  # the logits are per chunk
        if not isinstance(config.loss.loss_fn, MixplaneLoss.Config):
            config.loss.loss_fn = MixplaneLoss.Config(loss=config.loss.loss_fn)
    elif not isinstance(config.loss, MixplaneLoss.Config):
        config.loss = MixplaneLoss.Config(loss=config.loss)
    hook = config.model_spec.post_optimizer_build_fn
    if not isinstance(hook, SendFeedback):
        config.model_spec = dataclasses.replace(
            config.model_spec, post_optimizer_build_fn=SendFeedback(hook)
        )
    return config
