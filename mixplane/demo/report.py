"""The demo's report: a manifest (JSON) of every plotted series, PNG figures drawn from it, and
one self-contained HTML page.

``build_manifest(...)`` turns the two runs' records (``train.RunRecord``) into plain series:

- ``weights``: the mixture over steps, from the server's mixture log (each entry at the step
  whose feedback set it; the first at step 0), repeated at the last step;
- ``tokens``: per domain, ``requested`` (each step's tokens times the weights in force for
  the chunk its windows came from) and ``delivered`` (the target tokens of each domain in the
  trained batches, from their ``domain_ids``);
- ``train_loss``: per domain, the mean training loss over each evaluation interval;
- ``validation``: per domain (and their mean), the loss on the held-out windows at the same
  token counts in both runs;
- ``laws`` (ADO): the fitted ``L(n) = eps + beta n^-alpha`` per domain (``state["algorithm"]``
  of the server's job), sampled over the run's n, with the observed per-step losses and the
  smoothed points the fit used.

``write_report(manifest, folder)`` writes ``manifest.json``, reads it back and draws every
figure from what it read (``figures``), so the pictures show exactly the manifest's numbers;
then ``index.html`` with inline CSS and the PNGs embedded as base64 (no network). Matplotlib
runs headless (Agg canvas, no pyplot state). Cost: about 2 s for the five figures.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from tqdm import tqdm

from mixplane.adapt.ado import law_loss
from mixplane.errors import DependencyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mixplane.demo.train import RunRecord, TrainSettings

MANIFEST_VERSION = 1
RUNS = ("natural", "ado")
LABELS = {"natural": "natural mixture", "ado": "ADO"}
STYLES = {"natural": "--", "ado": "-"}
CURVE_POINTS = 64
FIGURES = ("weights", "tokens", "validation_loss", "train_loss", "scaling_laws")


# -- the manifest ------------------------------------------------------------------------------
def _domain(selector: str) -> str:
    return selector.split("=", 1)[1]


def _nullable(values: Sequence[float] | np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values]


def weights_of_chunks(
    mixture_log: Sequence[Mapping[str, Any]], chunks: Sequence[int]
) -> np.ndarray:
    """The weights in force for each of ``chunks``: the last log entry (in log order) that
    applies from that chunk or an earlier one, as the planner applies them."""
    order = np.argsort(chunks, kind="stable")
    out = np.zeros((len(chunks), len(mixture_log[0]["weights"])))
    entry = 0
    for i in order.tolist():
        while entry + 1 < len(mixture_log) and mixture_log[entry + 1]["chunk"] <= chunks[i]:
            entry += 1
        out[i] = mixture_log[entry]["weights"]
    return out


def requested_tokens(
    mixture_log: Sequence[Mapping[str, Any]], chunks: Sequence[int], tokens: Sequence[float]
) -> np.ndarray:
    """Per component: what the mixture asked for the trained tokens, i.e. each step's tokens
    times the weights in force for the chunk the step's windows came from."""
    weights = weights_of_chunks(mixture_log, chunks)
    return (np.asarray(tokens, dtype=np.float64)[:, None] * weights).sum(axis=0)


