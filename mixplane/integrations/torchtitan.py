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
step and saves between steps, so the state is exactly after the last trained batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from mixplane.errors import DependencyError, PlanError, StateError, shown
from mixplane.tokens.tokenizer import load_tokenizer

try:
    import torch
    from torchtitan.components.dataloader import BaseDataLoader

    from mixplane.integrations.pytorch import TokenWindowDataset
except ImportError as exc:  # pragma: no cover - its tests build a venv with torchtitan
    msg = "mixplane.integrations.torchtitan needs torchtitan: pip install 'mixplane[torchtitan]'"
    raise DependencyError(msg) from exc

STATE_VERSION = 1


class MixplaneDataLoader(BaseDataLoader):  # type: ignore[misc]
    """One DP rank's batches of a mixplane job for torchtitan's ``Trainer`` (see the module)."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):  # type: ignore[misc]
        job_path: str = ""
        """A job snapshot (``job.snapshot().save(path)``)."""

        tokenizer_path: str = ""
        """The stream's tokenizer (a ``tokenizer.json``, or a name such as ``"deepseek"``)."""

        group_rank: int = 0
        """This rank's position among the ranks of its DP group (TP/PP/CP peers)."""

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
        if not config.job_path or not config.tokenizer_path:
            msg = (
                "MixplaneDataLoader.Config needs job_path (a saved job snapshot) and "
                f"tokenizer_path, got job_path={config.job_path!r}, "
                f"tokenizer_path={config.tokenizer_path!r}"
            )
            raise PlanError(msg)
        self.config = config
        self.dp_world_size, self.dp_rank = dp_world_size, dp_rank
        self.local_batch_size = local_batch_size
        self.dataset = TokenWindowDataset(
            config.job_path,
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
            yield inputs, torch.stack([w["labels"] for w in items])

    def state_dict(self) -> dict[str, Any]:
        state = {"version": STATE_VERSION, "dataset": self.dataset.state_dict()}
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
