"""The same token-budgeted job gives the same windows in-process and through the server.

One sizing rule for every path (issue 13): for every rank of a 2 x 2 topology (two DP groups of
two ranks), the windows streamed in-process and through a real server are byte-identical, with
token sizes from a ratio measured with the tokenizer (sent to the server as data) and from the
catalog's exact counts, and the server's stream continues identically after a restart.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.windows import WindowStream
from tests.conftest import register_language_corpus
from tests.integrations.server import Server

pytestmark = pytest.mark.integration

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32
TOPOLOGY = Topology(dp_groups=2, ranks_per_group=2)
RANKS = [(g, r) for g in range(2) for r in range(2)]
WINDOWS = 60


def submit(client: Any, job_id: str, tokenizer: Any) -> Any:
    return client.submit(
        job_id, mixture=MIX, chunk_size=700, seed=5, topology=TOPOLOGY, tokenizer=tokenizer
    )


def digests(windows: Iterator[Any], n: int) -> list[str]:
    return [
        hashlib.sha256(
            w.input_ids.tobytes() + w.labels.tobytes() + bytes([w.component])
        ).hexdigest()
        for w in itertools.islice(windows, n)
    ]


def every_rank(job: Any, tokenizer: Any) -> dict[tuple[int, int], list[str]]:
    return {
        (g, r): digests(iter(WindowStream(job, tokenizer, SEQ, dp_group=g, rank=r)), WINDOWS)
        for g, r in RANKS
    }


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Any]:
    home = tmp_path / "home"
    with Client.local(home) as client:
        tokenizer = register_language_corpus(client, tmp_path)
    return home, tokenizer


def test_windows_equal_in_process_and_through_the_server_with_either_sizing(
    corpus: tuple[Path, Any],
) -> None:
    home, tokenizer = corpus
    for sizing in ("sampled", "exact"):
        with Client.local(home) as client:
            if sizing == "exact":
                client.catalog.count_tokens(tokenizer, progress=False)
            job = submit(client, f"job-{sizing}", tokenizer)
            assert set(job.token_source.values()) == {sizing}
            local = every_rank(job, tokenizer)
            local_explain = job.explain()
        server = Server(home).start()
        try:
            with Client.remote(server.url) as client:
                job = submit(client, f"job-{sizing}", tokenizer)
                assert {s["source"] for s in job.sizing.values()} == {sizing} and job.note is None
                assert every_rank(job, tokenizer) == local
                remote_explain = client.explain(f"job-{sizing}")
                assert [
                    (r["sizing"], r["bytes_per_token"], r["tokens"])
                    for r in remote_explain["components"]
                ] == [
                    (r["sizing"], r["bytes_per_token"], r["tokens"])
                    for r in local_explain["components"]
                ]
        finally:
            server.stop()


def test_the_server_stream_continues_identically_after_a_restart(
    corpus: tuple[Path, Any],
) -> None:
    home, tokenizer = corpus
    with Client.local(home) as client:
        local = every_rank(submit(client, "restart", tokenizer), tokenizer)
    server = Server(home).start()
    servers = [server]
    try:
        with Client.remote(server.url, retry_for=60) as client:
            job = submit(client, "restart", tokenizer)
            streams = {
                (g, r): iter(WindowStream(job, tokenizer, SEQ, dp_group=g, rank=r, prefetch=0))
                for g, r in RANKS
            }
            first = {rank: digests(it, 25) for rank, it in streams.items()}
            server.kill()  # no shutdown handler runs; the job reloads from its files
            servers.append(Server(home, port=server.port).start())
            rest = {rank: digests(it, WINDOWS - 25) for rank, it in streams.items()}
            assert {rank: first[rank] + rest[rank] for rank in RANKS} == local
    finally:
        for s in servers:
            s.stop()


def test_a_job_naming_a_tokenizer_the_server_cannot_load_is_refused(
    corpus: tuple[Path, Any],
) -> None:
    """The server never falls back to a fixed ratio for a job that names a tokenizer."""
    home, tokenizer = corpus
    server = Server(home).start()
    try:
        with Client.remote(server.url) as client:
            body = {
                "spec": {"job_id": "x", "mixture": MIX, "tokenizer": tokenizer.fingerprint},
                "topology": {},
            }
            status, _ctype, data = client.connection.request("POST", "/v1/jobs", body)
            assert status == 400 and b"cannot size job 'x' in tokens" in data
            assert b"mixplane count-tokens" in data
    finally:
        server.stop()
