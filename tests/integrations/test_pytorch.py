"""The PyTorch dataset: layouts, DataLoader workers, StatefulDataLoader resume, processes, gloo."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402

from mixplane.chunking import Topology  # noqa: E402
from mixplane.client import Client  # noqa: E402
from mixplane.client.rank import resolve_layout  # noqa: E402
from mixplane.errors import PlanError, StateError  # noqa: E402
from mixplane.integrations.pytorch import (  # noqa: E402
    FIELDS,
    TokenWindowDataset,
    collate_windows,
    domain_loss_sums,
)
from mixplane.job import Job  # noqa: E402
from tests.conftest import corpus_tokenizer  # noqa: E402
from tests.resume import check_resume  # noqa: E402

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32
BATCH = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tokenizer(client: Client, tmp_path: Path) -> Any:
    tok = corpus_tokenizer(client.catalog)
    tok.save(tmp_path / "tokenizer.json")
    return tok


def submit(client: Client, topology: Topology | None = None, **kw: Any) -> Job:
    topology = topology or Topology(workers=2)
    return client.submit(
        "t", mixture=MIX, chunk_size=19, seed=5, topology=topology, **{"unit": "samples", **kw}
    )


def digest(batch: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in ("input_ids", "labels", "domain_ids", "position_ids", "cu_seqlens", "component"):
        h.update(batch[name].numpy().tobytes())
    return h.hexdigest()


def batches(loader: Any, n: int) -> list[str]:
    return [digest(b) for b in itertools.islice(iter(loader), n)]


def loader_for(dataset: Any, workers: int, *, stateful: bool = False, **kw: Any) -> Any:
    cls = StatefulDataLoader if stateful else DataLoader
    return cls(dataset, batch_size=BATCH, num_workers=workers, collate_fn=collate_windows, **kw)


# -- items and batches -----------------------------------------------------------------------
def test_items_are_tensors_and_batches_are_collated(client: Client, tokenizer: Any) -> None:
    dataset = TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH)
    batch = next(iter(loader_for(dataset, 0)))
    assert batch["input_ids"].shape == (BATCH, SEQ) and batch["input_ids"].dtype == torch.int64
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert (batch["domain_ids"] == batch["component"][:, None]).all()
    cu = batch["cu_seqlens"]
    assert cu[0] == 0 and cu[-1] == BATCH * SEQ and bool((cu[1:] > cu[:-1]).all())
    for i in range(BATCH):  # every window boundary is a segment boundary
        assert i * SEQ in cu.tolist()
    flat = batch["position_ids"].reshape(-1)
    assert (flat[cu[:-1].long()] == 0).all()  # positions restart at every segment
    assert batch["max_seqlen"] == int((cu[1:] - cu[:-1]).max())


def stacked(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch by plain stacking: each field stacked, document starts shifted per window."""
    out = {name: torch.stack([i[name] for i in items]) for name in FIELDS}
    out["component"] = torch.stack([i["component"] for i in items])
    starts = [i["cu_seqlens"][:-1] + k * SEQ for k, i in enumerate(items)]
    out["cu_seqlens"] = torch.cat([*starts, torch.tensor([len(items) * SEQ], dtype=torch.int32)])
    out["max_seqlen"] = int(out["cu_seqlens"].diff().max())
    return out


