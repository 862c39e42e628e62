"""A deterministic training loop that drives an adaptive job with per-component loss feedback.

Each step takes ``batch`` windows of a rank's window stream, hashes them, and reports a
synthetic loss per component that falls with the tokens that component has seen (a power law,
different per component), so ADO has scaling laws to fit. Everything is a function of the
windows delivered: two runs that receive the same windows send the same feedback.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixplane.client.windows import WindowStream

SEQ = 32
BATCH = 4


@dataclass
class Trainer:
    """Where a run stands: its next step, each component's tokens seen, the stream's state."""

    step: int = 1
    seen: list[float] = field(default_factory=list)
    stream_state: dict[str, Any] | None = None
    hashes: list[str] = field(default_factory=list)  # one per step: its batch

    def copy(self) -> Trainer:
        return Trainer(
            step=self.step,
            seen=list(self.seen),
            stream_state=self.stream_state,
            hashes=list(self.hashes),
        )


def loss_of(component: int, seen: float) -> float:
    return 2.0 + 0.25 * component + 4.0 * (1.0 + seen) ** -(0.2 + 0.1 * (component % 3))


def train(
    job: Any,
    tokenizer: Any,
    trainer: Trainer,
    until: int,
    *,
    after_step: Callable[[int], None] | None = None,
    prefetch: int = 2,
) -> Trainer:
    """Train steps ``trainer.step .. until`` (inclusive) on ``job``'s consumer 0; returns the
    trainer after the last step. ``after_step(step)`` runs once a step's feedback is answered
    (a test kills the server there)."""
    k = job.num_components
    if not trainer.seen:
        trainer.seen = [0.0] * k
    windows = WindowStream(job, tokenizer, SEQ, prefetch=prefetch)
    if trainer.stream_state is not None:
        windows.load_state_dict(trainer.stream_state)  # type: ignore[arg-type]
    it = iter(windows)
    try:
        while trainer.step <= until:
            batch = list(itertools.islice(it, BATCH))
            assert len(batch) == BATCH, "the job ended early"
            digest = hashlib.sha256()
            tokens = np.zeros(k)
            for w in batch:
                digest.update(w.input_ids.tobytes() + bytes([w.component]))
                tokens[w.component] += SEQ
            loss = np.array([loss_of(c, trainer.seen[c]) for c in range(k)]) * tokens
            job.feedback(trainer.step, loss, tokens)
            trainer.seen = [s + t for s, t in zip(trainer.seen, tokens.tolist(), strict=True)]
            trainer.hashes.append(digest.hexdigest())
            trainer.stream_state = dict(windows.state_dict())
            if after_step is not None:
                after_step(trainer.step)
            trainer.step += 1
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return trainer
