"""The adaptation interface: feedback validation, a loss-proportional algorithm moving weight,
and exact replay of adaptive runs after a restore."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mixplane.adapt import LossProportional, make_algorithm
from mixplane.adapt.base import FeedbackError
from mixplane.client import Client
from mixplane.errors import MixplaneError
from mixplane.job import Phase
from mixplane.mixture import Mixture

MIX = {"language=en": 0.4, "language=de": 0.3, "language=fr": 0.3}


def test_loss_proportional_moves_weight_to_higher_loss() -> None:
    algo = LossProportional(np.array([0.5, 0.25, 0.25]), mix=0.5)
    w = algo.update(1, np.array([100.0, 300.0, 100.0]), np.array([100.0, 100.0, 100.0]))
    assert w is not None and w.sum() == pytest.approx(1)
    assert w[1] > 0.25 > w[2]
    again = LossProportional(np.array([0.5, 0.25, 0.25]), mix=0.5)
    again.load_state_dict(algo.state_dict())
    feedback = (2, np.array([50.0, 50.0, 90.0]), np.array([100.0, 100.0, 100.0]))
    assert np.array_equal(again.update(*feedback), algo.update(*feedback))  # type: ignore[arg-type]


def test_unknown_algorithm() -> None:
    with pytest.raises(MixplaneError, match="unknown mixing algorithm 'ado2'"):
        make_algorithm("ado2", np.ones(2) / 2)


def test_feedback_validation(client: Client) -> None:
    job = client.submit("a", unit="samples", mixture=MIX, algorithm="loss-proportional")
    with pytest.raises(FeedbackError, match="3 values"):
        job.feedback(1, [1.0, 2.0], [1, 2])
    with pytest.raises(FeedbackError, match="NaN"):
        job.feedback(1, [1.0, float("nan"), 1.0], [1, 1, 1])
    with pytest.raises(FeedbackError, match="negative"):
        job.feedback(1, [1.0, 1.0, 1.0], [1, -1, 1])


def _run(client: Client, cut: int | None) -> tuple[list[tuple[int, int]], list[list[float]]]:
    """A consumer trains on chunks of 20 and sends feedback after each; optionally restore."""

    def submit():  # type: ignore[no-untyped-def]
        return client.submit(
            "ad",
            unit="samples",
            mixture=MIX,
            chunk_size=20,
            seed=3,
            algorithm="loss-proportional",
            algorithm_options={"mix": 0.8},
            schedule=[Phase(start=6, mixture=Mixture.static(MIX))],
        )

    job = submit()
    stream = iter(job.stream())
    seen: list[tuple[int, int]] = []
    k = len(job.result.components)
    by_lang = [c.properties["language"] for c in job.result.components]
    for step in range(1, 16):
        batch = list(itertools.islice(stream, 20))
        seen += [(s.file_id, s.ordinal) for s in batch]
        loss, count = np.zeros(k), np.zeros(k)
        for s in batch:  # German is "hard": its loss stays high; the others' loss falls
            loss[s.component] += 3.0 if by_lang[s.component] == "de" else 1.0 + 1.5 / step
            count[s.component] += 1
        job.feedback(step, loss, count)
        if cut is not None and step == cut:
            state = job.state_dict()
            job = submit()
            job.load_state_dict(state)
            stream = iter(job.stream())
    return seen, [e["weights"] for e in job.mixture_log]


def test_adaptive_run_moves_weight_and_replays_exactly(client: Client) -> None:
    seen, log = _run(client, cut=None)
    job = client.job("ad")
    de = [c.properties["language"] for c in job.result.components].index("de")
    assert log[-1][de] > 0.3 + 0.1  # weight moved toward the hard component
    for cut in (3, 6, 9):
        assert _run(client, cut=cut) == (seen, log)
