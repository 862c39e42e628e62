"""Replay (mixplane/adapt/replay.py): a logged trace replays to the same weights the
algorithm set online, from CSV and Parquet; bad traces name the file, row or line, and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import csv

from mixplane.adapt import make_algorithm
from mixplane.adapt.replay import (
    TraceError,
    export_trace,
    parse_value,
    read_trace,
    replay,
    replay_file,
    write_trace,
    write_weights,
)
from mixplane.errors import MixplaneError

DOMAINS = ["language=en", "language=de", "language=fr"]
PRIOR = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
OPTIONS = {"start_step": 20, "refit_interval": 15, "ignore_steps": 2, "subsample": 2}


def feedback(n: int = 60) -> list[tuple[int, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for step in range(1, n + 1):
        count = rng.integers(0, 4, 3).astype(float) * 2048
        mean = np.array([2.0, 2.4, 2.2]) + np.array([3.0, 6.0, 4.0]) * (8.0 * step) ** -0.3
        out.append((step, mean * count, count))
    return out


def online(name: str, calls: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The weights in force after each step when the algorithm runs online."""
    w = np.array(list(PRIOR.values()))
    algo = make_algorithm(name, w.copy(), **(OPTIONS if name.startswith("ado") else {}))
    rows = []
    for step, loss, count in calls:
        new = algo.update(step, loss, count)
        w = w if new is None else new
        rows.append(w)
    return np.array(rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("name", ["ado", "odm"])
def test_replay_of_a_written_trace_matches_the_online_run(
    tmp_path: Path, suffix: str, name: str
) -> None:
    calls = feedback()
    path = tmp_path / f"trace{suffix}"
    write_trace(export_trace(calls, DOMAINS), path)
    params = OPTIONS if name == "ado" else {}
    weights = replay(name, path, prior=PRIOR, params=params)
    assert weights.column_names == ["step", *DOMAINS]
    assert weights.column("step").to_pylist() == list(range(1, 61))
    got = np.column_stack([weights.column(d).to_numpy() for d in DOMAINS])
    assert np.array_equal(got, online(name, calls))
    if name == "ado":  # warm-up: the prior is in force
        assert np.allclose(got[:19], list(PRIOR.values()))
    out = tmp_path / "weights.csv"
    write_weights(weights, out)
    assert csv.read_csv(out).equals(weights)
    rows = export_trace(calls, DOMAINS).to_pylist()  # the rows Job.trace() returns
    assert replay(name, rows, prior=PRIOR, params=params).equals(weights)


def test_replay_file_parses_params_and_reads_the_prior(tmp_path: Path) -> None:
    trace = tmp_path / "losses.csv"
    write_trace(export_trace(feedback(), DOMAINS), trace)
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps(PRIOR))
    params = {k: str(v) for k, v in OPTIONS.items()} | {"gamma2": "0.1", "variant": "paper"}
    table = replay_file("ado", trace, tmp_path / "w.csv", prior_json=prior, params=params)
    assert np.array_equal(
        np.column_stack([table.column(d).to_numpy() for d in DOMAINS]), online("ado", feedback())
    )
    assert csv.read_csv(tmp_path / "w.csv").num_rows == 60
    uniform = replay("loss-proportional", trace)
    assert np.allclose([uniform.column(d)[0].as_py() for d in DOMAINS], 1 / 3, atol=0.2)


