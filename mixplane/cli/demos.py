"""``mixplane demo``: a small model trained on real text through a server, natural mixture vs
ADO. Its defaults are stated here (torch loads only when it runs); a test keeps them those
of ``TrainSettings`` and ``DemoOptions``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mixplane.errors import MixplaneError


@click.command()
@click.option(
    "--steps",
    type=click.IntRange(min=8),
    default=1000,
    show_default=True,
    help="Training steps of each run (both runs train the same tokens).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Windows per step.",
)
@click.option(
    "--seq-len",
    type=click.IntRange(min=8),
    default=128,
    show_default=True,
    help="Tokens per window.",
)
@click.option(
    "--vocab-size",
    type=click.IntRange(min=300),
    default=4096,
    show_default=True,
    help="Tokens of the BPE trained on the corpus.",
)
@click.option(
    "--d-model",
    type=click.IntRange(min=8),
    default=128,
    show_default=True,
    help="Model width (a multiple of the 4 heads).",
)
@click.option(
    "--layers", type=click.IntRange(min=1), default=2, show_default=True, help="Decoder blocks."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=3e-3,
    show_default=True,
    help="Peak learning rate (AdamW).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Steps between validation measurements.",
)
@click.option(
    "--max-docs",
    type=click.IntRange(min=1),
    help="At most this many documents per dataset (e.g. 40, with a small model, for a run "
    "of about 20 s).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the model and the jobs."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder of the report (default: HOME/report).",
)
@click.option(
    "--corpus",
    type=click.Path(file_okay=False),
    help="Folder the corpus is built in (default: HOME/demo-corpus).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars (they show on a terminal).")
@click.pass_context
def demo(
    ctx: click.Context,
    steps: int,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    d_model: int,
    layers: int,
    lr: float,
    eval_every: int,
    max_docs: int | None,
    seed: int,
    out: str | None,
    corpus: str | None,
    no_progress: bool,
) -> None:
    """Train a small model on real multi-domain text: natural mixture vs ADO.

    Builds a corpus of eight datasets from text inside installed packages (English, Bulgarian,
    Chinese, Python; six domains), registers it, trains a 4k byte-level BPE on it, starts a
    mixplane server on 127.0.0.1 and trains the same small GPT twice through it, on the
    natural mixture of domains and on ADO starting from it, at equal token budgets. Writes
    HOME/report/index.html, the PNGs and manifest.json, and prints a summary. About 3 minutes
    on 2 idle cores with the defaults (5 with other load); nothing is downloaded. See
    docs/demo.md.

    \b
    Examples:
      mixplane --home .mixplane-demo demo
      mixplane --home /tmp/d demo --max-docs 40 --steps 16 --d-model 32 --layers 1
    """
    from mixplane.errors import DependencyError

    if ctx.obj.get("server"):
        msg = "the demo starts its own server: drop --server (and MIXPLANE_SERVER)"
        raise MixplaneError(msg)
    # OpenMP threads that sleep while they wait, set before torch loads: the server and the
    # prefetch thread share the cores, and spinning threads then ran steps 1.6x slower
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from mixplane.catalog.catalog import default_home
        from mixplane.demo.run import DemoOptions, run_demo
        from mixplane.demo.train import TrainSettings
    except ImportError as exc:
        msg = (
            f"the demo needs the torch, demo and server extras ({exc}); install them: "
            "pip install 'mixplane[torch,demo,server]'"
        )
        raise DependencyError(msg) from exc
    if d_model % 4:
        raise click.BadParameter(
            f"{d_model} is not a multiple of 4 (the heads)", param_hint="--d-model"
        )
    settings = TrainSettings(
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        d_model=d_model,
        layers=layers,
        lr=lr,
        eval_every=eval_every,
        warmup=max(1, min(30, steps // 10)),
        seed=seed,
    )
    home = Path(ctx.obj["home"]) if ctx.obj["home"] else default_home()
    options = DemoOptions(
        home=home,
        corpus=Path(corpus) if corpus else None,
        out=Path(out) if out else None,
        max_docs=max_docs,
        vocab_size=vocab_size,
        progress=False if no_progress else None,
        settings=settings,
    )
    run_demo(options, echo=click.echo)
