"""Apportionment: Hamilton's method per chunk, and carry over a long run of chunks.

Notation in the carry tests: after some chunks, ``G`` is the realized cumulative total and the
error of component c is ``e_c = given_c - G * w_c``. Provable bounds for the implementation
(``S`` = the largest sample, 1 in sample mode, ``K+`` = number of components with weight > 0):

* ``e_c < S``: a component under its target gets less than its unscaled quota plus 1 and
  overshoots by less than one sample; a component over its target gets nothing.
* ``e_c > -(K+ - 1) * S``: errors sum to 0, and every other positive-weight one is below S.

With one budget for every chunk (what the planner does) sample mode stays within one unit.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mixplane.mixture.apportion import apportion_with_carry, largest_remainder

EPS = 1e-9

quota_values = st.one_of(
    st.just(0.0),
    st.integers(0, 1000).map(float),
    st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False),
)
quota_lists = st.lists(quota_values, min_size=1, max_size=12).filter(lambda q: sum(q) > 0)
# weights: small integers (so exact ties and zeros are common), normalized in the test
weight_lists = st.lists(st.integers(0, 20), min_size=1, max_size=8).filter(lambda w: sum(w) > 0)


def exact_quotas(total: int, quotas: list[float]) -> list[Fraction]:
    """The quotas rescaled to sum to ``total``, in exact arithmetic."""
    s = sum(Fraction(q) for q in quotas)
    return [Fraction(q) * total / s for q in quotas]


def hamilton(total: int, quotas: list[int]) -> list[int]:
    """Reference largest remainder in exact arithmetic: ties go to the lower index."""
    exact = exact_quotas(total, [float(q) for q in quotas])
    counts = [int(x) for x in exact]  # floor: all quotas are >= 0
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def normalized(weights: list[int]) -> np.ndarray:
    w = np.array(weights, dtype=np.float64)
    return w / w.sum()


# -- largest_remainder --------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 10**6), quotas=quota_lists)
def test_largest_remainder_sums_to_total_and_each_count_is_within_one(
    total: int, quotas: list[float]
) -> None:
    counts = largest_remainder(total, np.array(quotas))
    assert counts.dtype == np.int64
    assert counts.shape == (len(quotas),)
    assert int(counts.sum()) == total
    assert (counts >= 0).all()
    for count, exact in zip(counts.tolist(), exact_quotas(total, quotas), strict=True):
        assert abs(count - exact) < 1
    # zero quotas get nothing: the positive ones always cover the total
    assert all(c == 0 for c, q in zip(counts.tolist(), quotas, strict=True) if q == 0)
    # deterministic
    assert counts.tolist() == largest_remainder(total, np.array(quotas)).tolist()


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 12), value=st.floats(1e-3, 1e3), total=st.integers(0, 1000))
def test_largest_remainder_equal_quotas_give_extras_to_lowest_indices(
    k: int, value: float, total: int
) -> None:
    counts = largest_remainder(total, np.full(k, value))
    expected = [total // k + (1 if i < total % k else 0) for i in range(k)]
    assert counts.tolist() == expected


@pytest.mark.parametrize(
    ("total", "quotas", "expected"),
    [
        (2, [1, 1, 1], [1, 1, 0]),
        (2, [1, 3], [1, 1]),  # remainders 0.5 and 0.5: the lower index wins
        (2, [1, 1, 2], [1, 0, 1]),
        (10, [0.25, 0.25, 0.5], [3, 2, 5]),  # 2.5, 2.5, 5
        (7, [0, 1, 0, 1], [0, 4, 0, 3]),
        (0, [1, 2], [0, 0]),
        (3, [-1, 1, 2], [0, 1, 2]),  # negative quotas count as zero
    ],
)
def test_largest_remainder_examples(total: int, quotas: list[float], expected: list[int]) -> None:
    assert largest_remainder(total, np.array(quotas, dtype=np.float64)).tolist() == expected


def test_largest_remainder_rejects_all_zero_quotas() -> None:
    with pytest.raises(ValueError, match="all zero"):
        largest_remainder(5, np.zeros(3))
    # nothing to give: no error
    assert largest_remainder(0, np.zeros(3)).tolist() == [0, 0, 0]
    assert largest_remainder(5, np.zeros(0)).tolist() == []


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 200),
    quotas=st.lists(st.integers(0, 12), min_size=1, max_size=8).filter(lambda q: sum(q) > 0),
)
@example(total=3, quotas=[2, 5, 2])
@example(total=16, quotas=[9, 2, 2, 7])
def test_largest_remainder_matches_exact_hamilton_with_ties_to_lower_index(
    total: int, quotas: list[int]
) -> None:
    counts = largest_remainder(total, np.array(quotas, dtype=np.float64))
    assert counts.tolist() == hamilton(total, quotas)


# -- apportion_with_carry, sample mode ---------------------------------------------------------
def run_samples(weights: np.ndarray, budgets: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(counts of the chunk, cumulative given after it) for every chunk."""
    given = np.zeros(len(weights), dtype=np.int64)
    out = []
    for budget in budgets:
        counts = apportion_with_carry(budget, weights, given.astype(np.float64))
        given = given + counts
        out.append((counts, given.copy()))
    return out


