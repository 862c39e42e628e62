"""ADO: adaptive data optimization with per-component scaling laws (Jiang et al., ICLR 2025).

Each component k gets a scaling law of its training loss in the number of samples n trained
so far, ``L_k(n) = eps_k + beta_k * n^(-alpha_k)``, refitted every ``refit_interval`` steps
from ``start_step`` on. Every step after ``start_step`` the weights follow the laws' slopes::

    dL_k/dn = -alpha_k * (L_k(n) - eps_k) / n             how fast k's loss still falls
    rho_k   ~ mu_k * h_k^s * (-dL_k/dn)                    preference (floored at delta_min)
    pi      = gamma2 * rho + (1 - gamma2) * pibar          the weights returned
    pibar  <- pibar + (rho - pibar) / (t + 1)              running mean of rho, from mu

with ``mu`` the prior (or the ``natural`` distribution), ``h_k`` an exponential moving average
(``gamma1``) of k's realized share of the step's tokens, and ``t`` the step. The ``mixtera``
variant reproduces the public Mixtera code: floor on pi instead of rho, and h the moving
average of pi (docs/adaptation.md compares them).

The fit (``fit_scaling_laws``) works in log space like the paper's code: prediction
``logsumexp(log beta - alpha log n, log eps)`` against ``log L``, Huber loss (delta 1e-3),
bounds ``alpha in [0, 0.8]``, ``log beta <= 6.5``, ``log eps >= 0.5``, multi-start from the
paper's grid (512 points; 192 distinct once projected onto the bounds). Instead of one
L-BFGS run per start, all starts of all components are one batch of 3-parameter problems
solved together by a damped Gauss-Newton method (Levenberg-Marquardt with Huber weights, exact
3x3 solves, bounds by projection with an active set): first on a thinned series (at most
``screen_points`` points), then the best distinct end points per component are polished on
the whole series. The loss series is smoothed (Savitzky-Golay, window 101, order 3), its first
``ignore_steps`` points dropped and every ``subsample``-th point kept, as in the paper.

Cost: ``update`` is O(K) numpy, 0.065 ms median for 22 components; a refit of 22 components
takes 0.4-0.7 s on one core however long the run (benchmarks/adapt.py). The state holds O(K)
numbers plus the fit series, which the refits need: every ``subsample``-th smoothed point
(float32) and the last ``savgol_window`` raw ones, about 12 bytes per step for 22 components.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypedDict, get_args

import numpy as np
import numpy.typing as npt

from mixplane.adapt.base import Curve, Fit, FitReport, Law, check_feedback
from mixplane.adapt.scaling_law import (
    GRID_ALPHA,
    GRID_LOG_BETA,
    GRID_LOG_EPS,
    LawBounds,
    LawFit,
    fit_scaling_laws,
    law_loss,
    loss_slope,
)
from mixplane.adapt.smoothing import Series, savgol
from mixplane.errors import AlgorithmOptionError, StateError

__all__ = [  # the fit's names are re-exported: users reach them through the algorithm
    "ADO",
    "GRID_ALPHA",
    "GRID_LOG_BETA",
    "GRID_LOG_EPS",
    "AlgorithmOptionError",
    "LawBounds",
    "LawFit",
    "ado_mixtera",
    "fit_scaling_laws",
    "floor_weights",
    "law_loss",
    "loss_slope",
    "preference",
    "savgol",
]

Array = npt.NDArray[np.float64]
Variant = Literal["paper", "mixtera"]
SampleCount = Literal["step", "domain"]

STATE_VERSION = 1


def floor_weights(weights: Array, floor: float, where: npt.NDArray[np.bool_]) -> Array:
    """Weights summing to 1 with every ``where`` entry at least ``floor``: entries below are
    raised to the floor and the others scaled down together (exactly, by water-filling);
    entries outside ``where`` stay 0. Needs ``floor * where.sum() <= 1``."""
    w = np.where(where, np.maximum(weights, 0.0), 0.0)
    k = int(where.sum())
    if k == 0:
        return w
    if w.sum() <= 0:
        w = where.astype(np.float64)
    w = w / w.sum()
    # find c with sum(max(floor, c * w)) == 1: raise the smallest entries one by one
    order = np.sort(w[where])
    tail = np.cumsum(order[::-1])[::-1]  # sum of order[j:]
    for j in range(k):
        c = (1.0 - floor * j) / tail[j] if tail[j] > 0 else np.inf
        if c * order[j] >= floor:
            return np.where(where, np.maximum(floor, c * w), 0.0)
    return np.where(where, 1.0 / k, 0.0)


def preference(
    mu: Array,
    h: Array,
    slope: Array,
    *,
    s: float,
    floor: float | None,
    where: npt.NDArray[np.bool_] | None = None,
) -> Array:
    """``rho ~ mu * h^s * (-dL/dn)`` over the components ``where`` (default: ``mu > 0``),
    normalized and floored at ``floor`` (None: no floor); ``mu`` itself where no component
    has a slope."""
    active = mu > 0 if where is None else where
    raw = np.where(active, mu * np.power(np.maximum(h, 0.0), s) * np.maximum(-slope, 0.0), 0.0)
    total = raw.sum()
    if total > 0 and np.isfinite(total):
        rho = raw / total
    else:
        rho = np.where(active, mu, 0.0)
        rho = rho / rho.sum() if rho.sum() > 0 else active / active.sum()
    return rho if floor is None else floor_weights(rho, floor, active)


# -- the algorithm -----------------------------------------------------------------------------
class ADOState(TypedDict):
    version: int
    variant: str
    k: int
    step: int | None  # the last step seen
    n: list[float]  # samples trained so far, per component
    h: list[float]  # credit (moving average of token shares, or of pi for mixtera)
    pibar: list[float]  # running mean of rho
    weights: list[float] | None  # the weights last returned
    laws: list[list[float | None]] | None  # (log beta, log eps, alpha); None: no law yet
    fits: int  # refits so far
    series: dict[str, Any]  # the fit series (see Series.state)


def _distribution(name: str, values: Any, k: int) -> Array:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (k,) or not np.isfinite(a).all() or (a < 0).any() or a.sum() <= 0:
        msg = f"{name} needs {k} finite non-negative weights with a positive sum, got {values!r}"
        raise AlgorithmOptionError(msg)
    return a / a.sum()


class ADO:
    """Adaptive data optimization (Jiang et al., 2025). Options and their defaults:

    - ``natural`` (None): the distribution ``mu`` that the preference multiplies and pibar
      starts from (the paper uses the natural token distribution); default: the prior.
    - ``variant`` ("paper"): "mixtera" reproduces the public Mixtera code (floor on pi, not
      rho; h is the moving average of pi, not of realized token shares).
    - ``seq_len`` (2048): tokens per sample; n counts samples (tokens / seq_len).
    - ``sample_count`` ("step"): every component's n advances by all samples of the step
      (the paper's "same step size"); "domain": by the component's own samples.
    - ``start_step`` (1000): first refit and first new weights; before it ``update`` returns
      None (the prior stays in force).
    - ``refit_interval`` (1000): refits at start_step, start_step + interval, ...
    - ``ignore_steps`` (500): feedback calls left out of the fit (the noisy start).
    - ``subsample`` (10): every subsample-th smoothed point is fitted.
    - ``savgol_window`` (101), ``savgol_order`` (3): smoothing before the fit; the window is
      shortened to the series (odd) while the series is shorter.
    - ``gamma1`` (0.1): weight of the newest value in the moving average h.
    - ``gamma2`` (0.1): weight of rho in pi (the rest is pibar).
    - ``s`` (0.5): exponent of h in the preference.
    - ``delta_min`` (0.01): floor of every component with prior weight > 0.
    - ``huber_delta`` (1e-3), ``alpha_max`` (0.8), ``log_beta_max`` (6.5), ``log_eps_min``
      (0.5): the fit's Huber threshold and bounds (see ``LawBounds``).
    - ``slope_alpha_min`` (0.0): lower bound of alpha in the slope only (the public ADO code
      uses 0.05; the paper's formula has none).
    - ``screen_points`` (256), ``polish`` (4): the fit's thinned first pass and how many of
      its best distinct end points per component are refined on all points.
    """

    def __init__(
        self,
        prior: npt.ArrayLike,
        *,
        natural: Sequence[float] | npt.ArrayLike | None = None,
        variant: Variant = "paper",
        seq_len: int = 2048,
        sample_count: SampleCount = "step",
        start_step: int = 1000,
        refit_interval: int = 1000,
        ignore_steps: int = 500,
        subsample: int = 10,
        savgol_window: int = 101,
        savgol_order: int = 3,
        gamma1: float = 0.1,
        gamma2: float = 0.1,
        s: float = 0.5,
        delta_min: float = 0.01,
        huber_delta: float = 1e-3,
        alpha_max: float = 0.8,
        log_beta_max: float = 6.5,
        log_eps_min: float = 0.5,
        slope_alpha_min: float = 0.0,
        screen_points: int = 256,
        polish: int = 4,
    ) -> None:
        raw_prior = np.asarray(prior, dtype=np.float64)
        if raw_prior.ndim != 1 or not len(raw_prior):
            msg = f"ADO needs a prior with one weight per component, got shape {raw_prior.shape}"
            raise AlgorithmOptionError(msg)
        k = len(raw_prior)
        self.prior = _distribution("the prior", raw_prior, k)
        self.mu = self.prior if natural is None else _distribution("natural", natural, k)
        _choice("variant", variant, Variant)
        _choice("sample_count", sample_count, SampleCount)
        for name, value in [
            ("seq_len", seq_len),
            ("refit_interval", refit_interval),
            ("subsample", subsample),
            ("screen_points", screen_points),
            ("polish", polish),
        ]:
            _at_least(name, value, 1)
        _at_least("start_step", start_step, 0)
        _at_least("ignore_steps", ignore_steps, 0)
        if savgol_window % 2 == 0 or savgol_window <= savgol_order or savgol_order < 0:
            msg = (
                f"savgol_window must be odd and larger than savgol_order, got {savgol_window} "
                f"and {savgol_order}"
            )
            raise AlgorithmOptionError(msg)
        for name, rate in [("gamma1", gamma1), ("gamma2", gamma2)]:
            if not 0 <= rate <= 1:
                msg = f"{name} must lie in [0, 1], got {rate}"
                raise AlgorithmOptionError(msg)
        active = int((self.prior > 0).sum())
        if delta_min < 0 or delta_min * active > 1:
            msg = (
                f"delta_min={delta_min} cannot hold for {active} components (needs "
                f"0 <= delta_min <= 1/{active})"
            )
            raise AlgorithmOptionError(msg)
        if huber_delta <= 0 or alpha_max <= 0 or s < 0:
            msg = "huber_delta and alpha_max must be positive and s non-negative"
            raise AlgorithmOptionError(msg)
        self.k = k
        self.variant: Variant = variant
        self.seq_len, self.sample_count = seq_len, sample_count
        self.start_step, self.refit_interval = start_step, refit_interval
        self.gamma1, self.gamma2, self.s, self.delta_min = gamma1, gamma2, s, delta_min
        self.huber_delta = huber_delta
        self.bounds = LawBounds(
            alpha_max=alpha_max, log_beta_max=log_beta_max, log_eps_min=log_eps_min
        )
        self.slope_alpha_min = slope_alpha_min
        self.screen_points, self.polish = screen_points, polish
        self.series = Series(
            k, window=savgol_window, order=savgol_order, ignore=ignore_steps, stride=subsample
        )
        self.step: int | None = None
        self.n = np.zeros(k)
        self.h = self.mu.copy()
        self.pibar = self.mu.copy()
        self.weights: Array | None = None
        self.laws: Array | None = None  # (log beta, log eps, alpha) per component
        self.fits = 0
        self.last_fit: LawFit | None = None

    # -- per step ------------------------------------------------------------------------------
    def update(
        self, step: int, loss_sum: npt.ArrayLike, token_count: npt.ArrayLike
    ) -> Array | None:
        loss, count = check_feedback(self.k, loss_sum, token_count)
        total = count.sum()
        if total <= 0:
            return None  # nothing was trained: no point of any series
        present = count > 0
        previous = (
            self.series.raw[-1] if len(self.series.raw) else np.full(self.k, loss.sum() / total)
        )
        mean = np.where(present, loss / np.where(present, count, 1.0), previous)
        self.n += total / self.seq_len if self.sample_count == "step" else count / self.seq_len
        self.series.push(mean, self.n.copy())
        self.step = step
        if self.variant == "paper":
            self.h = (1 - self.gamma1) * self.h + self.gamma1 * (count / total)
        if step >= self.start_step and (step - self.start_step) % self.refit_interval == 0:
            self.refit()
        if step < self.start_step or self.laws is None:
            return None
        known = np.isfinite(self.laws).all(1) | (self.prior == 0)
        if not known.all():
            return None  # a component with prior weight has no law yet
        laws = np.where(np.isfinite(self.laws), self.laws, 0.0)
        slope = loss_slope(laws, np.maximum(self.n, 1e-12), alpha_min=self.slope_alpha_min)
        slope = np.where(self.prior > 0, slope, 0.0)
        weights = self._weights(slope, step)
        self.weights = weights
        return weights.copy()

    def _weights(self, slope: Array, step: int) -> Array:
        active = self.prior > 0
        if self.variant == "paper":
            rho = preference(self.mu, self.h, slope, s=self.s, floor=self.delta_min, where=active)
            pi = self.gamma2 * rho + (1 - self.gamma2) * self.pibar
            pi = np.where(active, pi, 0.0)
            pi = pi / pi.sum()
            self.pibar = self.pibar + (rho - self.pibar) / (step + 1)
            return pi
        # mixtera: no floor on rho, pi normalized then floored (max, renormalize), h <- pi
        rho = preference(self.mu, self.h, slope, s=self.s, floor=None, where=active)
        pi = self.gamma2 * rho + (1 - self.gamma2) * self.pibar
        pi = np.where(active, pi, 0.0)
        pi = pi / pi.sum()
        pi = np.where(active, np.maximum(pi, self.delta_min), 0.0)
        pi = pi / pi.sum()
        self.h = self.gamma1 * pi + (1 - self.gamma1) * self.h
        pibar = self.pibar + (rho - self.pibar) / (step + 1)
        self.pibar = pibar / pibar.sum()
        return pi

    def refit(self) -> LawFit:
        """Fit the laws to the series so far; components whose fit fails (too few points,
        NaN or Inf) keep their previous law."""
        log_n, log_loss = self.series.points()
        fit = fit_scaling_laws(
            log_n,
            log_loss,
            bounds=self.bounds,
            huber_delta=self.huber_delta,
            screen_points=self.screen_points,
            polish=self.polish,
        )
        old = self.laws if self.laws is not None else np.full((self.k, 3), np.nan)
        good = np.asarray(np.isfinite(fit.laws).all(axis=1))
        self.laws = np.where(good[:, None], fit.laws, old)
        self.fits += 1
        self.last_fit = fit
        return fit

    # -- state ---------------------------------------------------------------------------------
    def fit_report(self, steps: list[int], counts: Array, *, curve_points: int) -> FitReport:
        """Its laws and the samples trained at each of ``steps`` (``ReportsFits``): n now,
        less what each later step added, plus what steps it has not seen yet (feedback in
        flight) will add; each law's curve over those n."""
        k = counts.shape[1] if counts.ndim == 2 else self.k
        n_by_step = self._trained(steps, counts) if len(steps) else None
        components: list[Fit] = []
        for c in range(k):
            row = self.laws[c] if self.laws is not None and c < len(self.laws) else None
            if row is None or not np.isfinite(row).all():
                components.append(Fit(law=None, curve=None))
                continue
            law = Law(eps=float(np.exp(row[1])), beta=float(np.exp(row[0])), alpha=float(row[2]))
            curve = None
            if n_by_step is not None:
                seen = n_by_step[:, c][n_by_step[:, c] > 0]
                if len(seen) >= 2 and seen.max() > seen.min():
                    n = np.geomspace(seen.min(), seen.max(), curve_points)
                    curve = Curve(n=n.tolist(), loss=law_loss(row[None, :], n).tolist())
            components.append(Fit(law=law, curve=curve))
        return FitReport(
            refits=self.fits,
            step=self.step,
            n=self.n[:k].tolist(),
            n_by_step=None if n_by_step is None else [n_by_step[:, c].tolist() for c in range(k)],
            components=components,
        )

    def _trained(self, steps: list[int], count: Array) -> Array:
        """Samples trained at each of ``steps`` (T x K), see ``fit_report``."""
        k = count.shape[1]
        total = count.sum(axis=1, keepdims=True)
        if self.sample_count == "step":
            added = np.repeat(total, k, axis=1) / self.seq_len
        else:
            added = count / self.seq_len
        added = np.where(total > 0, added, 0.0)  # ADO skips a step without tokens
        if self.step is None:
            seen = -1  # it has seen none of them
        elif self.step in steps:
            seen = len(steps) - 1 - steps[::-1].index(self.step)
        else:
            seen = len(steps) - 1
        cumulative = np.cumsum(added, axis=0)
        at_seen = cumulative[seen] if seen >= 0 else np.zeros(k)
        n_now = np.zeros(k)
        n_now[: min(k, len(self.n))] = self.n[:k]
        return np.asarray(n_now[None, :] + cumulative - at_seen[None, :])

    def state_dict(self) -> dict[str, Any]:
        laws = None if self.laws is None else [[_json(v) for v in row] for row in self.laws]
        return dict(
            ADOState(
                version=STATE_VERSION,
                variant=self.variant,
                k=self.k,
                step=self.step,
                n=self.n.tolist(),
                h=self.h.tolist(),
                pibar=self.pibar.tolist(),
                weights=None if self.weights is None else self.weights.tolist(),
                laws=laws,
                fits=self.fits,
                series=self.series.state(),
            )
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            msg = f"ADO state version {state.get('version')!r}, expected {STATE_VERSION}"
            raise StateError(msg)
        if state.get("k") != self.k or state.get("variant") != self.variant:
            msg = (
                f"ADO state was saved for {state.get('k')} components (variant "
                f"{state.get('variant')!r}), this algorithm has {self.k} ({self.variant!r})"
            )
            raise StateError(msg)
        self.step = state["step"]
        self.n = np.asarray(state["n"], dtype=np.float64)
        self.h = np.asarray(state["h"], dtype=np.float64)
        self.pibar = np.asarray(state["pibar"], dtype=np.float64)
        self.weights = None if state["weights"] is None else np.asarray(state["weights"])
        self.laws = (
            None
            if state["laws"] is None
            else np.array([[np.nan if v is None else v for v in row] for row in state["laws"]])
        )
        self.fits = int(state["fits"])
        self.series.load(state["series"])


def _json(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _choice(name: str, value: object, options: Any) -> None:
    known = get_args(options)
    if value not in known:
        msg = f"unknown {name} {value!r}; known: {list(known)}"
        raise AlgorithmOptionError(msg)


def _at_least(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        msg = f"{name} must be an integer >= {low}, got {value!r}"
        raise AlgorithmOptionError(msg)


def ado_mixtera(prior: npt.ArrayLike, **options: Any) -> ADO:
    """ADO as the public Mixtera code computes it (``ADO(prior, variant="mixtera")``)."""
    return ADO(prior, variant="mixtera", **options)
