"""Pre-tokenized datasets in the catalog: the declared tokenizer, the token files, exact counts.

Registering token ids (``Catalog.register(..., tokenizer=)``) resolves the tokenizer once
(``declare``: a name, a path or a loaded ``Tokenizer``), hands its facts to the scans
(``TokenSpec``: fingerprint, source, EOS id, vocabulary size) and stores, in the registering
transaction, one ``token_files`` row per file (tokenizer, dtype of the ids) and the exact count
of every sample in ``token_counts`` under the tokenizer's fingerprint, with the file marked
counted in ``token_count_files``: where ``Catalog.sample_tokens`` (job sizing) finds them, so a
token budget over token data is exact with no counting pass.

A job reading token files must use their tokenizer (``check_job``): the stored ids mean nothing
under another vocabulary, so a job whose tokenizer differs is refused with a message naming
both tokenizers (a job made without one takes its window stream's, which must be theirs too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from mixplane.catalog.formats import get_format
from mixplane.catalog.formats.tokenized import DECLARED, DEFAULT_FIELD, DTYPES, TokenSpec, decoder
from mixplane.errors import PlanError, RegistrationError
from mixplane.tokens.tokenizer import NAMED, Tokenizer, load_tokenizer


def declare(
    tokenizer: Tokenizer | str | os.PathLike[str],
    *,
    dtype: str | None = None,
    field: str | None = None,
) -> TokenSpec:
    """The facts a scan of token ids needs about their tokenizer (see the module)."""
    if isinstance(tokenizer, str | os.PathLike):
        text = os.fspath(tokenizer)
        loaded: Any = load_tokenizer(text)
        source = text if text in NAMED else str(Path(text).expanduser().resolve())
    else:
        loaded = tokenizer
        source = str(getattr(tokenizer, "source", "") or "") or "(given as an object)"
    eos = getattr(loaded, "eos_id", None)
    if eos is None:
        msg = (
            f"tokenizer {source!r} has no end-of-sequence token; pre-tokenized documents are "
            "delimited and packed with it: declare the tokenizer the ids were made with"
        )
        raise RegistrationError(msg)
    vocab = getattr(loaded, "vocab_size", None)
    if vocab is None:
        msg = f"tokenizer {source!r} does not tell its vocabulary size; load it with load_tokenizer"
        raise RegistrationError(msg)
    if dtype is not None and dtype not in DTYPES:
        msg = f"unknown token dtype {dtype!r}; use one of {list(DTYPES)}"
        raise RegistrationError(msg)
    DECLARED[loaded.fingerprint] = loaded
    return TokenSpec(
        tokenizer=loaded.fingerprint,
        source=source,
        eos_id=int(eos),
        vocab_size=int(vocab),
        dtype=dtype,
        field=field or DEFAULT_FIELD,
    )


def store_counts(
    con: duckdb.DuckDBPyConnection, spec: TokenSpec, file_id: int, first: int, tokens: np.ndarray
) -> None:
    """Exact token counts of a file's samples ``first, first + 1, ...`` (one Arrow insert)."""
    if not len(tokens):
        return
    n = len(tokens)
    table = pa.table(
        {
            "tokenizer": pa.array([spec.tokenizer] * n, pa.string()),
            "file_id": pa.array(np.full(n, file_id, dtype=np.int32)),
            "ordinal": pa.array(np.arange(first, first + n, dtype=np.int64)),
            "tokens": pa.array(np.asarray(tokens, dtype=np.int64)),
        }
    )
    con.register("_mixplane_token_counts", table)
    try:
        con.execute("INSERT INTO token_counts SELECT * FROM _mixplane_token_counts")
    finally:
        con.unregister("_mixplane_token_counts")


def store_file(
    con: duckdb.DuckDBPyConnection, spec: TokenSpec, file_id: int, dtype: str | None
) -> None:
    """A file of token ids: its tokenizer and dtype; its counts complete for the fingerprint."""
    if dtype is None:  # no batch: an empty file, which the scan rejected or skipped
        dtype = spec.dtype or "int32"
    con.execute(
        "INSERT INTO token_files VALUES (?, ?, ?, ?, ?, ?)",
        [file_id, spec.tokenizer, spec.source, dtype, spec.eos_id, spec.vocab_size],
    )
    con.execute("INSERT INTO token_count_files VALUES (?, ?)", [spec.tokenizer, file_id])


def check_job(
    files: pa.Table, file_ids: Iterable[int], tokenizer: str | None, *, unit: str
) -> None:
    """Refuse a job over token files whose tokenizer is not the job's (``files``: the rows of
    ``Catalog.files()`` or a job snapshot, with their ``tokenizer`` columns)."""
    if "tokenizer" not in files.column_names:
        return
    wanted = set(file_ids)
    rows: Mapping[str, list[Any]] = files.select(
        ["file_id", "dataset", "tokenizer", "tokenizer_source"]
    ).to_pydict()
    found: dict[str, tuple[str, str]] = {}
    for file_id, dataset, fingerprint, source in zip(
        rows["file_id"], rows["dataset"], rows["tokenizer"], rows["tokenizer_source"], strict=True
    ):
        if file_id in wanted and fingerprint is not None:
            found.setdefault(fingerprint, (dataset, source))
    del unit  # a job without a tokenizer is sized by its stream's (Job.use_tokenizer)
    for fingerprint, (dataset, source) in sorted(found.items()):
        if tokenizer is not None and fingerprint != tokenizer:
            msg = (
                f"dataset {dataset!r} holds token ids of tokenizer {source!r} ({fingerprint}), "
                f"but the job's tokenizer is {tokenizer}; submit the job with tokenizer "
                f"{source!r}, or leave the dataset out of the filter"
            )
            raise PlanError(msg)


def read_records(row: Mapping[str, Any], pointers: pa.Table, *, text: bool = False) -> pa.Table:
    """Records of a token file (a row of ``Catalog.files()``) at ``pointers``, in pointer
    order: the ids as a list column (the dataset's token field), the metadata's fields where
    the format has them, and ``text`` decoded with the dataset's tokenizer when asked."""
    field = row.get("text_field") or DEFAULT_FIELD
    fmt = row["format"]
    path = Path(row["path"])
    if fmt == "parquet":
        table = get_format(fmt).read(path, pointers, field)
    else:
        table = get_format(fmt).read(path, pointers, field, dtype=row["token_dtype"])  # type: ignore[call-arg]
    if text:
        decode = decoder(row["tokenizer_source"], row["tokenizer"])
        texts = decode(table.column(field).to_pylist())
        table = table.append_column("text", pa.array(texts, pa.string()))
    return table
