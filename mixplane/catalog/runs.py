"""Runs of a query's components computed in one streaming pass (large catalogs).

The window-function form of gaps-and-islands (``ordinal - row_number() OVER (PARTITION BY
group, file ORDER BY ordinal)``) sorts every selected sample: at 1e8 samples it takes minutes
and gigabytes. Samples are stored in (file_id, ordinal) order, so one scan in storage order
finds the same runs: a run starts where the component or the file changes or an ordinal is not
the previous one plus one. ``scan_runs`` reads the selected samples' group keys, file ids,
ordinals and bytes in record batches (memory O(batch + runs)), gives each row its component
(the rank of its key among the distinct keys, as ``DENSE_RANK`` does) with numpy, and cuts runs
with vectorized comparisons. If the stream is not in storage order (a catalog rewritten in
another order), it returns None and the caller uses the SQL form.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BATCH_ROWS = 1 << 20
MAX_KEY_SPACE = 1 << 24  # product of per-key distinct counts the lookup table may span


def scan_runs(
    con: duckdb.DuckDBPyConnection,
    keys: list[str],
    names: list[str],
    condition: str,
    params: list[Any],
) -> pa.Table | None:
    """(component, g0.., m0.., file_id, start, count, bytes) runs ordered by component, file,
    start, as the SQL form returns them; None where this pass cannot be used."""
    cursor = con.cursor()
    select_keys = ", ".join(keys) + ", " if keys else ""
    order = ", ".join(names)
    distinct = (
        cursor.sql(
            f"SELECT DISTINCT {', '.join(keys)} FROM samples s WHERE {condition} ORDER BY {order}",
            params=params,
        ).to_arrow_table()
        if keys
        else None
    )
    lookup, strides, values = None, [], []
    if distinct is not None:
        space = 1
        for name in names:
            column = distinct.column(name)
            uniques = pc.unique(column.drop_null()) if column.null_count else pc.unique(column)
            values.append(uniques)
            strides.append(space)
            space *= len(uniques) + 1  # + 1: null
        if space > MAX_KEY_SPACE:
            return None
        lookup = np.full(space, -1, dtype=np.int64)
        lookup[_codes(distinct, names, values, strides)] = np.arange(distinct.num_rows)
    reader = cursor.sql(
        f"SELECT {select_keys}s.file_id, s.ordinal, s.bytes FROM samples s WHERE {condition}",
        params=params,
    ).to_arrow_reader(BATCH_ROWS)
    parts: list[tuple[np.ndarray, ...]] = []
    last: tuple[int, int, int] | None = None  # (component, file, ordinal) of the previous row
    for batch in reader:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        comp = (
            lookup[_codes(table, names, values, strides)]
            if lookup is not None
            else np.zeros(table.num_rows, dtype=np.int64)
        )
        files = table.column("file_id").to_numpy().astype(np.int64)
        ordinals = table.column("ordinal").to_numpy().astype(np.int64)
        nbytes = table.column("bytes").to_numpy().astype(np.int64)
        if last is not None:
            prev_c, prev_f, prev_o = (
                np.concatenate(([last[0]], comp[:-1])),
                np.concatenate(([last[1]], files[:-1])),
                np.concatenate(([last[2]], ordinals[:-1])),
            )
        else:
            prev_c, prev_f, prev_o = (
                np.concatenate(([-1], comp[:-1])),
                np.concatenate(([-1], files[:-1])),
                np.concatenate(([-2], ordinals[:-1])),
            )
        if ((files < prev_f) | ((files == prev_f) & (ordinals <= prev_o))).any():
            return None  # not in storage order: let SQL sort
        starts = (comp != prev_c) | (files != prev_f) | (ordinals != prev_o + 1)
        opened = np.array([last is None or bool(starts[0])])
        starts[0] = True  # this batch's first piece; merged into the previous run unless opened
        idx = np.flatnonzero(starts)
        counts = np.diff(np.append(idx, len(comp)))
        sums = np.add.reduceat(nbytes, idx)
        parts.append((comp[idx], files[idx], ordinals[idx], counts, sums, opened))
        last = (int(comp[-1]), int(files[-1]), int(ordinals[-1]))
    if not parts:
        comp = files = ordinals = counts = sums = np.zeros(0, dtype=np.int64)
    else:
        comp, files, ordinals, counts, sums = _merge(parts)
    order_idx = np.lexsort((ordinals, files, comp))
    columns: dict[str, Any] = {"component": pa.array(comp[order_idx], pa.int64())}
    if distinct is not None:
        for name in names:
            columns[name] = distinct.column(name).take(pa.array(comp[order_idx]))
    columns.update(
        {
            "file_id": pa.array(files[order_idx], pa.int32()),
            "start": pa.array(ordinals[order_idx], pa.int64()),
            "count": pa.array(counts[order_idx], pa.int64()),
            "bytes": pa.array(sums[order_idx], pa.int64()),
        }
    )
    return pa.table(columns)


def _codes(
    table: pa.Table, names: list[str], values: list[pa.Array], strides: list[int]
) -> np.ndarray:
    """Mixed-radix code of each row's key (null coded as the last digit of its column)."""
    code = np.zeros(table.num_rows, dtype=np.int64)
    for name, uniques, stride in zip(names, values, strides, strict=True):
        index = pc.index_in(table.column(name), value_set=uniques)
        digits = index.fill_null(len(uniques)).to_numpy().astype(np.int64)
        code += digits * stride
    return code


def _merge(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Join the batches' runs: a batch's first piece that continues the previous run (not
    ``opened``) is added to it (chains of such pieces too)."""
    comp, files, starts, counts, sums = (np.concatenate([p[i] for p in parts]) for i in range(5))
    flags = np.concatenate(
        [np.concatenate((p[5], np.ones(len(p[0]) - 1, dtype=bool))) for p in parts]
    )
    group = np.cumsum(flags) - 1
    heads = np.flatnonzero(flags)
    total_counts = np.bincount(group, weights=counts).astype(np.int64)
    total_sums = np.zeros(len(heads), dtype=np.int64)
    np.add.at(total_sums, group, sums)
    return comp[heads], files[heads], starts[heads], total_counts, total_sums
