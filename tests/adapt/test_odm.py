"""ODM (mixplane/adapt/odm.py): EXP3 weights sum to 1, keep the exploration floor, move toward
components with higher loss, and resume exactly from the state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mixplane.adapt import ODM, AlgorithmOptionError, make_algorithm
from mixplane.adapt.odm import exploration
from tests.resume import check_resume


def steps(n: int, means: list[float], *, seed: int = 0) -> list[tuple[int, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    k = len(means)
    out = []
    for step in range(1, n + 1):
        count = rng.integers(0, 3, k).astype(float) * 1024  # some components absent
        loss = np.array(means) * (1 + 0.05 * rng.standard_normal(k)) * count
        out.append((step, loss, count))
    return out


def test_exploration_schedule() -> None:
    assert exploration(4, 0) == 0.25
    assert exploration(4, 1) == 0.25  # sqrt(ln 4 / 4) = 0.59 > 1/4
    assert exploration(4, 1000) == pytest.approx(math.sqrt(math.log(4) / 4000))
    assert exploration(1, 10) == 0.0


def test_weights_sum_to_one_and_keep_the_exploration_floor() -> None:
    algo = ODM(np.array([0.4, 0.3, 0.2, 0.1]))
    for step, loss, count in steps(500, [2.0, 3.0, 4.0, 8.0]):
        w = algo.update(step, loss, count)
        assert w is not None
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        assert w.min() >= exploration(4, step) * (1 - 1e-12)


def test_weight_moves_to_components_with_higher_loss() -> None:
    algo = ODM(np.full(3, 1 / 3))
    w = None
    for step, loss, count in steps(300, [2.0, 2.5, 6.0], seed=1):
        w = algo.update(step, loss, count)
    assert w is not None and w[2] > w[1] > w[0] and w[2] > 0.35
    assert algo.reward[2] > algo.reward[0]


def test_components_without_prior_weight_stay_out_and_warm_up_keeps_the_prior() -> None:
    prior = np.array([0.5, 0.0, 0.5])
    algo = make_algorithm("odm", prior, warmup_steps=5)
    out = [algo.update(s, loss, c) for s, loss, c in steps(20, [2.0, 9.0, 3.0])]
    assert out[:5] == [None] * 5
    assert all(w is not None and w[1] == 0.0 and w.sum() == pytest.approx(1) for w in out[5:])
    with pytest.raises(AlgorithmOptionError, match="smoothing must lie in"):
        ODM(prior, smoothing=1.0)


def test_state_round_trip_resumes_exactly() -> None:
    items = steps(60, [2.0, 3.0, 4.0])

    def run(algo: ODM, part: list[tuple[int, np.ndarray, np.ndarray]]) -> list[list[float]]:
        return [algo.update(s, loss, c).tolist() for s, loss, c in part]  # type: ignore[union-attr]

    full = run(ODM(np.full(3, 1 / 3)), items)

    def restored_after(k: int) -> list[list[float]]:
        first = ODM(np.full(3, 1 / 3))
        run(first, items[:k])
        second = ODM(np.full(3, 1 / 3))
        second.load_state_dict(json.loads(json.dumps(first.state_dict())))
        return run(second, items[k:])

    check_resume(full, restored_after, [0, 1, 17, 59])