def run_series(record: RunRecord, settings: TrainSettings) -> dict[str, Any]:
    """One run's plotted series (the manifest's ``runs[name]``, see the module); also used by
    ``benchmarks/adaptive_effect.py`` for every arm and seed."""
    loss_sum = np.asarray(record.loss_sum, dtype=np.float64).reshape(-1, len(record.selectors))
    tokens = np.asarray(record.tokens, dtype=np.float64).reshape(loss_sum.shape)
    delivered = tokens.sum(axis=0)
    cumulative = np.cumsum(tokens.sum(axis=1))
    tokens_at = [float(cumulative[s - 1]) if s > 0 else 0.0 for s in record.eval_steps]
    # training loss per evaluation interval
    bins_step, bins_loss = [], []
    for lo, hi in zip(record.eval_steps, record.eval_steps[1:], strict=False):
        s, c = loss_sum[lo:hi].sum(axis=0), tokens[lo:hi].sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            bins_loss.append(_nullable(np.where(c > 0, s / np.where(c > 0, c, 1), np.nan)))
        bins_step.append(hi)
    domains = [_domain(s) for s in record.selectors]
    validation = [[v.get(d) for d in domains] for v in record.validation]
    means = [
        float(np.mean([x for x in row if x is not None]))
        if any(x is not None for x in row)
        else None
        for row in validation
    ]
    log = [
        {"chunk": int(e["chunk"]), "step": int(e.get("step", 0)), "weights": list(e["weights"])}
        for e in record.mixture_log
    ]
    steps = [e["step"] for e in log] + [settings.steps]
    weights = [e["weights"] for e in log] + [log[-1]["weights"]]
    out: dict[str, Any] = {
        "job_id": record.job_id,
        "seconds": record.seconds,
        "chunks": list(record.chunks),
        "mixture_log": log,
        "weights": {"step": steps, "weights": weights},
        "tokens": {
            "requested": requested_tokens(log, record.chunks, tokens.sum(axis=1)).tolist(),
            "delivered": delivered.tolist(),
        },
        "train_loss": {
            "step": bins_step,
            "tokens": [float(cumulative[s - 1]) for s in bins_step],
            "loss": bins_loss,
        },
        "validation": {
            "step": list(record.eval_steps),
            "tokens": tokens_at,
            "loss": validation,
            "mean": means,
        },
    }
    if record.algorithm is not None:
        out["laws"] = _laws(record.algorithm, loss_sum, tokens, settings.seq_len)
    return out


