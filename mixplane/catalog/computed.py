"""Properties computed over registered records: ``Catalog.add_property``.

``Computed`` (a part of ``Catalog``) runs a function over batches of the records of the chosen
datasets, read back by pointer (``reads.py``; an engine, ``engines.py``, runs it here or on
Ray workers, one task per file), infers the values' property type batch by batch
(``properties.unify``), and stores them in one transaction: the column is added to (or widened
in) ``samples``, filled with one ``UPDATE ... FROM`` an Arrow table of (file id, ordinal, value),
and the property's type recorded. Either every value is stored or none. Cost: reading every
record once (the format's random access in file order) plus the function's own; storing is
one join of the values against ``samples``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from mixplane.catalog.engines import Engine, EngineName, get_engine
from mixplane.catalog.formats.tokenized import asks_for_text
from mixplane.catalog.properties import PropertyType, check_name, infer_type, unify
from mixplane.catalog.reads import Reads
from mixplane.catalog.sql import identifier
from mixplane.errors import PropertyError

ADD_PROPERTY_BATCH = 65_536


class Computed(Reads):
    """Adding a property computed by a function over registered records (see the module)."""

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
            taken = self.connection.execute(
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
        ptype, parts = self._compute(
            name,
            function,
            files,
            known=known,
            engine=get_engine(engine, address=ray_address),
            batch_size=batch_size,
            progress=progress,
        )
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
        self._store_values(name, table, ptype, known)
        return int(table.num_rows)

    def _compute(
        self,
        name: str,
        function: Callable[[pa.Table], Sequence[Any] | pa.Array | np.ndarray],
        files: Sequence[dict[str, Any]],
        *,
        known: PropertyType | None,
        engine: Engine,
        batch_size: int,
        progress: bool | None,
    ) -> tuple[PropertyType | None, list[pa.Table]]:
        """The function's values over ``files`` as (file_id, ordinal, value) tables, and
        their property type unified with the ``known`` one."""
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
            batches = engine.values(
                name,
                function,
                files,
                batch_size=batch_size,
                read=(lambda f, o: self.read(f, o, text=True)) if text else self.read,
                pointers=self.pointer_table,
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
        return ptype, parts

    def _store_values(
        self, name: str, table: pa.Table, ptype: PropertyType, known: PropertyType | None
    ) -> None:
        """Store a property's values (one transaction): its column added or widened, then
        filled, and its type recorded."""
        con = self.connection
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
