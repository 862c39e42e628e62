"""ADO (mixplane/adapt/ado.py): the paper's algebra, the scaling-law fit, the loss series,
warm-up and refit schedule, the Mixtera variant, and exact resume from the state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mixplane.adapt.ado as ado_module
from mixplane.adapt import ADO, ALGORITHMS, make_algorithm
from mixplane.adapt.ado import (
    AlgorithmOptionError,
    LawFit,
    Series,
    fit_scaling_laws,
    floor_weights,
    law_loss,
    loss_slope,
    preference,
    savgol,
)
from mixplane.errors import MixplaneError, StateError
from tests.resume import check_resume

SEQ = 2048


def feedback(
    steps: int,
    *,
    k: int = 4,
    batch: int = 8,
    seed: int = 0,
    eps: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
    noise: float = 0.01,
    shares: np.ndarray | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Synthetic feedback: each step ``batch`` sequences spread over k components by
    ``shares``; component j's mean loss follows eps + beta * n^-alpha in the samples n
    trained so far (all components), with multiplicative noise."""
    rng = np.random.default_rng(seed)
    eps = np.linspace(2.0, 2.6, k) if eps is None else eps
    beta = np.full(k, 5.0) if beta is None else beta
    alpha = np.linspace(0.2, 0.4, k) if alpha is None else alpha
    shares = np.full(k, 1 / k) if shares is None else shares
    n = 0.0
    for step in range(1, steps + 1):
        count = shares * batch * SEQ
        n += batch
        mean = (eps + beta * n**-alpha) * (1 + noise * rng.standard_normal(k))
        yield step, mean * count, count


def run(algo: Any, items: Any) -> list[tuple[float, ...] | None]:
    out = []
    for step, loss, count in items:
        w = algo.update(step, loss, count)
        out.append(None if w is None else tuple(w.tolist()))
    return out


FAST = {"start_step": 30, "refit_interval": 20, "ignore_steps": 5, "subsample": 2}


# -- the algebra -------------------------------------------------------------------------------
def test_slope_is_the_derivative_of_the_law() -> None:
    laws = np.array([[np.log(5.0), np.log(2.0), 0.3], [np.log(40.0), 0.6, 0.7]])
    n = np.array([1e3, 5e4])
    h = n * 1e-6
    numeric = (law_loss(laws, n + h) - law_loss(laws, n - h)) / (2 * h)
    slope = loss_slope(laws, n)
    assert np.allclose(slope, numeric, rtol=1e-6)
    eps, alpha = np.exp(laws[:, 1]), laws[:, 2]
    assert np.allclose(slope, -alpha * (law_loss(laws, n) - eps) / n)
    assert (slope < 0).all()


def test_identical_curves_and_h_equal_mu_prefer_mu_to_the_power_1_5() -> None:
    mu = np.array([0.5, 0.3, 0.15, 0.05])
    slope = np.full(4, -2e-4)
    rho = preference(mu, mu, slope, s=0.5, floor=None)
    assert np.allclose(rho, mu**1.5 / (mu**1.5).sum())
    # the same through the algorithm: identical laws, shares equal to mu keep h = mu
    algo = ADO(mu, start_step=10, gamma2=0.5, delta_min=0.0)
    algo.laws = np.tile([np.log(5.0), np.log(2.0), 0.3], (4, 1))
    algo.refit = lambda: LawFit(laws=algo.laws, loss=np.zeros(4))  # type: ignore[method-assign]
    w = None
    for step, loss, count in feedback(10, shares=mu):
        w = algo.update(step, loss, count)
    assert w is not None and np.allclose(algo.h, mu)
    rho_seen = (w - 0.5 * mu) / 0.5  # pi = gamma2 * rho + (1 - gamma2) * pibar, pibar = mu
    assert np.allclose(rho_seen, mu**1.5 / (mu**1.5).sum())


def test_first_update_moves_no_weight_by_more_than_gamma2() -> None:
    prior = np.array([0.4, 0.2, 0.2, 0.2])
    algo = ADO(prior, **FAST)
    alpha = np.array([0.05, 0.1, 0.5, 0.7])
    ws = [w for w in run(algo, feedback(30, alpha=alpha)) if w is not None]
    assert len(ws) == 1
    moved = np.abs(np.array(ws[0]) - prior).max()
    assert 0.01 < moved <= 0.1 + 1e-12