def test_parse_value() -> None:
    assert parse_value("12") == 12 and isinstance(parse_value("12"), int)
    assert parse_value("0.5") == 0.5 and parse_value("1e-3") == 1e-3
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_value("mixtera") == "mixtera"
    assert parse_value("[0.5, 0.5]") == [0.5, 0.5]
    with pytest.raises(TraceError, match="looks like JSON"):
        parse_value("[0.5,")


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("step,domain,loss\n1,a,2\n", r"missing column\(s\) \['loss_sum', 'tokens'\]"),
        (
            "step,domain,loss_sum,tokens\n1,a,2,4\n2,a,x,4\n",
            r"bad.csv: line 3: column 'loss_sum' holds 'x', not a finite number",
        ),
        (
            "step,domain,loss_sum,tokens\n1,a,2,4\n1.5,a,2,4\n",
            r"line 3: column 'step' holds '1.5', not an integer",
        ),
        (
            "step,domain,loss_sum,tokens\n1,a,2,4\n2,a,2,-4\n",
            r"line 3: column 'tokens' must be finite and >= 0, got -4.0",
        ),
        (
            "step,domain,loss_sum,tokens\n1,a,2,4\n2,a,,4\n",
            r"line 3: column 'loss_sum' has no value",
        ),
        (
            "step,domain,loss_sum,tokens\n1,a,2,4\n\n2,a,2,4\n",
            r"line 3: column 'step' has no value",
        ),
        (
            "step,domain,loss_sum,tokens\n1,a,2,4\n1,b,2,4\n1,a,3,4\n",
            r"line 4: step 1 has domain 'a' twice \(also at line 2\)",
        ),
        ("step,domain,loss_sum,tokens\n-1,a,2,4\n", r"line 2: column 'step' is negative"),
    ],
)
def test_bad_csv_traces_name_the_line_and_column(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        read_trace(write_csv(tmp_path / "bad.csv", text))


def test_trailing_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "step,domain,loss_sum,tokens\n1,a,2,4\n\n\n")
    assert read_trace(path).num_rows == 1


def test_bad_parquet_traces_name_the_row_and_column(tmp_path: Path) -> None:
    good = {"step": [1, 2, 3], "domain": ["a", "a", "a"], "loss_sum": [1.0, 2.0, 3.0]}
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({**good, "tokens": [1.0, float("nan"), 2.0]}), path)
    with pytest.raises(TraceError, match=r"bad.parquet: row 2: column 'tokens' must be finite"):
        read_trace(path)
    pq.write_table(pa.table({**good, "tokens": pa.array([1, None, 2])}), path)
    with pytest.raises(TraceError, match=r"row 2: column 'tokens' has no value"):
        read_trace(path)
    pq.write_table(pa.table({**good, "tokens": [True, False, True]}), path)
    with pytest.raises(
        TraceError, match=r"bad.parquet: column 'tokens' must hold numbers, found bool"
    ):
        read_trace(path)
    pq.write_table(pa.table({**good, "step": [1.0, 2.5, 3.0], "tokens": [1, 1, 1]}), path)
    with pytest.raises(TraceError, match=r"row 2: column 'step' holds 2.5, not an integer"):
        read_trace(path)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(TraceError, match=r"junk.parquet: not a readable Parquet trace"):
        read_trace(tmp_path / "junk.parquet")
    with pytest.raises(TraceError, match=r"trace file '.*nope.csv' does not exist"):
        read_trace(tmp_path / "nope.csv")


def test_bad_priors_and_algorithms(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    write_trace(export_trace(feedback(5), DOMAINS), trace)
    with pytest.raises(
        TraceError, match=r"not in the trace \['language=es'\], without a weight \['language=fr'\]"
    ):
        replay("odm", trace, prior={"language=en": 1, "language=de": 1, "language=es": 1})
    with pytest.raises(TraceError, match="sum to 0"):
        replay("odm", trace, prior=dict.fromkeys(DOMAINS, 0.0))
    (tmp_path / "p.json").write_text("[1, 2]")
    with pytest.raises(TraceError, match="a prior is a JSON object"):
        replay_file("odm", trace, tmp_path / "w.csv", prior_json=tmp_path / "p.json")
    with pytest.raises(MixplaneError, match="unknown mixing algorithm 'adoo'"):
        replay_file("adoo", trace, tmp_path / "w.csv")
    with pytest.raises(MixplaneError, match="bad options for mixing algorithm 'ado'"):
        replay_file("ado", trace, tmp_path / "w.csv", params={"gama": "0.1"})
    with pytest.raises(MixplaneError, match="unknown variant 'x'"):
        replay_file("ado", trace, tmp_path / "w.csv", params={"variant": "x"})
    with pytest.raises(TraceError, match="cannot write the weights"):
        replay_file("odm", trace, tmp_path / "missing" / "w.csv")
    with pytest.raises(TraceError, match="no rows"):
        replay("odm", [])
    with pytest.raises(TraceError, match="no rows"):
        replay("odm", write_csv(tmp_path / "empty.csv", "step,domain,loss_sum,tokens\n"))
    with pytest.raises(TraceError, match=r"feedback call 0 \(step 1\)"):
        export_trace([(1, [1.0], [1.0])], DOMAINS)
