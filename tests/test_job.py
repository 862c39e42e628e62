"""Jobs end to end in one process: determinism, distribution, exact shares, policies, phases,
sorted order, extension, mixture updates under resume, and state validation."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.stream import interleave
from mixplane.errors import StateError
from mixplane.job import Phase
from mixplane.mixture import Mixture
from tests.conftest import write_corpus

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}


def keys(stream, n=None):  # type: ignore[no-untyped-def]
    return [(s.file_id, s.ordinal) for s in itertools.islice(stream, n)]


def digest(client: Client, topology: Topology, n: int) -> dict[str, str]:
    job = client.submit("d", unit="samples", mixture=MIX, topology=topology, chunk_size=13, seed=5)
    out = {}
    for g in range(topology.dp_groups):
        for w in range(topology.workers):
            h = hashlib.sha256()
            for s in itertools.islice(job.stream(g, 0, w), n):
                h.update(f"{s.file_id}:{s.ordinal}:{s.text}\n".encode())
            out[f"{g}/{w}"] = h.hexdigest()
    fresh = client.submit(
        "d2", unit="samples", mixture=MIX, topology=topology, chunk_size=13, seed=5
    )
    plans = b"".join(spec.to_bytes() for spec in fresh.plan(20))
    out["plan"] = hashlib.sha256(plans).hexdigest()
    return out


SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from mixplane.client import Client
from mixplane.chunking import Topology
from tests.test_job import digest
with Client.local({home!r}) as c:
    print(json.dumps(digest(c, Topology(dp_groups=2, workers=2), 90)))
"""


def test_two_processes_give_identical_plans_and_streams(client: Client, tmp_path: Path) -> None:
    mine = digest(client, Topology(dp_groups=2, workers=2), 90)
    home = str(client.catalog.home)
    client.close()  # one process may hold the catalog at a time
    root = str(Path(__file__).resolve().parents[1])
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(root=root, home=home)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(run.stdout) == mine
    assert len(set(mine.values())) == len(mine)  # consumers differ from each other


def test_ranks_of_a_group_identical_groups_disjoint(client: Client) -> None:
    topo = Topology(dp_groups=3, ranks_per_group=2)
    job = client.submit(
        "t", unit="samples", mixture={"language=en": 1.0}, topology=topo, chunk_size=10, seed=1
    )
    n_en = job.result.components[
        [c.selector for c in job.result.components].index("language=en")
    ].samples
    per_group = []
    for g in range(3):
        a, b = keys(job.stream(g, 0, 0), 40), keys(job.stream(g, 1, 0), 40)
        assert a == b
        per_group.append(set(a))
    assert n_en >= 120  # one epoch covers all three groups' reads
    assert not (per_group[0] & per_group[1]) and not (per_group[1] & per_group[2])


def test_every_sample_once_per_epoch(client: Client) -> None:
    """Under 'redistribute' the stream is exactly one epoch of every component."""
    topo = Topology(dp_groups=2, workers=2)
    job = client.submit(
        "e", unit="samples", mixture=MIX, topology=topo, chunk_size=29, on_exhausted="redistribute"
    )
    seen = [k for g in range(2) for w in range(2) for k in keys(job.stream(g, 0, w))]
    assert len(seen) == len(set(seen)) == job.result.total_samples


def test_sample_shares_exact_per_chunk(client: Client) -> None:
    job = client.submit("x", unit="samples", mixture=MIX, chunk_size=37, seed=2)
    sizes = {c.selector: i for i, c in enumerate(job.result.components)}
    w = np.zeros(3)
    for sel, weight in MIX.items():
        w[sizes[sel]] = weight
    total = np.zeros(3)
    for k, spec in enumerate(job.plan(300)):
        assert spec.num_samples == 37
        total += spec.counts
        assert np.abs(total - 37 * (k + 1) * w).max() < 1.0


def test_token_shares_converge(client: Client) -> None:
    job = client.submit("tok", mixture=MIX, unit="tokens", chunk_size=500, seed=2)
    index = {c.selector: i for i, c in enumerate(job.result.components)}
    tokens = np.zeros(3)
    for spec in job.plan(400):
        tokens += spec.tokens
    shares = tokens / tokens.sum()
    for sel, weight in MIX.items():
        assert abs(shares[index[sel]] - weight) < 0.005