@pytest.mark.parametrize("variant", ["paper", "mixtera"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_sum_to_one_and_keep_the_floor(variant: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.ones(6)) * 0.7 + 0.05  # every prior weight at least the floor
    algo = ADO(prior, variant=variant, delta_min=0.05, **FAST)  # type: ignore[arg-type]
    alpha = rng.uniform(0.05, 0.7, 6)
    ws = [w for w in run(algo, feedback(120, k=6, alpha=alpha, seed=seed)) if w is not None]
    assert len(ws) == 91
    for w in ws:
        assert sum(w) == pytest.approx(1.0, abs=1e-12)
        if variant == "paper":  # pi mixes floored rho with pibar: pi >= min(floor, prior)
            assert min(w) >= 0.05 - 1e-12
        else:  # mixtera floors pi then renormalizes: a floored weight ends just below
            assert min(w) >= 0.05 / (1 + 0.05 * 6) - 1e-12


@given(
    st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=12),
    st.floats(0, 1),
)
@settings(max_examples=200, deadline=None)
def test_floor_weights_sum_to_one_and_hold_the_floor(values: list[float], frac: float) -> None:
    w = np.array(values)
    where = np.ones(len(w), dtype=bool)
    floor = frac / len(w)
    out = floor_weights(w, floor, where)
    assert out.sum() == pytest.approx(1.0, abs=1e-9)
    assert out.min() >= floor - 1e-12
    if w.sum() > 0:  # the order of the weights is kept, and entries above the floor scale
        assert (np.diff(out[np.argsort(w, kind="stable")]) >= -1e-12).all()


def test_larger_alpha_times_reducible_loss_gets_more_weight() -> None:
    mu = np.full(3, 1 / 3)
    n = np.full(3, 1e4)
    # alpha * (L(n) - eps) grows from the first to the last: more weight
    laws = np.array([[np.log(5.0), 0.7, 0.3], [np.log(5.0), 0.7, 0.2], [np.log(50.0), 0.7, 0.3]])
    reducible = law_loss(laws, n) - np.exp(laws[:, 1])
    assert (laws[:, 2] * reducible)[0] < (laws[:, 2] * reducible)[1] < (laws[:, 2] * reducible)[2]
    rho = preference(mu, mu, loss_slope(laws, n), s=0.5, floor=0.01)
    assert rho[0] < rho[1] < rho[2]
    algo = ADO(mu, start_step=5)  # through the algorithm (n = 40): larger beta, same alpha
    laws = np.array([[np.log(b), 0.7, 0.3] for b in (5.0, 10.0, 20.0)])
    algo.refit = lambda: LawFit(laws=laws, loss=np.zeros(3))  # type: ignore[method-assign]
    algo.laws = laws
    w = run(algo, feedback(5, k=3))[-1]
    assert w is not None and w[0] < w[1] < w[2]


def test_pibar_moves_at_most_one_over_t_plus_one() -> None:
    algo = ADO(np.full(4, 0.25), **FAST)
    moved = 0
    for step, loss, count in feedback(90, alpha=np.array([0.1, 0.3, 0.5, 0.7])):
        before = algo.pibar.copy()
        algo.update(step, loss, count)
        change = np.abs(algo.pibar - before).max()
        assert change <= 1 / (step + 1) + 1e-15
        moved += change > 0
    assert moved == 61  # steps 30..90 moved it


def test_warm_up_keeps_the_prior_and_refits_follow_the_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = ado_module.fit_scaling_laws

    def counting(*args: Any, **kwargs: Any) -> LawFit:
        calls.append(algo.step or -1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ado_module, "fit_scaling_laws", counting)
    algo = ADO(np.full(4, 0.25), start_step=40, refit_interval=25, ignore_steps=5)
    out = run(algo, feedback(140))
    assert out[:39] == [None] * 39  # steps 1..39: the prior stays in force
    assert all(w is not None for w in out[39:])
    assert calls == [40, 65, 90, 115, 140]
    assert algo.fits == 5


def test_every_option_is_checked() -> None:
    prior = np.full(4, 0.25)
    for options, match in [
        ({"variant": "doremi"}, "unknown variant 'doremi'"),
        ({"sample_count": "tokens"}, "unknown sample_count"),
        ({"seq_len": 0}, "seq_len must be an integer >= 1"),
        ({"start_step": -1}, "start_step"),
        ({"savgol_window": 100}, "savgol_window must be odd"),
        ({"gamma2": 1.5}, r"gamma2 must lie in \[0, 1\]"),
        ({"delta_min": 0.3}, "delta_min=0.3 cannot hold for 4 components"),
        ({"natural": [1, 2]}, "natural needs 4"),
    ]:
        with pytest.raises(AlgorithmOptionError, match=match):
            ADO(prior, **options)
    with pytest.raises(MixplaneError, match="bad options for mixing algorithm 'ado'"):
        make_algorithm("ado", prior, gama=0.1)
    with pytest.raises(MixplaneError, match="bad options for mixing algorithm 'ado-mixtera'"):
        make_algorithm("ado-mixtera", prior, variant="paper")


def test_registry_names() -> None:
    assert {"ado", "ado-mixtera", "odm", "loss-proportional"} <= set(ALGORITHMS)
    assert isinstance(make_algorithm("ado-mixtera", np.full(2, 0.5)), ADO)
    assert make_algorithm("ado-mixtera", np.full(2, 0.5)).variant == "mixtera"  # type: ignore[attr-defined]


# -- the Mixtera variant -----------------------------------------------------------------------
def test_mixtera_variant_averages_pi_into_h_and_floors_pi() -> None:
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    paper = ADO(prior, **FAST)
    mixtera = ADO(prior, variant="mixtera", **FAST)
    h_before = None
    for step, loss, count in feedback(40, shares=np.full(4, 0.25)):
        paper.update(step, loss, count)
        h_before = mixtera.h.copy()
        w = mixtera.update(step, loss, count)
    assert w is not None and h_before is not None
    assert np.allclose(mixtera.h, 0.1 * w + 0.9 * h_before)  # h <- EMA of pi
    assert not np.allclose(paper.h, mixtera.h)  # paper: EMA of the realized shares (0.25)
    assert np.allclose(paper.h, 0.25 + (prior - 0.25) * 0.9**40)


# -- the fit -----------------------------------------------------------------------------------
def test_fit_recovers_a_known_law_from_noisy_losses() -> None:
    """2.0 + 5.0 n^-0.3 with 1% noise per step: 30,000 steps of 8 samples with the default
    smoothing, thinning and ignore_steps, fitted once at the end (three noisy components)."""
    steps, k = 30000, 3
    algo = ADO(np.full(k, 1 / k), start_step=steps, refit_interval=10**6)
    items = feedback(
        steps, k=k, eps=np.full(k, 2.0), beta=np.full(k, 5.0), alpha=np.full(k, 0.3), seed=7
    )
    w = run(algo, items)[-1]
    assert w is not None and algo.laws is not None
    eps, alpha = np.exp(algo.laws[:, 1]), algo.laws[:, 2]
    assert np.abs(eps / 2.0 - 1).max() < 0.01
    assert np.abs(alpha / 0.3 - 1).max() < 0.10
    n = np.full(k, 8.0 * steps)
    true = loss_slope(np.tile([np.log(5.0), np.log(2.0), 0.3], (k, 1)), n)
    assert np.abs(loss_slope(algo.laws, n) / true - 1).max() < 0.05


def test_fit_is_as_good_as_one_lbfgs_run_per_start() -> None:
    """The vectorized fit against the naive fit (scipy L-BFGS-B once per grid start, the
    paper's grid, every other value: 64 starts) on the same points: its loss is no worse."""
    minimize = pytest.importorskip("scipy.optimize").minimize
    rng = np.random.default_rng(3)
    n = 8.0 * np.arange(500, 3000, 10)
    laws_true = [(2.3, 0.2, 4.0), (1.9, 0.45, 12.0)]
    y = np.log(
        np.stack(
            [e + b * n**-a * (1 + 0.003 * rng.standard_normal(len(n))) for e, a, b in laws_true], 1
        )
    )
    x = np.log(n)
    fit = fit_scaling_laws(x[:, None], y, screen_points=64)

    def objective(p: np.ndarray, yk: np.ndarray) -> tuple[float, np.ndarray]:
        d = p[0] - p[1] - p[2] * x
        z = np.exp(-np.abs(d))
        r = np.maximum(d, 0) + np.log1p(z) + p[1] - yk
        c = np.minimum(np.abs(r), 1e-3)
        s = np.where(d >= 0, 1, z) / (1 + z)
        psi = np.copysign(c, r) / len(x)
        grad = np.array([(psi * s).sum(), (psi * (1 - s)).sum(), -(psi * s * x).sum()])
        return float(np.mean(c * (np.abs(r) - 0.5 * c))), grad

    bounds = [(None, 6.5), (0.5, None), (0.0, 0.8)]
    for k in range(2):
        best = min(
            minimize(
                objective, [b, e, a], args=(y[:, k],), jac=True, method="L-BFGS-B", bounds=bounds
            ).fun
            for b in ado_module.GRID_LOG_BETA[::2]
            for e in ado_module.GRID_LOG_EPS[::2]
            for a in ado_module.GRID_ALPHA[::2]
        )
        assert fit.loss[k] <= best * (1 + 1e-6)
        assert np.exp(fit.laws[k, 1]) == pytest.approx(laws_true[k][0], rel=0.02)


def test_fit_keeps_previous_laws_where_it_fails() -> None:
    fit = fit_scaling_laws(np.log([[10.0], [20.0]]), np.log([[3.0, np.nan], [2.9, np.nan]]))
    assert np.isnan(fit.laws).all()  # fewer than 3 points
    algo = ADO(np.full(2, 0.5), start_step=3, refit_interval=1, ignore_steps=0, subsample=1)
    old = np.array([[1.0, 0.7, 0.2], [1.0, 0.7, 0.3]])
    algo.laws = old.copy()
    fails = LawFit(laws=np.array([[np.nan] * 3, [1.5, 0.8, np.inf]]), loss=np.zeros(2))
    algo_module_fit = ado_module.fit_scaling_laws
    try:
        ado_module.fit_scaling_laws = lambda *a, **k: fails  # type: ignore[assignment]
        run(algo, feedback(3, k=2))
    finally:
        ado_module.fit_scaling_laws = algo_module_fit
    assert np.array_equal(algo.laws, old)


def test_series_matches_smoothing_the_whole_series() -> None:
    """The kept points equal Savitzky-Golay over the whole series, thinned, at any length."""
    rng = np.random.default_rng(0)
    raw = 2 + rng.random((400, 3))
    n = np.cumsum(rng.integers(1, 5, (400, 3)), axis=0).astype(float)
    series = Series(3, window=101, order=3, ignore=7, stride=10)
    for t in range(400):
        series.push(raw[t], n[t])
        if t + 1 in (5, 60, 101, 102, 150, 333, 400):
            xs, ys = series.points()
            length = t + 1
            w = min(101, length if length % 2 else length - 1)
            smooth = savgol(raw[:length], w, 3) if w > 3 else raw[:length]
            assert np.allclose(ys, np.log(smooth[7::10]), atol=1e-6)
            assert np.allclose(xs, np.log(n[:length][7::10]), atol=1e-6)


def test_savgol_matches_scipy() -> None:
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(1).standard_normal((300, 2))
    for t, w in [(300, 101), (101, 101), (9, 7)]:
        ours = savgol(x[:t], w, 3)
        assert np.allclose(ours, signal.savgol_filter(x[:t], w, 3, axis=0, mode="interp"))


def test_absent_components_keep_their_last_loss_and_domain_counts() -> None:
    algo = ADO(np.full(3, 1 / 3), sample_count="domain", start_step=10**6)
    algo.update(1, np.array([3.0, 6.0, 0.0]) * SEQ, np.array([1.0, 2.0, 0.0]) * SEQ)
    algo.update(2, np.array([2.5, 0.0, 0.0]) * SEQ, np.array([1.0, 0.0, 0.0]) * SEQ)
    assert np.allclose(algo.series.raw[-1], [2.5, 3.0, 3.0])  # first step: the step's mean
    assert np.allclose(algo.n, [2.0, 2.0, 0.0])
    step = ADO(np.full(3, 1 / 3), start_step=10**6)
    step.update(1, np.array([3.0, 6.0, 0.0]) * SEQ, np.array([1.0, 2.0, 0.0]) * SEQ)
    assert np.allclose(step.n, [3.0, 3.0, 3.0])  # the paper's same step size
    assert step.update(2, np.zeros(3), np.zeros(3)) is None and step.series.length == 1


# -- resume ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["paper", "mixtera"])
def test_state_round_trip_resumes_exactly(variant: str) -> None:
    items = list(feedback(100, k=5, alpha=np.linspace(0.1, 0.6, 5), seed=4))
    prior = np.array([0.3, 0.3, 0.2, 0.1, 0.1])

    def make() -> ADO:
        return ADO(prior, variant=variant, **{**FAST, "refit_interval": 25})  # type: ignore[arg-type]

    full = run(make(), items)

    def restored_after(k: int) -> list[Any]:
        first = make()
        run(first, items[:k])
        state = json.loads(json.dumps(first.state_dict()))  # JSON-able
        second = make()
        second.load_state_dict(state)
        return run(second, items[k:])

    check_resume(full, restored_after, [0, 29, 30, 31, 56, 99])


def test_state_of_another_algorithm_is_refused() -> None:
    state = ADO(np.full(3, 1 / 3)).state_dict()
    with pytest.raises(StateError, match="saved for 3 components"):
        ADO(np.full(4, 0.25)).load_state_dict(state)
    with pytest.raises(StateError, match="version"):
        ADO(np.full(3, 1 / 3)).load_state_dict({**state, "version": 99})


# -- in a job ----------------------------------------------------------------------------------
def test_ado_job_moves_weight_and_replays_exactly_after_a_restore(client: Any) -> None:
    """A job with ``algorithm="ado"`` (first weights at step 8, refits every 4 steps) keeps
    its state in the job state: restoring at any step gives the same samples and weights."""
    import itertools

    mix = {"language=en": 0.4, "language=de": 0.3, "language=fr": 0.3}
    options = {
        "start_step": 8,
        "refit_interval": 4,
        "ignore_steps": 0,
        "subsample": 1,
        "seq_len": 1,
    }

    def go(cut: int | None) -> tuple[list[tuple[int, int]], list[list[float]]]:
        def submit() -> Any:
            return client.submit(
                "ado",
                unit="samples",
                mixture=mix,
                chunk_size=20,
                seed=3,
                algorithm="ado",
                algorithm_options=options,
            )

        job = submit()
        stream = iter(job.stream())
        k = len(job.result.components)
        lang = [c.properties["language"] for c in job.result.components]
        seen: list[tuple[int, int]] = []
        for step in range(1, 21):
            batch = list(itertools.islice(stream, 20))
            seen += [(s.file_id, s.ordinal) for s in batch]
            loss, count = np.zeros(k), np.zeros(k)
            for s in batch:  # German's loss still falls fast; the others' have flattened
                n = 20.0 * step
                loss[s.component] += 2.0 + (40.0 if lang[s.component] == "de" else 2.0) * n**-0.5
                count[s.component] += 1
            job.feedback(step, loss, count)
            if cut is not None and step == cut:
                state = json.loads(json.dumps(job.state_dict()))
                job = submit()
                job.load_state_dict(state)
                stream = iter(job.stream())
        return seen, [e["weights"] for e in job.mixture_log]

    seen, log = go(None)
    job = client.job("ado")
    de = [c.properties["language"] for c in job.result.components].index("de")
    assert len(log) > 1 and log[-1][de] > 0.3
    for cut in (5, 8, 13):
        assert go(cut) == (seen, log)
