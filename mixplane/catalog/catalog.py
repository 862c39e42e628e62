"""The catalog: one embedded DuckDB database under the mixplane home.

``Catalog.open(home)`` opens (or creates) ``<home>/catalog.duckdb``; the home defaults to
``$MIXPLANE_HOME`` or ``~/.mixplane``. Only one process may open the file: it owns registration,
property computation and queries, and other processes talk to it (later through the server).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, closing
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from mixplane.catalog import pretokenized, token_counts
from mixplane.catalog.engines import Engine, EngineName, get_engine
from mixplane.catalog.fields import check as check_field_path
from mixplane.catalog.files import FileIdentity, check_unchanged, discover
from mixplane.catalog.formats import TOKEN_FORMATS, FormatName, OnError, get_format
from mixplane.catalog.formats.tokenized import TokenSpec, asks_for_text
from mixplane.catalog.ingest import DatasetInfo, FileReport, register_files
from mixplane.catalog.properties import (
    BatchFunction,
    ConstantSource,
    FieldSource,
    PathPattern,
    PropertyType,
    check_name,
    infer_type,
    preset_sources,
    unify,
)
from mixplane.catalog.runs import scan_runs
from mixplane.catalog.schema import ensure_schema
from mixplane.catalog.sql import identifier
from mixplane.catalog.token_counts import OnChanged, TokenCountReport
from mixplane.errors import (
    CatalogError,
    DatasetExistsError,
    DatasetNotFoundError,
    PropertyError,
    QueryError,
    RegistrationError,
)
from mixplane.query.compile import Column, compile_filter
from mixplane.query.expr import Expr
from mixplane.query.result import QueryResult, build_result
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

DB_NAME = "catalog.duckdb"
ADD_PROPERTY_BATCH = 65_536
MAX_NAME = 256  # characters of a dataset name


def default_home() -> Path:
    return Path(os.environ.get("MIXPLANE_HOME") or Path.home() / ".mixplane").expanduser()


class Catalog:
    """Datasets, files, properties and samples, with registration and queries."""

    def __init__(self, con: duckdb.DuckDBPyConnection, home: Path) -> None:
        self._con = con
        self.home = home

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
        self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- registration -----------------------------------------------------------------------

    def register(
        self,
        name: str,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        format: FormatName | None = None,
        properties: Mapping[str, str] | None = None,
        constants: Mapping[str, str | int | float | bool] | None = None,
        preset: str | None = None,
        function: BatchFunction | None = None,
        text_field: str | None = None,
        on_error: OnError = "raise",
        replace: bool = False,
        progress: bool | None = None,
        text_lengths: Literal["exact", "metadata"] = "exact",
        engine: EngineName | Engine = "local",
        ray_address: str | None = None,
        tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
        token_dtype: str | None = None,
        tokens_field: str | None = None,
        path_pattern: str | None = None,
    ) -> DatasetInfo:
        """Register files as dataset ``name``: all of it, or nothing (one transaction).

        ``properties`` maps property names to dotted field paths in each record
        (``{"language": "meta.language"}``); ``constants`` gives per-dataset values;
        ``preset`` adds the field paths of a known corpus (``slimpajama``, ``pile``,
        ``fineweb``); ``function`` computes properties from batches of records (an Arrow table)
        and returns ``{name: values}``. ``on_error='skip'`` counts malformed records instead of
        raising. ``text_lengths="metadata"`` estimates Parquet text lengths from the file footer
        instead of reading the text column. ``engine="ray"`` scans the files (and runs
        ``function``) on a Ray cluster (``ray_address``, the running one, or a local one); the
        catalog is the same as with ``engine="local"``.

        Pre-tokenized data (formats ``megatron``, ``tokens``, ``arrow``, or Parquet with
        ``tokens_field``) is registered with the ``tokenizer`` its ids belong to (a name, a
        path, or a loaded tokenizer), stored as its fingerprint; ``token_dtype`` gives the dtype
        of raw token memmaps; ``tokens_field`` names the column of ids in Arrow and Parquet
        files (default ``input_ids``). Their exact token counts are stored with them.
        ``path_pattern``: a regular expression whose named groups are properties of each
        file's samples, searched in the file's path (``/(?P<source>[^/]+)/[^/]+$``).
        """
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= MAX_NAME
            or not name.replace("_", "").replace("-", "").replace(".", "").isalnum()
        ):
            msg = (
                f"invalid dataset name {name!r:.80}; use 1 to {MAX_NAME} letters, digits, "
                "'_', '-' or '.'"
            )
            raise RegistrationError(msg)
        if on_error not in ("raise", "skip"):
            msg = f"on_error must be 'raise' or 'skip', got {on_error!r}"
            raise RegistrationError(msg)
        fields = [FieldSource(name=check_name(k), path=v) for k, v in (properties or {}).items()]
        if text_field is not None:
            check_field_path(text_field, "text_field")
        if preset is not None:
            taken = {f.name for f in fields}
            fields += [f for f in preset_sources(preset) if f.name not in taken]
        consts = [ConstantSource(name=check_name(k), value=v) for k, v in (constants or {}).items()]
        clash = {f.name for f in fields} & {c.name for c in consts}
        if clash:
            msg = f"properties {sorted(clash)} are given both as fields and as constants; keep one"
            raise PropertyError(msg)
        pattern = PathPattern(pattern=path_pattern) if path_pattern is not None else None
        if pattern is not None:
            taken = {f.name for f in fields} | {c.name for c in consts}
            clash = taken & set(pattern.names)
            if clash:
                msg = f"properties {sorted(clash)} are given twice (path pattern and fields or constants); keep one"
                raise PropertyError(msg)
        files = discover([paths] if isinstance(paths, (str, os.PathLike)) else paths, format)
        scanner = get_engine(engine, address=ray_address)
        formats = sorted({fmt for _, fmt in files})
        tokens = _token_spec(formats, tokenizer, token_dtype, tokens_field, text_field)
        if tokens is not None:
            text_field = tokens.field
        total = sum(p.stat().st_size for p, _ in files)
        con = self._con
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"register {name}",
            disable=not progress if progress is not None else None,
            leave=False,
        ) as bar:
            con.execute("BEGIN TRANSACTION")
            try:
                existing = con.execute(
                    "SELECT dataset_id FROM datasets WHERE name = ?", [name]
                ).fetchall()
                if existing:
                    if not replace:
                        msg = f"dataset {name!r} is already registered; pass replace=True to re-register it"
                        raise DatasetExistsError(msg)
                    self._delete(int(existing[0][0]))
                dataset_id = int(con.execute("SELECT nextval('dataset_ids')").fetchall()[0][0])
                reports = register_files(
                    con,
                    dataset_id=dataset_id,
                    files=files,
                    fields=fields,
                    constants=consts,
                    function=function,
                    text_field=text_field,
                    on_error=on_error,
                    progress=bar.update,
                    text_lengths=text_lengths,
                    engine=scanner,
                    tokens=tokens,
                    path_pattern=pattern,
                )
                samples = sum(r.samples for r in reports)
                skipped = sum(r.skipped for r in reports)
                con.execute(
                    "INSERT INTO datasets (dataset_id, name, format, text_field, samples, skipped) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [dataset_id, name, ",".join(formats), text_field, samples, skipped],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        info = self.dataset(name)
        return dataclasses.replace(info, file_reports=tuple(reports))

    def _delete(self, dataset_id: int) -> None:
        self._con.execute(
            "DELETE FROM token_files WHERE file_id IN (SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self._con.execute(
            "DELETE FROM token_counts WHERE file_id IN (SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self._con.execute(
            "DELETE FROM token_count_files WHERE file_id IN "
            "(SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self._con.execute(
            "DELETE FROM samples WHERE file_id IN (SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self._con.execute("DELETE FROM files WHERE dataset_id = ?", [dataset_id])
        self._con.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])

    def unregister(self, name: str) -> None:
        """Remove a dataset and its samples from the catalog (files are not touched)."""
        dataset_id = self._dataset_id(name)
        self._con.execute("BEGIN TRANSACTION")
        try:
            self._delete(dataset_id)
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise

    # -- inspection ------------------------------------------------------------------------

    def datasets(self) -> list[DatasetInfo]:
        rows = self._con.execute(
            """SELECT d.name, d.format, count(f.file_id), d.samples, d.skipped,
                      (SELECT coalesce(sum(bytes), 0) FROM samples s
                        WHERE s.file_id IN (SELECT file_id FROM files WHERE dataset_id = d.dataset_id))
               FROM datasets d LEFT JOIN files f USING (dataset_id)
               GROUP BY d.dataset_id, d.name, d.format, d.samples, d.skipped ORDER BY d.name"""
        ).fetchall()
        props = self._dataset_properties()
        return [
            DatasetInfo(
                name=r[0],
                format=r[1],
                files=int(r[2]),
                samples=int(r[3]),
                skipped=int(r[4]),
                bytes=int(r[5]),
                properties=props.get(r[0], ()),
            )
            for r in rows
        ]

    def dataset(self, name: str) -> DatasetInfo:
        for info in self.datasets():
            if info.name == name:
                return info
        known = [d.name for d in self.datasets()]
        msg = f"unknown dataset {name!r}; registered datasets: {known}"
        raise DatasetNotFoundError(msg)

    def _dataset_id(self, name: str) -> int:
        rows = self._con.execute(
            "SELECT dataset_id FROM datasets WHERE name = ?", [name]
        ).fetchall()
        if not rows:
            self.dataset(name)  # raises with the list of known names
        return int(rows[0][0])

    def _dataset_properties(self) -> dict[str, tuple[str, ...]]:
        names = list(self.properties())
        if not names:
            return {}
        counts = ", ".join(f"count({identifier(n)})" for n in names)
        rows = self._con.execute(
            f"SELECT d.name, {counts} FROM samples s JOIN files f USING (file_id) "
            "JOIN datasets d USING (dataset_id) GROUP BY d.name"
        ).fetchall()
        return {r[0]: tuple(n for n, c in zip(names, r[1:], strict=True) if c) for r in rows}

    def properties(self) -> dict[str, PropertyType]:
        rows = self._con.execute("SELECT name, type FROM properties ORDER BY name").fetchall()
        return {r[0]: PropertyType(r[1]) for r in rows}

    def columns(self) -> dict[str, Column]:
        """What a filter may name: every property, plus ``dataset`` (the dataset's name)."""
        cols = {n: Column(sql=f"s.{identifier(n)}", type=t) for n, t in self.properties().items()}
        cols["dataset"] = Column(sql="d.name", type=PropertyType.STRING)
        return cols

    def files(self, dataset: str | None = None) -> pa.Table:
        """Registered files: id, dataset, path, format, size, mtime_ns, fingerprint, samples;
        for files of token ids the tokenizer's fingerprint and source and the ids' dtype
        (null for text files)."""
        sql = (
            "SELECT f.file_id, d.name AS dataset, f.path, f.format, f.compression, f.size, "
            "f.mtime_ns, f.fingerprint, f.samples, f.skipped, d.text_field, "
            "t.tokenizer, t.tokenizer_source, t.dtype AS token_dtype "
            "FROM files f JOIN datasets d USING (dataset_id) LEFT JOIN token_files t USING (file_id)"
        )
        params: list[Any] = []
        if dataset is not None:
            self._dataset_id(dataset)
            sql += " WHERE d.name = ?"
            params.append(dataset)
        return self._con.sql(sql + " ORDER BY f.file_id", params=params).to_arrow_table()

    def check_files(self, dataset: str | None = None) -> None:
        """Raise FileChangedError if any registered file was modified or removed."""
        for row in self.files(dataset).to_pylist():
            identity = FileIdentity(
                size=row["size"], mtime_ns=row["mtime_ns"], fingerprint=row["fingerprint"]
            )
            check_unchanged(Path(row["path"]), identity, row["dataset"])

    def read(
        self, file_id: int, ordinals: Sequence[int] | np.ndarray, *, text: bool = False
    ) -> pa.Table:
        """The records of one file at the given ordinals, read by pointer (never a rescan).
        Records of token ids hold them as a list column; ``text=True`` adds their text,
        decoded with the dataset's tokenizer."""
        rows = self._con.execute(
            "SELECT f.path, f.format, f.size, f.mtime_ns, f.fingerprint, d.name, d.text_field, "
            "t.dtype FROM files f JOIN datasets d USING (dataset_id) "
            "LEFT JOIN token_files t USING (file_id) WHERE f.file_id = ?",
            [file_id],
        ).fetchall()
        if not rows:
            msg = f"unknown file id {file_id}"
            raise CatalogError(msg)
        path, fmt, size, mtime_ns, fingerprint, dataset, text_field, token_dtype = rows[0]
        check_unchanged(
            Path(path), FileIdentity(size=size, mtime_ns=mtime_ns, fingerprint=fingerprint), dataset
        )
        wanted_ordinals = np.asarray(ordinals, dtype=np.int64)
        wanted = pa.table(
            {
                "ordinal": pa.array(wanted_ordinals),
                "position": pa.array(np.arange(len(wanted_ordinals))),
            }
        )
        self._con.register("_mixplane_wanted", wanted)
        pointers = self._con.sql(
            'SELECT w.ordinal, s."offset", s.length, s.row_group, s."row" FROM _mixplane_wanted w '
            "LEFT JOIN samples s ON s.file_id = ? AND s.ordinal = w.ordinal ORDER BY w.position",
            params=[file_id],
        ).to_arrow_table()
        self._con.unregister("_mixplane_wanted")
        missing = pointers.column("ordinal").filter(
            pc.and_(pointers.column("offset").is_null(), pointers.column("row_group").is_null())
        )
        if len(missing):
            samples = self._con.execute(
                "SELECT samples FROM files WHERE file_id = ?", [file_id]
            ).fetchall()[0][0]
            msg = (
                f"file {path} holds ordinals 0..{samples - 1}; asked for {missing.to_pylist()[:5]}"
            )
            raise CatalogError(msg)
        if token_dtype is not None:
            row = self.files(dataset).filter(pc.equal(pc.field("file_id"), file_id)).to_pylist()[0]
            return pretokenized.read_records(row, pointers, text=text)
        return get_format(fmt).read(Path(path), pointers, text_field or "text")

    def _pointer_table(self, file_id: int) -> pa.Table:
        """One file's pointers in ordinal order, as ``read`` hands them to the format."""
        return self._con.sql(
            'SELECT ordinal, "offset", length, row_group, "row" FROM samples WHERE file_id = ? '
            "ORDER BY ordinal",
            params=[file_id],
        ).to_arrow_table()

    def pointers(self, file_id: int) -> dict[str, np.ndarray]:
        """Pointer columns of one file's samples, indexed by ordinal (for readers)."""
        table = self._con.sql(
            'SELECT "offset", length, row_group, "row" FROM samples WHERE file_id = ? ORDER BY ordinal',
            params=[file_id],
        ).to_arrow_table()
        return pointer_arrays(table)

    def _per_sample(
        self, runs: pa.Table, table: str, column: str, extra: str = "", params: Sequence[Any] = ()
    ) -> np.ndarray:
        """One value per sample of ``runs`` (file_id, start, count), in run order."""
        ordered = runs.select(["file_id", "start", "count"]).append_column(
            "run", pa.array(np.arange(runs.num_rows, dtype=np.int64))
        )
        self._con.register("_mixplane_runs", ordered)
        try:
            values = self._con.sql(
                f"SELECT t.{column} FROM _mixplane_runs r JOIN {table} t ON t.file_id = r.file_id "
                f"AND t.ordinal >= r.start AND t.ordinal < r.start + r.count {extra} "
                "ORDER BY r.run, t.ordinal",
                params=list(params),
            ).to_arrow_table()
        finally:
            self._con.unregister("_mixplane_runs")
        return values.column(column).to_numpy().astype(np.int64)

    def sample_bytes(self, runs: pa.Table) -> np.ndarray:
        """Per-sample text bytes for the samples of ``runs`` (file_id, start, count), in run order."""
        return self._per_sample(runs, "samples", "bytes")

    # -- token counts -------------------------------------------------------------------------

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
            self._con,
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

    def _texts(
        self, file_id: int, ordinals: np.ndarray, fmt: str, text_field: str | None
    ) -> list[str]:
        from mixplane.catalog.formats import get_path

        field = text_field or ("txt" if fmt == "webdataset" else "text")
        values = get_path(self.read(file_id, ordinals), field)
        if values is None:
            return [""] * len(ordinals)
        return [v if isinstance(v, str) else "" for v in values.to_pylist()]

    def sample_texts(self, runs: pa.Table, positions: np.ndarray) -> list[str]:
        """Texts of the samples at ``positions`` (indices into the concatenated runs)."""
        offsets = np.concatenate(([0], np.cumsum(runs.column("count").to_numpy())))
        run = np.searchsorted(offsets, positions, side="right") - 1
        files = runs.column("file_id").to_numpy()[run]
        ordinals = runs.column("start").to_numpy()[run] + (positions - offsets[run])
        info = {f["file_id"]: f for f in self.files().to_pylist()}
        out: list[str] = [""] * len(positions)
        for file_id in np.unique(files).tolist():
            where = np.flatnonzero(files == file_id)
            f = info[file_id]
            for i, text in zip(
                where.tolist(),
                self._texts(file_id, ordinals[where], f["format"], f["text_field"]),
                strict=True,
            ):
                out[i] = text
        return out

    def sample_tokens(self, runs: pa.Table, tokenizer: str) -> np.ndarray | None:
        """Exact token counts for the samples of ``runs`` in run order, or None when some file
        has not been counted with this tokenizer fingerprint."""
        files = np.unique(runs.column("file_id").to_numpy()).tolist()
        if not set(files) <= token_counts.counted_files(self._con, tokenizer):
            return None
        return self._per_sample(runs, "token_counts", "tokens", "AND t.tokenizer = ?", [tokenizer])

    # -- adding properties -------------------------------------------------------------------

    def add_property(
        self,
        name: str,
        function: Callable[[pa.Table], Sequence[Any] | pa.Array | np.ndarray],
        *,
        datasets: Sequence[str] | None = None,
        replace: bool = False,
        batch_size: int = ADD_PROPERTY_BATCH,
        progress: bool | None = None,
        engine: EngineName | Engine = "local",
        ray_address: str | None = None,
    ) -> int:
        """Compute property ``name`` with ``function`` over batches of registered records.

        ``function`` receives an Arrow table of records (read through the catalog's pointers)
        and returns one value per record. All of it is stored, or nothing. Returns the number of
        samples that received a value. ``engine="ray"`` runs ``function`` on a Ray cluster
        (``ray_address``, the running one, or a local one), one task per file.
        """
        check_name(name)
        names = list(datasets) if datasets is not None else [d.name for d in self.datasets()]
        files = [f for n in names for f in self.files(n).to_pylist()]
        known = self.properties().get(name)
        if known is not None and not replace:
            ids = [f["file_id"] for f in files]
            taken = self._con.execute(
                f"SELECT count({identifier(name)}) FROM samples WHERE list_contains(?, file_id)",
                [ids],
            ).fetchall()
            if taken[0][0]:
                msg = (
                    f"property {name!r} already has values in datasets {names}; "
                    "pass replace=True to recompute it"
                )
                raise PropertyError(msg)
        for n in names:
            self.check_files(n)
        computer = get_engine(engine, address=ray_address)
        total = sum(f["samples"] for f in files)
        ptype = known
        parts: list[pa.Table] = []
        with tqdm(
            total=total,
            unit="samples",
            desc=f"add-property {name}",
            leave=False,
            disable=not progress if progress is not None else None,
        ) as bar:
            text = asks_for_text(function)
            batches = computer.values(
                name,
                function,
                files,
                batch_size=batch_size,
                read=(lambda f, o: self.read(f, o, text=True)) if text else self.read,
                pointers=self._pointer_table,
            )
            with closing(batches):
                for f, ordinals, values in batches:
                    ptype = unify(name, ptype, infer_type(values.type), f"file {f['path']}")
                    parts.append(
                        pa.table(
                            {
                                "file_id": pa.array(np.full(len(ordinals), f["file_id"], np.int32)),
                                "ordinal": pa.array(ordinals),
                                "value": values,
                            }
                        )
                    )
                    bar.update(len(ordinals))
        if ptype is None:
            msg = (
                f"the function returned only null values for {name!r}; its type cannot be inferred"
            )
            raise PropertyError(msg)
        table = pa.concat_tables(
            [
                p.cast(
                    pa.schema(
                        [("file_id", pa.int32()), ("ordinal", pa.int64()), ("value", ptype.arrow)]
                    )
                )
                for p in parts
            ]
        )
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            if known is None:
                con.execute(f"ALTER TABLE samples ADD COLUMN {identifier(name)} {ptype.sql}")
            elif ptype is not known:
                con.execute(f"ALTER TABLE samples ALTER COLUMN {identifier(name)} TYPE {ptype.sql}")
            con.register("_mixplane_values", table)
            con.execute(
                f"UPDATE samples SET {identifier(name)} = v.value FROM _mixplane_values v "
                "WHERE samples.file_id = v.file_id AND samples.ordinal = v.ordinal"
            )
            con.unregister("_mixplane_values")
            con.execute(
                "INSERT INTO properties VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET type = excluded.type",
                [name, ptype.value],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return int(table.num_rows)

    # -- queries ------------------------------------------------------------------------------

    def components(
        self,
        where: Expr | str | None = None,
        by: Sequence[str] = (),
        *,
        sort_by: str | None = None,
        descending: bool = False,
        members: Sequence[Expr | str | None] = (),
        exclude_files: Sequence[int] = (),
        include_files: Sequence[int] | None = None,
    ) -> QueryResult:
        """Execute a filter and group the selected samples by the ``by`` properties.

        With ``sort_by``, each component's runs come in the order of that property (ties by
        file and ordinal), for curricula; otherwise in (file, ordinal) order. Each filter of
        ``members`` adds a grouping key (does the sample pass it?), so components also split by
        which of them hold: a job with phases uses one per phase. ``exclude_files`` leaves out
        samples of those file ids (extending a job with new files only); ``include_files``
        keeps only those.
        """
        by = tuple(by)
        columns = self.columns()
        for prop in (*by, *([sort_by] if sort_by else [])):
            if prop not in columns:
                msg = f"unknown property {prop!r}; known: {sorted(columns)}"
                raise QueryError(msg)
            if columns[prop].type is PropertyType.LIST:
                msg = f"cannot group or sort by list property {prop!r}; use a scalar property"
                raise QueryError(msg)
        condition, params = compile_filter(where, columns)
        keys = [f"{columns[p].sql} AS g{i}" for i, p in enumerate(by)]
        names = [f"g{i}" for i in range(len(by))]
        member_params: list[Any] = []
        for i, member in enumerate(members):
            sql_i, params_i = compile_filter(member, columns)
            keys.append(f"coalesce({sql_i}, FALSE) AS m{i}")
            names.append(f"m{i}")
            member_params += params_i
        params = member_params + params
        if exclude_files:
            condition = f"({condition}) AND NOT list_contains(?, s.file_id)"
            params.append(list(exclude_files))
        if include_files is not None:
            condition = f"({condition}) AND list_contains(?, s.file_id)"
            params.append(list(include_files))
        if sort_by:
            keys.append(f"{columns[sort_by].sql} AS sk")
        group = ", ".join(names)
        lead = group + ", " if names else ""
        partition = f"PARTITION BY {group}" if names else ""
        selected = (
            f"SELECT {', '.join(keys) + ', ' if keys else ''}s.file_id, s.ordinal, s.bytes "
            "FROM samples s JOIN files f USING (file_id) JOIN datasets d USING (dataset_id) "
            f"WHERE {condition}"
        )
        rank = f"DENSE_RANK() OVER (ORDER BY {group}) - 1" if names else "0"
        if sort_by:
            direction = "DESC" if descending else "ASC"
            order = f"sk {direction} NULLS LAST, file_id, ordinal"
            sql = (
                f"WITH selected AS ({selected}),\n"
                f"ranked AS (SELECT *, row_number() OVER (w) AS rn, CASE WHEN lag(file_id) OVER (w) = file_id "
                f"AND lag(ordinal) OVER (w) = ordinal - 1 THEN 0 ELSE 1 END AS brk FROM selected "
                f"WINDOW w AS ({partition} ORDER BY {order})),\n"
                f"islands AS (SELECT *, sum(brk) OVER ({partition} ORDER BY rn) AS island FROM ranked)\n"
                f"SELECT {rank} AS component, {lead}file_id, min(ordinal) AS start, count(*) AS count, "
                "sum(bytes) AS bytes, min(rn) AS first\n"
                f"FROM islands GROUP BY {lead}island, file_id\n"
                "ORDER BY component, first"
            )
        else:
            sql = (
                f"WITH selected AS ({selected}),\n"
                f"islands AS (SELECT *, ordinal - row_number() OVER (PARTITION BY {lead}file_id "
                "ORDER BY ordinal) AS island FROM selected)\n"
                f"SELECT {rank} AS component, {lead}file_id, min(ordinal) AS start, "
                "count(*) AS count, sum(bytes) AS bytes\n"
                f"FROM islands GROUP BY {lead}file_id, island\n"
                "ORDER BY component, file_id, start"
            )
        table = None
        own = " ".join([condition, *keys])
        if not sort_by and "d." not in own and "f." not in own:
            table = scan_runs(self._con, keys, names, condition, params)
        if table is None:  # the window-function form (sorted components, dataset columns)
            table = self._con.sql(sql, params=params).to_arrow_table()
        key_values: list[tuple[Any, ...]] = []
        member_values: list[tuple[bool, ...]] = []
        if table.num_rows:
            comp = table.column("component").to_numpy()
            firsts = np.flatnonzero(np.diff(comp, prepend=-1))
            firsts_table = table.take(pa.array(firsts))
            key_values = [
                tuple(firsts_table.column(f"g{i}")[j].as_py() for i in range(len(by)))
                for j in range(len(firsts))
            ]
            member_values = [
                tuple(bool(firsts_table.column(f"m{i}")[j].as_py()) for i in range(len(members)))
                for j in range(len(firsts))
            ]
        runs = table.select(["component", "file_id", "start", "count", "bytes"])
        file_ids = np.unique(runs.column("file_id").to_numpy()).tolist()
        fingerprints = (
            dict(
                self._con.execute(
                    "SELECT file_id, fingerprint FROM files WHERE list_contains(?, file_id)",
                    [file_ids],
                ).fetchall()
            )
            if file_ids
            else {}
        )
        return build_result(
            sql=sql,
            params=params,
            by=by,
            keys=key_values,
            memberships=member_values or None,
            runs=runs,
            file_fingerprints=fingerprints,
        )

    def explain(self, where: Expr | str | None = None, by: Sequence[str] = ()) -> QueryResult:
        """The SQL and the components (samples and bytes each) a filter and grouping give."""
        return self.components(where, by)


__all__ = ["Catalog", "DatasetInfo", "FileReport", "TokenCountReport", "default_home"]


def _token_spec(
    formats: Sequence[str],
    tokenizer: Tokenizer | str | os.PathLike[str] | None,
    token_dtype: str | None,
    tokens_field: str | None,
    text_field: str | None,
) -> TokenSpec | None:
    """The declared tokenizer of a registration of token ids, or None for text; refuses a mix
    of the two and token ids without their tokenizer."""
    token_formats = [f for f in formats if f in TOKEN_FORMATS]
    tokens = bool(token_formats) or tokens_field is not None
    if tokens and len(token_formats) != len(formats) and tokens_field is None:
        text = sorted(set(formats) - set(token_formats))
        msg = (
            f"the paths hold token ids ({token_formats}) and text ({text}); register them as "
            "two datasets"
        )
        raise RegistrationError(msg)
    if tokens and set(formats) - {*TOKEN_FORMATS, "parquet"}:
        msg = (
            f"a tokens field names a column of ids in Arrow or Parquet files, not in "
            f"{sorted(set(formats) - {*TOKEN_FORMATS, 'parquet'})} files; drop tokens_field"
        )
        raise RegistrationError(msg)
    if not tokens:
        if tokenizer is not None or token_dtype is not None:
            msg = (
                "tokenizer= and token_dtype= declare the tokenizer of pre-tokenized data (formats "
                f"{sorted(TOKEN_FORMATS)}, or tokens_field= for Parquet); these files are text "
                f"({list(formats)}): count their tokens with count_tokens instead"
            )
            raise RegistrationError(msg)
        return None
    if tokenizer is None:
        msg = (
            "pre-tokenized data is registered with the tokenizer its ids belong to; pass "
            "tokenizer=NAME|PATH (--tokenizer)"
        )
        raise RegistrationError(msg)
    if text_field is not None and tokens_field is not None and text_field != tokens_field:
        msg = "text_field and tokens_field differ; token ids have no text field, pass one"
        raise RegistrationError(msg)
    return pretokenized.declare(
        tokenizer, dtype=token_dtype, field=tokens_field or text_field
    )


def pointer_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """A file's pointer table as the numpy arrays readers index by ordinal; columns that are
    all null (those another format uses) are left out."""
    return {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in table.column_names
        if table.column(name).null_count < table.num_rows or table.num_rows == 0
    }