def _decode_f4(data: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(data["f4"])
    return np.frombuffer(raw, dtype="<f4").reshape(data["shape"]).astype(np.float64)


def _laws(
    state: Mapping[str, Any], loss_sum: np.ndarray, tokens: np.ndarray, seq_len: int
) -> dict[str, Any]:
    """The fitted laws with what they were fitted to, as plain series."""
    k = loss_sum.shape[1]
    n = np.cumsum(tokens.sum(axis=1)) / seq_len  # ADO's n: samples of seq_len so far
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(tokens > 0, loss_sum / np.where(tokens > 0, tokens, 1), np.nan)
    raw_laws = state.get("laws")
    laws = (
        [None if row is None or None in row else [float(v) for v in row] for row in raw_laws]
        if raw_laws is not None
        else [None] * k
    )
    grid = np.geomspace(float(n[0]), float(n[-1]), CURVE_POINTS) if len(n) else np.zeros(0)
    curve = [
        None if row is None else law_loss(np.repeat([row], len(grid), axis=0), grid).tolist()
        for row in laws
    ]
    points: dict[str, Any] = {"n": [], "loss": []}
    series = state.get("series") or {}
    if "log_n" in series and "log_loss" in series:
        log_n, log_loss = _decode_f4(series["log_n"]), _decode_f4(series["log_loss"])
        if log_n.shape[1] != k:
            log_n = np.repeat(log_n, k, axis=1)
        points = {
            "n": [_nullable(row) for row in np.exp(log_n)],
            "loss": [_nullable(row) for row in np.exp(log_loss)],
        }
    return {
        "n_final": [float(v) for v in state.get("n", [])],
        "fits": int(state.get("fits", 0)),
        "laws": laws,
        "observed": {"n": n.tolist(), "loss": [_nullable(row) for row in observed]},
        "fit_points": points,
        "curve": {"n": list(map(float, grid)), "loss": curve},
    }


def build_manifest(
    *,
    runs: Mapping[str, RunRecord],
    settings: TrainSettings,
    chunk_size: int,
    ado_options: Mapping[str, Any],
    tokenizer: Mapping[str, Any],
    corpus: Mapping[str, Any],
    notes: Callable[[Mapping[str, Any]], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Every series the report plots (see the module), plus what produced them; ``notes``
    makes the report's lines on how it was run from the manifest."""
    first = runs["natural"]
    domains = [_domain(s) for s in first.selectors]
    built = {name: run_series(runs[name], settings) for name in RUNS}
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "domains": domains,
        "selectors": list(first.selectors),
        "settings": {**asdict(settings), "chunk_size": chunk_size},
        "tokens_per_run": settings.steps * settings.tokens_per_step,
        "ado_options": dict(ado_options),
        "tokenizer": dict(tokenizer),
        "corpus": dict(corpus),
        "runs": built,
    }
    manifest["difference"] = validation_difference(built)
    manifest["summary"] = summary_rows(manifest)
    manifest["notes"] = list(notes(manifest)) if notes is not None else []
    return manifest


def validation_difference(runs: Mapping[str, Any]) -> dict[str, Any]:
    """ADO's validation loss minus the natural run's, per domain and for the mean, at each
    evaluation (both runs are measured at the same token counts)."""
    natural, ado = runs["natural"]["validation"], runs["ado"]["validation"]
    if natural["tokens"] != ado["tokens"]:
        msg = "the runs were evaluated at different token counts; they cannot be compared"
        raise ValueError(msg)

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return {
        "step": list(natural["step"]),
        "tokens": list(natural["tokens"]),
        "loss": [
            [minus(a, b) for a, b in zip(row_ado, row_nat, strict=True)]
            for row_ado, row_nat in zip(ado["loss"], natural["loss"], strict=True)
        ],
        "mean": [minus(a, b) for a, b in zip(ado["mean"], natural["mean"], strict=True)],
    }


def summary_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per domain: the final validation loss of both runs and the weights at the start and
    at the end of the ADO run."""
    runs = manifest["runs"]
    rows = []
    for i, domain in enumerate(manifest["domains"]):
        rows.append(
            {
                "domain": domain,
                "natural_weight": runs["natural"]["weights"]["weights"][-1][i],
                "ado_weight": runs["ado"]["weights"]["weights"][-1][i],
                "validation_natural": runs["natural"]["validation"]["loss"][-1][i],
                "validation_ado": runs["ado"]["validation"]["loss"][-1][i],
            }
        )
    return rows


def summary_text(manifest: Mapping[str, Any]) -> str:
    """The console table: per domain, validation loss of both runs and the final weights."""
    rows = manifest["summary"]
    lines = [
        f"{'domain':<14} {'val natural':>11} {'val ADO':>9} {'ADO - nat':>10} "
        f"{'w natural':>10} {'w ADO end':>10}"
    ]

    def number(v: float | None, width: int, spec: str = ".3f") -> str:
        return (format(v, spec) if v is not None else "-").rjust(width)

    for r in rows:
        a, b = r["validation_natural"], r["validation_ado"]
        lines.append(
            f"{r['domain']:<14} {number(a, 11)} {number(b, 9)} "
            f"{number(b - a if a is not None and b is not None else None, 10, '+.3f')} "
            f"{r['natural_weight']:>10.3f} {r['ado_weight']:>10.3f}"
        )
    nat = manifest["runs"]["natural"]["validation"]["mean"][-1]
    ado = manifest["runs"]["ado"]["validation"]["mean"][-1]
    lines.append(
        f"{'mean':<14} {number(nat, 11)} {number(ado, 9)} "
        f"{number(ado - nat if nat is not None and ado is not None else None, 10, '+.3f')}"
    )
    return "\n".join(lines)


def verdict(manifest: Mapping[str, Any]) -> str:
    """One sentence: which run has the lower mean validation loss, and on how many domains."""
    rows = [
        r
        for r in manifest["summary"]
        if r["validation_natural"] is not None and r["validation_ado"] is not None
    ]
    if not rows:
        return "no domain had validation windows, so the runs cannot be compared"
    better = sum(r["validation_ado"] < r["validation_natural"] for r in rows)
    nat = manifest["runs"]["natural"]["validation"]["mean"][-1]
    ado = manifest["runs"]["ado"]["validation"]["mean"][-1]
    if abs(ado - nat) < 5e-4:
        winner = "neither run"
    else:
        winner = "ADO" if ado < nat else "the natural mixture"
    text = (
        f"at {manifest['tokens_per_run']:,} training tokens per run, {winner} has the lower "
        f"mean validation loss ({ado:.3f} with ADO vs {nat:.3f} natural, a difference of "
        f"{ado - nat:+.3f} nats per token); ADO is lower on {better} of {len(rows)} domains"
    )
    start = manifest["ado_options"].get("start_step", 0)
    since = [
        d
        for step, d in zip(
            manifest["difference"]["step"], manifest["difference"]["mean"], strict=True
        )
        if step > start and d is not None
    ]
    if len(since) > 1:
        text += (
            f". Over the {len(since)} evaluations after ADO's first weights the mean "
            f"difference ranged from {min(since):+.3f} to {max(since):+.3f}"
        )
        if min(since) < 0 < max(since):
            text += ": its sign changed, so this run does not show either mixture to be better"
    return text


# -- figures -----------------------------------------------------------------------------------
def _matplotlib() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        msg = "the demo report needs matplotlib: pip install 'mixplane[demo]'"
        raise DependencyError(msg) from exc
    return Figure


def _colors(k: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(k)]


def _panels(fig: Figure, count: int, columns: int = 3) -> list[Axes]:
    rows = math.ceil(count / columns)
    axes = fig.subplots(rows, columns, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return axes[:count]


def _values(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _column(rows: Sequence[Sequence[float | None]], i: int) -> list[float]:
    return _values([row[i] for row in rows])


def figures(manifest: Mapping[str, Any]) -> dict[str, Figure]:
    """The report's figures, drawn only from ``manifest`` (one Line2D or bar per series)."""
    figure = _matplotlib()
    colors = _colors(len(manifest["domains"]))
    return {
        "weights": _weights_figure(figure, manifest, colors),
        "tokens": _tokens_figure(figure, manifest),
        "validation_loss": _validation_loss_figure(figure, manifest, colors),
        "train_loss": _train_loss_figure(figure, manifest, colors),
        "scaling_laws": _scaling_laws_figure(figure, manifest, colors),
    }


def _weights_figure(figure: type[Figure], manifest: Mapping[str, Any], colors: list[Any]) -> Figure:
    """The mixture over steps (ADO), the natural weights dashed."""
    domains = manifest["domains"]
    runs = manifest["runs"]
    fig = figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name in RUNS:
        series = runs[name]["weights"]
        for i, domain in enumerate(domains):
            ax.plot(
                series["step"],
                _column(series["weights"], i),
                drawstyle="steps-post",
                linestyle=STYLES[name],
                color=colors[i],
                label=f"{domain} ({LABELS[name]})",
                gid=f"{name}:{domain}",
            )
    ax.set(
        xlabel="training step", ylabel="weight", title="Mixture weights (ADO solid, natural dashed)"
    )
    fig.legend(fontsize=7, loc="outside right upper")
    return fig


def _tokens_figure(figure: type[Figure], manifest: Mapping[str, Any]) -> Figure:
    """Requested vs delivered tokens, both runs."""
    domains = manifest["domains"]
    runs = manifest["runs"]
    fig = figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(domains))
    bars = [(name, kind) for name in RUNS for kind in ("requested", "delivered")]
    width = 0.8 / len(bars)
    for j, (name, kind) in enumerate(bars):
        ax.bar(
            x + (j - (len(bars) - 1) / 2) * width,
            runs[name]["tokens"][kind],
            width,
            label=f"{LABELS[name]}: {kind}",
            hatch="//" if kind == "requested" else None,
            color=("tab:gray" if name == "natural" else "tab:blue"),
            alpha=0.55 if kind == "requested" else 0.95,
        )
    ax.set_xticks(x, domains)
    ax.set(ylabel="tokens", title="Tokens per domain: requested by the mixture vs trained")
    ax.legend(fontsize=8)
    return fig


def _validation_loss_figure(
    figure: type[Figure], manifest: Mapping[str, Any], colors: list[Any]
) -> Figure:
    """Validation loss per domain (and their mean) at the same token counts, and ADO - natural."""
    domains = manifest["domains"]
    runs = manifest["runs"]
    fig = figure(figsize=(11, 7), layout="constrained")
    axes = _panels(fig, len(domains) + 2)
    for name in RUNS:
        val = runs[name]["validation"]
        axes[0].plot(
            val["tokens"], _values(val["mean"]), STYLES[name], color="black",
            marker=".", label=LABELS[name], gid=f"{name}:mean",
        )  # fmt: skip
        for i, domain in enumerate(domains):
            axes[i + 1].plot(
                val["tokens"], _column(val["loss"], i), STYLES[name], color=colors[i],
                marker=".", label=LABELS[name], gid=f"{name}:{domain}",
            )  # fmt: skip
    difference = manifest["difference"]
    ax = axes[-1]
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.plot(
        difference["tokens"], _values(difference["mean"]), color="black", linewidth=2,
        label="mean", gid="difference:mean",
    )  # fmt: skip
    for i, domain in enumerate(domains):
        ax.plot(
            difference["tokens"], _column(difference["loss"], i), color=colors[i],
            label=domain, gid=f"difference:{domain}",
        )  # fmt: skip
    titles = ["mean over domains", *domains, "ADO - natural (below 0: ADO better)"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel="training tokens", ylabel="validation loss (nats/token)")
        ax.legend(fontsize=6 if ax is axes[-1] else 7, ncols=2 if ax is axes[-1] else 1)
    fig.suptitle("Validation loss on held-out windows")
    return fig


def _train_loss_figure(
    figure: type[Figure], manifest: Mapping[str, Any], colors: list[Any]
) -> Figure:
    """Training loss per domain, per evaluation interval."""
    domains = manifest["domains"]
    runs = manifest["runs"]
    fig = figure(figsize=(11, 6), layout="constrained")
    axes = _panels(fig, len(domains))
    for name in RUNS:
        train = runs[name]["train_loss"]
        for i, domain in enumerate(domains):
            axes[i].plot(
                train["tokens"], _column(train["loss"], i), STYLES[name], color=colors[i],
                marker=".", label=LABELS[name], gid=f"{name}:{domain}",
            )  # fmt: skip
    for ax, title in zip(axes, domains, strict=True):
        ax.set(title=title, xlabel="training tokens", ylabel="training loss (nats/token)")
        ax.legend(fontsize=7)
    fig.suptitle("Training loss per domain (mean over each evaluation interval)")
    return fig


def _scaling_laws_figure(
    figure: type[Figure], manifest: Mapping[str, Any], colors: list[Any]
) -> Figure:
    """ADO's scaling laws over the observed losses."""
    from matplotlib.ticker import NullFormatter

    domains = manifest["domains"]
    runs = manifest["runs"]
    laws = runs["ado"].get("laws")
    fig = figure(figsize=(11, 6), layout="constrained")
    axes = _panels(fig, len(domains))
    if laws is not None:
        obs, pts, curve = laws["observed"], laws["fit_points"], laws["curve"]
        for i, domain in enumerate(domains):
            ax = axes[i]
            ax.plot(
                obs["n"], _column(obs["loss"], i), ".", color=colors[i], alpha=0.4,
                markersize=4, label="observed (per step)", gid=f"observed:{domain}",
            )  # fmt: skip
            if pts["n"]:
                ax.plot(
                    _column(pts["n"], i), _column(pts["loss"], i), "o", color="black",
                    markersize=2, label="smoothed points fitted", gid=f"points:{domain}",
                )  # fmt: skip
            if curve["loss"][i] is not None:
                lb, le, alpha = laws["laws"][i]
                ax.plot(
                    curve["n"], curve["loss"][i], "-", color="black",
                    label=f"{math.exp(le):.2f} + {math.exp(lb):.2f} n^-{alpha:.2f}",
                    gid=f"law:{domain}",
                )  # fmt: skip
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(title=domain, xlabel=f"n (windows of {manifest['settings']['seq_len']})",
                   ylabel="training loss")  # fmt: skip
            ax.legend(fontsize=7)
    fig.suptitle("ADO's fitted scaling laws L(n) = eps + beta n^-alpha (last refit)")
    return fig


# -- files -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReportFiles:
    folder: Path
    html: Path
    manifest: Path
    images: dict[str, Path]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_report(
    manifest: Mapping[str, Any],
    folder: Path,
    *,
    progress: bool | None = None,
) -> ReportFiles:
    """Write ``manifest.json``, the PNGs drawn from it (as read back) and ``index.html``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    stored = orjson.loads(manifest_path.read_bytes())
    images: dict[str, Path] = {}
    encoded: dict[str, str] = {}
    drawn = figures(stored)
    for name, fig in tqdm(
        drawn.items(),
        total=len(drawn),
        desc="report",
        unit="figure",
        leave=False,
        disable=not progress if progress is not None else None,
    ):
        data = _png(fig)
        path = folder / f"{name}.png"
        path.write_bytes(data)
        images[name] = path
        encoded[name] = base64.b64encode(data).decode("ascii")
    html_path = folder / "index.html"
    html_path.write_text(_html(stored, encoded), encoding="utf-8")
    return ReportFiles(folder=folder, html=html_path, manifest=manifest_path, images=images)


CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.better { color: #0a6b2d; font-weight: 600; } .worse { color: #9b1c1c; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
code { background: #f4f4f4; padding: 0 0.25em; border-radius: 3px; }
.verdict { background: #f6f8fa; padding: 0.7em 1em; border-left: 4px solid #888; }
"""


def _html(manifest: Mapping[str, Any], images: Mapping[str, str]) -> str:
    esc = html.escape
    settings = manifest["settings"]

    def number(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    rows = []
    for r in manifest["summary"]:
        a, b = r["validation_natural"], r["validation_ado"]
        diff = None if a is None or b is None else b - a
        cls = "" if diff is None else ("better" if diff < 0 else "worse")
        rows.append(
            f"<tr><td>{esc(r['domain'])}</td><td>{number(a)}</td><td>{number(b)}</td>"
            f"<td class='{cls}'>{number(diff, '+.3f')}</td>"
            f"<td>{r['natural_weight']:.3f}</td><td>{r['ado_weight']:.3f}</td></tr>"
        )
    tokens_rows = []
    for i, domain in enumerate(manifest["domains"]):
        cells = "".join(
            f"<td>{manifest['runs'][n]['tokens'][kind][i]:,.0f}</td>"
            for n in RUNS
            for kind in ("requested", "delivered")
        )
        tokens_rows.append(f"<tr><td>{esc(domain)}</td>{cells}</tr>")
    options = ", ".join(
        f"<code>{esc(k)}={esc(str(v))}</code>" for k, v in manifest["ado_options"].items()
    )
    seconds = {n: manifest["runs"][n]["seconds"] for n in RUNS}
    captions = {
        "weights": "Mixture weights over training steps: ADO (solid) from the server's mixture "
        "log, each set by the feedback of that step and applied from the next planned chunk; "
        "the natural mixture (dashed) stays put.",
        "tokens": "Tokens per domain. Requested: each step's tokens times the weights in force "
        "for the chunk they came from. Delivered: target tokens of that domain in the trained "
        "batches (from domain_ids).",
        "validation_loss": "Loss on the same held-out windows (validation split) for both "
        "runs, measured at the same token counts.",
        "train_loss": "Training loss per domain, averaged over each evaluation interval.",
        "scaling_laws": "ADO's laws from the last refit on the server, drawn over the losses "
        "it saw: per-step mean losses (faint), the smoothed points the fit used (black dots).",
    }
    figures_html = "\n".join(
        f"<h2>{esc(name.replace('_', ' ').capitalize())}</h2><p>{esc(captions[name])}</p>"
        f"<img alt='{esc(name)}' src='data:image/png;base64,{images[name]}'>"
        for name in FIGURES
        if name in images
    )
    notes_html = "".join(f"<li>{esc(n)}</li>" for n in manifest.get("notes", ()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mixplane demo: natural mixture vs ADO</title>
<style>{CSS}</style></head><body>
<h1>mixplane demo: natural mixture vs ADO</h1>
<p class="verdict">{esc(verdict(manifest))}.</p>
<p>Two runs of the same model from the same initial weights, {settings["steps"]} steps of
{settings["batch_size"]} windows of {settings["seq_len"]} tokens each
({manifest["tokens_per_run"]:,} tokens per run), fed through a mixplane server; natural run
{seconds["natural"]:.0f} s, ADO run {seconds["ado"]:.0f} s.</p>
<h2>Summary</h2>
<table><tr><th>domain</th><th>validation, natural</th><th>validation, ADO</th>
<th>ADO - natural</th><th>weight, natural</th><th>weight, ADO at end</th></tr>
{"".join(rows)}</table>
<table><tr><th>domain</th><th>natural: requested</th><th>natural: delivered</th>
<th>ADO: requested</th><th>ADO: delivered</th></tr>{"".join(tokens_rows)}</table>
<h2>How it was run</h2><ul>{notes_html}
<li>ADO options (scaled to the run's length): {options}.</li></ul>
{figures_html}
<p>Every plotted series is in <a href="manifest.json">manifest.json</a>; the PNG files lie next
to this page.</p>
</body></html>
"""


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mixplane.demo.report MANIFEST``: draw the report again from a manifest."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m mixplane.demo.report PATH/manifest.json", file=sys.stderr)
        raise SystemExit(2)
    path = Path(args[0])
    files = write_report(orjson.loads(path.read_bytes()), path.parent)
    print(f"report: {files.html}")


if __name__ == "__main__":
    main()
