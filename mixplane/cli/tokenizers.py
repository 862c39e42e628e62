"""Tokenizer commands: ``tokenizer train`` (a byte-level BPE on a dataset's sampled texts) and
``tokenizer info``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mixplane.cli.root import open_catalog
from mixplane.errors import MixplaneError


@click.group()
def tokenizer() -> None:
    """Train a BPE tokenizer on a dataset, or inspect one by path or name."""


@tokenizer.command(name="train")
@click.option("--dataset", required=True, help="Registered dataset to sample texts from.")
@click.option("--where", "where", help="Filter, e.g. \"language == 'en'\".")
@click.option("--vocab-size", type=click.IntRange(min=300), default=8000, show_default=True)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=20000,
    show_default=True,
    help="How many samples to train on (drawn without replacement).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample draw.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="tokenizer.json to write."
)
@click.option("--json", "as_json", is_flag=True, help="Print path, fingerprint and counts as JSON.")
@click.pass_context
def tokenizer_train(
    ctx: click.Context,
    dataset: str,
    where: str | None,
    vocab_size: int,
    samples: int,
    seed: int,
    out: str,
    as_json: bool,
) -> None:
    """Train a byte-level BPE (<eos> is id 0) on a seeded sample of a dataset's texts."""
    import numpy as np

    from mixplane.query.expr import col
    from mixplane.query.parse import parse_filter
    from mixplane.tokens.tokenizer import train_bpe

    with open_catalog(ctx) as cat:
        cat.dataset(dataset)  # DatasetNotFoundError names the known datasets
        condition = col("dataset") == dataset
        if where:
            condition = condition & parse_filter(where)
        runs = cat.components(condition).runs
        total = int(np.sum(runs.column("count").to_numpy())) if runs.num_rows else 0
        if total == 0:
            msg = f"dataset {dataset!r} has no samples matching {where!r}; widen --where"
            raise MixplaneError(msg)
        rng = np.random.default_rng(seed)
        positions = np.sort(rng.choice(total, size=min(samples, total), replace=False))
        texts = [t for t in cat.sample_texts(runs, positions) if t]
    if not texts:
        msg = f"the {len(positions)} sampled texts of dataset {dataset!r} are all empty"
        raise MixplaneError(msg)
    trained = train_bpe(texts, vocab_size=vocab_size, progress=sys.stderr.isatty())
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    trained.save(path)
    result = {
        "path": str(path),
        "fingerprint": trained.fingerprint,
        "vocab_size": trained.vocab_size,
        "samples": len(texts),
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"trained {trained.vocab_size} tokens on {len(texts)} samples of {dataset}: {path}\n"
        f"fingerprint {trained.fingerprint}"
    )


@tokenizer.command(name="info")
@click.argument("spec", metavar="PATH_OR_NAME")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def tokenizer_info(spec: str, as_json: bool) -> None:
    """Load a tokenizer (tokenizer.json, .tiktoken rank file, or a name such as qwen) and describe it."""
    from mixplane.tokens.tokenizer import load_tokenizer

    loaded = load_tokenizer(spec)
    info = {
        "spec": spec,
        "kind": loaded.kind,
        "source": loaded.source,
        "vocab_size": loaded.vocab_size,
        "eos_id": loaded.eos_id,
        "fingerprint": loaded.fingerprint,
    }
    if as_json:
        click.echo(json.dumps(info))
        return
    for key, value in info.items():
        click.echo(f"{key:<12} {'-' if value is None else value}")