@settings(max_examples=150, deadline=None)
@given(
    weights=weight_lists,
    budgets=st.lists(st.integers(1, 60), min_size=1, max_size=120),
)
def test_carry_sample_mode_chunks_are_exact_and_error_is_bounded(
    weights: list[int], budgets: list[int]
) -> None:
    w = normalized(weights)
    positive = int((w > 0).sum())
    for budget, (counts, given_) in zip(budgets, run_samples(w, budgets), strict=True):
        assert int(counts.sum()) == budget
        assert (counts >= 0).all()
        assert (counts[w == 0] == 0).all()  # zero-weight components never get anything
        error = given_ - given_.sum() * w
        assert (error < 1 + EPS).all()
        assert (error > -(positive - 1) - EPS).all()


@settings(max_examples=100, deadline=None)
@given(weights=weight_lists, budget=st.integers(1, 60), chunks=st.integers(1, 120))
def test_carry_sample_mode_constant_budget_stays_within_one(
    weights: list[int], budget: int, chunks: int
) -> None:
    # with one budget for every chunk no counterexample to the 1-unit bound is known
    w = normalized(weights)
    for _, given_ in run_samples(w, [budget] * chunks):
        assert (np.abs(given_ - given_.sum() * w) <= 1 + EPS).all()


def test_carry_first_chunk_is_plain_largest_remainder() -> None:
    w = normalized([1, 2, 0, 7])
    given0 = np.zeros(4)
    assert apportion_with_carry(13, w, given0).tolist() == largest_remainder(13, w).tolist()
    assert apportion_with_carry(0, w, given0).tolist() == [0, 0, 0, 0]


def test_carry_pays_back_a_component_that_is_ahead() -> None:
    # component 0 is 3 ahead of its half of 6: it gets nothing until the other catches up
    w = normalized([1, 1])
    assert apportion_with_carry(2, w, np.array([6.0, 0.0])).tolist() == [0, 2]
    assert apportion_with_carry(6, w, np.array([6.0, 0.0])).tolist() == [0, 6]
    assert apportion_with_carry(8, w, np.array([6.0, 0.0])).tolist() == [1, 7]


# -- apportion_with_carry, token mode ----------------------------------------------------------
def run_tokens(
    weights: np.ndarray, budgets: list[int], min_size: int, max_size: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each component draws whole samples of min_size..max_size tokens until it reaches its
    apportioned amount; the tokens actually drawn are fed back as ``given``.
    Returns (apportioned, drawn, cumulative drawn) per chunk."""
    rng = np.random.default_rng(seed)
    given = np.zeros(len(weights), dtype=np.int64)
    out = []
    for budget in budgets:
        amounts = apportion_with_carry(budget, weights, given.astype(np.float64))
        drawn = np.zeros(len(weights), dtype=np.int64)
        for c, amount in enumerate(amounts.tolist()):
            if amount > 0:  # at most `amount` samples are needed (each has >= 1 token)
                sizes = np.cumsum(rng.integers(min_size, max_size + 1, amount))
                drawn[c] = sizes[np.searchsorted(sizes, amount)]
        given = given + drawn
        out.append((amounts, drawn, given.copy()))
    return out


@settings(max_examples=100, deadline=None)
@given(
    weights=weight_lists,
    budgets=st.lists(st.integers(1, 300), min_size=1, max_size=80),
    sizes=st.tuples(st.integers(1, 40), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])),
    seed=st.integers(0, 2**32 - 1),
)
def test_carry_token_mode_error_is_bounded_by_the_largest_sample(
    weights: list[int], budgets: list[int], sizes: tuple[int, int], seed: int
) -> None:
    """Bound: -(K+ - 1) * S < e_c < S with S the largest sample (see the module docstring)."""
    w = normalized(weights)
    min_size, max_size = sizes
    positive = int((w > 0).sum())
    for budget, (amounts, drawn, given_) in zip(
        budgets, run_tokens(w, budgets, min_size, max_size, seed), strict=True
    ):
        assert int(amounts.sum()) == budget
        assert (amounts[w == 0] == 0).all()
        assert (drawn >= amounts).all()
        assert (drawn < amounts + max_size).all()  # overshoot: less than one sample
        error = given_ - given_.sum() * w
        assert (error < max_size + EPS).all()
        assert (error > -(positive - 1) * max_size - EPS).all()
