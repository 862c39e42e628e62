"""Issue 16 (found by the peers benchmark): a job's mixture can be changed through the server as
in-process (``POST /v1/jobs/ID/weights``, ``RemoteJob.set_weights``): the chunks from the change
on equal the in-process job's changed at the same chunk, the change survives ``kill -9``, and
weights that cannot be a mixture are refused with the in-process error before anything is
logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.errors import MixtureError, PlanError
from tests.conftest import write_corpus
from tests.integrations.server import Server

pytestmark = pytest.mark.integration

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
NEW = {"language=en": 0.1, "language=de": 0.1, "language=fr": 0.8}
TOPOLOGY = Topology(dp_groups=2)


def submit(client: Any) -> Any:
    return client.submit(
        "weights", mixture=MIX, unit="samples", chunk_size=16, seed=3, topology=TOPOLOGY
    )


def chunks(job: Any, start: int, count: int) -> list[bytes]:
    """Chunks ``start`` .. ``start + count - 1`` in global order, as their wire bytes."""
    pairs = [job.assignment.locate(k)[:2] for k in range(start, start + count)]
    return [spec.to_bytes() for spec, _ in job.fetch(pairs)]


def test_weights_set_through_the_server_as_in_process(tmp_path: Path) -> None:
    write_corpus(tmp_path / "data")
    home = tmp_path / "home"
    with Client.local(home) as client:
        client.catalog.register(
            "corpus", tmp_path / "data", properties={"language": "meta.language"}, progress=False
        )
    server = Server(home).start()
    try:
        remote = submit(Client.remote(server.url))
        before = len(remote.mixture_log)
        bad: list[tuple[Any, type[Exception]]] = [
            ([1.0, -1.0, 1.0], PlanError),
            ([1.0, 1.0], PlanError),
            ({"language=xx": 1.0}, MixtureError),
        ]
        for weights, error in bad:
            with pytest.raises(error):
                remote.set_weights(weights)
        assert len(remote.mixture_log) == before  # nothing logged for a refused change
        at = remote.set_weights(NEW)
        log = remote.mixture_log
        assert log[-1]["chunk"] == at and log[-1]["cause"] == "update"
        served = chunks(remote, at, 12)
        server.kill()  # no shutdown: the change must already be on disk
        server = Server(home).start()
        remote = submit(Client.remote(server.url))
        assert remote.mixture_log == log
        assert chunks(remote, at, 12) == served
    finally:
        server.stop()

    with Client.local(home) as client:  # the same change at the same chunk, in-process
        job = client.submit(
            "weights", mixture=MIX, unit="samples", chunk_size=16, seed=3, topology=TOPOLOGY
        )
        for _ in job.plan(at):
            pass
        assert job.set_weights(NEW) == at
        assert chunks(job, at, 12) == served
        assert np.allclose(job.weights, log[-1]["weights"])


def test_refused_weights_leave_an_adaptive_job_as_it_was(tmp_path: Path) -> None:
    """A change that waits to apply (an adaptive job's consumed frontier) was logged unchecked
    and failed later, in planning; now it is refused when made."""
    write_corpus(tmp_path / "data")
    with Client.local(tmp_path / "home") as client:
        client.catalog.register(
            "corpus", tmp_path / "data", properties={"language": "meta.language"}, progress=False
        )
        job = client.submit(
            "ado", mixture=MIX, unit="samples", chunk_size=16, seed=3, algorithm="ado"
        )
        before = list(job.mixture_log)
        with pytest.raises(PlanError, match="non-negative"):
            job.set_weights(np.array([1.0, -1.0, 1.0]))
        assert job.mixture_log == before
        assert [c.to_bytes() for c in job.plan(8)]
