"""Review findings: adversarial resume, elastic restore, mixture updates and extension.

Each test here first exposed a bug (now fixed): double elastic restores, mixture changes after a
restore, extension and restore, an open stream after extension, state growth after an elastic
restore, and read-ahead that made planning depend on restore points; the others pin behaviour
that is correct now and was not covered before.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.job import Job, Phase
from mixplane.mixture import Mixture
from tests.conftest import write_corpus

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
NEW = {"language=en": 0.05, "language=de": 0.05, "language=fr": 0.9}
PROPS = {"language": "meta.language", "source": "meta.source", "quality": "meta.quality"}

Key = tuple[int, int, int]


def keys(stream: Any, n: int | None = None) -> list[Key]:
    return [(s.file_id, s.ordinal, s.chunk) for s in itertools.islice(stream, n)]


def samples(stream: Any, n: int | None = None) -> list[tuple[int, int]]:
    return [(s.file_id, s.ordinal) for s in itertools.islice(stream, n)]


def submit(client: Client, topology: Topology, policy: str = "stop", **kw: Any) -> Job:
    return client.submit(
        "r",
        mixture=MIX,
        chunk_size=10,
        seed=3,
        topology=topology,
        on_exhausted=policy,  # type: ignore[arg-type]
        **{"unit": "samples", **kw},
    )


def consume_all(job: Job, topology: Topology, limit: int | None = None) -> list[Key]:
    """Every consumer (rank 0; other ranks are checked to be identical) up to ``limit``."""
    out: list[Key] = []
    for g in range(topology.dp_groups):
        for w in range(topology.workers):
            mine = keys(job.stream(g, 0, w), limit)
            for r in range(1, topology.ranks_per_group):
                assert keys(job.stream(g, r, w), limit) == mine
            out += mine
    return out


def restore(client: Client, state: Any, topology: Topology, policy: str = "stop") -> Job:
    job = submit(client, topology, policy)
    job.load_state_dict(state)
    return job


def assert_exactly_once(seen: list[Key], everything: list[Key]) -> None:
    assert len(seen) == len(set(seen)), f"{len(seen) - len(set(seen))} samples read twice"
    assert sorted(seen) == sorted(everything)


# -- elastic restore twice ---------------------------------------------------------------------


def test_second_elastic_restore_while_consumers_are_in_carried_chunks(client: Client) -> None:
    two, one = Topology(dp_groups=2), Topology(dp_groups=1)
    everything = consume_all(submit(client, two), two)
    job = submit(client, two)
    seen = keys(job.stream(0), 5) + keys(job.stream(1), 5)  # chunks 0 and 1 half read
    job = restore(client, job.state_dict(), one)  # carried: (0, 5), (1, 5); frontier 2
    seen += keys(job.stream(0), 2)  # still inside carried chunk 0
    job = restore(client, job.state_dict(), two)
    seen += consume_all(job, two)
    assert_exactly_once(seen, everything)


def test_elastic_restore_saved_again_before_any_read(client: Client) -> None:
    four, two, three = Topology(dp_groups=4), Topology(dp_groups=2), Topology(dp_groups=3)
    everything = consume_all(submit(client, four), four)
    job = submit(client, four)
    seen = consume_all(job, four, limit=3)
    job = restore(client, job.state_dict(), two)
    job = restore(client, job.state_dict(), three)
    seen += consume_all(job, three)
    assert_exactly_once(seen, everything)


CHAINS = [
    (Topology(dp_groups=2), Topology(dp_groups=3, workers=2), Topology(dp_groups=1)),
    (Topology(dp_groups=2), Topology(dp_groups=5, workers=3), Topology(dp_groups=2)),
    (Topology(dp_groups=2, ranks_per_group=2), Topology(dp_groups=3), Topology(dp_groups=4)),
]


@pytest.mark.parametrize("policy", ["stop", "redistribute"])
@pytest.mark.parametrize("chain", range(len(CHAINS)))
def test_chained_elastic_restores_read_every_sample_once(
    client: Client, policy: str, chain: int
) -> None:
    """Two elastic restores in a row (some consumers ahead of the old frontier), states saved
    twice in a row, ranks of a group identical, more consumers than chunks left at the end."""
    topologies = CHAINS[chain]
    everything = consume_all(submit(client, topologies[0], policy), topologies[0])
    job = submit(client, topologies[0], policy)
    seen: list[Key] = []
    for step, (before, after) in enumerate(itertools.pairwise(topologies)):
        for g in range(before.dp_groups):
            for w in range(before.workers):
                limit = 7 * (1 + g + 2 * w) + 40 * step
                mine = keys(job.stream(g, 0, w), limit)
                for r in range(1, before.ranks_per_group):
                    assert keys(job.stream(g, r, w), limit) == mine
                seen += mine
        state = job.state_dict()
        assert job.state_dict() == state  # saving twice changes nothing
        job = restore(client, state, after, policy)
    seen += consume_all(job, topologies[-1])
    assert_exactly_once(seen, everything)


def test_restore_after_the_stream_ended_into_more_consumers(client: Client) -> None:
    two, six = Topology(dp_groups=2), Topology(dp_groups=3, workers=2)
    job = submit(client, two)
    consume_all(job, two)
    again = restore(client, job.state_dict(), six)
    assert consume_all(again, six) == []
    same = restore(client, job.state_dict(), two)
    assert consume_all(same, two) == []


def test_elastic_restore_keeps_state_and_cache_bounded(client: Client) -> None:
    job = submit(client, Topology(dp_groups=2), policy="repeat")
    keys(job.stream(0), 5)
    keys(job.stream(1), 5)
    job = restore(client, job.state_dict(), Topology(dp_groups=1), policy="repeat")
    stream = iter(job.stream())
    keys(stream, 5000)  # 500 chunks, far past the two carried ones
    state = job.state_dict()
    position = job.assignment.chunk(0, state["consumers"]["0"]["j"])[0]
    assert position > 400
    assert state["planner"]["next_chunk"] >= position - 1
    assert len(job._plan.chunks) < 200


# -- mixture updates after a restore -----------------------------------------------------------


def test_set_weights_after_restore_applies_where_it_would_have(client: Client) -> None:
    def fresh() -> Job:
        return client.submit(
            "u", unit="samples", mixture=MIX, chunk_size=10, seed=3, order="as-stored"
        )

    job = fresh()
    stream = iter(job.stream())
    first = samples(stream, 15)
    state = job.state_dict()
    at_live = job.set_weights(NEW)
    live = first + samples(stream, 100)

    again = fresh()
    again.load_state_dict(state)
    at_restored = again.set_weights(NEW)
    restored = first + samples(again.stream(), 100)
    assert len(set(restored)) == len(restored), "a sample was repeated inside one epoch"
    assert at_restored == at_live
    assert restored == live


def _adaptive(client: Client, cut: int | None) -> list[tuple[int, int, str]]:
    def fresh() -> Job:
        return client.submit(
            "ad",
            unit="samples",
            mixture=MIX,
            chunk_size=20,
            seed=3,
            algorithm="loss-proportional",
            algorithm_options={"mix": 0.8},
        )

    job = fresh()
    stream = iter(job.stream())
    k = len(job.result.components)
    for step in range(1, 8):
        batch = list(itertools.islice(stream, 20))
        loss, count = np.zeros(k), np.zeros(k)
        for s in batch:
            loss[s.component] += 1.0 + s.component + 1.0 / step
            count[s.component] += 1
        job.feedback(step, loss, count)
        if step == cut:
            state = job.state_dict()
            job = fresh()
            job.load_state_dict(state)
            stream = iter(job.stream())
    return [(e["chunk"], e["version"], e["cause"]) for e in job.mixture_log]


def test_adaptive_updates_after_restore_take_effect_at_the_same_chunk(client: Client) -> None:
    assert _adaptive(client, cut=3) == _adaptive(client, cut=None)


# -- phases, updates before the cut, awkward save points (same topology) -----------------------

TOPO = Topology(dp_groups=2, workers=2)
CONSUMERS = [(g, w) for g in range(2) for w in range(2)]
SCRIPTS: list[list[tuple[Any, ...]]] = [
    # save before anything, right after a chunk boundary, mid chunk, with consumers unopened
    [("save",), ("read", (0, 0), 13), ("read", (1, 0), 26), ("read", (0, 1), 5), ("save",)],
    [("update",), ("read", (1, 1), 1), ("read", (1, 1), 12), ("read", (0, 0), 300)],
    [("read", (0, 0), 0), ("read", (0, 0), 1), ("update",), ("read", (1, 0), 13), ("save",)],
]


def _scripted(client: Client, script: list[tuple[Any, ...]], cuts: set[int]) -> dict[Any, Any]:
    def fresh() -> Job:
        schedule = [
            Phase(start=7, mixture=Mixture.static({"language=de": 0.5, "language=fr": 0.5}))
        ]
        return client.submit(
            "p",
            unit="samples",
            mixture=MIX,
            chunk_size=13,
            seed=3,
            topology=TOPO,
            schedule=schedule,
        )

    job = fresh()
    iters: dict[Any, Any] = {}
    out: dict[Any, list[Key]] = {c: [] for c in CONSUMERS}
    updated = False
    for i, step in enumerate(script):
        if i in cuts:
            state = job.state_dict()
            job = fresh()
            job.load_state_dict(state)
            iters = {}
        if step[0] == "read":
            c = step[1]
            if c not in iters:
                iters[c] = iter(job.stream(c[0], 0, c[1]))
            out[c] += keys(iters[c], step[2])
        elif step[0] == "update":
            assert not updated and not cuts & set(range(i + 1))  # updates precede every cut
            job.set_weights(NEW)
            updated = True
        else:
            job.state_dict()
    for c in CONSUMERS:
        if c not in iters:
            iters[c] = iter(job.stream(c[0], 0, c[1]))
        out[c] += keys(iters[c], 150)
    return out


@pytest.mark.parametrize("index", range(len(SCRIPTS)))
def test_phase_and_update_replay_with_restores_at_every_point(client: Client, index: int) -> None:
    script = SCRIPTS[index]
    reference = _scripted(client, script, set())
    first_update = next((i for i, s in enumerate(script) if s[0] == "update"), -1)
    points = range(first_update + 1, len(script) + 1)
    for a, b in itertools.combinations_with_replacement(points, 2):
        assert _scripted(client, script, {a, b}) == reference, (a, b)


# -- extension ---------------------------------------------------------------------------------


def _register_more(client: Client, tmp_path: Path) -> None:
    write_corpus(tmp_path / "more", files=1, per_file=200, seed=9)
    client.catalog.register("more", tmp_path / "more", progress=False, properties=PROPS)


def test_open_stream_continues_after_extend(client: Client, tmp_path: Path) -> None:
    job = client.submit("x", unit="samples", mixture=MIX, chunk_size=10, seed=1)
    stream = iter(job.stream())
    samples(stream, 25)
    _register_more(client, tmp_path)
    job.extend()
    rest = list(itertools.islice(stream, 2000))
    assert any(s.component >= 3 for s in rest)


def test_state_after_extend_has_a_planner_for_every_component(
    client: Client, tmp_path: Path
) -> None:
    job = client.submit("x", unit="samples", mixture=MIX, chunk_size=10, seed=1)
    samples(job.stream(), 25)  # the stream has planned far ahead of its position
    _register_more(client, tmp_path)
    job.extend()
    state = job.state_dict()
    assert len(state["planner"]["positions"]) == len(job.orders)


def test_restore_after_extend(client: Client, tmp_path: Path) -> None:
    def fresh() -> Job:
        return client.submit("x", unit="samples", mixture=MIX, chunk_size=10, seed=1)

    job = fresh()
    samples(job.stream(), 25)
    _register_more(client, tmp_path)
    job.extend()
    state = job.state_dict()
    job.close()  # a fresh reader, so that the stale-reader bug does not hide this one
    live = samples(iter(job.stream()), 1000)
    again = fresh()
    again.load_state_dict(state)
    assert samples(again.stream(), 1000) == live


def test_streams_opened_while_another_thread_releases(client: Client) -> None:
    """``Job.stream`` registers the rank under the job's lock: opening streams while another
    thread releases chunks (which walks every rank) never breaks that walk."""
    import sys
    import threading

    ranks = 1500
    job = client.submit(
        "race", unit="samples", mixture=MIX, topology=Topology(ranks_per_group=ranks), chunk_size=10
    )
    errors: list[str] = []
    stop = threading.Event()

    def release() -> None:
        while not stop.is_set():
            try:
                job.release()
            except RuntimeError as exc:
                errors.append(repr(exc))
                stop.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=release)
    thread.start()
    try:
        for rank in range(ranks):
            job.stream(0, rank)
            if stop.is_set():
                break
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert job.progress().live_ranks == ranks


def test_a_restored_server_job_never_serves_the_old_jobs_chunk_bytes(client: Client) -> None:
    """``ServerJob.swap`` (a restore) drops the chunk bytes cached from the job it replaces:
    the restored job may plan the same chunk index differently."""
    import msgpack

    from mixplane.server.metrics import Metrics
    from mixplane.server.serving import ServerJob

    job = client.submit("swap", unit="samples", mixture=MIX, chunk_size=10)
    sj = ServerJob(job, Metrics())
    try:
        sj.chunks([(0, j) for j in range(3)], [])
        state = job.state_dict()
        job.set_weights(NEW)
        sj.encode_msgpack(sj.chunks([(0, j) for j in range(3, 10)], [(0, 0, 3)]))  # cached
        restored = Job(client.catalog, job.spec, job.topology)
        restored.load_state_dict(state)
        sj.swap(restored)
        answers = sj.chunks([(0, 8)], [])
        served = msgpack.unpackb(sj.encode_msgpack(answers))["chunks"][0]["chunk"]
        truth = restored.chunk(8)
        assert truth is not None
        assert served == truth.to_wire() == sj.to_json(answers)["chunks"][0]["chunk"]
        assert served["counts"] != job.chunk(8).to_wire()["counts"]  # the old job differs
    finally:
        sj.stop()
