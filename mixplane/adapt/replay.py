"""Replay: run a mixing algorithm on a logged feedback trace, without training.

A trace is long-format: one row per (step, domain) with columns ``step`` (integer),
``domain`` (string), ``loss_sum`` and ``tokens`` (non-negative numbers), read from CSV or
Parquet (``Job.trace()`` and ``export_trace`` write it). ``replay`` feeds the steps in
ascending order to the algorithm and returns the weight trajectory: a ``step`` column and one
column per domain (in order of first appearance in the trace) holding the weights in force
after that step's feedback. A domain missing from a step counts as 0 loss and 0 tokens.

Validation names the file, the row (Parquet; 1-based) or line (CSV; the header is line 1)
and the column of the first bad value. Cost: reading is Arrow-vectorized; the replay itself
is one ``update`` per step (ADO: ~30 microseconds, plus its refits).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from mixplane.adapt.base import MixingAlgorithm
from mixplane.adapt.registry import make_algorithm
from mixplane.errors import MixplaneError

COLUMNS = ("step", "domain", "loss_sum", "tokens")


class TraceError(MixplaneError, ValueError):
    """A trace, prior or replay parameter that cannot be used; names the file, row, column."""


# -- traces ------------------------------------------------------------------------------------
def export_trace(
    feedback: Iterable[
        tuple[int, Sequence[float] | npt.ArrayLike, Sequence[float] | npt.ArrayLike]
    ],
    domains: Sequence[str],
) -> pa.Table:
    """The long format of feedback calls ``(step, loss_sum[K], token_count[K])`` over the
    K ``domains``: one row per (step, domain), every domain of every step."""
    k = len(domains)
    steps: list[int] = []
    losses: list[npt.NDArray[np.float64]] = []
    tokens: list[npt.NDArray[np.float64]] = []
    for i, (step, loss, count) in enumerate(feedback):
        a, b = np.asarray(loss, dtype=np.float64), np.asarray(count, dtype=np.float64)
        if a.shape != (k,) or b.shape != (k,):
            msg = f"feedback call {i} (step {step}) has {a.shape} / {b.shape} values; expected {k}"
            raise TraceError(msg)
        steps.append(int(step))
        losses.append(a)
        tokens.append(b)
    n = len(steps)
    return pa.table(
        {
            "step": pa.array(np.repeat(np.asarray(steps, dtype=np.int64), k)),
            "domain": pa.array(list(domains) * n, type=pa.string()),
            "loss_sum": pa.array(np.concatenate(losses) if n else np.zeros(0)),
            "tokens": pa.array(np.concatenate(tokens) if n else np.zeros(0)),
        }
    )


def write_trace(table: pa.Table, path: str | Path) -> None:
    """Write a trace as Parquet (``.parquet``) or CSV (anything else)."""
    _write(table, Path(path))


def write_weights(table: pa.Table, path: str | Path) -> None:
    """Write a weight trajectory (``replay``'s result) as CSV."""
    from pyarrow import csv

    csv.write_csv(table, str(path))


def _write(table: pa.Table, path: Path) -> None:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, str(path))
    else:
        write_weights(table, path)