def test_stop_ends_every_consumer(client: Client) -> None:
    topo = Topology(dp_groups=2)
    job = client.submit(
        "s", unit="samples", mixture=MIX, topology=topo, chunk_size=20, on_exhausted="stop"
    )
    a, b = keys(job.stream(0)), keys(job.stream(1))
    last = job.end_of_stream()
    assert last is not None
    fresh = client.submit(
        "s2", unit="samples", mixture=MIX, topology=topo, chunk_size=20, on_exhausted="stop"
    )
    specs = list(fresh.plan(last + 5))
    assert len(specs) == last + 1 and specs[-1].last and not any(s.last for s in specs[:-1])
    assert len(a) + len(b) == sum(s.num_samples for s in specs)
    assert len(set(a + b)) == len(a) + len(b)


def test_redistribute_moves_share_to_the_others(client: Client) -> None:
    job = client.submit(
        "r",
        unit="samples",
        mixture={"language=en": 0.9, "language=de": 0.05, "language=fr": 0.05},
        chunk_size=20,
        on_exhausted="redistribute",
    )
    index = {c.selector: i for i, c in enumerate(job.result.components)}
    specs = list(job.plan(1000))
    en = index["language=en"]
    gone = next(k for k, s in enumerate(specs) if s.counts[en] == 0)
    assert gone > 0
    after = specs[gone + 1] if gone + 1 < len(specs) else None
    if after is not None:
        assert after.num_samples == 20  # the others take the whole budget
    assert specs[-1].last


def test_schedule_switches_mixture_and_filter(client: Client) -> None:
    schedule = [
        Phase(
            start=5, mixture=Mixture.static({"language=de": 1.0}), where=None, on_exhausted="stop"
        )
    ]
    job = client.submit(
        "p",
        unit="samples",
        where="quality < 0.5",
        mixture={"language=en": 1.0},
        chunk_size=10,
        schedule=schedule,
        on_exhausted="stop",
    )
    comps = job.result.components
    specs = list(job.plan(40))
    for spec in specs[:5]:
        used = {comps[c].selector for c in np.flatnonzero(spec.counts)}
        assert used == {"language=en"}
        assert spec.mixture_version == 0
    for spec in specs[5:]:
        used = {comps[c].selector for c in np.flatnonzero(spec.counts)}
        assert used == {"language=de"}
        assert spec.mixture_version == 1
    # phase 1 reads only samples passing its filter
    for spec in specs[:5]:
        assert all(comps[c].memberships[0] for c in np.flatnonzero(spec.counts))
    # phase 2 reads samples with quality >= 0.5 (outside phase 1's filter)
    phase2 = {c.memberships for c in comps if c.properties["language"] == "de"}
    assert (False, True) in phase2


def test_phases_keep_cursors(client: Client) -> None:
    """A component used in both phases continues its order: nothing repeated or skipped."""
    schedule = [
        Phase(
            start=3,
            mixture=Mixture.static({"language=en": 0.5, "language=de": 0.5}),
            on_exhausted="stop",
        )
    ]
    job = client.submit(
        "c",
        unit="samples",
        mixture={"language=en": 1.0},
        chunk_size=10,
        schedule=schedule,
        order="as-stored",
        on_exhausted="stop",
    )
    seen = keys(job.stream())
    plain = keys(
        client.submit(
            "only",
            unit="samples",
            mixture={"language=en": 1.0},
            chunk_size=10,
            order="as-stored",
            on_exhausted="stop",
        ).stream()
    )
    en_samples = set(plain)
    en = [k for k in seen if k in en_samples]
    assert len(en) == len(set(en))
    assert en == plain[: len(en)]


def test_sorted_order(client: Client) -> None:
    job = client.submit(
        "q",
        unit="samples",
        mixture={"language=en": 1.0},
        order="sorted",
        sort_by="quality",
        descending=True,
        chunk_size=25,
        on_exhausted="stop",
    )
    quality = [s.record["meta"]["quality"] for s in job.stream()]
    assert quality == sorted(quality, reverse=True) and len(quality) > 50


def test_extend_running_job(client: Client, tmp_path: Path) -> None:
    job = client.submit(
        "x", unit="samples", mixture={"language=en": 1.0}, chunk_size=10, order="as-stored"
    )
    before = [s for s in job.plan(4)]
    plain = client.submit(
        "plain", unit="samples", mixture={"language=en": 1.0}, chunk_size=10, order="as-stored"
    )
    write_corpus(tmp_path / "more", files=1, per_file=200, seed=9)
    client.catalog.register(
        "more",
        tmp_path / "more",
        progress=False,
        properties={
            "language": "meta.language",
            "source": "meta.source",
            "quality": "meta.quality",
        },
    )
    at = job.extend()
    assert at == 4 and len(job.result.components) == 6
    specs = before + list(job.chunk(k) for k in range(4, 30))
    old = {i for i, c in enumerate(job.result.components[:3]) if c.selector == "language=en"}
    new = {3 + i for i, c in enumerate(job.result.components[3:]) if c.selector == "language=en"}
    drawn_old = [
        (f, s)
        for spec in specs
        for c, f, s, n in zip(spec.components, spec.files, spec.starts, spec.lengths, strict=True)
        for s in range(s, s + n)
        if c in old
    ]
    plain_drawn = [
        (f, s)
        for spec in plain.plan(30)
        for f, s0, n in zip(spec.files, spec.starts, spec.lengths, strict=True)
        for s in range(s0, s0 + n)
    ]
    assert drawn_old == plain_drawn[: len(drawn_old)]
    assert sum(int(spec.counts[list(new)].sum()) for spec in specs[4:]) > 0
    assert all(len(spec.counts) == 3 for spec in specs[:4])


