"""Fixtures for catalog tests: tiny corpora written into ``tmp_path`` and a fresh catalog.

Records carry an ``id`` so a test can check that a pointer read returns exactly the record it
registered; texts mix ASCII and multi-byte UTF-8 so ``bytes`` (UTF-8 length) differs from the
character count.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixplane.catalog import Catalog
from mixplane.catalog.formats import jsonl

LANGUAGES = ("en", "de", "fr")
TAGS = ("news", "code", "wiki")

Record = dict[str, Any]
Snapshot = dict[str, list[tuple[Any, ...]]]


def make_records(n: int, prefix: str = "r") -> list[Record]:
    """``n`` records with an id, a text, nested ``meta`` fields and a list of tags."""
    return [
        {
            "id": f"{prefix}{i}",
            "text": f"{prefix} text {i} " + "é" * (i % 4) + "字" * (i % 3),
            "meta": {
                "language": LANGUAGES[i % 3],
                "quality": round(0.05 + i / (n + 1), 4),
                "year": 2000 + i % 5,
                "clean": i % 2 == 0,
            },
            "tags": list(TAGS[: i % 3 + 1]),
        }
        for i in range(n)
    ]


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


class Corpus:
    """Writers of small corpora under one directory; each returns the written path."""

    records = staticmethod(make_records)

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def raw(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        path.write_bytes(data)
        return path

    @staticmethod
    def lines(records: Sequence[Record | bytes]) -> bytes:
        """JSON Lines; a ``bytes`` item is written as is (a malformed line, say)."""
        return b"".join(
            (r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n"
            for r in records
        )

    def jsonl(
        self,
        name: str,
        records: Sequence[Record | bytes],
        compression: Literal["gzip", "zstd"] | None = None,
    ) -> Path:
        data = self.lines(records)
        if compression == "gzip":
            data = gzip.compress(data)
        elif compression == "zstd":
            data = zstandard.ZstdCompressor().compress(data)
        return self.raw(name, data)

    def parquet(self, name: str, records: Sequence[Record], row_group_size: int = 7) -> Path:
        path = self.path(name)
        pq.write_table(pa.Table.from_pylist(list(records)), path, row_group_size=row_group_size)
        return path

    def tar(
        self,
        name: str,
        samples: Sequence[tuple[str, Mapping[str, bytes]]],
        tar_format: int = tarfile.DEFAULT_FORMAT,
    ) -> Path:
        """A WebDataset shard: each sample is (key, {extension: member bytes})."""
        path = self.path(name)
        with tarfile.open(path, "w", format=tar_format) as tf:
            for key, members in samples:
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        return path

    @staticmethod
    def samples(records: Sequence[Record]) -> list[tuple[str, dict[str, bytes]]]:
        """WebDataset samples for records: ``<id>.txt`` holds the text, ``<id>.json`` the rest."""
        return [
            (
                r["id"],
                {
                    "txt": r["text"].encode(),
                    "json": json.dumps({k: v for k, v in r.items() if k != "text"}).encode(),
                },
            )
            for r in records
        ]


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return Corpus(tmp_path / "data")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    cat = Catalog.open(tmp_path / "home")
    yield cat
    cat.close()


@pytest.fixture
def jsonl_batches(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Sizes of the batches each JSONL scan path yields: 'duckdb' (fast) and 'blocks'."""
    seen: dict[str, list[int]] = {"duckdb": [], "blocks": []}

    def spy(name: str, scan: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def wrapped(*args: Any) -> Iterator[Any]:
            for batch in scan(*args):
                seen[name].append(batch.num_samples)
                yield batch

        return wrapped

    monkeypatch.setattr(jsonl, "scan_duckdb", spy("duckdb", jsonl.scan_duckdb))
    monkeypatch.setattr(jsonl, "scan_blocks", spy("blocks", jsonl.scan_blocks))
    return seen


def snapshot(catalog: Catalog) -> Snapshot:
    """Every row of the catalog's tables and the columns of ``samples``."""
    con = catalog._con
    out = {
        table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        for table in ("datasets", "files", "properties", "samples")
    }
    out["columns"] = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() "
        "WHERE table_name = 'samples' ORDER BY column_index"
    ).fetchall()
    return out


@pytest.fixture
def snap() -> Any:
    """``snap(catalog)``: the catalog's full contents, to compare before and after a failure."""
    return snapshot
