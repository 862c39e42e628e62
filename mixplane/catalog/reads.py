"""Reading registered samples back by pointer: records, texts, per-sample sizes.

``Reads`` (a part of ``Catalog``) turns (file id, ordinals) into records without rescanning
anything: it checks the file against its registered identity, looks up the samples' pointers
(one join of the wanted ordinals against ``samples``) and hands them to the file's format
(``formats/``), or to ``pretokenized.read_records`` for token ids. ``sample_texts`` reads the
texts at positions of a query's runs (one read per file touched); ``sample_bytes`` and
``sample_tokens`` give one stored value per sample of runs, in run order (one range join
against ``samples`` or ``token_counts``). Cost: a read is the format's random access (JSONL:
one read per window of nearby lines, Parquet: the row groups touched) plus one catalog lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixplane.catalog import pretokenized, token_counts
from mixplane.catalog.files import FileIdentity, check_unchanged
from mixplane.catalog.formats import get_format, get_path
from mixplane.catalog.tables import Tables
from mixplane.errors import CatalogError


class Reads(Tables):
    """Records, texts and per-sample values of registered samples (see the module)."""

    def read(
        self, file_id: int, ordinals: Sequence[int] | np.ndarray, *, text: bool = False
    ) -> pa.Table:
        """The records of one file at the given ordinals, read by pointer (never a rescan).
        Records of token ids hold them as a list column; ``text=True`` adds their text,
        decoded with the dataset's tokenizer."""
        rows = self.connection.execute(
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
        self.connection.register("_mixplane_wanted", wanted)
        pointers = self.connection.sql(
            'SELECT w.ordinal, s."offset", s.length, s.row_group, s."row" FROM _mixplane_wanted w '
            "LEFT JOIN samples s ON s.file_id = ? AND s.ordinal = w.ordinal ORDER BY w.position",
            params=[file_id],
        ).to_arrow_table()
        self.connection.unregister("_mixplane_wanted")
        missing = pointers.column("ordinal").filter(
            pc.and_(pointers.column("offset").is_null(), pointers.column("row_group").is_null())
        )
        if len(missing):
            samples = self.connection.execute(
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

    def pointer_table(self, file_id: int) -> pa.Table:
        """One file's pointers in ordinal order, as ``read`` hands them to the format."""
        return self.connection.sql(
            'SELECT ordinal, "offset", length, row_group, "row" FROM samples WHERE file_id = ? '
            "ORDER BY ordinal",
            params=[file_id],
        ).to_arrow_table()

    def pointers(self, file_id: int) -> dict[str, np.ndarray]:
        """Pointer columns of one file's samples, indexed by ordinal (for readers)."""
        table = self.connection.sql(
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
        self.connection.register("_mixplane_runs", ordered)
        try:
            values = self.connection.sql(
                f"SELECT t.{column} FROM _mixplane_runs r JOIN {table} t ON t.file_id = r.file_id "
                f"AND t.ordinal >= r.start AND t.ordinal < r.start + r.count {extra} "
                "ORDER BY r.run, t.ordinal",
                params=list(params),
            ).to_arrow_table()
        finally:
            self.connection.unregister("_mixplane_runs")
        return values.column(column).to_numpy().astype(np.int64)

    def sample_bytes(self, runs: pa.Table) -> np.ndarray:
        """Per-sample text bytes for the samples of ``runs`` (file_id, start, count), in run order."""
        return self._per_sample(runs, "samples", "bytes")

    def sample_tokens(self, runs: pa.Table, tokenizer: str) -> np.ndarray | None:
        """Exact token counts for the samples of ``runs`` in run order, or None when some file
        has not been counted with this tokenizer fingerprint."""
        files = np.unique(runs.column("file_id").to_numpy()).tolist()
        if not set(files) <= token_counts.counted_files(self.connection, tokenizer):
            return None
        return self._per_sample(runs, "token_counts", "tokens", "AND t.tokenizer = ?", [tokenizer])

    def _texts(
        self, file_id: int, ordinals: np.ndarray, fmt: str, text_field: str | None
    ) -> list[str]:
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


def pointer_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """A file's pointer table as the numpy arrays readers index by ordinal; columns that are
    all null (those another format uses) are left out."""
    return {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in table.column_names
        if table.column(name).null_count < table.num_rows or table.num_rows == 0
    }
