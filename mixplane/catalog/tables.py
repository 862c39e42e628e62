"""What the catalog holds, as values: datasets, properties, files (``Catalog``'s base).

``Tables`` owns the catalog's DuckDB connection and answers the small questions every other
part of ``Catalog`` asks (the mixins of ``registration.py``, ``computed.py``, ``reads.py`` and
``queries.py`` build on it): the registered datasets with their sizes and properties, the
property namespace, the columns a filter may name, the registered files and whether they
changed since registration. Each answer is one SQL statement over the metadata tables (sizes:
one pass over ``samples``), cheap next to anything that reads a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from mixplane.catalog.files import FileIdentity, check_unchanged
from mixplane.catalog.ingest import DatasetInfo
from mixplane.catalog.properties import PropertyType
from mixplane.catalog.sql import identifier
from mixplane.errors import DatasetNotFoundError
from mixplane.query.compile import Column


class Tables:
    """The catalog's connection and its metadata: datasets, properties, files."""

    def __init__(self, con: duckdb.DuckDBPyConnection, home: Path) -> None:
        self._con = con
        self.home = home

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The catalog's DuckDB connection, which the parts of ``Catalog`` share (only the
        process that opened the catalog holds it)."""
        return self._con

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

    def dataset_id(self, name: str) -> int:
        """The id of dataset ``name`` (DatasetNotFoundError naming the known ones)."""
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
            self.dataset_id(dataset)
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
