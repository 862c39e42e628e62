"""``mixplane job show`` and ``mixplane job trace``: a server job's per-step data manifest, read
through the server and from its home's files, every step (not the last 100,000 in memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixplane.adapt.replay import read_trace
from mixplane.client import Client
from tests.conftest import write_corpus
from tests.integrations.server import Server

pytestmark = pytest.mark.integration

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixplane.cli", *args], capture_output=True, text=True, check=False
    )


def test_job_show_and_trace(tmp_path: Path) -> None:
    write_corpus(tmp_path / "data")
    home = tmp_path / "home"
    with Client.local(home) as client:
        client.catalog.register(
            "corpus", tmp_path / "data", properties={"language": "meta.language"}, progress=False
        )
    server = Server(home).start()
    sent: list[tuple[int, Any, Any]] = []
    try:
        with Client.remote(server.url) as client:
            job = client.submit(
                "adapt",
                mixture=MIX,
                unit="samples",
                chunk_size=20,
                algorithm="loss-proportional",
                algorithm_options={"mix": 0.5},
            )
            k = job.num_components
            for step in range(1, 26):
                tokens = np.arange(1.0, k + 1) * 100 * step
                loss = tokens * (1.0 + np.arange(k))
                job.feedback(step, loss, tokens)
                sent.append((step, loss, tokens))
            job.feedback(25, sent[-1][1], sent[-1][2])  # a retry: answered, not logged twice
            selectors, log = job.selectors, job.mixture_log
        shown = cli("--server", server.url, "job", "show", "adapt", "--json")
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        out = tmp_path / "trace.csv"
        traced = cli("--server", server.url, "job", "trace", "adapt", "--out", str(out))
        assert traced.returncode == 0, traced.stderr
        human = cli("--server", server.url, "job", "show", "adapt")
        assert "requested" in human.stdout and "mixture versions" in human.stdout
    finally:
        server.stop()

    delivered = sum(t for _, _, t in sent)
    assert report["steps"] == 25 and report["tokens"] == pytest.approx(delivered.sum())
    by_component = {r["component"]: r for r in report["components"]}
    for i, sel in enumerate(selectors):
        assert by_component[sel]["delivered_share"] == pytest.approx(delivered[i] / delivered.sum())
    assert [v["version"] for v in report["mixture_versions"]] == [e["version"] for e in log]
    table = read_trace(out)  # the format replay reads, every step of every component
    assert table.num_rows == 25 * len(selectors)
    assert table.column("step").to_pylist()[:: len(selectors)] == list(range(1, 26))
    np.testing.assert_allclose(
        table.column("tokens").to_numpy(), np.concatenate([t for _, _, t in sent])
    )

    # the same from the home's files, with the server stopped
    offline = cli("--home", str(home), "job", "show", "adapt", "--json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["components"] == report["components"]
    missing = cli("--home", str(home), "job", "show", "nope")
    assert missing.returncode != 0 and "no server job 'nope'" in missing.stderr