def read_trace(path: str | Path) -> pa.Table:
    """Read and validate a trace from CSV or Parquet (by the file's suffix; ``.parquet`` or
    ``.pq`` is Parquet, anything else CSV)."""
    path = Path(path)
    if not path.is_file():
        msg = f"trace file {str(path)!r} does not exist"
        raise TraceError(msg)
    parquet = path.suffix in (".parquet", ".pq")
    try:
        if parquet:
            import pyarrow.parquet as pq

            table = pq.read_table(str(path))
        else:
            from pyarrow import csv

            table = csv.read_csv(
                str(path),
                read_options=csv.ReadOptions(),
                parse_options=csv.ParseOptions(ignore_empty_lines=False),
                convert_options=csv.ConvertOptions(
                    column_types=dict.fromkeys(COLUMNS, pa.string()), strings_can_be_null=True
                ),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        kind = "Parquet" if parquet else "CSV"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"{path}: not a readable {kind} trace ({first})"
        raise TraceError(msg) from None
    if not parquet:  # blank lines at the end of a CSV file are not rows
        blank = np.ones(table.num_rows, dtype=bool)
        for name in table.column_names:
            blank &= table.column(name).is_null().to_numpy(zero_copy_only=False)
        last = len(blank) - int(np.argmin(blank[::-1])) if not blank.all() else 0
        table = table.slice(0, last)
    return validate_trace(table, source=str(path), line_offset=1 if not parquet else None)


def validate_trace(
    table: pa.Table, *, source: str = "trace", line_offset: int | None = None
) -> pa.Table:
    """The trace with typed columns (int64 step, string domain, float64 loss_sum and tokens),
    or a ``TraceError`` naming the source, the row (or CSV line when ``line_offset``, the
    lines before the first row, is given) and the column of the first bad value."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        msg = (
            f"{source}: missing column(s) {missing}; a trace needs {list(COLUMNS)} "
            f"(found {table.column_names})"
        )
        raise TraceError(msg)
    if table.num_rows == 0:
        msg = f"{source}: the trace holds no rows; nothing to replay"
        raise TraceError(msg)

    def where(row: int) -> str:
        if line_offset is None:
            return f"{source}: row {row + 1}"
        return f"{source}: line {row + 1 + line_offset}"

    columns: dict[str, pa.Array] = {}
    for name in COLUMNS:
        col = table.column(name).combine_chunks()
        nulls = col.is_null()
        if pc.any(nulls).as_py():
            row = int(pc.index(nulls, True).as_py())
            msg = f"{where(row)}: column {name!r} has no value"
            raise TraceError(msg)
        if name == "domain":
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                if pa.types.is_dictionary(col.type):
                    col = col.cast(pa.string())
                else:
                    msg = f"{source}: column 'domain' must hold strings, found {col.type}"
                    raise TraceError(msg)
            columns[name] = col.cast(pa.string())
            continue
        columns[name] = _number(col, name, integer=name == "step", source=source, where=where)
    step = columns["step"]
    if pc.any(pc.less(step, 0)).as_py():
        row = int(pc.index(pc.less(step, 0), True).as_py())
        msg = f"{where(row)}: column 'step' is negative ({step[row].as_py()})"
        raise TraceError(msg)
    for name in ("loss_sum", "tokens"):
        v = columns[name].to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            row = int(np.argmax(bad))
            msg = f"{where(row)}: column {name!r} must be finite and >= 0, got {float(v[row])}"
            raise TraceError(msg)
    keys = pa.table({"step": step, "domain": columns["domain"]})
    if keys.num_rows:
        grouped = keys.group_by(["step", "domain"]).aggregate([([], "count_all")])
        dup = pc.greater(grouped.column("count_all"), 1)
        if pc.any(dup).as_py():
            i = int(pc.index(dup, True).as_py())
            s, d = grouped.column("step")[i].as_py(), grouped.column("domain")[i].as_py()
            mask = pc.and_(pc.equal(step, s), pc.equal(columns["domain"], d))
            rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
            msg = (
                f"{where(int(rows[1]))}: step {s} has domain {d!r} twice (also at "
                f"{where(int(rows[0])).split(': ')[-1]}); one row per step and domain"
            )
            raise TraceError(msg)
    return pa.table(columns)


_INTEGER = r"^\s*[+-]?\d+\s*$"
_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def _number(
    col: pa.Array, name: str, *, integer: bool, source: str, where: Callable[[int], str]
) -> pa.Array:
    """A numeric column as int64 (``integer``) or float64; text is parsed, and the first
    value that is not a number (or not an integer) is reported."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        ok = pc.match_substring_regex(col, _INTEGER if integer else _NUMBER)
        if not pc.all(ok).as_py():
            row = int(pc.index(ok, False).as_py())
            kind = "an integer" if integer else "a finite number"
            msg = f"{where(row)}: column {name!r} holds {col[row].as_py()!r}, not {kind}"
            raise TraceError(msg)
        return pc.utf8_trim_whitespace(col).cast(pa.int64() if integer else pa.float64())
    if integer:
        if pa.types.is_integer(col.type):
            return col.cast(pa.int64())
        if pa.types.is_floating(col.type):
            v = col.to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(v) | (v != np.round(v))
            if bad.any():
                row = int(np.argmax(bad))
                msg = f"{where(row)}: column {name!r} holds {float(v[row])}, not an integer"
                raise TraceError(msg)
            return pa.array(v.astype(np.int64))
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64())
    kind = "integers" if integer else "numbers"
    msg = f"{source}: column {name!r} must hold {kind}, found {col.type}"
    raise TraceError(msg)


