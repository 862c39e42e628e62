"""Job snapshots (a job without its catalog), jobs limited to some consumers, merged states."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.snapshot import JobSnapshot
from mixplane.errors import FileChangedError, StateError
from mixplane.job import Job, JobSpec, Phase, merge_states
from mixplane.mixture import Mixture
from tests.resume import check_resume

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
TOPOLOGY = Topology(dp_groups=2, workers=2)


def submit(client: Client, **kw: Any) -> Job:
    options: dict[str, Any] = {
        "mixture": MIX,
        "unit": "samples",
        "chunk_size": 17,
        "seed": 3,
        "topology": TOPOLOGY,
    }
    options.update(kw)
    return client.submit("snap", **options)


def keys(samples: Any, n: int) -> list[tuple[int, int, int]]:
    return [(s.file_id, s.ordinal, s.component) for s in itertools.islice(samples, n)]


def test_a_snapshot_streams_what_the_job_streams(client: Client, tmp_path: Path) -> None:
    expected = {(g, w): keys(submit(client).stream(g, 0, w), 150) for g in (0, 1) for w in (0, 1)}
    path = submit(client).snapshot().save(tmp_path / "snap")
    client.close()  # no catalog from here on
    snapshot = JobSnapshot.load(path)
    for (g, w), want in expected.items():
        job = Job.from_snapshot(snapshot)
        assert job.catalog is None
        assert keys(job.stream(g, 0, w), 150) == want
        job.close()


def test_token_budget_jobs_keep_their_sizes(client: Client, tmp_path: Path) -> None:
    job = submit(client, unit="tokens", chunk_size=900)
    want = [s.chunk and (s.file_id, s.ordinal) for s in itertools.islice(job.stream(1, 0, 1), 80)]
    snapshot = JobSnapshot.load(
        submit(client, unit="tokens", chunk_size=900).snapshot().save(tmp_path / "s")
    )
    again = Job.from_snapshot(snapshot)
    assert [
        s.chunk and (s.file_id, s.ordinal) for s in itertools.islice(again.stream(1, 0, 1), 80)
    ] == want
    assert [o.sizes.tolist() for o in again.orders] == [o.sizes.tolist() for o in job.orders]  # type: ignore[union-attr]


def test_a_snapshot_carries_the_state_it_was_taken_at(client: Client) -> None:
    full = keys(submit(client).stream(0, 0, 1), 200)

    def restored_after(k: int) -> list[tuple[int, int, int]]:
        job = submit(client)
        stream = iter(job.stream(0, 0, 1))
        keys(stream, k)
        again = Job.from_snapshot(job.snapshot())  # in memory: no files written
        return keys(again.stream(0, 0, 1), 200 - k)

    check_resume(full, restored_after, [0, 1, 16, 17, 18, 150])


def test_spec_round_trips_through_json(client: Client) -> None:
    spec = submit(
        client,
        mixture=Mixture.hierarchical(
            {"language=en": {"weight": 0.6}, "language=de": {"weight": 0.4}}
        ),
        schedule=[Phase(start=3, mixture=Mixture.static(MIX), where="language != 'fr'")],
        algorithm="loss-proportional",
        algorithm_options={"mix": 0.3},
    ).spec
    again = JobSpec.from_json(spec.to_json())
    assert again == spec
    assert again.fingerprint() == spec.fingerprint()


def test_a_limited_job_keeps_only_its_consumers_chunks(client: Client) -> None:
    job = submit(client, local=None)
    job.limit_consumers([(1, 1)])
    for _ in itertools.islice(job.stream(1, 0, 1), 2000):
        pass
    assert len(job._plan.chunks) <= 2 * job.read_group * TOPOLOGY.consumers
    state = job.state_dict()
    assert state["scope"] == [TOPOLOGY.consumer(1, 1)]
    assert list(state["consumers"]) == [str(TOPOLOGY.consumer(1, 1))]


def test_a_part_state_needs_a_limited_job_or_a_merge(client: Client) -> None:
    part = submit(client)
    part.limit_consumers([(0, 0)])
    keys(part.stream(0, 0, 0), 40)
    state = part.state_dict()
    with pytest.raises(StateError, match="merge_states"):
        submit(client).load_state_dict(state)
    other = submit(client)
    other.limit_consumers([(0, 0)])
    other.load_state_dict(state)


def test_merged_part_states_restore_every_consumer(client: Client) -> None:
    consumers = [(g, w) for g in (0, 1) for w in (0, 1)]
    read = {c: 25 + 31 * i for i, c in enumerate(consumers)}
    full = {c: keys(submit(client).stream(c[0], 0, c[1]), read[c] + 60) for c in consumers}
    parts = []
    for c in consumers:  # each consumer in its own limited job, as workers would run
        job = submit(client)
        job.limit_consumers([c])
        stream = iter(job.stream(c[0], 0, c[1]))
        keys(stream, read[c])
        parts.append(job.state_dict())
    merged = merge_states(parts)
    assert merged["scope"] is None
    for c in consumers:
        job = submit(client)
        job.load_state_dict(merged)
        assert keys(job.stream(c[0], 0, c[1]), 60) == full[c][read[c] :]
    # merged states restore elastically too: every unread sample of the first run, once
    elastic = submit(client, topology=Topology())
    elastic.load_state_dict(merged)
    assert elastic.state_dict()["frontier"] >= 1


def test_merge_refuses_parts_of_different_runs(client: Client) -> None:
    a = submit(client).state_dict()
    b = submit(client, seed=4).state_dict()
    with pytest.raises(StateError, match="spec"):
        merge_states([a, b])


def test_snapshot_files_are_still_checked(client: Client, tmp_path: Path) -> None:
    snapshot = submit(client).snapshot()
    path = Path(snapshot.file_rows.column("path")[0].as_py())
    path.write_bytes(path.read_bytes() + b"\n")
    job = Job.from_snapshot(snapshot)
    with pytest.raises(FileChangedError):
        keys(job.stream(0, 0, 0), 500)


def test_a_folder_that_is_not_a_snapshot(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a job snapshot"):
        JobSnapshot.load(tmp_path)
    (tmp_path / "snapshot.json").write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        JobSnapshot.load(tmp_path)


def test_saving_replaces_atomically(client: Client, tmp_path: Path) -> None:
    job = submit(client)
    target = tmp_path / "out" / "snap"
    job.snapshot().save(target)
    keys(job.stream(0, 0, 0), 50)
    job.snapshot().save(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["snap"]
    loaded = JobSnapshot.load(target)
    assert loaded.state["consumers"]["0"]["j"] >= 1 or loaded.state["consumers"]["0"]["offset"] > 0
    first = min(loaded.file_pointers)
    assert job.catalog is not None
    assert np.array_equal(
        loaded.file_pointers[first]["offset"], job.catalog.pointers(first)["offset"]
    )


def test_released_chunks_are_planned_again_identically(client: Client) -> None:
    job = submit(
        client,
        topology=Topology(),
        chunk_size=5,
        schedule=[Phase(start=700, mixture=Mixture.static({"language=en": 1.0}))],
    )
    specs = {}
    for i, sample in enumerate(itertools.islice(job.stream(), 5000)):
        if sample.chunk not in specs:
            specs[sample.chunk] = job.chunk(sample.chunk)
        if i == 1500:
            job.set_weights({"language=de": 0.5, "language=fr": 0.5})
    assert job.planned_chunk(0) is None  # released
    assert {e["cause"] for e in job.mixture_log} == {"phase", "update"}
    for k in (0, 1, 255, 256, 299, 300, 301, 310, 699, 700, 701, 990):
        assert job.chunk(k) == specs[k], k
