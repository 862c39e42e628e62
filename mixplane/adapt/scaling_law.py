"""Scaling laws of a component's loss in the samples trained, and their batched fit (ADO).

``L(n) = eps + beta * n^(-alpha)``, kept as rows ``(log beta, log eps, alpha)``. The fit works
in log space like the ADO paper's code: prediction ``logsumexp(log beta - alpha log n, log
eps)`` against ``log L``, Huber loss (delta 1e-3), bounds ``alpha in [0, 0.8]``, ``log beta <=
6.5``, ``log eps >= 0.5``, multi-start from the paper's grid (512 points; 192 distinct once
projected onto the bounds). Instead of one L-BFGS run per start, all starts of all components
are one batch of 3-parameter problems solved together by a damped Gauss-Newton method
(Levenberg-Marquardt with Huber weights, exact 3x3 solves, bounds by projection with an active
set): first on a thinned series (at most ``screen_points`` points), then the best distinct end
points per component are polished on the whole series. A refit of 22 components takes 0.4-0.7
s on one core (benchmarks/adapt.py), 150x faster than the per-start loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

#: The paper's grid of starting points: log beta, log eps, alpha.
GRID_LOG_BETA = np.arange(-2.0, 6.0, 1.0)
GRID_LOG_EPS = np.arange(-2.0, 2.0, 0.5)
GRID_ALPHA = np.round(np.arange(0.0, 0.8, 0.1), 10)


# -- the scaling law ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class LawBounds:
    """Box constraints of the fit (the paper's code): ``0 <= alpha <= alpha_max``,
    ``log beta <= log_beta_max``, ``log eps >= log_eps_min``. ``log_eps_min = 0.5`` means an
    irreducible loss of at least e^0.5 = 1.65 nats per token; a component whose loss falls
    below that (code, highly repetitive text) cannot be fitted closely and should lower it."""

    alpha_max: float = 0.8
    log_beta_max: float = 6.5
    log_eps_min: float = 0.5

    def lower(self) -> Array:
        return np.array([-np.inf, self.log_eps_min, 0.0])

    def upper(self) -> Array:
        return np.array([self.log_beta_max, np.inf, self.alpha_max])


def grid_starts(bounds: LawBounds) -> Array:
    """The paper's 8 x 8 x 8 grid of (log beta, log eps, alpha), projected onto the bounds;
    starts that coincide after projection are kept once (they would give the same fit)."""
    b, e, a = np.meshgrid(GRID_LOG_BETA, GRID_LOG_EPS, GRID_ALPHA, indexing="ij")
    grid = np.stack([b.ravel(), e.ravel(), a.ravel()], axis=1)
    return np.unique(np.clip(grid, bounds.lower(), bounds.upper()), axis=0)


def law_loss(laws: Array, n: Array) -> Array:
    """``L(n) = eps + beta * n^-alpha`` per component; ``laws`` rows are
    (log beta, log eps, alpha)."""
    return np.exp(laws[:, 1]) + np.exp(laws[:, 0] - laws[:, 2] * np.log(n))


def loss_slope(laws: Array, n: Array, *, alpha_min: float = 0.0) -> Array:
    """``dL/dn = -alpha * (L(n) - eps) / n`` per component (<= 0); ``alpha_min`` raises small
    exponents in the slope only (the public ADO code uses 0.05)."""
    alpha = np.maximum(laws[:, 2], alpha_min)
    return -alpha * np.exp(laws[:, 0] - laws[:, 2] * np.log(n)) / n


# -- the fit -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Batch:
    """Problems of one solver run: each problem's component data, one row per problem (``x``
    may be one row shared by all; ``m`` None when every point counts)."""

    x: npt.NDArray[Any]  # log n, (P, T) or (1, T)
    y: npt.NDArray[Any]  # log loss, (P, T)
    m: npt.NDArray[Any] | None  # 1 where the point counts, (P, T)
    scale: Array  # 1 / number of points, (P,)

    def take(self, keep: npt.NDArray[np.bool_]) -> _Batch:
        return _Batch(
            x=self.x if len(self.x) == 1 else self.x[keep],
            y=self.y[keep],
            m=None if self.m is None else self.m[keep],
            scale=self.scale[keep],
        )

    def dot_x(self, a: npt.NDArray[Any], power: int = 1) -> Array:
        """Per problem: the sum over points of ``a * x**power``."""
        x = self.x if power == 1 else self.x**power
        if len(x) == 1:
            return (a @ x[0]).astype(np.float64)
        return np.einsum("pt,pt->p", a, x).astype(np.float64)


#: Elements per block of problems evaluated together: small enough to stay in the CPU cache
#: (the evaluation is memory-bound on whole arrays), large enough to amortize numpy calls.
BLOCK_ELEMENTS = 1 << 16


def _evaluate(
    theta: Array, b: _Batch, delta: float, *, grad: bool
) -> tuple[Array, Array | None, Array | None]:
    """Mean Huber loss of each problem at ``theta`` (P, 3), with its gradient and the
    Gauss-Newton matrix ``J^T W J`` (Huber weights ``W``) when ``grad``; in blocks of
    problems."""
    rows = max(1, BLOCK_ELEMENTS // b.y.shape[1])
    if len(theta) <= rows:
        return _evaluate_block(theta, b, delta, grad=grad)
    f = np.empty(len(theta))
    g = np.empty((len(theta), 3)) if grad else None
    h = np.empty((len(theta), 3, 3)) if grad else None
    for lo in range(0, len(theta), rows):
        sl = slice(lo, lo + rows)
        part = _Batch(
            x=b.x if len(b.x) == 1 else b.x[sl],
            y=b.y[sl],
            m=None if b.m is None else b.m[sl],
            scale=b.scale[sl],
        )
        fb, gb, hb = _evaluate_block(theta[sl], part, delta, grad=grad)
        f[sl] = fb
        if g is not None and h is not None and gb is not None and hb is not None:
            g[sl], h[sl] = gb, hb
    return f, g, h


def _evaluate_block(
    theta: Array, b: _Batch, delta: float, *, grad: bool
) -> tuple[Array, Array | None, Array | None]:
    dt = b.y.dtype
    dl = dt.type(delta)
    lb, le, al = (theta[:, j : j + 1].astype(dt) for j in range(3))
    d = (lb - le) - al * b.x  # log beta - alpha log n - log eps
    z = np.exp(-np.abs(d))
    r = np.maximum(d, 0) + np.log1p(z) + le - b.y  # logaddexp(d, 0) + log eps - log loss
    ar = np.abs(r)
    c = np.minimum(ar, dl)
    hub = c * (ar - 0.5 * c)  # Huber: r^2/2 inside delta, delta (|r| - delta/2) outside
    if b.m is None:
        f = hub.sum(1, dtype=np.float64) * b.scale
    else:
        f = np.einsum("pt,pt->p", hub, b.m, dtype=np.float64) * b.scale
    if not grad:
        return f, None, None
    s = np.where(d >= 0, 1, z) / (1 + z)  # d pred / d log beta; 1 - s for log eps
    psi = np.copysign(c, r)  # Huber derivative
    w = dl / np.maximum(ar, dl)  # Huber weight psi / r
    if b.m is not None:
        psi *= b.m
        w *= b.m
    ps, ws = psi * s, w * s
    wss = ws * s
    g = np.empty((len(theta), 3))
    g[:, 0] = ps.sum(1)
    g[:, 1] = psi.sum(1) - g[:, 0]
    g[:, 2] = -b.dot_x(ps)
    sw, sws, swss = w.sum(1), ws.sum(1), wss.sum(1)
    swsx, swssx = b.dot_x(ws), b.dot_x(wss)
    h = np.empty((len(theta), 3, 3))
    h[:, 0, 0] = swss
    h[:, 0, 1] = h[:, 1, 0] = sws - swss
    h[:, 1, 1] = sw - 2 * sws + swss
    h[:, 0, 2] = h[:, 2, 0] = -swssx
    h[:, 1, 2] = h[:, 2, 1] = -(swsx - swssx)
    h[:, 2, 2] = b.dot_x(wss, 2)
    return f, g * b.scale[:, None], h * b.scale[:, None, None]


def _solve(
    theta: Array,
    batch: _Batch,
    bounds: LawBounds,
    *,
    delta: float,
    ftol: float,
    maxiter: int,
    merge: Array | None = None,
    group: npt.NDArray[np.int64] | None = None,
) -> tuple[Array, Array]:
    """Minimize every problem from its start (vectorized Levenberg-Marquardt). A problem
    stops when a step lowers its loss by less than ``ftol`` (relative), when no damped step
    lowers it, or after ``maxiter`` iterations. With ``merge`` (tolerances per parameter) and
    ``group`` (the component of each problem), running problems of one component that meet
    at the same point (within ``merge``) continue as one. Returns the end points and losses."""
    lo, hi = bounds.lower(), bounds.upper()
    theta = np.clip(theta, lo, hi)
    f, g, h = _evaluate(theta, batch, delta, grad=True)
    assert g is not None and h is not None
    lam = np.full(len(theta), 1e-3)
    running = np.arange(len(theta))  # problems still iterating
    b = batch
    eye = np.eye(3, dtype=bool)
    for it in range(maxiter):
        if not len(running):
            break
        th, gi, hi_ = theta[running], g[running], h[running]
        # bounds: a parameter at a bound whose descent direction leaves the box stays fixed
        fixed = ((th <= lo + 1e-12) & (gi > 0)) | ((th >= hi - 1e-12) & (gi < 0))
        hm = np.where(fixed[:, :, None] | fixed[:, None, :], 0.0, hi_)
        diag = np.einsum("pii->pi", hm) * (1 + lam[running, None]) + 1e-12
        hm = np.where(eye, np.where(fixed, 1.0, diag)[:, :, None], hm)
        rhs = np.where(fixed, 0.0, gi)[:, :, None]
        try:
            step = -np.linalg.solve(hm, rhs)[:, :, 0]
        except np.linalg.LinAlgError:  # a singular system: least squares instead
            step = -(np.linalg.pinv(hm) @ rhs)[:, :, 0]
        trial = np.clip(th + step, lo, hi)
        ft, gt, htr = _evaluate(trial, b, delta, grad=True)
        assert gt is not None and htr is not None
        better = ft < f[running]
        small = (f[running] - ft) <= ftol * np.abs(f[running])
        ok = running[better]
        theta[ok], f[ok], g[ok], h[ok] = trial[better], ft[better], gt[better], htr[better]
        lam[ok] = np.maximum(lam[ok] / 3, 1e-9)
        lam[running[~better]] *= 4
        done = (better & small) | (lam[running] > 1e8)
        keep = ~done
        if merge is not None and group is not None and it % 4 == 3:
            key = np.column_stack([group[running], np.round(theta[running] / merge)])
            key = np.where(np.isfinite(key), key, 0)
            _, first = np.unique(key, axis=0, return_index=True)
            unique = np.zeros(len(running), dtype=bool)
            unique[first] = True
            keep &= unique  # merged problems end where their twin is now; the twin continues
        if keep.all():
            continue
        running = running[keep]
        b = b.take(keep)
    return theta, f


@dataclass(frozen=True, slots=True)
class LawFit:
    """Fitted laws per component, rows (log beta, log eps, alpha), and the mean Huber loss of
    each; a row of NaN where the component had fewer than 3 points or the fit failed."""

    laws: Array
    loss: Array


def fit_scaling_laws(
    log_n: npt.ArrayLike,
    log_loss: npt.ArrayLike,
    *,
    bounds: LawBounds | None = None,
    huber_delta: float = 1e-3,
    screen_points: int = 256,
    polish: int = 4,
) -> LawFit:
    """Fit ``log L = logsumexp(log beta - alpha log n, log eps)`` to each column of
    ``log_loss`` (T points x K components; NaN marks a missing point) against ``log_n``
    (T x K, or T x 1 shared by all components): multi-start from the paper's grid, keep the
    best. All starts of all components are solved together, in float32, on every
    ``ceil(T / screen_points)``-th point; then the ``polish`` best distinct end points of each
    component again, in float64, on all points. Cost: 0.4-0.7 s for 22 components on one
    core, about as much for 50 points as for 3,000 (the first pass is bounded)."""
    bounds = bounds or LawBounds()
    y = np.asarray(log_loss, dtype=np.float64)
    x = np.broadcast_to(np.asarray(log_n, dtype=np.float64), y.shape)
    valid = np.isfinite(x) & np.isfinite(y)
    t, k = y.shape
    counts = valid.sum(0)
    laws = np.full((k, 3), np.nan)
    loss = np.full(k, np.nan)
    fit = np.flatnonzero(counts >= 3)
    if not len(fit):
        return LawFit(laws=laws, loss=loss)
    xs, ys, ms = (np.where(valid, a, 0.0)[:, fit].T for a in (x, y, valid.astype(np.float64)))
    starts = grid_starts(bounds)
    g = len(starts)
    group = np.repeat(np.arange(len(fit)), g)
    stride = max(1, -(-t // screen_points))
    screen = _batch(xs[:, ::stride], ys[:, ::stride], ms[:, ::stride], group, np.float32)
    merge = np.array([1e-2, 1e-2, 1e-3])
    theta, f = _solve(
        np.tile(starts, (len(fit), 1)), screen, bounds, delta=huber_delta, ftol=1e-5,
        maxiter=200, merge=merge, group=group,
    )  # fmt: skip
    # per component: the best distinct end points, polished on all points
    f = np.where(np.isfinite(f) & np.isfinite(theta).all(1), f, np.inf)
    order = np.lexsort((f, group))
    chosen: list[int] = []
    for c in range(len(fit)):
        seen: list[Array] = []
        for r in order[group[order] == c]:
            if not np.isfinite(f[r]) or any((np.abs(theta[r] - q) <= merge).all() for q in seen):
                continue
            seen.append(theta[r])
            chosen.append(int(r))
            if len(seen) == polish:
                break
    pick = np.array(chosen, dtype=np.int64)
    full = _batch(xs, ys, ms, group[pick], np.float64)
    theta_p, f_p = _solve(
        theta[pick], full, bounds, delta=huber_delta, ftol=1e-9, maxiter=200,
        merge=merge, group=group[pick],
    )  # fmt: skip
    f_p = np.where(np.isfinite(f_p) & np.isfinite(theta_p).all(1), f_p, np.inf)
    for c in range(len(fit)):
        rows = np.flatnonzero(group[pick] == c)
        if len(rows) and np.isfinite(f_p[rows]).any():
            best = rows[np.argmin(f_p[rows])]
            laws[fit[c]], loss[fit[c]] = theta_p[best], f_p[best]
    return LawFit(laws=laws, loss=loss)


def _batch(
    x: Array, y: Array, m: Array, group: npt.NDArray[np.int64], dtype: type[np.floating[Any]]
) -> _Batch:
    """The data of each problem (``group``: its row of x, y, m) in ``dtype``."""
    counts = m.sum(1)
    shared = bool((x == x[:1]).all())
    return _Batch(
        x=(x[:1] if shared else x[group]).astype(dtype),
        y=y[group].astype(dtype),
        m=None if bool(m.all()) else m[group].astype(dtype),
        scale=1.0 / np.maximum(counts[group], 1.0),
    )
