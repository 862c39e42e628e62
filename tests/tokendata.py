"""Pre-tokenized test data written by each format's own writer where one installs here.

Megatron-Core's ``IndexedDatasetBuilder`` writes ``.bin/.idx`` pairs; Hugging Face ``datasets``
writes ``save_to_disk`` folders; pyarrow writes Parquet and Arrow IPC; token memmaps and Dolma's
metadata (``start,end,id,src,loc`` rows, gzip CSV) are written as Dolma's ``MemmapFile`` does
(Dolma itself does not install beside this project's dependencies).
"""

from __future__ import annotations

import csv
import gzip
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import ipc

from mixplane.tokens.tokenizer import HFTokenizer, load_tokenizer

Docs = list[np.ndarray]


def documents(
    seed: int, n: int, *, vocab: int, eos: int, max_len: int = 40, with_eos: float = 0.5
) -> Docs:
    """``n`` documents of 1..max_len ids in [1, vocab) without ``eos`` inside; a fraction end
    with ``eos`` (stored ids that carry their EOS, as Megatron and Dolma write them)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, vocab, int(rng.integers(1, max_len + 1)), dtype=np.int64)
        ids[ids == eos] = (eos + 1) % vocab or 1
        if rng.random() < with_eos:
            ids[-1] = eos
        out.append(ids)
    return out


def write_megatron(prefix: Path, docs: Docs, dtype: str, *, sequences: int = 1) -> Path:
    """``prefix.bin`` and ``prefix.idx`` by Megatron-Core's own builder; ``sequences`` > 1
    splits each document into that many sequences (one document of several sequences)."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=getattr(np, dtype))
    for doc in docs:
        cuts = np.array_split(np.arange(len(doc)), min(sequences, len(doc)))
        builder.add_document(np.asarray(doc), [len(c) for c in cuts])  # type: ignore[arg-type]
    builder.finalize(f"{prefix}.idx")
    return prefix.with_suffix(".idx")


def write_memmap(
    path: Path, docs: Docs, dtype: str, *, metadata: bool = True, source: str = "src"
) -> Path:
    """Raw ids (no header) and, with ``metadata``, Dolma's ``<name>.csv.gz`` beside them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate(docs).astype(dtype) if docs else np.zeros(0, dtype)
    flat.tofile(path)
    if metadata:
        with gzip.open(path.with_suffix(".csv.gz"), "wt", newline="") as f:
            writer = csv.writer(f)
            at = 0
            for i, doc in enumerate(docs):
                writer.writerow([at, at + len(doc), f"doc-{i}", f"{source}/part-{i % 3}.jsonl", i])
                at += len(doc)
    return path


def token_table(docs: Docs, value_type: pa.DataType, **columns: Sequence[Any]) -> pa.Table:
    lists = pa.array([d.tolist() for d in docs], pa.list_(value_type))
    return pa.table({"input_ids": lists, **{k: pa.array(v) for k, v in columns.items()}})


def write_parquet(path: Path, table: pa.Table, *, row_group_size: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_arrow(path: Path, table: pa.Table, *, stream: bool = True, chunk: int = 37) -> Path:
    """An Arrow IPC stream (as ``save_to_disk`` writes) or file, in batches of ``chunk`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink:
        opener = ipc.new_stream if stream else ipc.new_file
        with opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=chunk)
    return path


def save_to_disk(folder: Path, docs: Docs, **columns: Sequence[Any]) -> Path:
    """A Hugging Face ``datasets.save_to_disk`` folder (its own writer), ids as int32 lists."""
    import datasets

    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            **{k: datasets.Value("string") for k in columns},
        }
    )
    data = {"input_ids": [d.tolist() for d in docs], **{k: list(v) for k, v in columns.items()}}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(folder), num_shards=2)
    return folder


def tiny_tokenizer(folder: Path, size: int = 100) -> HFTokenizer:
    """A word-level tokenizer of ``size`` ordinary ids and an EOS (``<eos>`` = ``size``):
    small enough for ids stored as int8 or uint8."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    inner = Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.add_special_tokens(["<eos>"])
    folder.mkdir(parents=True, exist_ok=True)
    inner.save(str(folder / "tokenizer.json"))
    return load_tokenizer(str(folder / "tokenizer.json"))  # type: ignore[return-value]


def stored(docs: Docs, eos: int) -> list[int]:
    """The token stream packing makes of ``docs``: each document, then the EOS unless it
    already ends with it."""
    out: list[int] = []
    for doc in docs:
        if len(doc):
            out += doc.tolist()
            if doc[-1] != eos:
                out.append(eos)
    return out
