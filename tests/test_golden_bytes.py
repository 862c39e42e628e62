"""Behaviour kept through refactors (issue 18): the bytes of a fixed set of planned chunks, streamed
windows and server chunk answers, as digests taken before the code was moved. A change to any of
them is a change of behaviour, never a refactor: if one is meant, say so in the CHANGELOG and
take the digests again (the failing assertion prints them)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from mixplane.catalog.catalog import Catalog
from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.job import Phase
from mixplane.mixture import Mixture
from mixplane.server.jobs import JobStore
from mixplane.server.metrics import Metrics
from mixplane.tokens.tokenizer import train_bpe
from tests.conftest import write_corpus

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
TOPOLOGY = Topology(dp_groups=2, ranks_per_group=2, workers=2)

GOLDEN = {  # taken at 7347a54+ (issue 13 landed, before the issue 18 split)
    "chunks": "59c57d7b6c61440f87ecd829ea7eac31a3ce0bb7f775df88985391ab34b0666d",
    "windows": "18009c9b5ecee6d6f2d2b6001f64cb0e9c91096e0c493fcb579f8f83faffe44f",
    "server": "d8a49fbe1920e104901a62e914306bf24911906b4cda6edaf0ec8f5fd7d1de3a",
}


def _corpus(root: Path) -> tuple[Path, Any]:
    write_corpus(root / "data", seed=17)
    home = root / "home"
    with Catalog.open(home) as catalog:
        catalog.register(
            "corpus",
            root / "data",
            properties={
                "language": "meta.language",
                "source": "meta.source",
                "quality": "meta.quality",
            },
            progress=False,
        )
        texts = catalog.sample_texts(catalog.components().runs, np.arange(300))
    return home, train_bpe(texts, vocab_size=300)


def _jobs(client: Any, tokenizer: Any) -> list[Any]:
    """Jobs of every kind: samples with phases, tokens (sampled sizing), adaptive with
    updates, redistribute, sorted order."""
    schedule = [Phase(start=5, mixture=Mixture.static({"language=en": 0.2, "language=de": 0.8}))]
    return [
        client.submit(
            "phases", mixture=MIX, unit="samples", chunk_size=37, seed=3,
            topology=TOPOLOGY, schedule=schedule,
        ),
        client.submit(
            "tokens", mixture=Mixture.uniform(["language", "source"]), chunk_size=900,
            seed=5, topology=TOPOLOGY, tokenizer=tokenizer, block_size=16,
        ),
        client.submit(
            "adaptive", mixture=MIX, chunk_size=700, seed=7, topology=TOPOLOGY,
            tokenizer=tokenizer, algorithm="loss-proportional", algorithm_options={"mix": 0.5},
        ),
        client.submit(
            "redistribute", mixture=MIX, unit="samples", chunk_size=101,
            on_exhausted="redistribute", seed=9, topology=TOPOLOGY,
        ),
        client.submit(
            "sorted", mixture=MIX, unit="samples", chunk_size=50, order="sorted",
            sort_by="quality", descending=True, topology=TOPOLOGY,
        ),
    ]  # fmt: skip


def _drive(job: Any) -> None:
    """Mixture changes at fixed points of the plan (before any chunk is asked)."""
    if job.spec.algorithm is not None:
        k = job.num_components
        for step in range(1, 4):
            job.feedback(step, np.arange(1.0, k + 1) * 10 * step, np.full(k, 10.0))


def digests(tmp_path: Path) -> dict[str, str]:
    home, tokenizer = _corpus(tmp_path)
    chunks, windows = hashlib.sha256(), hashlib.sha256()
    with Client.local(home) as client:
        for job in _jobs(client, tokenizer):
            _drive(job)
            for spec in job.plan(30):
                chunks.update(spec.to_bytes())
            chunks.update(json.dumps(job.mixture_log, sort_keys=True).encode())
        for job in _jobs(client, tokenizer):
            _drive(job)
            for g, r, w in itertools.product(range(2), range(2), range(2)):
                stream = WindowStream(job, tokenizer, 24, dp_group=g, rank=r, worker=w, prefetch=0)
                for window in itertools.islice(stream, 25):
                    windows.update(window.input_ids.tobytes() + window.labels.tobytes())
                    windows.update(window.position_ids.tobytes() + bytes([window.component]))
    server = hashlib.sha256()
    with Catalog.open(home) as catalog:
        store = JobStore(catalog, tmp_path / "jobs", Metrics())
        for job in _jobs(_StoreClient(store), tokenizer):
            sj = store.get(job.spec.job_id)
            _drive(sj.job)
            pairs = [(c, j) for c in range(TOPOLOGY.consumers) for j in range(6)]
            answers = sj.chunks(pairs, [(c, 0, 0) for c in range(TOPOLOGY.consumers)])
            server.update(sj.encode_msgpack(answers))
            server.update(json.dumps(sj.to_json(answers), sort_keys=True).encode())
        store.close()
    return {
        "chunks": chunks.hexdigest(),
        "windows": windows.hexdigest(),
        "server": server.hexdigest(),
    }


class _StoreClient:
    """``submit`` through a server's job store (what ``POST /v1/jobs`` does)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def submit(self, job_id: str, **options: Any) -> Any:
        from mixplane.job import make_spec
        from mixplane.tokens.wire import tokenizer_to_wire

        topology = options.pop("topology")
        tokenizer = options.get("tokenizer")
        spec = make_spec(job_id, **options)
        sent = tokenizer_to_wire(tokenizer) if tokenizer is not None else None
        sj, _ = self.store.submit(spec, topology, replace=True, tokenizer=sent)
        return sj.job


def test_bytes_are_those_taken_before_the_refactor(tmp_path: Path) -> None:
    found = digests(tmp_path)
    assert found == GOLDEN, json.dumps(found, indent=2)
