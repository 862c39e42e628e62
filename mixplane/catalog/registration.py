"""Registering and removing datasets: ``Catalog.register`` and ``Catalog.unregister``.

``Registration`` (a part of ``Catalog``) checks what a registration asks for before anything
is read (the dataset's name, the property sources: field paths, constants, a preset, a path
pattern; for token ids the declared tokenizer, ``pretokenized.declare``), finds the files
(``files.discover``), and stores the dataset in one DuckDB transaction: its samples and
properties through ``ingest.register_files`` (scanned by an engine, ``engines.py``), then its
row in ``datasets``. Any error rolls the transaction back, so the catalog is exactly as before;
``replace=True`` deletes the old dataset inside the same transaction. Cost: that of the scan
(``ingest.py``); removing a dataset is six deletes by file id.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tqdm import tqdm

from mixplane.catalog import pretokenized
from mixplane.catalog.engines import Engine, EngineName, get_engine
from mixplane.catalog.fields import check as check_field_path
from mixplane.catalog.files import discover
from mixplane.catalog.formats import TOKEN_FORMATS, FormatName, OnError
from mixplane.catalog.formats.tokenized import TokenSpec
from mixplane.catalog.ingest import DatasetInfo, register_files
from mixplane.catalog.properties import (
    BatchFunction,
    ConstantSource,
    FieldSource,
    PathPattern,
    check_name,
    preset_sources,
)
from mixplane.catalog.tables import Tables
from mixplane.errors import DatasetExistsError, PropertyError, RegistrationError
from mixplane.tokens.tokenizer import Tokenizer

MAX_NAME = 256  # characters of a dataset name


@dataclass(frozen=True, slots=True, kw_only=True)
class Sources:
    """Where a registration's properties come from: record fields, constants, the path."""

    fields: list[FieldSource]
    constants: list[ConstantSource]
    pattern: PathPattern | None


class Registration(Tables):
    """Registering and removing datasets (see the module)."""

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
        check_dataset_name(name)
        if on_error not in ("raise", "skip"):
            msg = f"on_error must be 'raise' or 'skip', got {on_error!r}"
            raise RegistrationError(msg)
        sources = property_sources(properties, constants, preset, path_pattern, text_field)
        files = discover([paths] if isinstance(paths, (str, os.PathLike)) else paths, format)
        scanner = get_engine(engine, address=ray_address)
        formats = sorted({fmt for _, fmt in files})
        tokens = token_spec(formats, tokenizer, token_dtype, tokens_field, text_field)
        if tokens is not None:
            text_field = tokens.field
        total = sum(p.stat().st_size for p, _ in files)
        con = self.connection
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
                    fields=sources.fields,
                    constants=sources.constants,
                    function=function,
                    text_field=text_field,
                    on_error=on_error,
                    progress=bar.update,
                    text_lengths=text_lengths,
                    engine=scanner,
                    tokens=tokens,
                    path_pattern=sources.pattern,
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
        self.connection.execute(
            "DELETE FROM token_files WHERE file_id IN (SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self.connection.execute(
            "DELETE FROM token_counts WHERE file_id IN (SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self.connection.execute(
            "DELETE FROM token_count_files WHERE file_id IN "
            "(SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self.connection.execute(
            "DELETE FROM samples WHERE file_id IN (SELECT file_id FROM files WHERE dataset_id = ?)",
            [dataset_id],
        )
        self.connection.execute("DELETE FROM files WHERE dataset_id = ?", [dataset_id])
        self.connection.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])

    def unregister(self, name: str) -> None:
        """Remove a dataset and its samples from the catalog (files are not touched)."""
        dataset_id = self.dataset_id(name)
        self.connection.execute("BEGIN TRANSACTION")
        try:
            self._delete(dataset_id)
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise


def check_dataset_name(name: object) -> None:
    """Refuse a dataset name that is not 1 to ``MAX_NAME`` letters, digits, '_', '-' or '.'."""
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


def property_sources(
    properties: Mapping[str, str] | None,
    constants: Mapping[str, str | int | float | bool] | None,
    preset: str | None,
    path_pattern: str | None,
    text_field: str | None,
) -> Sources:
    """A registration's property sources, checked: valid names, each property given once
    (a preset's field paths give way to those given explicitly); ``text_field`` a valid path."""
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
    return Sources(fields=fields, constants=consts, pattern=pattern)


def token_spec(
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
    return pretokenized.declare(tokenizer, dtype=token_dtype, field=tokens_field or text_field)
