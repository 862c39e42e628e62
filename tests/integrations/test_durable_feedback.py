"""Acknowledged feedback survives kill -9, and a trainer's re-attach changes nothing.

An ADO job is driven by a closed loop through a real server (``closed_loop.py``). The server is
killed with SIGKILL at several points (before ADO's start step, between refits, and with the
checkpoint on disk rolled back to an older one, as if the kill had landed in the middle of a
checkpoint) and restarted on the same home; the trainer either keeps its client (which retries)
or re-attaches through a new client from its saved stream state. Every step's batch, the final
weights and the mixture log equal the uninterrupted run's (issue 13).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixplane.client import Client
from tests.conftest import register_language_corpus
from tests.integrations.closed_loop import Trainer, train
from tests.integrations.server import Server

pytestmark = pytest.mark.integration

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
STEPS = 40
ADO = {
    "start_step": 10,
    "refit_interval": 10,
    "ignore_steps": 2,
    "subsample": 1,
    "savgol_window": 5,
    "seq_len": 32,
}


def submit(client: Any, job_id: str, tokenizer: Any, **kw: Any) -> Any:
    return client.submit(
        job_id,
        mixture=MIX,
        chunk_size=400,
        seed=11,
        tokenizer=tokenizer,
        algorithm="ado",
        algorithm_options=ADO,
        **kw,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("durable")
    home = root / "home"
    with Client.local(home) as client:
        tokenizer = register_language_corpus(client, root)
    yield home, tokenizer


def fresh_home(corpus: tuple[Path, Any], tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(corpus[0], home)
    return home


@pytest.fixture(scope="module")
def uninterrupted(corpus: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = fresh_home(corpus, tmp_path_factory.mktemp("reference"))
    tokenizer = corpus[1]
    server = Server(home).start()
    try:
        with Client.remote(server.url) as client:
            job = submit(client, "run", tokenizer)
            trainer = train(job, tokenizer, Trainer(), STEPS)
            return trainer.hashes, job.weights, job.mixture_log
    finally:
        server.stop()


def check(uninterrupted: Any, hashes: list[str], job: Any) -> None:
    expected_hashes, expected_weights, expected_log = uninterrupted
    assert sum(e["cause"] == "adapt" for e in expected_log) >= 10  # ADO did change the mixture
    assert hashes == expected_hashes
    assert job.mixture_log == expected_log
    np.testing.assert_array_equal(job.weights, expected_weights)


@pytest.mark.parametrize("kill_after", [[4], [15, 27]], ids=["before-start-step", "between-refits"])
def test_kill_9_with_the_trainer_keeping_its_client(
    corpus: Any, uninterrupted: Any, tmp_path: Path, kill_after: list[int]
) -> None:
    home, tokenizer = fresh_home(corpus, tmp_path), corpus[1]
    server = Server(home, extra=("--checkpoint-every", "1000")).start()
    servers = [server]

    def crash(step: int) -> None:
        if step in kill_after:
            servers[-1].kill()  # the answers of this step were sent: the log holds them
            servers.append(Server(home, port=servers[-1].port).start())

    try:
        with Client.remote(server.url, retry_for=60) as client:
            job = submit(client, "run", tokenizer)
            trainer = train(job, tokenizer, Trainer(), STEPS, after_step=crash)
            check(uninterrupted, trainer.hashes, job)
    finally:
        for s in servers:
            s.stop()


def test_kill_9_with_an_older_checkpoint_and_a_trainer_that_reattaches(
    corpus: Any, uninterrupted: Any, tmp_path: Path
) -> None:
    """The trainer dies with the server; a new client attaches to the job and continues from
    the stream state it saved. The checkpoint on disk is rolled back to one written at step 8
    (a kill during a checkpoint leaves the previous one): the log replays everything after."""
    home, tokenizer = fresh_home(corpus, tmp_path), corpus[1]
    job_file = home / "server" / "jobs" / "run.json"
    old = tmp_path / "old-checkpoint.json"
    server = Server(home, extra=("--checkpoint-every", "0.05")).start()
    servers = [server]
    try:
        with Client.remote(server.url) as client:
            job = submit(client, "run", tokenizer)
            trainer = train(
                job,
                tokenizer,
                Trainer(),
                23,
                after_step=lambda step: shutil.copy(job_file, old) if step == 8 else None,
            )
        saved = trainer.copy()
        server.kill()
        shutil.copy(old, job_file)
        servers.append(Server(home).start())
        with Client.remote(servers[-1].url) as again:
            job = again.job("run")  # attach: no submit, no tokenizer sent
            trainer = train(job, tokenizer, saved, STEPS)
            check(uninterrupted, trainer.hashes, job)
    finally:
        for s in servers:
            s.stop()


def test_a_rank_that_reattaches_mid_group_plans_as_the_uninterrupted_run(
    corpus: Any, tmp_path: Path
) -> None:
    """No crash: a trainer re-attaches through a new client in the middle of a read group
    (read_ahead=3). Its chunk requests reach the same chunks as the uninterrupted run's, so
    mixture changes land on the same chunks (before, a re-attached client asked 8 chunks
    ahead of any position and moved them)."""
    home, tokenizer = fresh_home(corpus, tmp_path), corpus[1]
    server = Server(home).start()
    try:
        with Client.remote(server.url) as client:
            reference = submit(client, "whole", tokenizer, read_ahead=3)
            whole = train(reference, tokenizer, Trainer(), STEPS)
            job = submit(client, "split", tokenizer, read_ahead=3)
            first = train(job, tokenizer, Trainer(), 17)
        j = first.stream_state["stream"]["j"] if first.stream_state else 0
        assert j % 3 != 0, "the split must fall inside a read group"
        with Client.remote(server.url) as again:
            attached = again.job("split")
            rest = train(attached, tokenizer, first.copy(), STEPS)
            assert rest.hashes == whole.hashes
            assert attached.mixture_log == reference.mixture_log
    finally:
        server.stop()
