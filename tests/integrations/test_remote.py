"""Jobs streamed through a real server equal jobs streamed in-process; faults and restarts."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixplane.adapt.base import FeedbackError
from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.rank import RankWindows
from mixplane.client.remote import RemoteError
from mixplane.client.windows import WindowStream
from mixplane.tokens import load_tokenizer
from tests.conftest import corpus_tokenizer, write_corpus
from tests.integrations.server import Server

pytestmark = pytest.mark.integration

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32
TOPOLOGY = Topology(dp_groups=2, workers=2)
RANKS = [(g, w) for g in range(2) for w in range(2)]


def submit(client: Any, **kw: Any) -> Any:
    return client.submit(
        "remote", mixture=MIX, chunk_size=19, seed=7, topology=TOPOLOGY, **{"unit": "samples", **kw}
    )


def digest(window: Any) -> str:
    return hashlib.sha256(
        window.input_ids.tobytes() + window.labels.tobytes() + bytes([window.component])
    ).hexdigest()


def hashes(job: Any, tokenizer: Any, g: int, w: int, n: int) -> list[str]:
    stream = WindowStream(job, tokenizer, SEQ, dp_group=g, worker=w)
    return [digest(x) for x in itertools.islice(stream, n)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Any, dict[tuple[int, int], list[str]]]]:
    """A registered corpus, a tokenizer, and each rank's first 80 windows in-process; the
    catalog is closed afterwards so the server can own it."""
    write_corpus(tmp_path / "data")
    home = tmp_path / "home"
    with Client.local(home) as client:
        client.catalog.register(
            "corpus",
            tmp_path / "data",
            properties={"language": "meta.language", "source": "meta.source"},
            progress=False,
        )
        tokenizer = corpus_tokenizer(client.catalog)
        tokenizer.save(tmp_path / "tokenizer.json")
        expected = {(g, w): hashes(submit(client), tokenizer, g, w, 80) for g, w in RANKS}
    yield home, load_tokenizer(str(tmp_path / "tokenizer.json")), expected


def test_the_server_streams_what_the_job_streams(setup: Any) -> None:
    home, tokenizer, expected = setup
    server = Server(home).start()
    try:
        client = Client.remote(server.url)
        for g, w in RANKS:
            job = client.submit(
                "remote", unit="samples", mixture=MIX, chunk_size=19, seed=7, topology=TOPOLOGY
            )
            assert hashes(job, tokenizer, g, w, 80) == expected[(g, w)]
        client.close()
    finally:
        server.stop()


def test_a_server_killed_mid_stream_is_restarted_and_clients_continue(setup: Any) -> None:
    home, tokenizer, expected = setup
    server = Server(home).start()
    try:
        client = Client.remote(server.url, retry_for=60)
        job = submit(client)
        stream = iter(WindowStream(job, tokenizer, SEQ, dp_group=1, worker=1, prefetch=2))
        first = [digest(x) for x in itertools.islice(stream, 30)]
        server.kill()
        restarted = Server(home, port=server.port).start()
        rest = [digest(x) for x in itertools.islice(stream, 50)]
        assert first + rest == expected[(1, 1)]
        restarted.stop()
        client.close()
    finally:
        server.stop()


def test_a_killed_client_resumes_from_its_last_state(setup: Any) -> None:
    home, tokenizer, expected = setup
    server = Server(home).start()
    try:
        client = Client.remote(server.url)
        windows = RankWindows(submit(client), tokenizer, SEQ, dp_group=0, workers=[1])
        it = iter(windows)
        first = [digest(x) for x in itertools.islice(it, 23)]
        state = windows.state_dict()
        client.close()  # the client is gone; its state survives
        again = Client.remote(server.url)
        restored = RankWindows(submit(again), tokenizer, SEQ, dp_group=0, workers=[1])
        restored.load_state_dict(state)
        rest = [digest(x) for x in itertools.islice(iter(restored), 80 - 23)]
        assert first + rest == expected[(0, 1)]
        again.close()
    finally:
        server.stop()


def test_feedback_through_the_server_adapts_the_mixture(setup: Any) -> None:
    home, _tokenizer, _expected = setup
    server = Server(home).start()
    try:
        client = Client.remote(server.url)
        options = {"start_step": 20, "refit_interval": 20, "ignore_steps": 2}
        job = client.submit(
            "adaptive",
            unit="samples",
            mixture=MIX,
            chunk_size=19,
            algorithm="ado",
            algorithm_options={**options, "subsample": 2, "savgol_window": 11, "seq_len": 64},
        )
        improving = job.selectors.index("language=fr")
        stream = job.stream()
        samples = iter(stream)
        for step in range(1, 121):
            list(itertools.islice(samples, 10))
            mean = np.full(job.num_components, 3.0)
            mean[improving] = 2.0 + 5.0 * (step * 40.0) ** -0.3
            tokens = np.full(job.num_components, 100.0)
            job.feedback(step, mean * tokens, tokens)
        assert job.weights[improving] > 0.25  # from 0.2 toward the improving component
        log = job.mixture_log
        assert sum(e["cause"] == "adapt" for e in log) >= 50
        assert all("step" in e for e in log if e["cause"] == "adapt")
        with pytest.raises(FeedbackError):
            job.feedback(121, [1.0], [1.0])  # wrong length: refused before it is sent
        with pytest.raises(RemoteError, match="404"):
            client.feedback("no-such-job", 1, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
        client.close()
    finally:
        server.stop()


def test_the_remote_client_raises_the_errors_raised_in_process(setup: Any) -> None:
    """Issue 18: a server's 4xx names the error's class; the remote client raises that class
    (as a RemoteError too), so code written against Client.local catches the same errors."""
    from mixplane.client.api import JobClient
    from mixplane.errors import JobNotFoundError, MixtureError, QueryError

    home, _tokenizer, _expected = setup

    def failures(client: JobClient) -> list[type[BaseException]]:
        raised = []
        for attempt in (
            lambda: client.job("no-such-job").spec,
            lambda: client.submit("bad", mixture={"language=xx": 1.0}, unit="samples"),
            lambda: client.explain_query("lang == 'en'"),
        ):
            with pytest.raises((JobNotFoundError, MixtureError, QueryError)) as info:
                attempt()
            raised.append(
                next(c for c in type(info.value).__mro__ if c.__module__ == "mixplane.errors")
            )
        return raised

    with Client.local(home) as local:
        assert not local.is_remote
        in_process = failures(local)
    server = Server(home).start()
    try:
        with Client.remote(server.url) as remote:
            assert remote.is_remote
            assert failures(remote) == in_process == [JobNotFoundError, MixtureError, QueryError]
    finally:
        server.stop()
