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

from typing import Any, Protocol, TypedDict, runtime_checkable

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


class Law(TypedDict):
    """A fitted scaling law ``L(n) = eps + beta * n^-alpha``."""

    eps: float
    beta: float
    alpha: float


class Curve(TypedDict):
    n: list[float]
    loss: list[float]


class Fit(TypedDict):
    law: Law | None  # None: not fitted yet
    curve: Curve | None  # over the n of the steps asked about


class FitReport(TypedDict):
    """What an algorithm that fits laws to the losses shows (a dashboard's panel)."""

    refits: int
    step: int | None  # the last step the algorithm saw
    n: list[float]  # samples trained so far, per component
    n_by_step: list[list[float]] | None  # [component][step]: samples trained at each step asked
    components: list[Fit]


@runtime_checkable
class ReportsFits(Protocol):
    """An algorithm that fits laws to each component's losses and can show them."""

    def fit_report(self, steps: list[int], counts: np.ndarray, *, curve_points: int) -> FitReport:
        """Its laws, and the samples each component had been trained on at each of ``steps``
        (feedback messages it was given, with ``counts`` their token counts, T x K), with
        each law's curve over those n (``curve_points`` points)."""
        ...
