"""The adaptation interface and a simple loss-proportional algorithm.

An algorithm sees per-component feedback after a training step, ``update(step, loss_sum,
token_count)`` (sums of per-token loss and token counts, one entry per component), and may
return new weights (one per component, summing to 1) or None to keep the current ones. Its
``state_dict()`` is plain JSON-able data with a ``version``, so a job's state holds it and a
resumed run replays the same weights. Algorithms are picked by name from ``ALGORITHMS``.

``LossProportional``: weights proportional to an exponential moving average of each
component's mean loss (components with higher loss get more data), mixed with the prior:
``w = (1 - mix) * prior + mix * ema / sum(ema)``, recomputed every ``interval`` steps. Cost:
O(K) per update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypedDict

import numpy as np

from mixplane.errors import MixplaneError


class FeedbackError(MixplaneError, ValueError):
    """Feedback that does not fit the job: wrong length, NaN, negative counts."""


class MixingAlgorithm(Protocol):
    def update(
        self, step: int, loss_sum: np.ndarray, token_count: np.ndarray
    ) -> np.ndarray | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_feedback(k: int, loss_sum: Any, token_count: Any) -> tuple[np.ndarray, np.ndarray]:
    loss = np.asarray(loss_sum, dtype=np.float64)
    count = np.asarray(token_count, dtype=np.float64)
    if loss.shape != (k,) or count.shape != (k,):
        msg = f"feedback needs {k} values per array (one per component), got {loss.shape} and {count.shape}"
        raise FeedbackError(msg)
    if not (np.isfinite(loss).all() and np.isfinite(count).all()):
        msg = "feedback holds NaN or infinite values; send finite loss sums and token counts"
        raise FeedbackError(msg)
    if (count < 0).any() or (loss < 0).any():
        msg = "feedback holds negative loss sums or token counts"
        raise FeedbackError(msg)
    return loss, count


class LossProportionalState(TypedDict):
    version: int
    ema: list[float]
    seen: list[bool]


class LossProportional:
    """More data for components whose loss is higher (a simple, transparent baseline)."""

    def __init__(
        self, prior: np.ndarray, *, mix: float = 0.5, beta: float = 0.9, interval: int = 1
    ) -> None:
        self.prior = np.asarray(prior, dtype=np.float64)
        self.mix, self.beta, self.interval = mix, beta, interval
        self._ema = np.zeros(len(self.prior))
        self._seen = np.zeros(len(self.prior), dtype=bool)

    def update(self, step: int, loss_sum: np.ndarray, token_count: np.ndarray) -> np.ndarray | None:
        present = token_count > 0
        mean = np.divide(loss_sum, token_count, out=np.zeros_like(loss_sum), where=present)
        fresh = present & ~self._seen
        self._ema[fresh] = mean[fresh]
        old = present & self._seen
        self._ema[old] = self.beta * self._ema[old] + (1 - self.beta) * mean[old]
        self._seen |= present
        if step % self.interval or not self._seen.any():
            return None
        score = np.where(self.prior > 0, self._ema, 0.0)
        if score.sum() <= 0:
            return None
        weights = (1 - self.mix) * self.prior + self.mix * score / score.sum()
        return weights / weights.sum()

    def state_dict(self) -> dict[str, Any]:
        return dict(
            LossProportionalState(version=1, ema=self._ema.tolist(), seen=self._seen.tolist())
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema = np.asarray(state["ema"], dtype=np.float64)
        self._seen = np.asarray(state["seen"], dtype=bool)


def _ado(prior: np.ndarray, **options: Any) -> MixingAlgorithm:
    from mixplane.adapt.ado import ADO  # here: ado.py imports this module

    return ADO(prior, **options)


def _ado_mixtera(prior: np.ndarray, **options: Any) -> MixingAlgorithm:
    from mixplane.adapt.ado import ado_mixtera

    return ado_mixtera(prior, **options)


def _odm(prior: np.ndarray, **options: Any) -> MixingAlgorithm:
    from mixplane.adapt.odm import ODM

    return ODM(prior, **options)


#: Algorithms by name: a factory from (prior weights, options) to an algorithm.
ALGORITHMS: dict[str, Callable[..., MixingAlgorithm]] = {
    "ado": _ado,  # mixplane/adapt/ado.py, docs/adaptation.md
    "ado-mixtera": _ado_mixtera,  # ADO as the public Mixtera code computes it
    "odm": _odm,  # mixplane/adapt/odm.py
    "loss-proportional": LossProportional,
}


def make_algorithm(name: str, prior: np.ndarray, **options: Any) -> MixingAlgorithm:
    try:
        factory = ALGORITHMS[name]
    except KeyError:
        msg = f"unknown mixing algorithm {name!r}; known: {sorted(ALGORITHMS)}"
        raise MixplaneError(msg) from None
    try:
        return factory(prior, **options)
    except TypeError as exc:
        msg = f"bad options for mixing algorithm {name!r}: {exc}; see its documentation"
        raise MixplaneError(msg) from None
