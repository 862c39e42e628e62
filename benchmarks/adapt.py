"""Adaptation cost: ADO's per-step update and refit time for 22 components over 30,000 steps.

Synthetic feedback: each step trains 32 sequences of 2,048 tokens drawn from the components by
the weights in force (multinomial); component k's mean loss follows
``eps_k + beta_k * n^-alpha_k`` (n: samples trained so far) with 1% noise. ADO runs with its
defaults (refits at steps 1,000, 2,000, ..., 30,000).

Measured: the time of each ``update`` apart from refits (median, p99), each refit (the last
fits 22 x 2,950 points), the amortized cost per step and its share of a 100 ms training step.
Named baseline, same process: the naive fit, ``scipy.optimize.minimize`` (L-BFGS-B, analytic
gradient, the same loss and bounds) called once per start of the paper's 512-point grid, on
the points of the last refit for ``--baseline-components`` components; its time per component
times 22 against the vectorized fit of all 22, and the losses both reach.

Durable feedback (issue 13): the same updates for ``--log-steps`` steps with each message also
appended to a server feedback log (``mixplane/server/feedback_log.py``) under each fsync policy,
against the updates alone, interleaved in the same run; the ratio is the cost the log adds to
what the server does per feedback message (target: within 2x).

Run: ``.venv/bin/python benchmarks/adapt.py [--steps 30000] [--baseline-components 2]
[--log-steps 3000]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import load, print_summary

from mixplane.adapt.ado import ADO, GRID_ALPHA, GRID_LOG_BETA, GRID_LOG_EPS, fit_scaling_laws
from mixplane.server.feedback_log import FeedbackLog, record_of

K = 22
SEQ = 2048
BATCH = 32
STEP_S = 0.100  # the training step the cost is compared with


def simulate(steps: int, seed: int = 0) -> tuple[ADO, list[float], list[tuple[int, float]]]:
    rng = np.random.default_rng(seed)
    eps = rng.uniform(1.8, 3.0, K)
    beta = rng.uniform(2.0, 20.0, K)
    alpha = rng.uniform(0.15, 0.5, K)
    prior = rng.dirichlet(np.full(K, 5.0))
    algo = ADO(prior)
    weights = prior.copy()
    updates: list[float] = []
    refits: list[tuple[int, float]] = []
    n = 0.0
    for step in range(1, steps + 1):
        count = rng.multinomial(BATCH, weights).astype(np.float64) * SEQ
        n += BATCH
        loss = (eps + beta * n**-alpha) * (1 + 0.01 * rng.standard_normal(K)) * count
        fits = algo.fits
        start = time.perf_counter()
        new = algo.update(step, loss, count)
        took = time.perf_counter() - start
        if algo.fits > fits:
            refits.append((step, took))
        else:
            updates.append(took)
        if new is not None:
            weights = new
    return algo, updates, refits


def logged_updates(steps: int, policy: str | None, folder: Path) -> np.ndarray:
    """Seconds per feedback message: ADO's update, and with ``policy`` the append of its record
    to a feedback log (as the server does before it answers); refits left out."""
    rng = np.random.default_rng(1)
    prior = rng.dirichlet(np.full(K, 5.0))
    algo = ADO(prior, start_step=10**9, refit_interval=10**9)
    log = FeedbackLog(folder / f"{policy}.feedback", fsync=policy) if policy else None  # type: ignore[arg-type]
    times = []
    for step in range(1, steps + 1):
        count = rng.multinomial(BATCH, prior).astype(np.float64) * SEQ
        loss = (2.0 + rng.random(K)) * count
        start = time.perf_counter()
        weights = algo.update(step, loss, count)
        if log is not None:
            log.append(
                record_of(
                    step, loss, count, version=0, applies_from=None, weights=weights,
                    consumed=[(0, 0, step)],
                )
            )  # fmt: skip
        times.append(time.perf_counter() - start)
    if log is not None:
        log.close()
    return np.asarray(times)


def objective(p: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The fit's loss (mean Huber, delta 1e-3, in log space) and its gradient."""
    d = p[0] - p[1] - p[2] * x
    z = np.exp(-np.abs(d))
    r = np.maximum(d, 0) + np.log1p(z) + p[1] - y
    c = np.minimum(np.abs(r), 1e-3)
    s = np.where(d >= 0, 1, z) / (1 + z)
    psi = np.copysign(c, r) / len(x)
    grad = np.array([(psi * s).sum(), (psi * (1 - s)).sum(), -(psi * s * x).sum()])
    return float(np.mean(c * (np.abs(r) - 0.5 * c))), grad