def test_weight_update_replayed_after_restore(client: Client) -> None:
    def run(cut: int | None) -> list[tuple[int, int]]:
        job = client.submit(
            "u", unit="samples", mixture=MIX, topology=Topology(workers=2), chunk_size=10, seed=4
        )
        s0, s1 = job.stream(0, 0, 0), job.stream(0, 0, 1)
        out = keys(s0, 25) + keys(s1, 5)
        job.set_weights({"language=en": 0.1, "language=de": 0.1, "language=fr": 0.8})
        out += keys(s0, 20)
        if cut is not None:
            state = job.state_dict()
            job = client.submit(
                "u",
                unit="samples",
                mixture=MIX,
                topology=Topology(workers=2),
                chunk_size=10,
                seed=4,
            )
            job.load_state_dict(state)
            s0, s1 = job.stream(0, 0, 0), job.stream(0, 0, 1)
        return out + keys(s1, 60) + keys(s0, 40)

    assert run(cut=1) == run(cut=None)


def test_state_mismatch_is_explained(client: Client, tmp_path: Path) -> None:
    job = client.submit("m", unit="samples", mixture=MIX, chunk_size=10)
    keys(job.stream(), 15)
    state = job.state_dict()
    other = client.submit("m", unit="samples", mixture=MIX, chunk_size=11)
    with pytest.raises(StateError, match="different job definition"):
        other.load_state_dict(state)
    write_corpus(tmp_path / "late", files=1, per_file=20, seed=3)
    client.catalog.register(
        "late", tmp_path / "late", progress=False, properties={"language": "meta.language"}
    )
    again = client.submit("m", unit="samples", mixture=MIX, chunk_size=10)
    with pytest.raises(StateError, match="query result changed"):
        again.load_state_dict(state)


def test_interleave_spans_stay_close_to_shares() -> None:
    counts = np.array([500, 300, 150, 50])
    order = interleave(counts, np.random.default_rng(3))
    assert Counter(order.tolist()) == dict(enumerate(counts.tolist()))
    share = counts / counts.sum()
    worst = 0.0
    for start in range(0, len(order) - 100):
        window = np.bincount(order[start : start + 100], minlength=4) / 100
        worst = max(worst, float(np.abs(window - share).max()))
    assert worst <= 0.03, worst


def test_no_global_rng_is_touched(client: Client) -> None:
    """Planning and streaming draw only from generators of (seed, purpose, index)."""
    import random

    np.random.seed(1234)
    random.seed(1234)
    np_state, py_state = np.random.get_state(), random.getstate()
    job = client.submit(
        "g", unit="samples", mixture=MIX, chunk_size=17, topology=Topology(dp_groups=2), seed=9
    )
    keys(job.stream(1), 200)
    list(job.plan(1))
    after = np.random.get_state()
    assert all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        for a, b in zip(np_state, after, strict=True)
    )
    assert random.getstate() == py_state


def test_assignment_ignores_the_order_consumers_ask_in(client: Client) -> None:
    """Which chunk a consumer gets depends on the chunk index only, never on arrival order."""
    topo = Topology(dp_groups=2, workers=2)
    consumers = [(g, w) for g in range(2) for w in range(2)]

    def run(
        order: list[tuple[int, int]], step: int
    ) -> dict[tuple[int, int], list[tuple[int, int]]]:
        job = client.submit("o", unit="samples", mixture=MIX, chunk_size=13, topology=topo, seed=4)
        streams = {c: iter(job.stream(c[0], 0, c[1])) for c in order}
        out: dict[tuple[int, int], list[tuple[int, int]]] = {c: [] for c in order}
        for _ in range(60 // step):
            for c in order:
                out[c] += keys(streams[c], step)
        return out

    first = run(consumers, 60)
    assert run(list(reversed(consumers)), 5) == first
    assert run([consumers[2], consumers[0], consumers[3], consumers[1]], 1) == first
