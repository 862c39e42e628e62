"""Shared fixtures: a small multi-property JSONL corpus registered in a fresh catalog."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pytest

from mixplane.client import Client
from mixplane.tokens import train_bpe

if TYPE_CHECKING:
    from mixplane.catalog.catalog import Catalog
    from mixplane.tokens.tokenizer import HFTokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LANGUAGES = ("en", "de", "fr")
SOURCES = ("web", "wiki")


def corpus_tokenizer(catalog: Catalog, samples: int = 200) -> HFTokenizer:
    """A byte-level BPE of 300 tokens trained on the catalog's first ``samples`` samples."""
    texts = catalog.sample_texts(catalog.components().runs, np.arange(samples))
    return train_bpe(texts, vocab_size=300)


def register_language_corpus(client: Client, root: Path) -> HFTokenizer:
    """``write_corpus`` under ``root/data`` registered as dataset 'corpus' (language, source),
    and ``corpus_tokenizer`` of it saved to ``root/tokenizer.json``: that file, loaded."""
    from mixplane.tokens import load_tokenizer

    write_corpus(root / "data")
    client.catalog.register(
        "corpus",
        root / "data",
        properties={"language": "meta.language", "source": "meta.source"},
        progress=False,
    )
    corpus_tokenizer(client.catalog).save(root / "tokenizer.json")
    return load_tokenizer(str(root / "tokenizer.json"))  # type: ignore[return-value]


def write_corpus(root: Path, *, files: int = 3, per_file: int = 400, seed: int = 0) -> list[Path]:
    """JSONL files whose records carry language, source, quality and a unique id."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    n = 0
    for f in range(files):
        path = root / f"part-{f}.jsonl"
        with path.open("wb") as out:
            for _ in range(per_file):
                record = {
                    "id": n,
                    "text": f"doc {n} " + "word " * rng.randint(5, 60),
                    "meta": {
                        "language": rng.choice(LANGUAGES),
                        "source": rng.choice(SOURCES),
                        "quality": round(rng.random(), 4),
                    },
                }
                out.write(orjson.dumps(record) + b"\n")
                n += 1
        paths.append(path)
    return paths


_SCRIPT = Path(sys.executable).with_name("mixplane")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mixplane.cli"]


def run_cli(
    home: Path, *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The real ``mixplane`` command line on catalog ``home`` (MIXPLANE_HOME unset)."""
    env = {k: v for k, v in os.environ.items() if k != "MIXPLANE_HOME"}
    proc = subprocess.run(
        [*COMMAND, "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """An in-process client over a catalog holding dataset 'corpus' (1200 samples)."""
    write_corpus(tmp_path / "data")
    c = Client.local(tmp_path / "home")
    c.catalog.register(
        "corpus",
        tmp_path / "data",
        properties={
            "language": "meta.language",
            "source": "meta.source",
            "quality": "meta.quality",
        },
        progress=False,
    )
    yield c
    c.close()
