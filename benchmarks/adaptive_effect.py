"""Does adaptive mixing pay off? Six mixtures at equal token budgets, several seeds each, with
95% intervals over seeds (issue 19). Writes ``docs/experiments.md``, its figures and a manifest.

What runs. The demo's pieces (``mixplane/demo``): its corpus (six domains of text from installed
packages), its byte-level BPE, its GPT and training loop, all through a real ``mixplane serve``.
For every seed s and every arm, a fresh model initialized with seed s trains for the same number
of steps on a token-unit job (seed s: the same per-domain sample orders in every arm) over the
training split grouped by ``domain``, sending per-domain losses every step; the arms differ only
in the mixture and the algorithm (``ARMS``):

- ``natural``: the natural token proportions (``Mixture.inferred``), fixed;
- ``uniform``: equal weights over the six domains, fixed;
- ``ado``: ADO from the natural mixture, the paper's options with those counted in steps scaled
  to the run by the demo's rule (``mixplane.demo.run.ado_options``);
- ``ado-mixtera``: the same, as the public Mixtera code computes it;
- ``odm``: ODM (EXP3) with its defaults (smoothing 0.9, no warm-up);
- ``loss-proportional``: the baseline of ``adapt/base.py`` with its defaults (mix 0.5, beta 0.9).

Every ``eval_every`` steps and after the last, each model's loss on the same held-out windows of
every domain (a job over the validation split, read once) is recorded. The settings of every arm
are fixed in this file before any run; nothing is tuned on the validation loss.

Statistics (``analyze``, from the manifest as read back from disk). Per arm: the final
validation loss per domain, its mean over domains and its mean weighted by the natural mixture,
each as mean and 95% interval over seeds (Student t, n - 1 degrees of freedom); the same for the
paired difference to the natural arm of the same seed (same initial weights, same sample orders),
at a quarter, half, three quarters and the end of the run; the tokens an arm needs to reach the
natural arm's final mean loss of the same seed (linear interpolation between evaluations), as a
ratio to the natural arm's own; the realized token shares and the weights over the run. For the
ADO arms, why they did what they did: how far the weights moved, how well the scaling laws fit,
and how this run compares with the regime the paper studied.

Modes (``PRESETS``):

- ``--quick``: a tiny model for a few steps on 40 documents per dataset, 2 seeds, every arm (a
  smoke test in ``make test``; about 30 s on 2 cores).
- default (CPU): the demo's model (0.94 M parameters) for 1,000 steps of 8 x 128 tokens (1.02 M
  tokens per run), 5 seeds x 6 arms = 30 runs: about 40 minutes on an idle 2-core machine
  (``docs/experiments.md`` has the measured run).
- ``--gpu``: a 29.7 M-parameter model (8 layers, d_model 512, windows of 512, vocabulary 8,192)
  for 600 steps of 32 x 512 tokens (9.8 M tokens per run), 3 seeds x 6 arms (177 M tokens in
  all), bfloat16 autocast on ``cuda``, 6 runs at a time (``--jobs``; each run its own process
  reading and tokenizing its own data): an estimated 3-6 minutes on one H200 (not yet run).

``--jobs N`` runs N runs at a time, each in its own process (``--run-one``), all against the
same server; with 1 they run in this process. ``--resume`` keeps runs already written under
``HOME/runs`` for the same settings. ``--render MANIFEST`` writes the report again from a
manifest without training.

Run: ``.venv/bin/python benchmarks/adaptive_effect.py [--quick | --gpu] [--seeds N] [--jobs N]
[--home DIR] [--out DIR] [--resume]``
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

# OpenMP threads that sleep while they wait, set before torch loads (mixplane.cli's demo does
# the same): the server and the prefetch thread share the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import orjson
import torch
from scipy import stats

from mixplane.adapt.ado import law_loss
from mixplane.client.client import Client
from mixplane.client.remote import RemoteClient
from mixplane.demo.model import GPT
from mixplane.demo.report import run_series, weights_of_chunks
from mixplane.demo.run import GROUP_BY, WHERE_TRAIN, DemoOptions, ado_options, prepare, served
from mixplane.demo.train import Batch, RunRecord, TrainSettings, train_run, validation_windows
from mixplane.mixture.mixture import Mixture
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

Mode = Literal["quick", "cpu", "gpu"]
MANIFEST_VERSION = 1
CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)  # fractions of the run where differences are reported
WEIGHT_POINTS = 41  # steps at which each run's weights are kept in the manifest
CONFIDENCE = 0.95
VALIDATION_FIELDS = ("input_ids", "labels", "position_ids")
REPOSITORY = Path(__file__).resolve().parent.parent

#: The regime the ADO paper studied, from its public code (github.com/yidingjiang/ado,
#: configs/main.yaml and configs/experiment/124M_*.yaml): a 124M GPT-2-style model, batches
#: of 256 sequences of 1,024 tokens, 60,000 steps, ADO from step 500 (fits leave out the
#: first 1,000), learning rate 1e-3 with 500 warm-up steps and decay over the 60,000 steps,
#: the 22 domains of the Pile.
PAPER = {
    "parameters": 124e6,
    "tokens": 256 * 1024 * 60_000,
    "steps": 60_000,
    "start_step": 500,
    "domains": 22,
    "seq_len": 1024,
    "source": "github.com/yidingjiang/ado configs/main.yaml, configs/experiment/124M_natural.yaml",
}


# -- arms --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Arm:
    """One mixture under test: a starting mixture and, optionally, an algorithm with options
    computed from the run's settings (fixed here, before any run)."""

    name: str
    label: str
    mixture: Literal["natural", "uniform"]
    algorithm: str | None = None
    options: Callable[[TrainSettings], dict[str, Any]] | None = None
    note: str = ""

    def algorithm_options(self, settings: TrainSettings) -> dict[str, Any] | None:
        return self.options(settings) if self.options is not None else None


def _ado(settings: TrainSettings) -> dict[str, Any]:
    return ado_options(settings.steps, settings.seq_len)


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm(name="natural", label="natural", mixture="natural",
            note="the natural token proportions of the training split, fixed"),
        Arm(name="uniform", label="uniform", mixture="uniform",
            note="one sixth for every domain, fixed"),
        Arm(name="ado", label="ADO", mixture="natural", algorithm="ado", options=_ado,
            note="prior and mu the natural mixture; the paper's options, those counted in "
            "steps scaled to the run (mixplane.demo.run.ado_options)"),
        Arm(name="ado-mixtera", label="ADO (Mixtera)", mixture="natural",
            algorithm="ado-mixtera", options=_ado,
            note="the same options; credit from pi, floor on pi (docs/adaptation.md)"),
        Arm(name="odm", label="ODM", mixture="natural", algorithm="odm",
            options=lambda s: {},
            note="EXP3 with its defaults: smoothing 0.9, no warm-up"),
        Arm(name="loss-proportional", label="loss-proportional", mixture="natural",
            algorithm="loss-proportional", options=lambda s: {},
            note="its defaults: mix 0.5 with the natural mixture, beta 0.9, every step"),
    )
}  # fmt: skip


# -- presets -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """Everything a mode fixes: data, tokenizer, model and budget, seeds, parallel runs."""

    mode: Mode
    seeds: int
    max_docs: int | None
    vocab_size: int
    chunk_tokens: int
    settings: TrainSettings
    piece_bytes: int = 1024  # records of at most this many bytes (docs/demo.md)
    tokenizer_bytes: int = 1 << 20  # training text per domain for the tokenizer
    jobs: int = 1
    where: str = ""


PRESETS: dict[Mode, Preset] = {
    "quick": Preset(
        mode="quick",
        seeds=2,
        max_docs=40,
        vocab_size=400,
        chunk_tokens=64,  # the client fetches 8 chunks ahead: new weights reach the data
        piece_bytes=256,  # short records: weights, not record sizes, decide a tiny run's data
        tokenizer_bytes=1 << 16,
        settings=TrainSettings(
            steps=24, batch_size=4, seq_len=32, d_model=16, layers=1, heads=2, warmup=2,
            eval_every=4, eval_windows=4,
        ),
        where="the CPU (smoke test)",
    ),
    "cpu": Preset(
        mode="cpu",
        seeds=5,
        max_docs=None,
        vocab_size=4096,
        chunk_tokens=4096,
        settings=TrainSettings(eval_windows=32),  # the demo's model and budget
        where="the CPU",
    ),
    "gpu": Preset(
        mode="gpu",
        seeds=3,
        max_docs=None,
        vocab_size=8192,
        chunk_tokens=65536,
        settings=TrainSettings(
            steps=600, batch_size=32, seq_len=512, d_model=512, layers=8, heads=8, lr=1e-3,
            warmup=30, eval_every=50, eval_windows=32, device="cuda", precision="bfloat16",
        ),
        jobs=6,
        where="one GPU",
    ),
}  # fmt: skip


