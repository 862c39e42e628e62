"""The demo job: build the real demo corpus, register it, and explain it.

Steps: build the corpus from package text (~3 s), register its eight datasets with ``language``,
``source``, ``domain`` (constants) and ``split``, ``chars`` (record fields), then print the
components by source and by language for the training split. Later stages (training with ADO,
the dashboard) build on this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mixplane.catalog.catalog import Catalog, default_home
from mixplane.chunking import Topology
from mixplane.cli import render_explain
from mixplane.client import Client
from mixplane.demo.corpus import build_corpus

#: The demo's mixture over domains (training split), in samples.
MIXTURE = {
    "domain=encyclopedia": 0.25,
    "domain=news": 0.25,
    "domain=code": 0.2,
    "domain=reviews": 0.1,
    "domain=religion": 0.1,
    "domain=docs": 0.1,
}
STREAMED = 4000


def _stream_job(client: Client, echo: Callable[[str], None]) -> None:
    """Plan a mixed job over 2 DP groups x 2 workers and stream it: realized vs target."""
    job = client.submit(
        "demo",
        where="split == 'train'",
        mixture=MIXTURE,
        topology=Topology(dp_groups=2, workers=2),
        chunk_size=200,
        seed=0,
    )
    echo(
        f"\njob 'demo': {len(job.result.components)} components, chunks of 200 samples, "
        "2 DP groups x 2 workers"
    )
    started = time.perf_counter()
    counts: dict[str, int] = {}
    nbytes = 0
    streams = [iter(job.stream(g, 0, w)) for g in range(2) for w in range(2)]
    for _ in range(STREAMED // len(streams)):
        for stream in streams:
            sample = next(stream)
            sel = job.result.components[sample.component].properties["domain"]
            counts[sel] = counts.get(sel, 0) + 1
            nbytes += len(sample.text.encode())
    seconds = time.perf_counter() - started
    echo(f"streamed {STREAMED} samples ({nbytes / 1e6:.1f} MB) in {seconds:.2f} s")
    echo(f"{'domain':<14} {'target':>7} {'realized':>9}")
    for selector, weight in MIXTURE.items():
        domain = selector.split("=", 1)[1]
        echo(f"{domain:<14} {weight:>7.1%} {counts.get(domain, 0) / STREAMED:>9.1%}")
    state = job.state_dict()
    echo(
        f"resumable state: {len(str(state))} characters "
        f"({len(state['planner']['positions'])} component cursors, "
        f"{len(state['consumers'])} consumer positions)"
    )


def run_demo(
    *, home: str | Path | None, out: Path | None, max_docs: int | None, echo: Callable[[str], None]
) -> None:
    root = Path(home) if home is not None else default_home()
    corpus_dir = out or root / "demo-corpus"
    started = time.perf_counter()
    parts = build_corpus(corpus_dir, max_docs=max_docs)
    echo(
        f"built the demo corpus in {corpus_dir} ({len(parts)} datasets, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    with Catalog.open(root) as cat:
        for part in parts:
            info = part.register(cat)
            echo(
                f"  registered {info.name:<18} {info.files:>2} files {info.samples:>6} samples "
                f"{info.bytes / 1e6:>6.2f} MB  ({part.format})"
            )
        for by in (["source"], ["language"], ["language", "domain"]):
            echo(f"\nexplain --where \"split == 'train'\" --by {','.join(by)}")
            echo(render_explain(cat.explain("split == 'train'", by=by).to_dict()))
        _stream_job(Client(cat), echo)
    echo(f"\ndemo finished in {time.perf_counter() - started:.1f} s; catalog at {root}")