def naive_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """One scipy L-BFGS-B run per start of the paper's grid; the best."""
    from scipy.optimize import minimize  # type: ignore[import-untyped]

    bounds = [(None, 6.5), (0.5, None), (0.0, 0.8)]
    best = (np.inf, np.full(3, np.nan))
    for b in GRID_LOG_BETA:
        for e in GRID_LOG_EPS:
            for a in GRID_ALPHA:
                r = minimize(
                    objective,
                    [b, e, a],
                    args=(x, y),
                    jac=True,
                    method="L-BFGS-B",
                    bounds=bounds,
                    options={"maxiter": 200, "gtol": 1e-5},
                )
                if r.fun < best[0]:
                    best = (float(r.fun), r.x)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--baseline-components", type=int, default=2)
    parser.add_argument("--log-steps", type=int, default=3000)
    args = parser.parse_args()

    print(f"load average before: {load()}")
    start = time.perf_counter()
    algo, updates, refits = simulate(args.steps)
    total = time.perf_counter() - start
    u = np.array(updates) * 1e3
    fit_times = np.array([t for _, t in refits])
    amortized = (u.sum() / 1e3 + fit_times.sum()) / args.steps
    print(f"simulated {args.steps} steps in {total:.1f} s; {len(refits)} refits")
    print(
        "refit seconds by step:",
        ", ".join(f"{s}: {t:.2f}" for s, t in refits[:: max(1, len(refits) // 10)]),
    )
    state_bytes = len(json.dumps(algo.state_dict()))

    # the last refit's points, fitted again by the vectorized fit and by the naive loop
    log_n, log_loss = algo.series.points()
    start = time.perf_counter()
    fit = fit_scaling_laws(log_n, log_loss)
    vector_s = time.perf_counter() - start
    x = log_n[:, 0].astype(np.float64)
    naive_s, worse = [], []
    for k in range(args.baseline_components):
        y = log_loss[:, k].astype(np.float64)
        start = time.perf_counter()
        loss, _ = naive_fit(x, y)
        naive_s.append(time.perf_counter() - start)
        worse.append(fit.loss[k] / loss - 1)
        print(
            f"component {k}: naive {naive_s[-1]:.1f} s, loss {loss:.6g}; vectorized loss {fit.loss[k]:.6g}"
        )
    naive_all = float(np.mean(naive_s)) * K
    with tempfile.TemporaryDirectory(prefix="mixplane-adapt-") as tmp:
        logged: dict[str | None, list[float]] = {}
        for _ in range(2):  # interleaved: the machine's load hits every policy alike
            for policy in (None, "off", "group", "always"):
                t = logged_updates(args.log_steps, policy, Path(tmp))
                logged.setdefault(policy, []).append(float(np.median(t)) * 1e3)
    plain = min(logged[None])
    print(f"load average after: {load()}")

    rows = [
        ("update, median (22 components)", f"{np.median(u):.3f} ms", "< 1 ms", np.median(u) < 1),
        ("update, p99", f"{np.percentile(u, 99):.3f} ms", "< 1 ms", np.percentile(u, 99) < 1),
        (
            f"refit, median / max (max: 22 x {len(log_n)} points)",
            f"{np.median(fit_times):.2f} s / {fit_times.max():.2f} s",
            "< 2 s",
            fit_times.max() < 2,
        ),
        (
            "amortized per step (updates + refits)",
            f"{amortized * 1e3:.3f} ms ({100 * amortized / STEP_S:.2f}% of a 100 ms step)",
            "-",
            None,
        ),
        (
            "update median, share of a 100 ms step",
            f"{np.median(u) / 1e3 / STEP_S * 100:.3f}%",
            "-",
            None,
        ),
        ("state (JSON) after the run", f"{state_bytes / 1e6:.2f} MB", "-", None),
        (
            f"fit of the last refit's points: vectorized / naive per-start loop (x22 from {len(naive_s)})",
            f"{vector_s:.2f} s / {naive_all:.0f} s ({naive_all / vector_s:.0f}x)",
            "-",
            None,
        ),
        (
            "loss of the vectorized fit relative to the naive one (worst component)",
            f"{max(worse):+.2e}",
            "<= 0",
            max(worse) <= 1e-6,
        ),
    ]
    for policy in ("off", "group", "always"):
        cost = min(logged[policy])
        rows.append(
            (
                f"feedback with the log (fsync {policy}) / update alone, median per message",
                f"{cost:.3f} / {plain:.3f} ms ({cost / plain:.2f}x)",
                "<= 2x" if policy == "group" else "-",
                cost / plain <= 2 if policy == "group" else None,
            )
        )
    print_summary("adaptation", ["measure", "value", "target", "met"], rows)


if __name__ == "__main__":
    main()