def assert_same_batch(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert type(got) is dict and list(got) == [*FIELDS, "cu_seqlens", "max_seqlen", "component"]
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def test_batches_equal_the_stacked_items_however_they_are_made(
    client: Client, tokenizer: Any
) -> None:
    """Issue 16: a batch is views of one buffer (the items' own when they are its consecutive
    rows, else a copy); both equal plain stacking, also for items that share no buffer."""
    items = list(itertools.islice(TokenWindowDataset(submit(client), tokenizer, SEQ), 12))
    assert all(i["input_ids"].dtype == torch.int64 for i in items)
    assert_same_batch(collate_windows(items[:BATCH]), stacked(items[:BATCH]))  # rows, no copy
    apart = [{k: v.clone() for k, v in i.items()} for i in items[3:10:2]]  # a copy
    assert_same_batch(collate_windows(apart), stacked(apart))
    assert_same_batch(collate_windows(items[5:6]), stacked(items[5:6]))


def collate_with_shift_labels(items: list[dict[str, Any]]) -> dict[str, Any]:
    out = collate_windows(items)
    out["shift_labels"] = out["labels"]
    return out


def test_a_batch_from_a_worker_arrives_as_a_plain_dict(client: Client, tokenizer: Any) -> None:
    """Issue 16: a worker's batch travels as one shared-memory buffer (a ``SharedBatch``) and
    arrives as the plain dict the in-process collate gives; a key added after collating
    travels too, the same tensor as the field it names."""
    dataset = TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH)
    in_process = TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH)
    items = list(itertools.islice(in_process, 8 * BATCH))  # the same order (module docstring)
    loader = DataLoader(
        dataset, batch_size=BATCH, num_workers=2, collate_fn=collate_with_shift_labels
    )
    got = list(itertools.islice(iter(loader), 8))
    for n, batch in enumerate(got):
        assert batch.pop("shift_labels") is batch["labels"]
        assert_same_batch(batch, stacked(items[n * BATCH : (n + 1) * BATCH]))


# -- workers ---------------------------------------------------------------------------------
def test_workers_zero_and_two_give_the_same_batches(client: Client, tokenizer: Any) -> None:
    inline = batches(
        loader_for(TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH), 0), 24
    )
    forked = batches(
        loader_for(TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH), 2), 24
    )
    assert len(inline) == 24
    assert inline == forked  # same batches, same order (multisets equal a fortiori)


def test_spawned_workers_get_the_snapshot(client: Client, tokenizer: Any) -> None:
    dataset = TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH)
    spawned = loader_for(dataset, 2, multiprocessing_context="spawn")
    inline = loader_for(TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH), 0)
    assert batches(spawned, 6) == batches(inline, 6)


def test_worker_count_must_match_the_topology(client: Client, tokenizer: Any) -> None:
    dataset = TokenWindowDataset(submit(client, Topology(workers=3)), tokenizer, SEQ)
    with pytest.raises(Exception, match="num_workers=2 but the job's topology has workers=3"):
        batches(loader_for(dataset, 2), 1)


# -- resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_exactly(client: Client, tokenizer: Any, workers: int) -> None:
    def loader(**kw: Any) -> Any:
        dataset = TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH)
        return loader_for(dataset, workers, stateful=True, **kw)

    n = 20
    full = batches(loader(), n)

    def restored_after(k: int) -> list[str]:
        first = loader()
        it = iter(first)
        for _ in range(k):
            next(it)
        state = first.state_dict()
        del it
        second = loader()
        second.load_state_dict(state)
        return batches(second, n - k)

    # inside a chunk and across chunk boundaries (19 samples per chunk, ~2 windows each)
    check_resume(full, restored_after, [1, 2, 7, 13])


def test_dataset_state_is_json(client: Client, tokenizer: Any) -> None:
    dataset = TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH)
    it = iter(dataset)
    for _ in range(9):
        next(it)
    state = dataset.state_dict()
    again = json.loads(json.dumps(state))
    assert again == state
    rest = [w["input_ids"].tolist() for w in itertools.islice(it, 5)]
    other = TokenWindowDataset(submit(client), tokenizer, SEQ, batch_size=BATCH)
    other.load_state_dict(again)
    assert [w["input_ids"].tolist() for w in itertools.islice(iter(other), 5)] == rest


