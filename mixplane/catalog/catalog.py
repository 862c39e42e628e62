"""The catalog: one embedded DuckDB database under the mixplane home.

``Catalog.open(home)`` opens (or creates) ``<home>/catalog.duckdb``; the home defaults to
``$MIXPLANE_HOME`` or ``~/.mixplane``. Only one process may open the file: it owns registration,
property computation and queries, and other processes talk to it (later through the server).

``Catalog`` is one public class assembled from one part per concern, each in its own module
over the same connection:

- ``schema.py``: the tables, their version and migrations (``ensure_schema`` on open);
- ``tables.py`` (``Tables``): datasets, properties, files, the columns a filter may name;
- ``registration.py`` (``Registration``): ``register``, ``unregister``;
- ``computed.py`` (``Computed``): ``add_property``;
- ``reads.py`` (``Reads``): ``read``, ``pointers``, ``sample_texts``, ``sample_bytes``,
  ``sample_tokens``;
- ``queries.py`` (``Queries``): ``components``, ``explain``;
- ``token_counts.py``: the counting behind ``count_tokens`` (here).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import duckdb

from mixplane.catalog import token_counts
from mixplane.catalog.computed import ADD_PROPERTY_BATCH, Computed
from mixplane.catalog.engines import Engine, EngineName, get_engine
from mixplane.catalog.ingest import DatasetInfo, FileReport
from mixplane.catalog.queries import Queries
from mixplane.catalog.reads import pointer_arrays
from mixplane.catalog.registration import MAX_NAME, Registration
from mixplane.catalog.schema import ensure_schema
from mixplane.catalog.token_counts import OnChanged, TokenCountReport
from mixplane.errors import CatalogError
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

DB_NAME = "catalog.duckdb"


def default_home() -> Path:
    return Path(os.environ.get("MIXPLANE_HOME") or Path.home() / ".mixplane").expanduser()


class Catalog(Registration, Computed, Queries):
    """Datasets, files, properties and samples, with registration and queries."""

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> Self:
        root = Path(home).expanduser() if home is not None else default_home()
        root.mkdir(parents=True, exist_ok=True)
        path = root / DB_NAME
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            msg = (
                f"cannot open catalog {path} ({exc}); another process may hold it open: "
                "stop it or talk to it through its server"
            )
            raise CatalogError(msg) from exc
        ensure_schema(con, str(path))
        return cls(con, root)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def count_tokens(
        self,
        tokenizer: Tokenizer | str | os.PathLike[str],
        *,
        datasets: Sequence[str] | None = None,
        workers: int | None = None,
        engine: EngineName | Engine = "local",
        ray_address: str | None = None,
        on_changed: OnChanged = "error",
        batch_size: int = token_counts.BATCH_SAMPLES,
        progress: bool | None = None,
        lock: AbstractContextManager[Any] | None = None,
    ) -> TokenCountReport:
        """Store exact per-sample token counts for ``tokenizer`` (a tokenizer, or a name or
        path for ``load_tokenizer``) over ``datasets`` (default: all); files counted before
        with its fingerprint are cached and not read again (``token_counts`` has the
        algorithm). ``workers``: processes (``engine="local"``; default one per core, none
        for a small count) or Ray tasks at once (``engine="ray"``, on ``ray_address``, the
        running cluster, or a local one). A file changed since registration is an error before
        anything is counted (``on_changed="error"``) or left out and reported (``"skip"``).
        ``lock`` is held around each use of the catalog (a server's catalog lock), not while
        workers count. Returns what was counted now and what was cached."""
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(os.fspath(tokenizer))
        held = lock if lock is not None else contextlib.nullcontext()
        with held:
            names = list(datasets) if datasets is not None else [d.name for d in self.datasets()]
            files = [
                f
                for n in dict.fromkeys(names)
                for f in self.files(n).to_pylist()
                if f["token_dtype"] is None  # token ids: counted exactly at registration
            ]
        return token_counts.count_tokens(
            self.connection,
            tokenizer,
            files,
            source=token_counts.tokenizer_source(tokenizer),
            engine=get_engine(engine, address=ray_address),
            workers=workers,
            batch_size=batch_size,
            on_changed=on_changed,
            progress=progress,
            lock=lock,
        )


__all__ = [
    "ADD_PROPERTY_BATCH",
    "DB_NAME",
    "MAX_NAME",
    "Catalog",
    "DatasetInfo",
    "FileReport",
    "TokenCountReport",
    "default_home",
    "pointer_arrays",
]
