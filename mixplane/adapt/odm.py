"""ODM: online data mixing as a multi-armed bandit (Albalak et al., 2023, "Efficient Online
Data Mixing For Language Model Pre-Training").

Each component with prior weight > 0 is an arm of an EXP3 bandit whose reward is the training
loss of the component's data (high loss: much left to learn). After each step, for every
component k in the step's batch, with mean loss ``L_k`` and ``pi_k`` the weight it was drawn
with (the weights this algorithm last returned, or the prior)::

    R_k   <- smoothing * R_k + (1 - smoothing) * L_k / pi_k     importance-weighted, smoothed
    eps_t  = min(1/K, sqrt(ln K / (K t)))                         exploration
    pi_k   = (1 - K eps_t) * softmax(eps_{t-1} * R)_k + eps_t

with K the number of arms and t the step (``eps_0 = 1/K``). Every arm keeps at least
``eps_t``; components without prior weight stay at 0. The estimates start at 0, so the first
update returns (nearly) uniform weights over the arms; the prior is only the starting point.
Cost: O(K) per update, about 0.05 ms for 22 components.
"""

from __future__ import annotations

import math
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from mixplane.adapt.ado import AlgorithmOptionError
from mixplane.adapt.base import check_feedback
from mixplane.errors import StateError

Array = npt.NDArray[np.float64]
STATE_VERSION = 1


class ODMState(TypedDict):
    version: int
    k: int
    reward: list[float]  # smoothed importance-weighted reward per component
    eps: float  # exploration rate of the last update (eps_{t-1} for the next one)
    weights: list[float]  # the weights in force (last returned, or the prior)


def exploration(arms: int, step: int) -> float:
    """``eps_t = min(1/K, sqrt(ln K / (K t)))`` (1/K before the first step)."""
    if step < 1:
        return 1.0 / arms
    return min(1.0 / arms, math.sqrt(math.log(arms) / (arms * step)))


class ODM:
    """Online data mixing (EXP3 with smoothed, importance-weighted loss rewards). Options
    and their defaults:

    - ``smoothing`` (0.9): the paper's alpha, weight of the previous reward estimate.
    - ``warmup_steps`` (0): steps during which the prior stays in force (``update`` returns
      None); the reward estimates learn from them all the same.
    """

    def __init__(
        self, prior: npt.ArrayLike, *, smoothing: float = 0.9, warmup_steps: int = 0
    ) -> None:
        p = np.asarray(prior, dtype=np.float64)
        if p.ndim != 1 or not len(p) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            msg = f"ODM needs a prior of finite non-negative weights with a positive sum, got {p!r}"
            raise AlgorithmOptionError(msg)
        if not 0 <= smoothing < 1:
            msg = f"smoothing must lie in [0, 1), got {smoothing}"
            raise AlgorithmOptionError(msg)
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            msg = f"warmup_steps must be an integer >= 0, got {warmup_steps!r}"
            raise AlgorithmOptionError(msg)
        self.prior = p / p.sum()
        self.k = len(p)
        self.arms = self.prior > 0
        self.smoothing, self.warmup_steps = smoothing, warmup_steps
        self.reward = np.zeros(self.k)
        self.eps = exploration(int(self.arms.sum()), 0)
        self.weights = self.prior.copy()

    def update(
        self, step: int, loss_sum: npt.ArrayLike, token_count: npt.ArrayLike
    ) -> Array | None:
        loss, count = check_feedback(self.k, loss_sum, token_count)
        present = (count > 0) & self.arms
        mean = loss / np.where(present, count, 1.0)
        drawn = np.where(present, self.weights, 1.0)
        estimate = self.smoothing * self.reward + (1 - self.smoothing) * mean / drawn
        self.reward = np.where(present, estimate, self.reward)
        arms = int(self.arms.sum())
        eps_prev, self.eps = self.eps, exploration(arms, step)
        logits = np.where(self.arms, eps_prev * self.reward, -np.inf)
        soft = np.exp(logits - logits.max())
        weights = (1 - arms * self.eps) * soft / soft.sum() + self.eps
        weights = np.where(self.arms, weights, 0.0)
        if step <= self.warmup_steps:
            return None
        self.weights = weights / weights.sum()
        return self.weights.copy()

    def state_dict(self) -> dict[str, Any]:
        return dict(
            ODMState(
                version=STATE_VERSION,
                k=self.k,
                reward=self.reward.tolist(),
                eps=self.eps,
                weights=self.weights.tolist(),
            )
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION or state.get("k") != self.k:
            msg = (
                f"ODM state version {state.get('version')!r} for {state.get('k')} components; "
                f"expected version {STATE_VERSION} for {self.k}"
            )
            raise StateError(msg)
        self.reward = np.asarray(state["reward"], dtype=np.float64)
        self.eps = float(state["eps"])
        self.weights = np.asarray(state["weights"], dtype=np.float64)
