"""Resume harness over the planner, one consumer stream, a whole topology, and elastic restore."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mixplane.chunking import ComponentOrder, Planner, Topology
from mixplane.client import Client
from tests.resume import check_resume

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}


def _orders(seed: int = 7) -> list[ComponentOrder]:
    rng = np.random.default_rng(0)
    out = []
    for c, n in enumerate((1000, 300, 57)):
        out.append(
            ComponentOrder(
                key=f"c={c}",
                files=np.array([c, c], dtype=np.int32),
                starts=np.array([0, 5000], dtype=np.int64),
                counts=np.array([n // 2, n - n // 2]),
                seed=seed,
                block_size=16,
                sizes=rng.integers(1, 50, n),
            )
        )
    return out


@pytest.mark.parametrize("unit", ["samples", "tokens"])
@pytest.mark.parametrize("policy", ["repeat", "redistribute", "stop"])
def test_planner_resume(unit: str, policy: str) -> None:
    weights = np.array([0.2, 0.5, 0.3])

    def planner() -> Planner:
        return Planner(_orders(), weights, unit=unit, chunk_size=97, on_exhausted=policy)  # type: ignore[arg-type]

    def run(p: Planner, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            spec = p.plan()
            if spec is None:
                break
            out.append(spec.to_bytes())
        return out

    full = run(planner(), 60)

    def restored_after(k: int) -> list[bytes]:
        first = planner()
        run(first, k)
        second = planner()
        second.load_state_dict(first.state_dict())
        return run(second, 60 - k)

    check_resume(full, restored_after, [0, 1, 7, 23, 59])


def _job(client: Client, topology: Topology, **kw: object):  # type: ignore[no-untyped-def]
    return client.submit(
        "j", mixture=MIX, topology=topology, chunk_size=17, seed=3, **{"unit": "samples", **kw}
    )  # type: ignore[arg-type]


def _key(sample: object) -> tuple[int, int, int]:
    return (sample.file_id, sample.ordinal, sample.chunk)  # type: ignore[attr-defined]


def test_stream_resume(client: Client) -> None:
    topo = Topology(dp_groups=2, workers=2)
    full = [_key(s) for s in itertools.islice(_job(client, topo).stream(1, 0, 1), 150)]

    def restored_after(k: int) -> list[tuple[int, int, int]]:
        job = _job(client, topo)
        list(itertools.islice(job.stream(1, 0, 1), k))
        state = job.state_dict()
        again = _job(client, topo)
        again.load_state_dict(state)
        return [_key(s) for s in itertools.islice(again.stream(1, 0, 1), 150 - k)]

    check_resume(full, restored_after, [0, 1, 16, 17, 40, 149])


def test_topology_resume_all_consumers(client: Client) -> None:
    """Every consumer of a 2x2 topology stops at a different point; all continue exactly."""
    topo = Topology(dp_groups=2, workers=2)
    consumers = [(g, w) for g in range(2) for w in range(2)]
    full = {
        c: [_key(s) for s in itertools.islice(_job(client, topo).stream(c[0], 0, c[1]), 120)]
        for c in consumers
    }
    job = _job(client, topo)
    streams = {c: iter(job.stream(c[0], 0, c[1])) for c in consumers}
    taken = {
        c: [_key(s) for s in itertools.islice(streams[c], k)]
        for c, k in zip(consumers, (5, 17, 40, 0), strict=True)
    }
    state = job.state_dict()
    again = _job(client, topo)
    again.load_state_dict(state)
    for c in consumers:
        rest = [_key(s) for s in itertools.islice(again.stream(c[0], 0, c[1]), 120 - len(taken[c]))]
        assert taken[c] + rest == full[c]


def _consume_all(job, topo: Topology, limits: dict[tuple[int, int], int] | None = None):  # type: ignore[no-untyped-def]
    """Consume every consumer of a topology (up to limits); returns the sample keys read."""
    seen = []
    for g in range(topo.dp_groups):
        for w in range(topo.workers):
            stream = job.stream(g, 0, w)
            limit = None if limits is None else limits.get((g, w), 0)
            seen += [_key(s) for s in itertools.islice(stream, limit)]
    return seen


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (Topology(dp_groups=2), Topology(dp_groups=1)),
        (Topology(dp_groups=2), Topology(dp_groups=4)),
        (Topology(dp_groups=2, workers=2), Topology(dp_groups=2, workers=3)),
    ],
)
def test_elastic_restore(client: Client, before: Topology, after: Topology) -> None:
    """Restoring under another topology reads every sample of every chunk exactly once."""
    reference = _job(client, before, on_exhausted="stop")
    everything = sorted(_consume_all(reference, before))
    assert everything, "the stream must not be empty"
    job = _job(client, before, on_exhausted="stop")
    limits = {
        (g, w): 11 + 23 * (g + 2 * w)
        for g in range(before.dp_groups)
        for w in range(before.workers)
    }
    first = _consume_all(job, before, limits)
    state = job.state_dict()
    again = _job(client, after, on_exhausted="stop")
    again.load_state_dict(state)
    second = _consume_all(again, after)
    combined = sorted(first + second)
    assert len(combined) == len(set(combined)), "a sample was read twice"
    assert combined == everything
