"""Hugging Face ``datasets``: a rank's token windows as a ``datasets.IterableDataset``.

``hf_dataset(job, tokenizer, seq_len, ...)`` yields the same windows, in the same order, as
``TokenWindowDataset`` with ``num_workers=0`` (the rank's layout arguments are the same), as
examples with ``input_ids``, ``labels``, ``domain_ids``, ``position_ids``, ``cu_seqlens`` and
``component``; ``.with_format("torch")`` turns them into tensors. It runs the job from a
snapshot taken when it is made, so every iteration starts there (a new epoch of ``datasets``). The dataset is one shard: give
a DataLoader ``num_workers=0`` (worker processes are the PyTorch dataset's job). Its
``state_dict()`` / ``load_state_dict()`` (those of ``datasets``) resume exactly, by replaying
the windows already yielded; for cheap resume at any scale use ``TokenWindowDataset``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mixplane.chunking.assign import Topology
from mixplane.client.rank import RankWindows, resolve_layout
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.windows import PREFETCH_CHUNKS
from mixplane.errors import DependencyError, PlanError
from mixplane.job import Job
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

try:
    import datasets
except ImportError as exc:  # pragma: no cover - the hf extra is installed in development
    msg = "mixplane.integrations.hf needs Hugging Face datasets: pip install 'mixplane[hf]'"
    raise DependencyError(msg) from exc

FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "domain_ids": datasets.Sequence(datasets.Value("int32")),
        "position_ids": datasets.Sequence(datasets.Value("int32")),
        "cu_seqlens": datasets.Sequence(datasets.Value("int32")),
        "component": datasets.Value("int32"),
    }
)


def hf_dataset(
    job: Job | JobSnapshot | str | os.PathLike[str],
    tokenizer: Tokenizer | str,
    seq_len: int,
    *,
    dp_group: int | None = None,
    group_rank: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    dp_size: int | None = None,
    ranks_per_group: int | None = None,
    bos: bool = False,
    prefetch: int = PREFETCH_CHUNKS,
    batch_size: int = 1,
) -> datasets.IterableDataset:
    """The rank's windows as a streaming ``datasets.IterableDataset`` (see the module)."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if isinstance(job, Job):
        job.use_tokenizer(tok)  # sized with the stream's tokenizer (if it can be)
    # every iteration starts from the snapshot (datasets replays from the start to resume)
    source = (
        JobSnapshot.load(Path(job))
        if isinstance(job, str | os.PathLike)
        else job.snapshot()
        if isinstance(job, Job)
        else job
    )
    layout = resolve_layout(
        Topology(**source.topology),
        dp_group=dp_group,
        group_rank=group_rank,
        rank=rank,
        world_size=world_size,
        dp_size=dp_size,
        ranks_per_group=ranks_per_group,
    )

    rank_windows = _RankWindows(
        source,
        tok,
        seq_len,
        dp_group=layout.dp_group,
        rank=layout.rank,
        bos=bos,
        prefetch=prefetch,
        block=batch_size,
    )

    def generate() -> Iterator[dict[str, Any]]:
        for w in rank_windows.make():
            yield {
                "input_ids": w.input_ids,
                "labels": w.labels,
                "domain_ids": w.domain_ids,
                "position_ids": w.position_ids,
                "cu_seqlens": w.cu_seqlens,
                "component": w.component,
            }

    return datasets.IterableDataset.from_generator(generate, features=FEATURES)


_MADE: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}


class _RankWindows:
    """The arguments of a rank's ``RankWindows``, kept in this process. ``datasets`` pickles
    the generator to fingerprint it; this pickles as a key only (a live job holds the catalog
    connection, and a snapshot can be large)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.key = uuid.uuid4().hex
        _MADE[self.key] = (args, kwargs)

    def __getstate__(self) -> dict[str, str]:
        return {"key": self.key}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.key = state["key"]

    def make(self) -> RankWindows:
        try:
            args, kwargs = _MADE[self.key]
        except KeyError:
            msg = (
                "this Hugging Face dataset was made in another process; make it where it is "
                "iterated, or use mixplane.integrations.pytorch.TokenWindowDataset for workers"
            )
            raise PlanError(msg) from None
        return RankWindows(*args, **kwargs)
