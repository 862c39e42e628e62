"""The chunk endpoint reads well-formed bodies with a plain loop (hundreds of items a request);
it must accept and reject exactly what ``ChunksBody`` does, and its hand-spliced msgpack answer
must decode to the same map as the plain encoding."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException

from mixplane.chunking.assign import Assignment, Topology
from mixplane.chunking.spec import ChunkSpec
from mixplane.server.routes.chunks import (
    CONSUMER_MAX,
    J_MAX,
    ChunksBody,
    _chunk_items,
    chunk_items,
)
from mixplane.server.serving import ServerJob

numbers = st.one_of(
    st.integers(-3, 3),
    st.integers(CONSUMER_MAX - 1, CONSUMER_MAX + 1),
    st.integers(J_MAX - 1, J_MAX + 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.none(),
)
keys = st.sampled_from(["consumer", "j", "rank", "x"])
items = st.one_of(
    st.fixed_dictionaries({"consumer": numbers, "j": numbers}),
    st.fixed_dictionaries({"consumer": numbers, "rank": numbers, "j": numbers}),
    st.dictionaries(keys, numbers, max_size=4),
    numbers,
    st.lists(numbers, max_size=2),
)
bodies = st.one_of(
    st.fixed_dictionaries({"requests": st.lists(items, max_size=5)}),
    st.fixed_dictionaries(
        {"requests": st.lists(items, max_size=5), "consumed": st.lists(items, max_size=5)}
    ),
    st.dictionaries(st.sampled_from(["requests", "consumed", "other"]), st.lists(items)),
    numbers,
)


def by_model(data: Any) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]] | None:
    try:
        body = ChunksBody.model_validate(data)
    except ValueError:
        return None
    return (
        [(r.consumer, r.j) for r in body.requests],
        [(c.consumer, c.rank, c.j) for c in body.consumed],
    )


@settings(max_examples=600, deadline=None)
@given(data=bodies)
def test_the_plain_loop_accepts_exactly_what_the_model_accepts(data: Any) -> None:
    expected = by_model(data)
    fast = _chunk_items(data)
    if fast is not None:  # never more lenient than the model
        assert fast == expected
    if expected is None:
        with pytest.raises(HTTPException) as info:
            chunk_items(data)
        assert info.value.status_code == 422
    else:
        assert chunk_items(data) == expected


def test_well_formed_bodies_take_the_plain_loop() -> None:
    data = {
        "requests": [{"consumer": 3, "j": J_MAX}, {"j": 0, "consumer": 0}],
        "consumed": [{"consumer": CONSUMER_MAX, "rank": 1, "j": 2}],
    }
    assert _chunk_items(data) == ([(3, J_MAX), (0, 0)], [(CONSUMER_MAX, 1, 2)])
    assert _chunk_items({"requests": []}) == ([], [])


def test_spliced_msgpack_answer_decodes_like_the_plain_encoding() -> None:
    spec = ChunkSpec(
        index=7,
        unit="samples",
        budget=4,
        counts=np.array([3, 1]),
        tokens=np.array([30, 12]),
        components=np.array([0, 0, 1], dtype=np.int32),
        files=np.array([2, 5, 1], dtype=np.int32),
        starts=np.array([0, 9, 2**40]),
        lengths=np.array([1, 2, 1]),
        mixture_version=2,
        last=False,
    )
    answers = [(0, 0, 0, spec), (1, 2**33, 17, spec), (2, 5, 0, None)]
    sj = ServerJob.__new__(ServerJob)  # only the wire cache is used
    sj._wires = OrderedDict()
    spliced = msgpack.unpackb(sj.encode_msgpack(answers), raw=False)
    assert spliced == msgpack.unpackb(msgpack.packb(sj.to_json(answers)), raw=False)
    assert msgpack.unpackb(sj.encode_msgpack([]), raw=False) == {"chunks": []}
    many = [(i, i, 0, None) for i in range(70_000)]  # array header beyond 16 bits
    assert len(msgpack.unpackb(sj.encode_msgpack(many), raw=False)["chunks"]) == 70_000


def _reference_chunk(a: Assignment, consumer: int, j: int) -> tuple[int, int]:
    """The assignment rule written out: carried chunks dealt round-robin first, then the
    frontier's chunks in (group, worker) order."""
    n = a.topology.consumers
    mine = [item for i, item in enumerate(a.carried) if i % n == consumer]
    if j < len(mine):
        return mine[j]
    j -= len(mine)
    g, w = consumer % a.topology.dp_groups, consumer // a.topology.dp_groups
    return a.frontier + g + a.topology.dp_groups * (w + a.topology.workers * j), 0


@settings(max_examples=200, deadline=None)
@given(
    groups=st.integers(1, 5),
    workers=st.integers(1, 3),
    carried=st.integers(0, 20),
    frontier=st.integers(0, 50),
)
def test_assignment_lookup_matches_the_rule(
    groups: int, workers: int, carried: int, frontier: int
) -> None:
    topology = Topology(dp_groups=groups, ranks_per_group=1, workers=workers)
    a = Assignment(
        topology=topology,
        frontier=frontier,
        carried=tuple((frontier - 1 - i, i) for i in range(min(carried, frontier))),
    )
    for consumer in range(topology.consumers):
        for j in range(12):
            assert a.chunk(consumer, j) == _reference_chunk(a, consumer, j)