def test_a_state_of_another_rank_is_refused(client: Client, tokenizer: Any) -> None:
    job = submit(client, Topology(dp_groups=2, workers=2))
    dataset = TokenWindowDataset(job, tokenizer, SEQ, dp_group=0)
    next(iter(dataset))
    state = dataset.state_dict()
    other = TokenWindowDataset(
        submit(client, Topology(dp_groups=2, workers=2)), tokenizer, SEQ, dp_group=1
    )
    other.load_state_dict(state)
    with pytest.raises(StateError, match="dp_group=0"):
        next(iter(other))


# -- layouts ---------------------------------------------------------------------------------
def test_layout_from_rank_and_world() -> None:
    topology = Topology(dp_groups=2, ranks_per_group=4)
    assert resolve_layout(topology, rank=5, world_size=8).dp_group == 1
    assert resolve_layout(topology, rank=5, world_size=8).rank == 1
    assert resolve_layout(topology, rank=5, world_size=8, dp_size=2).rank == 1
    assert resolve_layout(topology, rank=3, world_size=8, ranks_per_group=4).dp_group == 0
    with pytest.raises(PlanError, match="topology=Topology"):
        resolve_layout(topology, rank=0, world_size=8, dp_size=8)
    with pytest.raises(PlanError, match="does not fit"):
        resolve_layout(topology, rank=0, world_size=6, dp_size=4)
    assert resolve_layout(topology, dp_group=1, group_rank=3).rank == 3


# -- processes -------------------------------------------------------------------------------
def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integrations.rank_proc", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen[str]) -> None:
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err


def _read(path: Path) -> list[str]:
    return json.loads(path.read_text())["batches"]


@pytest.mark.integration
def test_processes_agree_and_resume_in_a_new_process(
    client: Client, tokenizer: Any, tmp_path: Path
) -> None:
    snap = submit(client).snapshot().save(tmp_path / "snap")
    tok = str(tmp_path / "tokenizer.json")
    common = [str(snap), tok]
    procs = [
        _run([*common, str(tmp_path / "a.json"), "--batches", "16", "--workers", "2"]),
        _run([*common, str(tmp_path / "b.json"), "--batches", "16", "--workers", "2"]),
        _run(
            [
                *common,
                str(tmp_path / "c.json"),
                "--batches",
                "16",
                "--workers",
                "2",
                "--stop-after",
                "5",
                "--state-out",
                str(tmp_path / "state.json"),
            ]
        ),
    ]
    for p in procs:
        _wait(p)
    full = _read(tmp_path / "a.json")
    assert len(full) == 16
    assert _read(tmp_path / "b.json") == full  # two processes, identical token stream
    assert _read(tmp_path / "c.json") == full[:5]
    _wait(
        _run(
            [
                *common,
                str(tmp_path / "d.json"),
                "--batches",
                "11",
                "--workers",
                "2",
                "--resume-from",
                str(tmp_path / "state.json"),
            ]
        )
    )
    assert _read(tmp_path / "d.json") == full[5:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_ranks(snapshot: Path, tok: str, tmp_path: Path, name: str, *extra: str) -> list[list[str]]:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
        }
        out = tmp_path / f"{name}-{rank}.json"
        args = [str(snapshot), tok, str(out), "--batches", "10", "--dist", *extra]
        procs.append(_run(args, env))
    for p in procs:
        _wait(p)
    return [_read(tmp_path / f"{name}-{rank}.json") for rank in range(2)]


@pytest.mark.integration
def test_gloo_ranks_dp_disjoint_and_group_identical(
    client: Client, tokenizer: Any, tmp_path: Path
) -> None:
    tok = str(tmp_path / "tokenizer.json")
    dp = submit(client, Topology(dp_groups=2)).snapshot().save(tmp_path / "dp")
    group = submit(client, Topology(ranks_per_group=2)).snapshot().save(tmp_path / "group")
    a, b = _two_ranks(dp, tok, tmp_path, "dp")
    assert len(a) == len(b) == 10 and not set(a) & set(b)  # dp=2: the ranks read disjoint data
    c, d = _two_ranks(group, tok, tmp_path, "group")
    assert c == d  # ranks_per_group=2: both ranks of the group read the same batches
    e, f = _two_ranks(group, tok, tmp_path, "mesh", "--mesh", "1,2")
    assert e == f == c  # a (dp=1, tp=2) device mesh gives the same layout