# -- replay ------------------------------------------------------------------------------------
def replay(
    algorithm: str,
    trace: pa.Table | str | Path | Sequence[Mapping[str, Any]],
    prior: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    progress: bool | None = False,
) -> pa.Table:
    """The weights an algorithm (a name in ``ALGORITHMS``, with options ``params``) would
    have set on the logged ``trace`` (a table, a CSV/Parquet path, or rows as ``Job.trace()``
    returns them): one row per step, ``step`` and one float64 column per domain. ``prior``
    maps domains to initial weights (normalized; default uniform) and must name exactly the
    trace's domains. ``progress``: a bar over the steps on stderr (None: when it is a
    terminal)."""
    if isinstance(trace, str | Path):
        table = read_trace(trace)
    elif isinstance(trace, pa.Table):
        table = validate_trace(trace)
    else:
        rows = list(trace)
        if not rows:
            msg = "the trace holds no rows; nothing to replay"
            raise TraceError(msg)
        table = validate_trace(pa.Table.from_pylist(rows))
    domains = _domains(table)
    weights = _prior(prior, domains)
    algo: MixingAlgorithm = make_algorithm(algorithm, weights.copy(), **dict(params or {}))
    k = len(domains)
    index = {d: i for i, d in enumerate(domains)}
    step = table.column("step").to_numpy()
    col = np.array([index[d] for d in table.column("domain").to_pylist()], dtype=np.int64)
    loss = table.column("loss_sum").to_numpy()
    tokens = table.column("tokens").to_numpy()
    order = np.argsort(step, kind="stable")
    step, col, loss, tokens = step[order], col[order], loss[order], tokens[order]
    steps, starts = np.unique(step, return_index=True)
    ends = np.append(starts[1:], len(step))
    out = np.empty((len(steps), k))
    bar = tqdm(
        total=len(steps),
        unit="step",
        desc="replay",
        disable=not progress if progress is not None else None,
    )
    for i, (s, a, b) in enumerate(zip(steps.tolist(), starts.tolist(), ends.tolist(), strict=True)):
        bar.update()
        loss_sum, count = np.zeros(k), np.zeros(k)
        loss_sum[col[a:b]] = loss[a:b]
        count[col[a:b]] = tokens[a:b]
        new = algo.update(int(s), loss_sum, count)
        if new is not None:
            weights = np.asarray(new, dtype=np.float64)
        out[i] = weights
    bar.close()
    columns: dict[str, Any] = {"step": pa.array(steps.astype(np.int64))}
    for j, d in enumerate(domains):
        columns[d] = pa.array(out[:, j])
    return pa.table(columns)


def _domains(table: pa.Table) -> list[str]:
    seen: dict[str, None] = {}
    for d in pc.unique(table.column("domain")).to_pylist():
        seen.setdefault(d, None)
    if "step" in seen:
        msg = "a domain named 'step' would collide with the step column of the weights; rename it"
        raise TraceError(msg)
    return list(seen)


def _prior(prior: Mapping[str, float] | None, domains: list[str]) -> npt.NDArray[np.float64]:
    if prior is None:
        return np.full(len(domains), 1.0 / len(domains))
    unknown = sorted(set(prior) - set(domains))
    missing = [d for d in domains if d not in prior]
    if unknown or missing:
        msg = (
            f"the prior does not match the trace's domains: not in the trace {unknown}, "
            f"without a weight {missing}"
        )
        raise TraceError(msg)
    values = []
    for d in domains:
        v = prior[d]
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v < 0:
            msg = f"prior weight of {d!r} must be a finite number >= 0, got {v!r}"
            raise TraceError(msg)
        values.append(float(v))
    w = np.asarray(values)
    if w.sum() <= 0:
        msg = "the prior's weights sum to 0; give at least one domain a positive weight"
        raise TraceError(msg)
    return w / w.sum()


# -- the file-level entry point (the CLI's `mixplane replay`) ---------------------------------
def parse_value(text: str) -> Any:
    """A ``k=v`` parameter value: true/false, an integer, a float, a JSON list or object,
    else the text itself."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    if t[:1] in ("[", "{"):
        try:
            return json.loads(t)
        except json.JSONDecodeError as exc:
            msg = f"parameter value {text!r} looks like JSON but does not parse ({exc.msg})"
            raise TraceError(msg) from None
    return text


def read_prior(path: str | Path) -> dict[str, float]:
    """A prior from a JSON file holding one object mapping domain -> weight."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"prior file {str(p)!r} does not exist"
        raise TraceError(msg) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{p}: not a JSON object of domain weights ({exc})"
        raise TraceError(msg.splitlines()[0]) from None
    if not isinstance(data, dict):
        msg = f"{p}: a prior is a JSON object mapping domain -> weight, got {type(data).__name__}"
        raise TraceError(msg)
    return data


def replay_file(
    algorithm: str,
    losses_path: str | Path,
    out_path: str | Path,
    prior_json: str | Path | None = None,
    params: Mapping[str, str] | None = None,
) -> pa.Table:
    """Replay ``algorithm`` on the trace at ``losses_path`` (CSV or Parquet), write the weight
    trajectory as CSV to ``out_path`` and return it. ``params`` maps option names to text
    values (parsed by ``parse_value``); ``prior_json`` names a JSON file mapping domain ->
    weight (default uniform). Errors are ``MixplaneError`` with one-line messages."""
    options = {k: parse_value(v) for k, v in (params or {}).items()}
    prior = read_prior(prior_json) if prior_json is not None else None
    table = replay(algorithm, losses_path, prior=prior, params=options)
    try:
        write_weights(table, out_path)
    except OSError as exc:
        msg = f"cannot write the weights to {str(out_path)!r}: {exc.strerror or exc}"
        raise TraceError(msg) from None
    return table