def run_key(preset: Preset, tokenizer_fingerprint: str) -> str:
    """What a saved run must match to be reused by ``--resume``."""
    data = {
        "settings": asdict(replace(preset.settings, seed=0)),
        "max_docs": preset.max_docs,
        "piece_bytes": preset.piece_bytes,
        "chunk_tokens": preset.chunk_tokens,
        "tokenizer": tokenizer_fingerprint,
        "arms": {
            name: [arm.mixture, arm.algorithm, arm.algorithm_options(preset.settings)]
            for name, arm in ARMS.items()
        },
    }
    return hashlib.blake2b(
        orjson.dumps(data, option=orjson.OPT_SORT_KEYS), digest_size=8
    ).hexdigest()


# -- one run -----------------------------------------------------------------------------------
def job_id(arm: str, seed: int) -> str:
    return f"adaptive-effect-{arm}-s{seed}"


def run_arm(
    client: RemoteClient,
    arm: Arm,
    seed: int,
    preset: Preset,
    tokenizer: Tokenizer,
    validation: Mapping[str, Batch],
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train one arm with one seed through the server; returns the run's full series
    (``run_series``) plus its time, CPU time and load."""
    settings = replace(preset.settings, seed=seed)
    mixture = (
        Mixture.inferred(list(GROUP_BY))
        if arm.mixture == "natural"
        else Mixture.uniform(list(GROUP_BY))
    )
    job = client.submit(
        job_id(arm.name, seed),
        where=WHERE_TRAIN,
        mixture=mixture,
        unit="tokens",
        chunk_size=preset.chunk_tokens,
        tokenizer=tokenizer,
        block_size=1,  # every record drawn on its own (docs/demo.md)
        seed=seed,
        algorithm=arm.algorithm,
        algorithm_options=arm.algorithm_options(settings),
        replace=True,
    )
    load = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record: RunRecord = train_run(
        arm.name, job, tokenizer, settings, validation,
        vocab_size=tokenizer.vocab_size, progress=progress,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_SELF)
    series = run_series(record, settings)
    series["cpu_seconds"] = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    series["load"] = [load, os.getloadavg()[0]]
    return series


# -- validation windows shared with run processes ----------------------------------------------
def save_validation(validation: Mapping[str, Batch], path: Path) -> None:
    """The held-out windows as an ``.npz`` of int64 arrays (no pickle), one per domain and field."""
    arrays = {
        f"{d}/{f}": batch[f].numpy() for d, batch in validation.items() for f in VALIDATION_FIELDS
    }
    with path.open("wb") as out:
        np.savez(out, **arrays)  # type: ignore[arg-type]


def load_validation(path: Path) -> dict[str, Batch]:
    out: dict[str, Batch] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            domain, name = key.rsplit("/", 1)
            out.setdefault(domain, {})[name] = torch.from_numpy(data[key].copy())
    return out


def _write_json(path: Path, data: Any) -> None:
    """Written whole or not at all (a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(path)


# -- the manifest: compact series of every run -------------------------------------------------
def _tv(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Total variation distance between two distributions: the share of mass moved."""
    return 0.5 * float(
        np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).sum()
    )


def _ado_diagnostics(series: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Fit quality of one ADO run's final laws: RMSE (log space) against the smoothed points
    of the last refit, the law's error on the mean training loss of the run's last tenth (it was
    fitted before), which bounds each law sits at, and the laws' slopes at the end."""
    laws = series["laws"]
    observed = laws["observed"]
    n = np.asarray(observed["n"], dtype=np.float64)
    k = len(laws["laws"])
    fits = int(laws["fits"])
    start, interval = int(options["start_step"]), int(options["refit_interval"])
    last_fit = start + (fits - 1) * interval if fits else None
    n_fit = float(n[min(last_fit, len(n) - 1)]) if last_fit is not None else 0.0
    tail = max(1, len(n) // 10)
    out: dict[str, Any] = {
        "fits": fits,
        "last_fit_step": last_fit,
        "fit_rmse_log": [],
        "tail_error": [],
        "at_log_eps_min": [],
        "at_alpha_bound": [],
        "slope_end": [],
        "alpha": [],
        "log_eps": [],
    }
    for i in range(k):
        law = laws["laws"][i]
        if law is None:
            for key in ("fit_rmse_log", "tail_error", "at_log_eps_min", "at_alpha_bound",
                        "slope_end", "alpha", "log_eps"):  # fmt: skip
                out[key].append(None)
            continue
        row = np.asarray([law])
        pts_n = np.asarray(
            [v if v is not None else np.nan for v in _column(laws["fit_points"]["n"], i)]
        )
        pts_l = np.asarray(
            [v if v is not None else np.nan for v in _column(laws["fit_points"]["loss"], i)]
        )
        keep = np.isfinite(pts_n) & np.isfinite(pts_l) & (pts_n <= n_fit * (1 + 1e-9))
        if keep.any():
            pred = law_loss(np.repeat(row, int(keep.sum()), axis=0), pts_n[keep])
            out["fit_rmse_log"].append(
                float(np.sqrt(np.mean((np.log(pred) - np.log(pts_l[keep])) ** 2)))
            )
        else:
            out["fit_rmse_log"].append(None)
        losses = np.asarray([v if v is not None else np.nan for v in _column(observed["loss"], i)])
        window = losses[-tail:]
        if np.isfinite(window).any():
            n_mid = float(np.mean(n[-tail:]))
            predicted = float(law_loss(row, np.asarray([n_mid]))[0])
            out["tail_error"].append(predicted / float(np.nanmean(window)) - 1.0)
        else:
            out["tail_error"].append(None)
        log_beta, log_eps, alpha = law
        out["at_log_eps_min"].append(bool(abs(log_eps - options.get("log_eps_min", 0.5)) < 1e-6))
        out["at_alpha_bound"].append(
            bool(alpha < 1e-6 or alpha > options.get("alpha_max", 0.8) - 1e-6)
        )
        out["slope_end"].append(
            float(-alpha * math.exp(log_beta - alpha * math.log(n[-1])) / n[-1])
        )
        out["alpha"].append(float(alpha))
        out["log_eps"].append(float(log_eps))
    return out


def _column(rows: Sequence[Sequence[float | None]], i: int) -> list[float | None]:
    return [row[i] for row in rows]


def weights_at_steps(log: Sequence[Mapping[str, Any]], steps: Sequence[int]) -> np.ndarray:
    """The algorithm's weights after each of ``steps``: the last mixture-log entry set by the
    feedback of that step or an earlier one (the first entry counts as step 0)."""
    out = np.zeros((len(steps), len(log[0]["weights"])))
    for i, step in enumerate(steps):
        chosen = log[0]["weights"]
        for entry in log:
            if int(entry.get("step", 0)) <= step:
                chosen = entry["weights"]
        out[i] = chosen
    return out


def compact(
    series: Mapping[str, Any],
    arm: Arm,
    settings: TrainSettings,
    natural: Sequence[float],
    *,
    keep_laws: bool,
) -> dict[str, Any]:
    """What the manifest keeps of a run: validation, training loss per interval, tokens; at
    ``WEIGHT_POINTS`` steps the weights the algorithm had set (``weights``) and those in force
    for the data trained at that step (``in_force``: new weights reach the data a few chunks
    later); how far they moved from ``natural`` at most; for ADO its laws' diagnostics (and, if
    ``keep_laws``, the laws with the points they were fitted to, for the figure)."""
    log = series["mixture_log"]
    steps = settings.steps
    at = sorted({round(float(x)) for x in np.linspace(0, steps - 1, WEIGHT_POINTS)})
    in_force = weights_of_chunks(log, [series["chunks"][s] for s in at])
    weights = weights_at_steps(log, at)
    out: dict[str, Any] = {
        "seconds": series["seconds"],
        "cpu_seconds": series.get("cpu_seconds"),
        "load": series.get("load"),
        "validation": series["validation"],
        "train_loss": series["train_loss"],
        "tokens": series["tokens"],
        "weights": {"step": at, "weights": weights.tolist(), "in_force": in_force.tolist()},
        "final_weights": list(log[-1]["weights"]),
        "changes": len(log) - 1,
        "max_moved": max(_tv(e["weights"], natural) for e in log),
    }
    if arm.algorithm in ("ado", "ado-mixtera") and "laws" in series:
        options = arm.algorithm_options(settings) or {}
        out["diagnostics"] = _ado_diagnostics(series, options)
        laws = series["laws"]
        out["laws"] = {"laws": laws["laws"], "n_final": laws["n_final"], "fits": laws["fits"]}
        if keep_laws:
            out["laws"]["fit_points"] = laws["fit_points"]
            out["laws"]["curve"] = laws["curve"]
    return out


def _round(value: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits (the manifest stays small); the rest as is."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v, digits) for v in value]
    return value


# -- statistics --------------------------------------------------------------------------------
def interval(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and its 95% interval over seeds (Student t with n - 1 degrees of freedom) of the
    values that are not None (a domain without validation windows has none); no interval from
    one value. ``contains_zero`` says whether the interval includes 0."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else None
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "low": None, "high": None, "contains_zero": None}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "low": low,
        "high": high,
        "contains_zero": low <= 0 <= high,
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, smallest and largest over seeds (for distances, which a t interval would let
    fall below 0)."""
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}


def _spread(row: Mapping[str, float]) -> str:
    return f"{row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f})"


def crossing(
    tokens: Sequence[float], losses: Sequence[float | None], target: float
) -> float | None:
    """The tokens at which ``losses`` (over ``tokens``) first reaches ``target``, linearly
    interpolated between evaluations; None if it never does."""
    prev_t, prev_l = None, None
    for t, loss in zip(tokens, losses, strict=True):
        if loss is None:
            continue
        if loss <= target:
            if prev_t is None or prev_l is None or prev_l == loss:
                return float(t)
            return float(prev_t + (prev_l - target) / (prev_l - loss) * (t - prev_t))
        prev_t, prev_l = t, loss
    return None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _weighted(row: Sequence[float | None], weights: Sequence[float]) -> float | None:
    pairs = [(v, w) for v, w in zip(row, weights, strict=True) if v is not None]
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def _checkpoint_indices(eval_steps: Sequence[int], steps: int) -> list[int]:
    return [int(np.argmin([abs(s - f * steps) for s in eval_steps])) for f in CHECKPOINTS]


def analyze(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Every number the report states, from the manifest's runs (see the module)."""
    arms = list(manifest["arms"])
    seeds = [str(s) for s in manifest["seeds"]]
    domains = manifest["domains"]
    natural_w = manifest["natural_weights"]
    runs = manifest["runs"]
    steps = manifest["settings"]["steps"]
    eval_steps = runs["natural"][seeds[0]]["validation"]["step"]
    checkpoints = _checkpoint_indices(eval_steps, steps)

    def curve(arm: str, seed: str, kind: str) -> list[float | None]:
        v = runs[arm][seed]["validation"]
        if kind == "mean":
            return list(v["mean"])
        return [_weighted(row, natural_w) for row in v["loss"]]

    results: dict[str, Any] = {
        "checkpoints": {
            "fraction": list(CHECKPOINTS),
            "step": [eval_steps[i] for i in checkpoints],
        },
        "arms": {},
    }
    for arm in arms:
        finals = [runs[arm][s]["validation"]["loss"][-1] for s in seeds]
        entry: dict[str, Any] = {
            "final": {
                "mean": interval([curve(arm, s, "mean")[-1] for s in seeds]),
                "weighted": interval([curve(arm, s, "weighted")[-1] for s in seeds]),
                "domains": [interval([f[i] for f in finals]) for i in range(len(domains))],
            }
        }
        if arm != "natural":
            diff: dict[str, Any] = {}
            for kind in ("mean", "weighted"):
                diff[kind] = [
                    interval(
                        [
                            _minus(curve(arm, s, kind)[i], curve("natural", s, kind)[i])
                            for s in seeds
                        ]
                    )
                    for i in checkpoints
                ]
            diff["domains"] = [
                interval(
                    [
                        _minus(
                            runs[arm][s]["validation"]["loss"][-1][i],
                            runs["natural"][s]["validation"]["loss"][-1][i],
                        )
                        for s in seeds
                    ]
                )
                for i in range(len(domains))
            ]
            diff["curve"] = [
                interval(
                    [
                        _minus(curve(arm, s, "mean")[i], curve("natural", s, "mean")[i])
                        for s in seeds
                    ]
                )
                for i in range(len(eval_steps))
            ]
            entry["difference"] = diff
        reach: dict[str, Any] = {}
        for kind in ("mean", "weighted"):
            ratios: list[float | None] = []
            for s in seeds:
                target = curve("natural", s, kind)[-1]
                tokens = runs[arm][s]["validation"]["tokens"]
                mine = crossing(tokens, curve(arm, s, kind), target) if target is not None else None
                base = (
                    crossing(
                        runs["natural"][s]["validation"]["tokens"],
                        curve("natural", s, kind),
                        target,
                    )
                    if target is not None
                    else None
                )
                ratios.append(mine / base if mine is not None and base else None)
            reached = [r for r in ratios if r is not None]
            reach[kind] = {
                "ratios": ratios,
                "reached": len(reached),
                "interval": interval(reached) if len(reached) == len(ratios) else None,
            }
        entry["tokens_to_natural"] = reach
        delivered = np.asarray(
            [runs[arm][s]["tokens"]["delivered"] for s in seeds], dtype=np.float64
        )
        shares = delivered / delivered.sum(axis=1, keepdims=True)
        entry["shares"] = shares.mean(axis=0).tolist()
        entry["shares_moved"] = spread([_tv(row, natural_w) for row in shares])
        final_w = [runs[arm][s]["final_weights"] for s in seeds]
        entry["final_weights"] = np.mean(final_w, axis=0).tolist()
        entry["weights_moved"] = spread([_tv(w, natural_w) for w in final_w])
        entry["max_moved"] = spread([runs[arm][s]["max_moved"] for s in seeds])
        if arm != "natural":
            # does a domain that got more data than natural have a lower loss than natural?
            x, y = [], []
            for j, s in enumerate(seeds):
                nat = np.asarray(runs["natural"][s]["tokens"]["delivered"], dtype=np.float64)
                mine = delivered[j]
                for i in range(len(domains)):
                    a, b = (
                        runs[arm][s]["validation"]["loss"][-1][i],
                        runs["natural"][s]["validation"]["loss"][-1][i],
                    )
                    if a is not None and b is not None and nat[i] > 0 and mine[i] > 0:
                        x.append(math.log((mine[i] / mine.sum()) / (nat[i] / nat.sum())))
                        y.append(a - b)
            entry["data_vs_loss"] = {
                "pairs": len(x),
                "correlation": float(np.corrcoef(x, y)[0, 1])
                if len(x) > 2 and np.std(x) > 0 and np.std(y) > 0
                else None,
            }
        if any("diagnostics" in runs[arm][s] for s in seeds):
            entry["diagnostics"] = _diagnostics_summary(
                [runs[arm][s].get("diagnostics") for s in seeds], len(domains)
            )
        results["arms"][arm] = entry
    results["regime"] = _regime(manifest)
    return results


def _diagnostics_summary(per_seed: Sequence[Mapping[str, Any] | None], k: int) -> dict[str, Any]:
    present = [d for d in per_seed if d is not None]

    def values(key: str) -> list[float]:
        return [float(v) for d in present for v in d[key] if v is not None]

    def per_domain(key: str) -> list[float | None]:
        out = []
        for i in range(k):
            vs = [float(d[key][i]) for d in present if d[key][i] is not None]
            out.append(float(np.mean(vs)) if vs else None)
        return out

    rmse, tail, alpha = values("fit_rmse_log"), values("tail_error"), values("alpha")
    eps_min = [bool(v) for d in present for v in d["at_log_eps_min"] if v is not None]
    return {
        "laws": len(alpha),
        "fits": [d["fits"] for d in present],
        "fit_rmse_log": {
            "median": float(np.median(rmse)) if rmse else None,
            "max": max(rmse) if rmse else None,
        },
        "tail_error": {
            "median_abs": float(np.median(np.abs(tail))) if tail else None,
            "max_abs": float(np.max(np.abs(tail))) if tail else None,
        },
        "alpha": {
            "min": min(alpha) if alpha else None,
            "max": max(alpha) if alpha else None,
            "per_domain": per_domain("alpha"),
        },
        "at_log_eps_min": sum(eps_min),
        "slope_end": per_domain("slope_end"),
    }


def _regime(manifest: Mapping[str, Any]) -> dict[str, Any]:
    s = manifest["settings"]
    tokens = s["steps"] * s["batch_size"] * s["seq_len"]
    params = manifest["model"]["parameters"]
    ado = manifest["arms"].get("ado", {}).get("options") or {}
    start = ado.get("start_step")
    return {
        "tokens_per_run": tokens,
        "parameters": params,
        "tokens_per_parameter": tokens / params,
        "adaptive_share": 1 - start / s["steps"] if start is not None else None,
        "paper_tokens_per_parameter": PAPER["tokens"] / PAPER["parameters"],
        "paper_adaptive_share": 1 - PAPER["start_step"] / PAPER["steps"],
        "paper_steps_after_start": PAPER["steps"] - PAPER["start_step"],
        "steps_after_start": s["steps"] - start if start is not None else None,
        "natural_last_quarter_drop": _last_quarter_drop(manifest),
    }


def _last_quarter_drop(manifest: Mapping[str, Any]) -> float | None:
    """How much the natural arm's mean validation loss fell over the run's last quarter (mean
    over seeds): large when a run ends early in training."""
    drops = []
    for run in manifest["runs"]["natural"].values():
        v = run["validation"]
        i = _checkpoint_indices(v["step"], manifest["settings"]["steps"])[2]
        if v["mean"][i] is not None and v["mean"][-1] is not None:
            drops.append(v["mean"][i] - v["mean"][-1])
    return float(np.mean(drops)) if drops else None


# -- figures -----------------------------------------------------------------------------------
def _arr(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=80, layout="constrained")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return buffer.getvalue()


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def figures(manifest: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, bytes]:
    """The report's PNGs, drawn from the manifest and its analysis only."""
    arms = list(manifest["arms"])
    labels = {a: manifest["arms"][a]["label"] for a in arms}
    domains = manifest["domains"]
    colors = dict(zip(arms, _colors(len(arms)), strict=True))
    seeds = [str(s) for s in manifest["seeds"]]
    runs = manifest["runs"]
    out: dict[str, bytes] = {}

    # 1. the difference of the mean validation loss to natural over the run, with intervals
    fig = _figure(8, 3.6)
    ax = fig.add_subplot()
    tokens = np.asarray(runs["natural"][seeds[0]]["validation"]["tokens"]) / 1e6
    for arm in arms[1:]:
        rows = results["arms"][arm]["difference"]["curve"]
        mean = _arr([r["mean"] for r in rows])
        ax.plot(tokens, mean, color=colors[arm], label=labels[arm])
        if rows[0]["low"] is not None:
            low = _arr([r["low"] for r in rows])
            high = _arr([r["high"] for r in rows])
            ax.fill_between(tokens, low, high, color=colors[arm], alpha=0.15, linewidth=0)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("arm - natural (nats/token)")
    ax.set_title(
        "Mean validation loss over domains, difference to natural (paired by seed, 95% interval)"
    )
    ax.legend(fontsize=8, ncol=3)
    out["difference"] = _png(fig)

    # 2. the final per-domain differences with intervals
    fig = _figure(8, 3.6)
    ax = fig.add_subplot()
    names = [*domains, "mean", "weighted"]
    width = 0.8 / max(1, len(arms) - 1)
    for j, arm in enumerate(arms[1:]):
        diff = results["arms"][arm]["difference"]
        rows = [*diff["domains"], diff["mean"][-1], diff["weighted"][-1]]
        x = np.arange(len(names)) - 0.4 + width * (j + 0.5)
        mean = _arr([r["mean"] for r in rows])
        if rows[-1]["low"] is not None:
            err = np.stack(
                [mean - _arr([r["low"] for r in rows]), _arr([r["high"] for r in rows]) - mean]
            )
            ax.errorbar(
                x,
                mean,
                yerr=err,
                fmt="o",
                markersize=3,
                color=colors[arm],
                label=labels[arm],
                capsize=2,
            )
        else:
            ax.plot(x, mean, "o", markersize=3, color=colors[arm], label=labels[arm])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylabel("arm - natural (nats/token)")
    ax.set_title("Final validation loss per domain, difference to natural (95% interval)")
    ax.legend(fontsize=8, ncol=3)
    out["final"] = _png(fig)

    # 3. the weights over the run (mean over seeds), one panel per arm
    dcolors = _colors(len(domains))
    fig = _figure(8, 4.4)
    panels = fig.subplots(2, 3, sharex=True, sharey=True).ravel()
    for ax, arm in zip(panels, arms, strict=False):
        steps = runs[arm][seeds[0]]["weights"]["step"]
        w = np.mean([runs[arm][s]["weights"]["weights"] for s in seeds], axis=0)
        for i, d in enumerate(domains):
            ax.plot(steps, w[:, i], color=dcolors[i], label=d)
            ax.axhline(
                manifest["natural_weights"][i], color=dcolors[i], linewidth=0.6, linestyle=":"
            )
        ax.set_title(labels[arm], fontsize=9)
    for ax in panels[len(arms) :]:
        ax.set_visible(False)
    panels[0].legend(fontsize=7)
    fig.supxlabel("step", fontsize=9)
    fig.supylabel("weight (dotted: natural)", fontsize=9)
    out["weights"] = _png(fig)

    # 4. realized token shares per arm
    fig = _figure(8, 3.2)
    ax = fig.add_subplot()
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        x = np.arange(len(domains)) - 0.4 + width * (j + 0.5)
        ax.bar(x, results["arms"][arm]["shares"], width=width, color=colors[arm], label=labels[arm])
    ax.set_xticks(np.arange(len(domains)), domains, fontsize=8)
    ax.set_ylabel("share of trained tokens")
    ax.set_title("Realized token shares (mean over seeds)")
    ax.legend(fontsize=8, ncol=3)
    out["shares"] = _png(fig)

    # 5. ADO's laws of the first seed against the smoothed losses they were fitted to
    laws = runs.get("ado", {}).get(seeds[0], {}).get("laws", {})
    if "curve" in laws:
        fig = _figure(8, 4.4)
        panels = fig.subplots(2, 3).ravel()
        for i, (ax, d) in enumerate(zip(panels, domains, strict=False)):
            pts_n = (
                [v for v in _column(laws["fit_points"]["n"], i)] if laws["fit_points"]["n"] else []
            )
            pts_l = (
                [v for v in _column(laws["fit_points"]["loss"], i)]
                if laws["fit_points"]["loss"]
                else []
            )
            pairs = [
                (a, b) for a, b in zip(pts_n, pts_l, strict=True) if a is not None and b is not None
            ]
            if pairs:
                ax.plot(
                    *zip(*pairs, strict=True),
                    ".",
                    markersize=2,
                    color="grey",
                    label="smoothed loss",
                )
            if laws["curve"]["loss"][i] is not None:
                ax.plot(laws["curve"]["n"], laws["curve"]["loss"][i], color=dcolors[i], label="law")
            ax.set_xscale("log")
            ax.set_title(d, fontsize=9)
        panels[0].legend(fontsize=7)
        fig.supxlabel("n (windows trained)", fontsize=9)
        fig.supylabel("training loss", fontsize=9)
        out["laws"] = _png(fig)
    return out


# -- the report --------------------------------------------------------------------------------
def _num(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _ci(row: Mapping[str, Any], spec: str = "+.3f") -> str:
    """``+0.012 [-0.004, +0.028]``; the mean alone without an interval."""
    if row["low"] is None:
        return _num(row["mean"], spec)
    return f"{_num(row['mean'], spec)} [{_num(row['low'], spec)}, {_num(row['high'], spec)}]"


def _zero(row: Mapping[str, Any]) -> str:
    if row["contains_zero"] is None:
        return "n/a (one seed)"
    return "**yes**" if row["contains_zero"] else "no"


def _reach(entry: Mapping[str, Any]) -> str:
    if entry["interval"] is None:
        missing = len(entry["ratios"]) - entry["reached"]
        return (
            f"not reached within the run in {missing} of {len(entry['ratios'])} seeds (it "
            "needs more tokens than natural there)"
        )
    return _ci(entry["interval"], ".3f")


def verdict(label: str, row: Mapping[str, Any]) -> str:
    """One sentence on an arm's final difference to natural, no stronger than its interval."""
    if row["contains_zero"] is None:
        return f"{label}: {row['mean']:+.3f} nats per token with one seed, so no interval"
    ci = f"{row['mean']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"
    if row["contains_zero"]:
        return f"{label}: {ci}; the interval contains 0, so this experiment shows no difference from the natural mixture"
    if row["high"] < 0:
        return f"{label}: {ci}; lower than the natural mixture (the interval excludes 0)"
    return f"{label}: {ci}; higher than the natural mixture (the interval excludes 0)"


def render(manifest: Mapping[str, Any], results: Mapping[str, Any], figure_dir: str) -> str:
    """``docs/experiments.md`` from the manifest and its analysis."""
    s = manifest["settings"]
    arms = list(manifest["arms"])
    labels = {a: manifest["arms"][a]["label"] for a in arms}
    domains = manifest["domains"]
    r = results["arms"]
    seeds = manifest["seeds"]
    timing = manifest["timing"]
    machine = manifest["machine"]
    lines: list[str] = []
    add = lines.append

    add("# Does adaptive mixing pay off? Six mixtures, several seeds, 95% intervals")
    add("")
    add(
        f"*Written by `benchmarks/adaptive_effect.py` ({manifest['mode']} mode) from "
        f"`{figure_dir}/manifest.json`; every number below is computed from that file.*"
    )
    add("")
    ado = r.get("ado", {}).get("difference")
    if ado is not None:
        add(
            f"**Answer at this scale** ({s['steps'] * s['batch_size'] * s['seq_len']:,} tokens per "
            f"run, a {manifest['model']['parameters'] / 1e6:.2f} M-parameter model, "
            f"{len(seeds)} seeds): {verdict('ADO minus natural, mean validation loss over domains at the end', ado['mean'][-1])}."
        )
        add("")
    add("## Final validation loss, paired difference to natural (95% intervals over seeds)")
    add("")
    add(
        "| arm | mean over domains | difference to natural | contains 0 | natural-weighted mean "
        "difference | contains 0 | tokens to natural's final mean loss (ratio) |"
    )
    add("|---|---|---|---|---|---|---|")
    for arm in arms:
        e = r[arm]
        if arm == "natural":
            add(
                f"| {labels[arm]} | {_ci(e['final']['mean'], '.3f')} | - | - | - | - | 1 (by definition) |"
            )
            continue
        d = e["difference"]
        add(
            f"| {labels[arm]} | {_ci(e['final']['mean'], '.3f')} | {_ci(d['mean'][-1])} | "
            f"{_zero(d['mean'][-1])} | {_ci(d['weighted'][-1])} | {_zero(d['weighted'][-1])} | "
            f"{_reach(e['tokens_to_natural']['mean'])} |"
        )
    add("")
    add(
        "Losses in nats per token on the held-out windows; a negative difference means lower loss "
        "than the natural mixture with the same seed. The token ratio is the tokens an arm needed "
        "to reach the natural arm's final mean loss (same seed), over the tokens the natural arm "
        "needed; below 1 is more efficient."
    )
    add("")
    add("### Conclusions, no stronger than the intervals")
    add("")
    for arm in arms[1:]:
        d = r[arm]["difference"]
        reach = r[arm]["tokens_to_natural"]["mean"]
        add(
            f"- {verdict(labels[arm] + ', mean over domains', d['mean'][-1])}. "
            f"{verdict('Natural-weighted mean', d['weighted'][-1])}. "
            f"Tokens to reach natural's final mean loss, as a ratio to natural's: {_reach(reach)}"
            + (
                " (below 1: fewer tokens)."
                if reach["interval"] is not None
                and reach["interval"]["high"] is not None
                and reach["interval"]["high"] < 1
                else "."
            )
        )
    add("")
    # over the run
    cp = results["checkpoints"]
    add("## Over the run: difference to natural at a quarter, half, three quarters and the end")
    add("")
    add(
        "| arm | mean | "
        + " | ".join(
            f"step {st} ({f:.0%})" for st, f in zip(cp["step"], cp["fraction"], strict=True)
        )
        + " |"
    )
    add("|---|---|" + "---|" * len(cp["step"]))
    for kind, name in (("mean", "over domains"), ("weighted", "natural-weighted")):
        for arm in arms[1:]:
            add(
                f"| {labels[arm]} | {name} | "
                + " | ".join(_ci(x) for x in r[arm]["difference"][kind])
                + " |"
            )
    add("")
    add(f"![difference to natural over the run]({figure_dir}/difference.png)")
    add("")
    add("## Per domain at the end: difference to natural")
    add("")
    add("| arm | " + " | ".join(domains) + " |")
    add("|---|" + "---|" * len(domains))
    for arm in arms[1:]:
        add(
            f"| {labels[arm]} | "
            + " | ".join(_ci(x) for x in r[arm]["difference"]["domains"])
            + " |"
        )
    add(
        "| natural (loss) | "
        + " | ".join(_ci(x, ".3f") for x in r["natural"]["final"]["domains"])
        + " |"
    )
    add("")
    add(f"![final per-domain differences]({figure_dir}/final.png)")
    add("")
    add("## Realized token shares and weights")
    add("")
    add("| arm | " + " | ".join(domains) + " | moved from natural (TV), mean (range over seeds) |")
    add("|---|" + "---|" * (len(domains) + 1))
    add(
        "| natural weights | "
        + " | ".join(f"{w:.3f}" for w in manifest["natural_weights"])
        + " | - |"
    )
    for arm in arms:
        add(
            f"| {labels[arm]} | "
            + " | ".join(f"{x:.3f}" for x in r[arm]["shares"])
            + f" | {_spread(r[arm]['shares_moved'])} |"
        )
    add("")
    add(
        "Shares of the trained tokens per domain (from the batches' `domain_ids`), mean over seeds; "
        "the last column is the total variation distance of each run's shares from the natural "
        "weights (the share of tokens that went elsewhere). Weights over the run, mean over seeds:"
    )
    add("")
    add(f"![weights over the run]({figure_dir}/weights.png)")
    add("")
    add(f"![realized token shares]({figure_dir}/shares.png)")
    add("")
    add(
        "| arm | final weights: TV from natural, mean (range) | largest TV during the run | corr(log share ratio, loss difference) over (domain, seed) |"
    )
    add("|---|---|---|---|")
    for arm in arms[1:]:
        corr = r[arm]["data_vs_loss"]["correlation"]
        add(
            f"| {labels[arm]} | {_spread(r[arm]['weights_moved'])} | {_spread(r[arm]['max_moved'])} "
            f"| {_num(corr, '+.2f')} ({r[arm]['data_vs_loss']['pairs']} pairs) |"
        )
    add("")
    lines.extend(_why(manifest, results, figure_dir))
    lines.extend(_setup(manifest, results))
    lines.extend(_gpu_section(manifest))
    add("## How it ran")
    add("")
    add("```")
    add(manifest["command"])
    add("```")
    add("")
    add(
        f"{manifest['finished'][:16].replace('T', ' ')} UTC, {machine['cpus']} CPUs "
        f"({machine['device']}), Python {machine['python']}, torch {machine['torch']}; "
        f"commit {machine.get('commit') or 'unknown'}. Wall time {timing['wall_seconds'] / 60:.1f} min "
        f"({timing['prepare_seconds']:.0f} s corpus and tokenizer, {timing['runs_seconds'] / 60:.1f} min "
        f"for {timing['runs']} runs at {manifest['settings']['jobs']} at a time). Load average "
        f"(1 min) {timing['load_min']:.1f}-{timing['load_max']:.1f} at the runs' starts and ends "
        f"(other processes shared the machine)."
    )
    add("")
    add(
        f"Runs took {timing['fastest_run_seconds']:.0f}-{timing['slowest_run_seconds']:.0f} s "
        f"each here, {timing['cpu_seconds'] / 60:.1f} min of CPU time in all (the training "
        "processes; the server's is not counted). " + _idle_estimate(manifest)
    )
    add("")
    return "\n".join(lines) + "\n"


def _why(manifest: Mapping[str, Any], results: Mapping[str, Any], figure_dir: str) -> list[str]:
    """The section on why ADO did (not) help: weights, fit quality, regime."""
    r = results["arms"]
    if "ado" not in r or "diagnostics" not in r["ado"]:
        return []
    reg = results["regime"]
    domains = manifest["domains"]
    out: list[str] = []
    add = out.append
    ado = r["ado"]
    diag = ado["diagnostics"]
    natural_w = manifest["natural_weights"]
    gained = [(d, w - n) for d, w, n in zip(domains, ado["final_weights"], natural_w, strict=True)]
    gained.sort(key=lambda x: -x[1])
    add("## Why: what ADO did, how well its laws fit, and the regime")
    add("")
    add(
        f"**How far the weights moved.** ADO's final weights are {ado['weights_moved']['mean']:.3f} "
        f"(total variation, mean over seeds) away from the natural mixture, and the tokens it "
        f"trained on {ado['shares_moved']['mean']:.3f}: about "
        f"{100 * ado['shares_moved']['mean']:.0f}% of the tokens went to other domains than the "
        f"natural mixture would have sent them to. It gave more weight to "
        + ", ".join(f"{d} ({g:+.3f})" for d, g in gained if g > 0)
        + " and less to "
        + ", ".join(f"{d} ({g:+.3f})" for d, g in gained if g <= 0)
        + " (final weight minus natural, mean over seeds)."
    )
    add("")
    corr = ado["data_vs_loss"]["correlation"]
    if corr is not None:
        add(
            f"**The knob works per domain.** Over (domain, seed) pairs, the log ratio of a domain's "
            f"share under ADO to its share under natural and its loss difference correlate at "
            f"{corr:+.2f}: "
            + (
                "domains that got more data ended with lower loss, and the others with higher. "
                "What a mixture decides is which domains' losses to trade for which; the mean "
                "over domains moves only by the balance of those trades."
                if corr < -0.3
                else "there is no clear relation between a domain's extra data and its loss "
                "difference at this budget."
            )
        )
        add("")
    rmse = diag["fit_rmse_log"]
    tail = diag["tail_error"]
    alpha = diag["alpha"]
    add(
        f"**Fit quality of the scaling laws.** {diag['laws']} laws (domains x seeds), fitted "
        f"{min(diag['fits'])}-{max(diag['fits'])} times per run. Against the smoothed losses of "
        f"their last fit the RMSE in log space is {_num(rmse['median'], '.4f')} (median; max "
        f"{_num(rmse['max'], '.4f')}), i.e. the curves are followed within about "
        f"{100 * (rmse['median'] or 0):.1f}%. Extrapolated to the mean training loss of the run's "
        f"last tenth the laws are off by {100 * (tail['median_abs'] or 0):.1f}% (median; max "
        f"{100 * (tail['max_abs'] or 0):.1f}%). Exponents alpha lie in "
        f"{_num(alpha['min'], '.2f')}-{_num(alpha['max'], '.2f')}; "
        f"{diag['at_log_eps_min']} of {diag['laws']} laws put the irreducible loss eps at its "
        f"lower bound (log eps = 0.5, e^0.5 = 1.65 nats) while the losses are "
        f"{_range_of_losses(manifest)} nats: the data cannot tell eps apart from any value below "
        "the loss, so a law here is a power law through a short, steep stretch of the curve, and "
        "its slope (what ADO's weights follow) comes from alpha and the distance to that bound."
    )
    add("")
    if "curve" in manifest["runs"]["ado"][str(manifest["seeds"][0])].get("laws", {}):
        add(f"![ADO's laws, first seed]({figure_dir}/laws.png)")
        add("")
    add("**The regime.**")
    add("")
    add("| | this run | the ADO paper (124M) |")
    add("|---|---|---|")
    add(f"| parameters | {reg['parameters'] / 1e6:.2f} M | {PAPER['parameters'] / 1e6:.0f} M |")
    add(f"| tokens per run | {reg['tokens_per_run'] / 1e6:.2f} M | {PAPER['tokens'] / 1e9:.1f} B |")
    add(
        f"| tokens per parameter | {reg['tokens_per_parameter']:.1f} | {reg['paper_tokens_per_parameter']:.0f} |"
    )
    add(f"| domains | {len(domains)} | {PAPER['domains']} |")
    add(
        f"| steps with ADO's weights | {reg['steps_after_start']:,} ({_pct(reg['adaptive_share'])}) "
        f"| {reg['paper_steps_after_start']:,} ({_pct(reg['paper_adaptive_share'])}) |"
    )
    add("")
    drop = reg["natural_last_quarter_drop"]
    add(
        f"The paper's 124M runs train {reg['paper_tokens_per_parameter']:.0f} tokens per "
        f"parameter, with ADO's weights in force for {reg['paper_steps_after_start']:,} of "
        f"{PAPER['steps']:,} steps and a learning rate that decays over the run; this run trains "
        f"{reg['tokens_per_parameter']:.1f} tokens per parameter, with ADO's weights for "
        f"{reg['steps_after_start']:,} steps at a constant learning rate. Over the last quarter "
        f"of the run the natural arm's mean validation loss still fell by "
        f"{_num(drop, '.3f')} nats per token (mean over seeds): the runs end early in training, "
        "where every domain's loss still falls steeply. The laws ADO fits there are power laws "
        "through a short stretch of that fall, and what they predict (the slopes above, and "
        "the weights) says little about which domain will still pay off later. Whether ADO pays "
        "off in the paper's regime this experiment cannot say; it measures the regime a CPU (or "
        "a few GPU minutes) can reach on a corpus of about ten million tokens. The paper's "
        f"figures are from its public code: {PAPER['source']}."
    )
    add("")
    return out


def preset_size(preset: Preset) -> dict[str, float]:
    """Parameters, tokens per run and in all, and training FLOP (6 x parameters x tokens) of a
    preset."""
    model = GPT(preset.settings.model_config(preset.vocab_size))
    parameters = sum(p.numel() for p in model.parameters())
    s = preset.settings
    per_run = s.steps * s.batch_size * s.seq_len
    total = per_run * preset.seeds * len(ARMS)
    return {
        "parameters": parameters,
        "tokens_per_run": per_run,
        "tokens": total,
        "flop": 6.0 * parameters * total,
    }


#: The demo's measured pace on this kind of machine with nothing else running (docs/demo.md,
#: ``make demo`` from a fresh clone, load average about 1): the same model and budget as the
#: CPU preset, 1,000 steps of 8 x 128 tokens with 16 validation windows per domain every 50
#: steps, in 76.5-78.5 s per run. The CPU preset evaluates 32 windows per domain: 21
#: evaluations x 6 domains x 32 x 128 tokens forward are about 516k tokens, a sixth of a
#: run's training work, half of which the demo also does: about 8% more.
IDLE_RUN_SECONDS = (76.5 * 1.08, 78.5 * 1.08)


def _idle_estimate(manifest: Mapping[str, Any]) -> str:
    """For the CPU preset: what the runs take on an idle 2-core machine, from the demo's pace."""
    settings = asdict(PRESETS["cpu"].settings)
    same = all(manifest["settings"].get(k) == v for k, v in settings.items() if k != "seed")
    if manifest["mode"] != "cpu" or not same:
        return ""
    runs = manifest["timing"]["runs"]
    low, high = (runs * x / 60 for x in IDLE_RUN_SECONDS)
    return (
        f"On an idle 2-core machine the {runs} runs take about {low:.0f}-{high:.0f} min: the "
        "demo trains the same model on the same budget in 76.5-78.5 s per run at load about 1 "
        "(`docs/demo.md`), and the 32 validation windows per domain (the demo's 16) add about "
        "8%; the corpus and tokenizer add about 20 s."
    )


def _gpu_section(manifest: Mapping[str, Any]) -> list[str]:
    """What the GPU preset is, and whether it has run (its report next to this one)."""
    if manifest["mode"] == "gpu":
        return []
    gpu = PRESETS["gpu"]
    size = preset_size(gpu)
    s = gpu.settings
    ran = manifest.get("gpu_report")
    return [
        "## On a GPU",
        "",
        f"`python benchmarks/adaptive_effect.py --gpu` runs the same arms with a larger model and "
        f"budget on `{s.device}`: {s.layers} layers, d_model {s.d_model}, {s.heads} heads, windows "
        f"of {s.seq_len}, a BPE of {gpu.vocab_size:,} tokens ({size['parameters'] / 1e6:.1f} M "
        f"parameters); {s.steps} steps of {s.batch_size} windows ({size['tokens_per_run'] / 1e6:.1f} M "
        f"tokens per run, about one pass over the natural mixture's training tokens), lr {s.lr}, "
        f"{s.precision} autocast; {gpu.seeds} seeds x {len(ARMS)} arms, "
        f"{size['tokens'] / 1e6:.0f} M tokens and {size['flop']:.1e} training FLOP in all; "
        f"{gpu.jobs} runs at a time, each in its own process that reads and tokenizes its own "
        "data (the client's measured rate on one core, about 300k tokens per CPU-second for "
        "windows of 512, would otherwise bound a single run). Estimated 3-6 minutes on one H200 "
        "plus about a minute for the corpus and tokenizer: the data path at about 1.5 M tokens/s "
        "for 6 processes, the compute at 100-200 TFLOP/s for models this small. It writes "
        "`docs/experiments-gpu.md`. "
        + (
            f"Its report: [{ran}]({ran})."
            if ran
            else "It has not run yet: no GPU was available to the session that wrote this "
            "report, so every number above is from the CPU."
        ),
        "",
        f"Note the regime: {size['tokens_per_run'] / size['parameters']:.2f} tokens per parameter, "
        "fewer than the CPU run's, because the corpus holds about 10.7 M training tokens and a "
        "run should not repeat it; the GPU preset tests a 30x larger model on 10x more tokens, "
        "not the paper's regime.",
        "",
    ]


def _range_of_losses(manifest: Mapping[str, Any]) -> str:
    values = [
        v
        for run in manifest["runs"]["ado"].values()
        for v in run["validation"]["loss"][-1]
        if v is not None
    ]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _setup(manifest: Mapping[str, Any], results: Mapping[str, Any]) -> list[str]:
    s = manifest["settings"]
    m = manifest["model"]
    out: list[str] = []
    add = out.append
    add("## Setup")
    add("")
    tokens = manifest["training_tokens"]
    add(
        f"**Data.** The demo's corpus (`docs/demo.md`): {len(manifest['domains'])} domains, "
        f"{sum(tokens.values()):,} training tokens with its tokenizer (a byte-level BPE of "
        f"{manifest['tokenizer']['vocab_size']:,} tokens)"
        + (f", the first {s['max_docs']} documents of each dataset" if s["max_docs"] else "")
        + "; natural shares "
        + ", ".join(
            f"{d} {w:.1%}"
            for d, w in zip(manifest["domains"], manifest["natural_weights"], strict=True)
        )
        + f". Token-unit jobs, chunks of {s['chunk_tokens']:,} tokens, every record drawn on its "
        "own (`block_size=1`), planned by a `mixplane serve` process and read through "
        "`Client.remote`; per-domain losses sent every step in every arm."
    )
    add("")
    add(
        f"**Model and budget.** The demo's GPT: {s['layers']} layers, d_model {s['d_model']}, "
        f"{s['heads']} heads, windows of {s['seq_len']} tokens, {m['parameters']:,} parameters; "
        f"AdamW lr {s['lr']}, {s['warmup']} warm-up steps then constant; {s['steps']:,} steps of "
        f"{s['batch_size']} windows ({s['steps'] * s['batch_size'] * s['seq_len']:,} tokens per "
        f"run); {s['precision']} on {s['device']}."
    )
    add("")
    add(
        f"**Seeds.** {len(manifest['seeds'])} seeds ({', '.join(map(str, manifest['seeds']))}). "
        "Seed s sets the model's initial weights and the job's seed (every domain's sample "
        "order), the same in every arm, so differences are paired by seed."
    )
    add("")
    counts = manifest["validation_windows"]
    add(
        f"**Evaluation.** Up to {s['eval_windows']} held-out windows per domain ("
        + ", ".join(f"{d} {c}" for d, c in counts.items())
        + f") from the validation split, the same windows for every run, every {s['eval_every']} "
        "steps and after the last. The mean over domains weighs every domain alike; the "
        "natural-weighted mean weighs them by the natural shares."
    )
    add("")
    add(
        "**Arms, fixed before any run** (in `ARMS` of the script; nothing was tuned on validation loss):"
    )
    add("")
    add("| arm | starts from | algorithm | options | note |")
    add("|---|---|---|---|---|")
    for a in manifest["arms"].values():
        opts = a["options"]
        text = (
            ", ".join(f"`{k}={v}`" for k, v in opts.items())
            if opts
            else ("defaults" if a["algorithm"] else "-")
        )
        add(f"| {a['label']} | {a['mixture']} | {a['algorithm'] or '-'} | {text} | {a['note']} |")
    add("")
    opts = manifest["arms"].get("ado", {}).get("options")
    if opts:
        add(
            "ADO's options against the paper's (its public code's defaults, `adapt/ado.py`): "
            f"`start_step` 1000 -> {opts['start_step']}, `refit_interval` 1000 -> "
            f"{opts['refit_interval']}, `ignore_steps` 500 -> {opts['ignore_steps']}, "
            f"`savgol_window` 101 -> {opts['savgol_window']}, `subsample` 10 -> {opts['subsample']}, "
            f"`seq_len` 2048 -> {opts['seq_len']}; `gamma1` 0.1, `gamma2` 0.1, `s` 0.5, "
            "`delta_min` 0.01 and the fit's bounds as in the paper (the rule: "
            "`mixplane.demo.run.ado_options`, `docs/demo.md`)."
        )
        add("")
    add(
        "**Statistics.** For each arm the mean over seeds and a 95% interval from Student's t "
        "with n - 1 degrees of freedom; for the difference to natural the same over the per-seed "
        "differences (paired). An interval that contains 0 is reported as such: no difference "
        "shown. Tokens to reach natural's final loss: the first evaluation at or below it, "
        "linearly interpolated from the one before."
    )
    add("")
    return out


# -- driving the runs --------------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {os.cpu_count()} cores"


def _run_many(
    tasks: Sequence[tuple[str, int]],
    *,
    jobs: int,
    preset: Preset,
    url: str,
    token_file: Path,
    tokenizer_path: Path,
    validation_path: Path,
    run_dir: Path,
    key: str,
    echo: Callable[[str], None],
) -> None:
    """Run ``tasks`` (arm, seed) in ``jobs`` processes of this script (``--run-one``) at a time."""
    pending = list(tasks)
    running: list[tuple[subprocess.Popen[bytes], tuple[str, int], Any]] = []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                arm, seed = pending.pop(0)
                log_path = run_dir / f"{arm}-s{seed}.log"
                log = log_path.open("wb")
                command = [
                    sys.executable, str(Path(__file__).resolve()), "--run-one", arm, str(seed),
                    "--mode", preset.mode, "--url", url, "--token-file", str(token_file),
                    "--tokenizer", str(tokenizer_path), "--validation", str(validation_path),
                    "--run-dir", str(run_dir), "--key", key,
                ]  # fmt: skip
                running.append(
                    (
                        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT),
                        (arm, seed),
                        log,
                    )
                )
            time.sleep(0.5)
            for proc, (arm, seed), log in list(running):
                if proc.poll() is None:
                    continue
                running.remove((proc, (arm, seed), log))
                log.close()
                if proc.returncode != 0:
                    tail = (
                        (run_dir / f"{arm}-s{seed}.log")
                        .read_text(errors="replace")
                        .strip()
                        .splitlines()[-3:]
                    )
                    msg = f"run {arm} seed {seed} failed (exit {proc.returncode}): {' | '.join(tail)}; see {run_dir / f'{arm}-s{seed}.log'}"
                    raise RuntimeError(msg)
                echo(f"  {arm} seed {seed}: done")
    finally:
        for proc, _, log in running:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def run_one(args: argparse.Namespace) -> None:
    """``--run-one ARM SEED``: one run in this process against a running server."""
    preset = PRESETS[args.mode]
    torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = True
    tokenizer = load_tokenizer(Path(args.tokenizer))
    validation = load_validation(Path(args.validation))
    token = Path(args.token_file).read_text().strip()
    arm, seed = args.run_one[0], int(args.run_one[1])
    with Client.remote(args.url, token=token) as client:
        series = run_arm(client, ARMS[arm], seed, preset, tokenizer, validation, progress=False)
    _write_json(Path(args.run_dir) / f"{arm}-s{seed}.json", {"key": args.key, "series": series})


def experiment(args: argparse.Namespace, echo: Callable[[str], None] = print) -> Path:
    """Prepare, serve, run every (seed, arm), write the manifest, read it back, report."""
    preset = PRESETS[args.mode]
    if args.seeds is not None:
        preset = replace(preset, seeds=args.seeds)
    if args.jobs is not None:
        preset = replace(preset, jobs=args.jobs)
    if preset.settings.device.startswith("cuda") and not torch.cuda.is_available():
        msg = f"the {preset.mode} preset trains on {preset.settings.device}, but torch sees no GPU here; run it on a machine with one"
        raise SystemExit(msg)
    home = Path(
        args.home or REPOSITORY / "benchmarks" / "out" / f"adaptive-effect-{preset.mode}"
    ).resolve()
    out = Path(args.out or (REPOSITORY / "docs" if preset.mode != "quick" else home)).resolve()
    name = (
        args.name
        or {"quick": "experiments-quick", "cpu": "experiments", "gpu": "experiments-gpu"}[
            preset.mode
        ]
    )
    started_at = datetime.datetime.now(datetime.UTC)
    commit = _git_commit()  # the code that trains: taken now, not when the runs end
    started = time.perf_counter()
    options = DemoOptions(
        home=home, max_docs=preset.max_docs, vocab_size=preset.vocab_size,
        piece_bytes=preset.piece_bytes, chunk_tokens=preset.chunk_tokens,
        tokenizer_bytes=preset.tokenizer_bytes, progress=args.progress, settings=preset.settings,
    )  # fmt: skip
    tokenizer, tokenizer_info = prepare(options, echo)
    prepare_seconds = time.perf_counter() - started
    run_dir = home / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_key(preset, tokenizer.fingerprint)
    seeds = list(range(preset.seeds))
    tasks = [(arm, seed) for seed in seeds for arm in ARMS]
    if not args.resume:
        for arm, seed in tasks:
            (run_dir / f"{arm}-s{seed}.json").unlink(missing_ok=True)
    torch.set_flush_denormal(True)  # denormal softmax tails make CPU matmuls 20x slower
    torch.backends.cuda.matmul.allow_tf32 = True
    runs_started = time.perf_counter()
    with served(home, options.work_dir) as (url, token):
        echo(f"server: {url}")
        with Client.remote(url, token=token) as client:
            validation = validation_windows(
                client, tokenizer, seq_len=preset.settings.seq_len,
                per_domain=preset.settings.eval_windows, seed=0, progress=args.progress,
            )  # fmt: skip
            todo = [t for t in tasks if not _saved(run_dir, *t, key)]
            echo(
                f"runs: {len(tasks)} ({len(tasks) - len(todo)} kept from an earlier run), {preset.jobs} at a time"
            )
            if preset.jobs <= 1:
                tokenizer_obj = tokenizer
                for arm, seed in todo:
                    series = run_arm(
                        client,
                        ARMS[arm],
                        seed,
                        preset,
                        tokenizer_obj,
                        validation,
                        progress=args.progress,
                    )
                    _write_json(run_dir / f"{arm}-s{seed}.json", {"key": key, "series": series})
                    echo(
                        f"  {arm} seed {seed}: {series['seconds']:.1f} s, final mean validation loss {series['validation']['mean'][-1]:.3f}"
                    )
            else:
                validation_path = run_dir / "validation.npz"
                save_validation(validation, validation_path)
                _run_many(
                    todo, jobs=preset.jobs, preset=preset, url=url, token_file=options.work_dir / "token",
                    tokenizer_path=Path(tokenizer_info["path"]), validation_path=validation_path,
                    run_dir=run_dir, key=key, echo=echo,
                )  # fmt: skip
    runs_seconds = time.perf_counter() - runs_started
    full = {
        (arm, seed): orjson.loads((run_dir / f"{arm}-s{seed}.json").read_bytes())["series"]
        for arm, seed in tasks
    }
    model = GPT(preset.settings.model_config(tokenizer.vocab_size))
    parameters = sum(p.numel() for p in model.parameters())
    domains = list(tokenizer_info["training_tokens"])
    natural_w = full[("natural", 0)]["mixture_log"][0]["weights"]
    seconds = [s["seconds"] for s in full.values()]
    loads = [x for s in full.values() for x in s["load"]]
    fastest = {arm: min(full[(arm, seed)]["seconds"] for seed in seeds) for arm in ARMS}
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "experiment": "adaptive-effect",
        "mode": preset.mode,
        "command": args.command,
        "started": started_at.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": _device_name(preset.settings.device),
            "commit": commit,
        },
        "timing": {
            "wall_seconds": time.perf_counter() - started,
            "prepare_seconds": prepare_seconds,
            "runs_seconds": runs_seconds,
            "runs": len(tasks),
            "fastest_run_seconds": min(seconds),
            "slowest_run_seconds": max(seconds),
            "idle_estimate_seconds": sum(fastest.values()) * len(seeds) / max(1, preset.jobs),
            "cpu_seconds": sum(s["cpu_seconds"] for s in full.values()),
            "load_min": min(loads),
            "load_max": max(loads),
        },
        "settings": {
            **{k: v for k, v in asdict(preset.settings).items() if k != "seed"},
            "chunk_tokens": preset.chunk_tokens,
            "max_docs": preset.max_docs,
            "piece_bytes": preset.piece_bytes,
            "jobs": preset.jobs,
        },
        "seeds": seeds,
        "arms": {
            name: {
                "label": arm.label,
                "mixture": arm.mixture,
                "algorithm": arm.algorithm,
                "options": arm.algorithm_options(preset.settings),
                "note": arm.note,
            }
            for name, arm in ARMS.items()
        },
        "domains": domains,
        "training_tokens": tokenizer_info["training_tokens"],
        "tokenizer": {
            k: v for k, v in tokenizer_info.items() if k not in ("path", "training_tokens")
        },
        "natural_weights": natural_w,
        "validation_windows": {d: int(b["input_ids"].shape[0]) for d, b in validation.items()},
        "model": {"parameters": parameters},
        "paper": PAPER,
        "runs": {
            arm: {
                str(seed): compact(
                    full[(arm, seed)],
                    ARMS[arm],
                    preset.settings,
                    natural_w,
                    keep_laws=seed == seeds[0],
                )
                for seed in seeds
            }
            for arm in ARMS
        },
    }
    manifest = _round(manifest)
    return write_report(manifest, out, name, echo=echo)


def _saved(run_dir: Path, arm: str, seed: int, key: str) -> bool:
    path = run_dir / f"{arm}-s{seed}.json"
    if not path.exists():
        return False
    try:
        return orjson.loads(path.read_bytes()).get("key") == key
    except orjson.JSONDecodeError:
        return False


def write_report(
    manifest: Mapping[str, Any], out: Path, name: str, *, echo: Callable[[str], None] = print
) -> Path:
    """Write ``out/name/manifest.json``, read it back, analyze what was read, store the
    analysis in the manifest, and write the figures and ``out/name.md`` from it."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    raw = {k: v for k, v in manifest.items() if k != "results"}
    _write_json(path, raw)
    read = orjson.loads(path.read_bytes())
    results = _round(analyze(read))
    read["results"] = results
    _write_json(path, read)
    for fig_name, png in figures(read, results).items():
        (folder / f"{fig_name}.png").write_bytes(png)
    report = out / f"{name}.md"
    if (out / "experiments-gpu.md").exists() and name != "experiments-gpu":
        read["gpu_report"] = "experiments-gpu.md"
    report.write_text(render(read, results, name), encoding="utf-8")
    echo(f"report: {report} (manifest {path})")
    for arm, label in ((a, read["arms"][a]["label"]) for a in read["arms"] if a != "natural"):
        echo("  " + verdict(label, results["arms"][arm]["difference"]["mean"][-1]))
    return report


def render_from(manifest_path: Path, out: Path | None, name: str | None) -> Path:
    """``--render``: analyze a manifest again and rewrite its report."""
    manifest = orjson.loads(manifest_path.read_bytes())
    folder = manifest_path.parent
    return write_report(manifest, out or folder.parent, name or folder.name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_const", dest="mode", const="quick", help="a smoke test in seconds"
    )
    mode.add_argument(
        "--gpu", action="store_const", dest="mode", const="gpu", help="the GPU preset (cuda)"
    )
    mode.add_argument("--mode", choices=list(PRESETS), help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, help="seeds per arm (default: the preset's)")
    parser.add_argument("--jobs", type=int, help="runs at a time, each in its own process")
    parser.add_argument("--home", help="working folder (catalog, corpus, runs)")
    parser.add_argument(
        "--out", help="folder for NAME.md and NAME/ (default docs/, or HOME for --quick)"
    )
    parser.add_argument(
        "--name", help="report name (default experiments, experiments-gpu, experiments-quick)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep runs already written for the same settings"
    )
    parser.add_argument(
        "--render", metavar="MANIFEST", help="rewrite the report from a manifest, no training"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, default=None
    )
    # one run in a child process (--jobs > 1)
    parser.add_argument("--run-one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    for hidden in ("--url", "--token-file", "--tokenizer", "--validation", "--run-dir", "--key"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mode = args.mode or "cpu"
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.run_one:
        run_one(args)
        return
    if args.render:
        render_from(Path(args.render), Path(args.out) if args.out else None, args.name)
        return
    args.command = "python benchmarks/adaptive_effect.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    experiment(args)


if __name__ == "__main__":
    main()
