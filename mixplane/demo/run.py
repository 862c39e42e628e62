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
from mixplane.cli import render_explain
from mixplane.demo.corpus import build_corpus


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
            info = cat.register(
                part.name,
                list(part.paths),
                format=part.format,
                properties=part.fields,
                constants=part.constants,
                replace=True,
            )
            echo(
                f"  registered {info.name:<18} {info.files:>2} files {info.samples:>6} samples "
                f"{info.bytes / 1e6:>6.2f} MB  ({part.format})"
            )
        for by in (["source"], ["language"], ["language", "domain"]):
            echo(f"\nexplain --where \"split == 'train'\" --by {','.join(by)}")
            echo(render_explain(cat.explain("split == 'train'", by=by)))
    echo(f"\ndemo finished in {time.perf_counter() - started:.1f} s; catalog at {root}")
