"""Executing a query: a filter and a grouping turned into components, as runs of ordinals.

``Queries`` (a part of ``Catalog``) compiles the filter (``query/compile.py``) against the
catalog's columns, groups the selected samples by the ``by`` properties (and by which member
filters hold, for a job with phases) and finds each component's runs: maximal ranges of
consecutive ordinals of one file (gaps and islands). Unsorted components over properties of
``samples`` take the streaming pass of ``runs.py`` (one scan in storage order, memory
O(batch + runs)); sorted components (curricula), filters on the dataset's name and samples not
in storage order take the window-function SQL form built here (``runs_sql``), which sorts the
selected samples. The result (``query/result.py``) carries the SQL, its parameters and the
files' fingerprints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mixplane.catalog.properties import PropertyType
from mixplane.catalog.runs import scan_runs
from mixplane.catalog.tables import Tables
from mixplane.errors import QueryError
from mixplane.query.compile import Column, compile_filter
from mixplane.query.expr import Expr
from mixplane.query.result import QueryResult, build_result


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """The selected samples of a query: a WHERE condition with its parameters, and the key
    expressions (``g0..`` group keys, ``m0..`` member flags, ``sk`` the sort key) named."""

    condition: str
    params: list[Any]
    keys: list[str]
    names: list[str]  # the aliases of the grouping keys (g0.., m0..), in order


class Queries(Tables):
    """Components of a filter and grouping (see the module)."""

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
        check_groupable(columns, (*by, *([sort_by] if sort_by else [])))
        chosen = selection(
            columns,
            where,
            by,
            members=members,
            sort_by=sort_by,
            exclude_files=exclude_files,
            include_files=include_files,
        )
        sql = runs_sql(chosen, sorted_by=bool(sort_by), descending=descending)
        table = None
        own = " ".join([chosen.condition, *chosen.keys])
        if not sort_by and "d." not in own and "f." not in own:
            table = scan_runs(
                self.connection, chosen.keys, chosen.names, chosen.condition, chosen.params
            )
        if table is None:  # the window-function form (sorted components, dataset columns)
            table = self.connection.sql(sql, params=chosen.params).to_arrow_table()
        key_values, member_values = group_values(table, len(by), len(members))
        runs = table.select(["component", "file_id", "start", "count", "bytes"])
        file_ids = np.unique(runs.column("file_id").to_numpy()).tolist()
        fingerprints = (
            dict(
                self.connection.execute(
                    "SELECT file_id, fingerprint FROM files WHERE list_contains(?, file_id)",
                    [file_ids],
                ).fetchall()
            )
            if file_ids
            else {}
        )
        return build_result(
            sql=sql,
            params=chosen.params,
            by=by,
            keys=key_values,
            memberships=member_values or None,
            runs=runs,
            file_fingerprints=fingerprints,
        )

    def explain(self, where: Expr | str | None = None, by: Sequence[str] = ()) -> QueryResult:
        """The SQL and the components (samples and bytes each) a filter and grouping give."""
        return self.components(where, by)


def check_groupable(columns: dict[str, Column], props: Sequence[str]) -> None:
    """Refuse grouping or sorting by an unknown or list property."""
    for prop in props:
        if prop not in columns:
            msg = f"unknown property {prop!r}; known: {sorted(columns)}"
            raise QueryError(msg)
        if columns[prop].type is PropertyType.LIST:
            msg = f"cannot group or sort by list property {prop!r}; use a scalar property"
            raise QueryError(msg)


def selection(
    columns: dict[str, Column],
    where: Expr | str | None,
    by: Sequence[str],
    *,
    members: Sequence[Expr | str | None],
    sort_by: str | None,
    exclude_files: Sequence[int],
    include_files: Sequence[int] | None,
) -> Selection:
    """The condition and key expressions of a query (parameters: the members', then the
    filter's, then the file lists')."""
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
    return Selection(condition=condition, params=params, keys=keys, names=names)


def runs_sql(chosen: Selection, *, sorted_by: bool, descending: bool) -> str:
    """The window-function SQL of a selection's runs: (component, keys, file_id, start, count,
    bytes), components numbered by their keys' order; sorted, each component's runs in the
    order of ``sk`` (ties by file and ordinal)."""
    keys, names = chosen.keys, chosen.names
    group = ", ".join(names)
    lead = group + ", " if names else ""
    partition = f"PARTITION BY {group}" if names else ""
    selected = (
        f"SELECT {', '.join(keys) + ', ' if keys else ''}s.file_id, s.ordinal, s.bytes "
        "FROM samples s JOIN files f USING (file_id) JOIN datasets d USING (dataset_id) "
        f"WHERE {chosen.condition}"
    )
    rank = f"DENSE_RANK() OVER (ORDER BY {group}) - 1" if names else "0"
    if sorted_by:
        direction = "DESC" if descending else "ASC"
        order = f"sk {direction} NULLS LAST, file_id, ordinal"
        return (
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
    return (
        f"WITH selected AS ({selected}),\n"
        f"islands AS (SELECT *, ordinal - row_number() OVER (PARTITION BY {lead}file_id "
        "ORDER BY ordinal) AS island FROM selected)\n"
        f"SELECT {rank} AS component, {lead}file_id, min(ordinal) AS start, "
        "count(*) AS count, sum(bytes) AS bytes\n"
        f"FROM islands GROUP BY {lead}file_id, island\n"
        "ORDER BY component, file_id, start"
    )


def group_values(
    table: pa.Table, groups: int, members: int
) -> tuple[list[tuple[Any, ...]], list[tuple[bool, ...]]]:
    """Each component's group key values and member flags, from its first run's row."""
    if not table.num_rows:
        return [], []
    comp = table.column("component").to_numpy()
    firsts = np.flatnonzero(np.diff(comp, prepend=-1))
    firsts_table = table.take(pa.array(firsts))
    key_values = [
        tuple(firsts_table.column(f"g{i}")[j].as_py() for i in range(groups))
        for j in range(len(firsts))
    ]
    member_values = [
        tuple(bool(firsts_table.column(f"m{i}")[j].as_py()) for i in range(members))
        for j in range(len(firsts))
    ]
    return key_values, member_values
