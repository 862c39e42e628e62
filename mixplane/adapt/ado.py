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

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, get_args

import numpy as np
import numpy.typing as npt

from mixplane.adapt.base import check_feedback
from mixplane.errors import MixplaneError, StateError

Array = npt.NDArray[np.float64]
Variant = Literal["paper", "mixtera"]
SampleCount = Literal["step", "domain"]

#: The paper's grid of starting points: log beta, log eps, alpha.
GRID_LOG_BETA = np.arange(-2.0, 6.0, 1.0)
GRID_LOG_EPS = np.arange(-2.0, 2.0, 0.5)
GRID_ALPHA = np.round(np.arange(0.0, 0.8, 0.1), 10)

STATE_VERSION = 1


class AlgorithmOptionError(MixplaneError, ValueError):
    """An option or prior a mixing algorithm cannot work with; names the option."""


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


# -- the loss series ---------------------------------------------------------------------------
def savgol_matrix(window: int, order: int) -> Array:
    """Savitzky-Golay smoothing of one window: row q holds the weights that give the value at
    position q of the least-squares polynomial of degree ``order`` through the window's
    points (the middle row is the usual convolution kernel)."""
    pos = np.arange(window, dtype=np.float64) - window // 2
    vander = np.vander(pos / max(1, window // 2), order + 1, increasing=True)
    return vander @ np.linalg.pinv(vander)


def savgol(series: Array, window: int, order: int) -> Array:
    """Smooth the columns of ``series`` (T x K) like ``scipy.signal.savgol_filter(series,
    window, order, axis=0, mode="interp")``: the middle of each window for interior points,
    the polynomial of the first (last) window for the first (last) ``window // 2`` points."""
    t = len(series)
    if window > t:
        msg = f"savgol window {window} is longer than the series ({t} points)"
        raise ValueError(msg)
    m = savgol_matrix(window, order)
    half = window // 2
    out = np.empty_like(series, dtype=np.float64)
    out[:half] = m[:half] @ series[:window]
    out[t - half :] = m[half + 1 :] @ series[t - window :]
    if t > 2 * half:
        windows = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)
        out[half : t - half] = np.einsum("w,tkw->tk", m[half], windows)
    return out


def _encode(a: npt.NDArray[Any]) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "f4": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(d: dict[str, Any]) -> npt.NDArray[np.float32]:
    raw = base64.b64decode(d["f4"])
    return np.frombuffer(raw, dtype="<f4").reshape(d["shape"]).astype(np.float32)


class _Series:
    """The per-component loss series as the fit sees it: Savitzky-Golay smoothed, the first
    ``ignore`` points dropped, every ``stride``-th kept, paired with log n.

    A smoothed point depends only on the ``window`` raw points around it once the series is
    ``window // 2`` points longer, so it is computed then and kept (float32); the raw series
    is kept for the last ``window`` points only. The newest ``window // 2`` points are
    smoothed at each refit by the polynomial of the last window, exactly what
    ``savgol_filter(series, window, order, mode="interp")`` gives them."""

    def __init__(self, k: int, *, window: int, order: int, ignore: int, stride: int) -> None:
        self.k, self.window, self.order, self.ignore, self.stride = k, window, order, ignore, stride
        self.matrix = savgol_matrix(window, order)
        self.length = 0
        self.raw = np.zeros((0, k))  # the last `window` raw losses
        self.n = np.zeros((0, k))  # and samples trained so far at each
        self.xs = np.zeros((0, k), dtype=np.float32)  # finished fit points: log n
        self.ys = np.zeros((0, k), dtype=np.float32)  # and log smoothed loss
        self._buf_x: list[npt.NDArray[np.float32]] = []
        self._buf_y: list[npt.NDArray[np.float32]] = []

    def _on_grid(self, i: int) -> bool:
        return i >= self.ignore and (i - self.ignore) % self.stride == 0

    def _keep(self, n: Array, smoothed: Array) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            self._buf_x.append(np.log(np.where(n > 0, n, np.nan)).astype(np.float32))
            self._buf_y.append(np.log(np.where(smoothed > 0, smoothed, np.nan)).astype(np.float32))

    def push(self, loss: Array, n: Array) -> None:
        self.raw = np.concatenate([self.raw[-(self.window - 1) :], loss[None]])
        self.n = np.concatenate([self.n[-(self.window - 1) :], n[None]])
        self.length += 1
        half = self.window // 2
        if self.length == self.window:  # the first window: its head comes from its polynomial
            smooth = self.matrix @ self.raw
            for i in range(half + 1):
                if self._on_grid(i):
                    self._keep(self.n[i], smooth[i])
        elif self.length > self.window:
            i = self.length - 1 - half
            if self._on_grid(i):
                self._keep(self.n[half], self.matrix[half] @ self.raw)

    def _flush(self) -> None:
        if self._buf_x:
            self.xs = np.concatenate([self.xs, np.stack(self._buf_x)])
            self.ys = np.concatenate([self.ys, np.stack(self._buf_y)])
            self._buf_x, self._buf_y = [], []

    def points(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(log n, log smoothed loss), T x K, NaN where a point cannot be used."""
        self._flush()
        length, half = self.length, self.window // 2
        if length >= self.window:
            first = length - half
            smooth = self.matrix @ self.raw
            rows = range(half + 1, self.window)
        else:
            first = 0
            w = length if length % 2 else length - 1
            smooth = savgol(self.raw, w, self.order) if w > self.order else self.raw
            rows = range(length)
        tail_x, tail_y = [], []
        for j, i in zip(rows, range(first, length), strict=True):
            if self._on_grid(i):
                with np.errstate(divide="ignore", invalid="ignore"):
                    tail_x.append(np.log(np.where(self.n[j] > 0, self.n[j], np.nan)))
                    tail_y.append(np.log(np.where(smooth[j] > 0, smooth[j], np.nan)))
        if not tail_x:
            return self.xs, self.ys
        return (
            np.concatenate([self.xs, np.asarray(tail_x, dtype=np.float32)]),
            np.concatenate([self.ys, np.asarray(tail_y, dtype=np.float32)]),
        )

    def state(self) -> dict[str, Any]:
        """The raw window (JSON numbers) and the kept points (float32, base64); log n once
        when every component shares it (``sample_count="step"``)."""
        self._flush()
        shared = self.k > 1 and bool((self.xs == self.xs[:, :1]).all())
        return {
            "length": self.length,
            "raw": self.raw.tolist(),
            "n": self.n.tolist(),
            "log_n": _encode(self.xs[:, :1] if shared else self.xs),
            "log_loss": _encode(self.ys),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.length = int(state["length"])
        self.raw = np.asarray(state["raw"], dtype=np.float64).reshape(-1, self.k)
        self.n = np.asarray(state["n"], dtype=np.float64).reshape(-1, self.k)
        self.ys = _decode(state["log_loss"])
        xs = _decode(state["log_n"])
        self.xs = np.repeat(xs, self.k, axis=1) if xs.shape[1] != self.k else xs
        self._buf_x, self._buf_y = [], []


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
    series: dict[str, Any]  # the fit series (see _Series.state)


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
        self.series = _Series(
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
