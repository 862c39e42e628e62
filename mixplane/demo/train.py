"""The demo's training loop: a small decoder fed by a job of the server, with per-domain feedback.

``train_run(job, tokenizer, settings, validation)`` trains ``GPT`` (``model.py``) on the CPU
for ``settings.steps`` steps of ``batch_size`` windows of ``seq_len`` tokens, read through
``TokenWindowDataset`` from a job of a mixplane server (``RemoteJob``: the server plans, this
process reads, tokenizes and packs). After every step it sends the per-token losses
(``reduction="none"``) with the batch's ``domain_ids`` to the job (``LossFeedback``): an
adaptive job (ADO) answers with new weights, which apply from the next chunk the server plans.
Every ``eval_every`` steps (and after the last) it measures the loss of every domain on a fixed
set of held-out windows (``validation_windows``, read through a second job over the validation
split), so two runs are compared at the same token counts.

A run records what the report plots: per step the loss sum and token count of each domain
(the same numbers sent as feedback), the validation losses, and at the end the job's mixture
log and, for an adaptive job, its algorithm state (the scaling laws).

Cost: about 5.6 MFLOP per trained token for the default model (``model.py``); a step of
8 x 128 tokens takes about 65 ms on 2 cores, evaluation included. Feedback is one HTTP request
per step (about 2 ms on loopback); an ADO refit on the server about 0.5 s.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mixplane.client.remote import RemoteClient, RemoteJob
from mixplane.demo.model import GPT, ModelConfig
from mixplane.errors import MixplaneError, SizingWarning
from mixplane.integrations.pytorch import (
    LossFeedback,
    TokenWindowDataset,
    collate_windows,
    domain_loss_sums,
)
from mixplane.mixture.mixture import Mixture
from mixplane.tokens.tokenizer import Tokenizer

log = logging.getLogger(__name__)

VALIDATION_JOB = "demo-validation"


class DemoError(MixplaneError, RuntimeError):
    """A demo stage that could not run; says what to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSettings:
    """What both runs share: the model, the budget, the optimizer, the evaluation."""

    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 128
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3
    warmup: int = 30
    eval_every: int = 50
    eval_windows: int = 16  # held-out windows per domain
    seed: int = 0
    device: str = "cpu"  # a torch device: "cpu", "cuda", "cuda:1"
    precision: Literal["float32", "bfloat16"] = "float32"  # bfloat16: autocast (GPUs)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            seq_len=self.seq_len,
            d_model=self.d_model,
            layers=self.layers,
            heads=self.heads,
        )

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over ``warmup`` steps, then constant (a power law in the number of
        samples is what ADO fits; a decaying rate would bend every domain's curve late)."""
        return self.lr * min(1.0, (step + 1) / max(1, self.warmup))


@dataclass(slots=True, kw_only=True)
class RunRecord:
    """What one run measured (see the module)."""

    name: str
    job_id: str
    selectors: list[str]
    loss_sum: list[list[float]] = field(default_factory=list)  # per step, per component
    tokens: list[list[float]] = field(default_factory=list)  # per step, per component
    chunks: list[int] = field(default_factory=list)  # per step: the chunk its last window is of
    eval_steps: list[int] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)  # per eval: domain -> loss
    mixture_log: list[dict[str, Any]] = field(default_factory=list)
    algorithm: dict[str, Any] | None = None
    seconds: float = 0.0