# -- feedback --------------------------------------------------------------------------------
def test_domain_loss_sums() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    domains = torch.tensor([[0, 0, 2], [2, 2, 2]])
    sums, counts = domain_loss_sums(loss, domains, 3)
    assert sums.tolist() == [3.0, 0.0, 18.0] and counts.tolist() == [2.0, 0.0, 4.0]
    sums, counts = domain_loss_sums(loss, domains, 3, mask=loss != 6.0)
    assert sums.tolist() == [3.0, 0.0, 12.0] and counts.tolist() == [2.0, 0.0, 3.0]
    with pytest.raises(PlanError, match="domain_ids must lie"):
        domain_loss_sums(loss, domains, 2)


@pytest.mark.integration
def test_gloo_feedback_is_reduced_and_sent_once(
    client: Client, tokenizer: Any, tmp_path: Path
) -> None:
    snap = submit(client, Topology(dp_groups=2)).snapshot().save(tmp_path / "fb")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo",
        }
        args = [str(snap), str(tmp_path / "tokenizer.json"), str(tmp_path / f"fb-{rank}.json")]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.integrations.feedback_proc", *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _wait(p)
    r0, r1 = (json.loads((tmp_path / f"fb-{r}.json").read_text()) for r in range(2))
    assert r1["logged"] == []  # only rank 0 sends
    assert len(r0["logged"]) == 1
    step, sums, counts = r0["logged"][0]
    assert step == 5
    assert np.allclose(sums, np.add(r0["local"][0], r1["local"][0]))
    assert np.allclose(counts, np.add(r0["local"][1], r1["local"][1]))
    assert sum(counts) == 2 * 6 * SEQ


def test_worker_states_merged_restore_elastically_as_the_job_in_process_does(
    client: Client, tokenizer: Any
) -> None:
    """DataLoader workers: each worker's dataset state holds its job part with its window
    stream's place; merged (``merge_states``) and restored with one worker, the windows are
    those of the same restore taken from one in-process job that streamed the same windows
    (exact per token, ``tests/test_elastic_windows.py``)."""
    from mixplane.client.windows import WindowStream
    from mixplane.job import merge_states

    def job(workers: int) -> Job:
        return submit(client, Topology(workers=workers), on_exhausted="stop")

    loader = loader_for(
        TokenWindowDataset(job(2), tokenizer, SEQ, batch_size=BATCH), 2, stateful=True
    )
    it = iter(loader)
    taken = 7  # batches: 4 from worker 0, 3 from worker 1 (the DataLoader takes them in turn)
    for _ in range(taken):
        next(it)
    state = loader.state_dict()
    del it
    parts: list[Any] = []

    def find(value: Any) -> None:  # each worker's dataset state, wherever the loader keeps it
        if isinstance(value, dict):
            if isinstance(value.get("windows"), dict) and "job" in value["windows"]:
                parts.append(value["windows"]["job"])
            for v in value.values():
                find(v)

    find(state)
    assert len(parts) == 2 and all("window" in c for p in parts for c in p["consumers"].values())

    def rest(saved: Any) -> list[bytes]:
        again = job(1)
        again.load_state_dict(saved)
        return [w.input_ids.tobytes() for w in WindowStream(again, tokenizer, SEQ, prefetch=0)]

    in_process = job(2)
    streams = [WindowStream(in_process, tokenizer, SEQ, worker=w, prefetch=0) for w in (0, 1)]
    for w, batches_of_worker in ((0, 4), (1, 3)):
        list(itertools.islice(iter(streams[w]), batches_of_worker * BATCH))
    expected = rest(in_process.state_dict())
    assert expected and rest(merge_states(parts)) == expected
