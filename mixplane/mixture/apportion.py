"""Apportionment: integer budgets from real-valued weights, exact over a run.

``largest_remainder(total, quotas)`` gives each party ``floor(quota)`` and hands the remaining
units to the largest fractional remainders, ties broken by the lower index: the result sums to
``total`` and each count is within 1 of its exact quota (Hamilton's method).

``apportion_with_carry`` applies it chunk after chunk with memory: the quota of component c in
a chunk is its exact cumulative target minus what it has been given so far (clipped at 0 for a
component that is ahead), so errors never accumulate. With a constant chunk budget in sample
mode (what the planner does) the cumulative counts stay within one sample of the exact shares
(tested with Hypothesis). In token mode each component overshoots its amount by less than one
sample, so with S the largest sample and K components each cumulative error stays within
[-(K - 1) * S, S] and is paid back in the following chunks. State: one number per component.
Cost: O(K log K) per chunk for K components.
"""

from __future__ import annotations

import numpy as np


def largest_remainder(total: int, quotas: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total``, each within 1 of ``quotas`` (which sum to total)."""
    quotas = np.maximum(np.asarray(quotas, dtype=np.float64), 0.0)
    if total <= 0 or len(quotas) == 0:
        return np.zeros(len(quotas), dtype=np.int64)
    s = quotas.sum()
    if s <= 0:
        msg = "cannot apportion a budget over weights that are all zero"
        raise ValueError(msg)
    quotas = quotas * (total / s)
    counts = np.floor(quotas).astype(np.int64)
    left = int(total - counts.sum())
    if left > 0:
        # rounded so that float noise cannot break an exact tie; stable sort on -remainder:
        # equal remainders keep index order (lower index first)
        remainders = np.round(quotas - counts, 9)
        order = np.argsort(-remainders, kind="stable")
        counts[order[:left]] += 1
    elif left < 0:  # floating error in a huge budget; take back from the smallest remainders
        remainders = quotas - counts
        order = np.argsort(remainders, kind="stable")
        counts[order[:-left]] -= 1
    return counts


def apportion_with_carry(
    budget: int, weights: np.ndarray, given: np.ndarray, total: float | None = None
) -> np.ndarray:
    """Counts for one chunk so that cumulative amounts track ``(total + budget) * weights``.

    ``given`` is what each component has received so far in the current mixture segment (in
    token mode it may exceed its quota by part of a sample; the excess is paid back in later
    chunks), plus what it was ahead of (or, negative, behind) its exact share when the segment
    began; ``total`` is the amount handed out in the segment (default ``given.sum()``).
    Components with zero weight get nothing.
    """
    weights = np.asarray(weights, dtype=np.float64)
    handed = float(np.sum(given)) if total is None else float(total)
    target = (handed + budget) * weights
    quotas = np.where(weights > 0, np.maximum(target - given, 0.0), 0.0)
    if quotas.sum() <= 0:
        quotas = np.where(weights > 0, weights, 0.0)
    return largest_remainder(budget, quotas)