Batch = dict[str, Any]
Precision = Literal["float32", "bfloat16"]


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """The batch with its tensors on ``device`` (the rest as is)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _autocast(device: torch.device, precision: Precision) -> torch.autocast:
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"
    )


def validation_windows(
    client: RemoteClient,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    per_domain: int,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Batch]:
    """The first ``per_domain`` windows of each domain's validation documents, read through a
    job of the server over ``split == 'validation'`` (uniform over domains, each document read
    once: a domain that runs out leaves the mix). A domain with no validation document is
    missing from the result; one with few has fewer windows."""
    result = client.explain_query("split == 'validation'", by=["domain"])
    if not result["components"]:
        return {}
    job = client.submit(
        VALIDATION_JOB,
        where="split == 'validation'",
        mixture=Mixture.uniform(["domain"]),
        unit="samples",
        chunk_size=64,
        block_size=1,
        on_exhausted="redistribute",
        seed=seed,
        replace=True,
    )
    domains = [s.split("=", 1)[1] for s in job.selectors]
    found: dict[str, list[dict[str, torch.Tensor]]] = {d: [] for d in domains}
    with warnings.catch_warnings():  # every document read once: no token shares to keep
        warnings.simplefilter("ignore", SizingWarning)
        dataset = TokenWindowDataset(job, tokenizer, seq_len, dp_group=0, group_rank=0)
    windows = iter(dataset)
    bar = tqdm(
        total=per_domain * len(domains),
        desc="validation windows",
        unit="window",
        leave=False,
        disable=not progress if progress is not None else None,
    )
    try:
        for window in windows:
            bucket = found[domains[int(window["component"])]]
            if len(bucket) < per_domain:
                bucket.append(window)
                bar.update(1)
            if all(len(b) >= per_domain for b in found.values()):
                break
    finally:
        bar.close()
        _close(windows)
    return {d: collate_windows(ws) for d, ws in found.items() if ws}


@torch.no_grad()
def evaluate(
    model: GPT, validation: Mapping[str, Batch], *, precision: Precision = "float32"
) -> dict[str, float]:
    """Mean per-token loss of each domain's held-out windows (on the model's device)."""
    device = next(model.parameters()).device
    model.eval()
    try:
        with _autocast(device, precision):
            return {
                d: float(model.token_loss(to_device(batch, device)).float().mean())
                for d, batch in validation.items()
            }
    finally:
        model.train()


def train_run(
    name: str,
    job: RemoteJob,
    tokenizer: Tokenizer,
    settings: TrainSettings,
    validation: Mapping[str, Batch],
    *,
    vocab_size: int,
    progress: bool | None = None,
    on_batch: Callable[[int, Batch], None] | None = None,
) -> RunRecord:
    """Train a fresh model (seeded: both runs start from the same weights) on ``job``'s
    windows for ``settings.steps`` steps; see the module. ``on_batch(step, batch)`` sees every
    trained batch (tests count its tokens). The model trains on ``settings.device``, in
    bfloat16 autocast when ``settings.precision`` says so; the batches move there after
    ``on_batch`` has seen them."""
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)  # the initial weights: made on the CPU for every device
    model = GPT(settings.model_config(vocab_size)).to(device)
    validation = {d: to_device(b, device) for d, b in validation.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95))
    feedback = LossFeedback(job)
    record = RunRecord(name=name, job_id=job.job_id, selectors=list(job.selectors))
    dataset = TokenWindowDataset(
        job, tokenizer, settings.seq_len, dp_group=0, group_rank=0, batch_size=settings.batch_size
    )
    loader = DataLoader(
        dataset, batch_size=settings.batch_size, collate_fn=collate_windows, num_workers=0
    )
    k = job.num_components
    started = time.perf_counter()
    batches: Iterator[Batch] = iter(loader)
    bar = tqdm(
        total=settings.steps,
        desc=f"train {name}",
        unit="step",
        leave=False,
        disable=not progress if progress is not None else None,
    )
    try:
        for step in range(settings.steps + 1):
            if step % settings.eval_every == 0 or step == settings.steps:
                record.eval_steps.append(step)
                record.validation.append(evaluate(model, validation, precision=settings.precision))
            if step == settings.steps:
                break
            batch = next(batches)
            record.chunks.append(_chunk(dataset))
            if on_batch is not None:
                on_batch(step, batch)
            batch = to_device(batch, device)
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate(step)
            with _autocast(device, settings.precision):
                loss = model.token_loss(batch).float()
            torch.autograd.backward(loss.mean())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sums, counts = domain_loss_sums(loss, batch["domain_ids"], k)
            feedback(step, loss, batch["domain_ids"])
            record.loss_sum.append(sums.tolist())
            record.tokens.append(counts.tolist())
            mean = float(sums.sum() / counts.sum())
            if not math.isfinite(mean):
                msg = (
                    f"the {name} run diverged at step {step} (loss {mean}); lower the "
                    f"learning rate (--lr, now {settings.lr})"
                )
                raise DemoError(msg)
            bar.update(1)
            bar.set_postfix(loss=f"{mean:.3f}", refresh=False)
    finally:
        bar.close()
        _close(batches)
    record.seconds = time.perf_counter() - started
    record.mixture_log = job.mixture_log
    if job.spec.algorithm is not None:
        record.algorithm = job.checkpoint()["algorithm"]
    log.info("run %s: %d steps in %.1f s", name, settings.steps, record.seconds)
    return record


def natural_weights(record: RunRecord) -> np.ndarray:
    """The weights the job started from (its mixture log's first entry)."""
    return np.asarray(record.mixture_log[0]["weights"], dtype=np.float64)


def _chunk(dataset: TokenWindowDataset) -> int:
    """The chunk (of the job's single consumer) the dataset's last window came from."""
    streams = dataset.state_dict()["windows"]["windows"]
    return min(int(state["stream"]["j"]) for state in streams.values())


def _close(iterator: Iterator[Any]) -> None:
    """Stop a window iterator now: its prefetch thread ends with it. A DataLoader's iterator
    has no ``close``; it ends when the last reference to it goes."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
