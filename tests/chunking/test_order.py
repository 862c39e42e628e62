"""A component's order: every position maps to one sample, each epoch a permutation of all of
them, and the read ranges of a span of positions (numpy and list forms) cover exactly the
samples at those positions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixplane.chunking import ComponentOrder


def order(counts: list[int], block: int, kind: str, seed: int) -> ComponentOrder:
    n = len(counts)
    return ComponentOrder(
        key="c",
        files=np.arange(n, dtype=np.int32) % 3,
        starts=np.arange(n, dtype=np.int64) * 1000,
        counts=np.array(counts, dtype=np.int64),
        seed=seed,
        kind=kind,  # type: ignore[arg-type]
        block_size=block,
    )


def expand(files: list[int], starts: list[int], lengths: list[int]) -> set[tuple[int, int]]:
    return {(f, s + i) for f, s, n in zip(files, starts, lengths, strict=True) for i in range(n)}


components = st.tuples(
    st.lists(st.integers(1, 40), min_size=1, max_size=12),
    st.integers(1, 64),
    st.sampled_from(["shuffled", "as-stored"]),
    st.integers(0, 3),
)


@settings(max_examples=200, deadline=None)
@given(component=components, data=st.data())
def test_spans_equal_ranges_and_the_samples_at_their_positions(
    component: tuple[list[int], int, str, int], data: st.DataObject
) -> None:
    counts, block, kind, seed = component
    c = order(counts, block, kind, seed)
    epoch = data.draw(st.integers(0, 3))
    first = data.draw(st.integers(0, c.total - 1))
    count = data.draw(st.integers(0, c.total - first))
    files, starts, lengths = c.spans(epoch, first, count)
    np_files, np_starts, np_lengths = c.ranges(epoch, first, count)
    assert (files, starts, lengths) == (np_files.tolist(), np_starts.tolist(), np_lengths.tolist())
    # the samples at the positions, through their run
    samples = c.samples_at(epoch, np.arange(first, first + count))
    run = np.searchsorted(c.run_offsets, samples, side="right") - 1
    expected = {
        (int(c.files[r]), int(c.starts[r] + s - c.run_offsets[r]))
        for r, s in zip(run, samples, strict=True)
    }
    assert expand(files, starts, lengths) == expected
    assert sum(lengths) == count
    for p in range(first, first + count):  # the block lookup agrees with the permutation
        block_id, start = c.block_at(epoch, p)
        assert int(c.samples_at(epoch, np.array([p]))[0]) == block_id * block + p - start


@settings(max_examples=50, deadline=None)
@given(component=components)
def test_an_epoch_is_a_permutation(component: tuple[list[int], int, str, int]) -> None:
    counts, block, kind, seed = component
    c = order(counts, block, kind, seed)
    for epoch in range(2):
        assert sorted(c.samples_at(epoch, np.arange(c.total)).tolist()) == list(range(c.total))
