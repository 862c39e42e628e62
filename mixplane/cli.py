"""The ``mixplane`` command line: register, ls, add-property, explain, plan, tokenizer, demo.

User errors end with a one-line message and exit status 1 (2 for usage errors); ``--debug``
shows the traceback. Output for scripts is ``--json``; everything else is for people.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from mixplane.errors import MixplaneError

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Turns mixplane errors into one line on stderr unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (MixplaneError, OSError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="MIXPLANE_HOME",
    help="Catalog home directory (default: $MIXPLANE_HOME or ~/.mixplane).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, home: str | None, debug: bool, verbose: int) -> None:
    """mixplane: a declarative training-data plane.

    Register corpora with per-sample properties, query and mix them, and stream them to
    training.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"home": home, "debug": debug}


def _catalog(ctx: click.Context) -> Any:
    from mixplane.catalog.catalog import Catalog

    return Catalog.open(ctx.obj["home"])


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    from mixplane.catalog.properties import parse_assignment

    return dict(parse_assignment(v, what) for v in values)


@main.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet", "webdataset"]),
    help="File format (default: from each file's name).",
)
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="PROP=FIELD.PATH",
    help="A property read from a field path of each record (repeatable).",
)
@click.option(
    "--constant",
    "constants",
    multiple=True,
    metavar="PROP=VALUE",
    help="A property with one value for the whole dataset (repeatable).",
)
@click.option(
    "--preset",
    type=click.Choice(["slimpajama", "redpajama", "pile", "fineweb", "fineweb-edu"]),
    help="Field paths of a well-known corpus.",
)
@click.option(
    "--function",
    "function",
    metavar="MODULE:FUNCTION",
    help="A Python function over record batches returning {property: values}.",
)
@click.option("--text-field", help="Field holding the text (default: text; txt for webdataset).")
@click.option(
    "--on-error",
    type=click.Choice(["raise", "skip"]),
    default="raise",
    show_default=True,
    help="What to do with malformed records.",
)
@click.option("--replace", is_flag=True, help="Re-register a dataset that exists.")
@click.option(
    "--text-lengths",
    type=click.Choice(["exact", "metadata"]),
    default="exact",
    show_default=True,
    help="Parquet: read the text column, or estimate from the footer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def register(
    ctx: click.Context,
    name: str,
    paths: tuple[str, ...],
    fmt: str | None,
    properties: tuple[str, ...],
    constants: tuple[str, ...],
    preset: str | None,
    function: str | None,
    text_field: str | None,
    on_error: str,
    replace: bool,
    text_lengths: str,
    as_json: bool,
) -> None:
    """Register files (paths, directories or globs) as dataset NAME, all or nothing."""
    from mixplane.catalog.properties import parse_constant

    consts = {k: parse_constant(v) for k, v in _pairs(constants, "--constant").items()}
    with _catalog(ctx) as cat:
        info = cat.register(
            name,
            list(paths),
            format=fmt,
            properties=_pairs(properties, "--property"),
            constants=consts,
            preset=preset,
            function=_load(function) if function else None,
            text_field=text_field,
            on_error=on_error,
            replace=replace,
            text_lengths=text_lengths,
        )
    if as_json:
        click.echo(json.dumps(info.to_dict()))
        return
    click.echo(
        f"registered {info.name}: {info.files} files, {info.samples} samples, "
        f"{info.bytes / 1e6:.1f} MB of text, {info.skipped} skipped"
    )
    for report in info.file_reports:
        for message in report.messages:
            click.echo(f"  skipped {message}")


@main.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of datasets.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List registered datasets and properties."""
    with _catalog(ctx) as cat:
        datasets = cat.datasets()
        properties = cat.properties()
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in datasets]))
        return
    if not datasets:
        click.echo("no datasets registered; add one with 'mixplane register NAME PATH...'")
        return
    click.echo(
        f"{'dataset':<24} {'files':>6} {'samples':>12} {'MB':>10} {'skipped':>8}  properties"
    )
    for d in datasets:
        click.echo(
            f"{d.name:<24} {d.files:>6} {d.samples:>12} {d.bytes / 1e6:>10.1f} "
            f"{d.skipped:>8}  {', '.join(d.properties)}"
        )
    click.echo("properties: " + ", ".join(f"{k} ({v.value})" for k, v in properties.items()))


@main.command(name="add-property")
@click.argument("name")
@click.argument("function", metavar="MODULE:FUNCTION")
@click.option("--datasets", help="Comma-separated datasets (default: all).")
@click.option("--replace", is_flag=True, help="Recompute a property that has values.")
@click.pass_context
def add_property(
    ctx: click.Context, name: str, function: str, datasets: str | None, replace: bool
) -> None:
    """Compute property NAME with a Python function over batches of registered records.

    The function takes a pyarrow.Table of records and returns one value per record.
    """
    fn = _load(function)
    with _catalog(ctx) as cat:
        n = cat.add_property(
            name, fn, datasets=datasets.split(",") if datasets else None, replace=replace
        )
    click.echo(f"added property {name} to {n} samples")


def _job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--mixture",
            "mixture",
            help='Mixture as JSON, e.g. \'{"language=en": 0.7, "language=de": 0.3}\'.',
        ),
        click.option(
            "--mixture-file",
            type=click.Path(exists=True, dir_okay=False),
            help="Mixture or schedule as JSON or YAML (hierarchical mixtures, phases).",
        ),
        click.option(
            "--unit", type=click.Choice(["samples", "tokens"]), default="samples", show_default=True
        ),
        click.option(
            "--chunk-size", type=int, default=1000, show_default=True, help="Budget per chunk."
        ),
        click.option("--chunks", type=int, default=10, show_default=True, help="How many chunks."),
        click.option("--dp-groups", type=int, default=1, show_default=True),
        click.option("--ranks-per-group", type=int, default=1, show_default=True),
        click.option("--workers", type=int, default=1, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--on-exhausted",
            type=click.Choice(["repeat", "stop", "redistribute"]),
            default="repeat",
            show_default=True,
        ),
        click.option(
            "--bytes-per-token",
            type=float,
            default=4.0,
            show_default=True,
            help="Token estimate from text bytes (token mode without token counts).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _submit(
    cat: Any, where: str | None, mixture: str | None, mixture_file: str | None, opts: dict[str, Any]
) -> Any:
    from mixplane.chunking.assign import Topology
    from mixplane.client.client import Client
    from mixplane.job import Phase
    from mixplane.mixture.mixture import Mixture

    if (mixture is None) == (mixture_file is None):
        msg = "give exactly one of --mixture JSON or --mixture-file F"
        raise MixplaneError(msg)
    if mixture is not None:
        try:
            data = json.loads(mixture)
        except json.JSONDecodeError as exc:
            msg = f"--mixture is not valid JSON ({exc}); e.g. '{{\"language=en\": 1.0}}'"
            raise MixplaneError(msg) from exc
    else:
        import yaml

        text = Path(mixture_file).read_text()  # type: ignore[arg-type]
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            msg = f"{mixture_file}: not valid JSON or YAML ({exc})"
            raise MixplaneError(msg) from exc
    if not isinstance(data, dict):
        msg = "a mixture must be a JSON/YAML object mapping selectors to weights"
        raise MixplaneError(msg)
    schedule: list[Phase] = []
    unit: Any = "chunks"
    if "phases" in data:
        phases = data["phases"]
        unit = data.get("unit", "chunks")
        if unit not in ("chunks", "samples", "tokens"):
            msg = f"schedule unit must be chunks, samples or tokens, got {unit!r}"
            raise MixplaneError(msg)
        first = phases[0]
        where = first.get("where", where)
        opts["on_exhausted"] = first.get("on_exhausted", opts["on_exhausted"])
        data = first["mixture"]
        schedule = [
            Phase(
                start=int(p["start"]),
                mixture=Mixture.from_json(p["mixture"]),
                where=p.get("where"),
                on_exhausted=p.get("on_exhausted", "repeat"),
            )
            for p in phases[1:]
        ]
    client = Client(cat)
    topology = Topology(
        dp_groups=opts["dp_groups"],
        ranks_per_group=opts["ranks_per_group"],
        workers=opts["workers"],
    )
    return client, client.submit(
        "cli",
        where=where,
        mixture=Mixture.from_json(data),
        topology=topology,
        seed=opts["seed"],
        unit=opts["unit"],
        chunk_size=opts["chunk_size"],
        on_exhausted=opts["on_exhausted"],
        bytes_per_token=opts["bytes_per_token"],
        schedule=schedule,
        schedule_unit=unit,
    )


@main.command()
@click.option("--where", "where", help="Filter, e.g. \"language == 'en' and quality >= 0.5\".")
@_job_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as a JSON list.")
@click.pass_context
def plan(
    ctx: click.Context,
    /,
    where: str | None,
    mixture: str | None,
    mixture_file: str | None,
    as_json: bool,
    **opts: Any,
) -> None:
    """Plan a job's first chunks: which ranges each chunk reads and who consumes it."""
    with _catalog(ctx) as cat:
        _, job = _submit(cat, where, mixture, mixture_file, opts)
        selectors = [c.selector for c in job.result.components]
        out = []
        for spec in job.plan(opts["chunks"]):
            group, worker = job.assignment.owner(spec.index)
            amounts = spec.tokens if spec.unit == "tokens" else spec.counts
            counts: dict[str, int] = {}
            for sel, n in zip(selectors, amounts.tolist(), strict=True):
                if n:
                    counts[sel] = counts.get(sel, 0) + n
            out.append(
                {
                    "index": spec.index,
                    "dp_group": group,
                    "worker": worker,
                    "unit": spec.unit,
                    "mixture_version": spec.mixture_version,
                    "last": spec.last,
                    "counts": counts,
                    "samples": spec.num_samples,
                    "ranges": [
                        {"component": selectors[c], "file": f, "start": s, "count": n}
                        for c, f, s, n in zip(
                            spec.components.tolist(),
                            spec.files.tolist(),
                            spec.starts.tolist(),
                            spec.lengths.tolist(),
                            strict=True,
                        )
                    ],
                }
            )
    if as_json:
        click.echo(json.dumps(out))
        return
    for chunk in out:
        shares = ", ".join(f"{k}: {v}" for k, v in chunk["counts"].items())
        click.echo(
            f"chunk {chunk['index']:>5} -> group {chunk['dp_group']} worker {chunk['worker']}"
            f"  {len(chunk['ranges'])} ranges  {shares}"
        )


@main.command()
@click.option("--where", "where", help="Filter, e.g. \"language == 'en' and quality >= 0.5\".")
@click.option("--by", "by", default="", help="Comma-separated grouping properties.")
@click.option("--runs", is_flag=True, help="With --json: include each component's ranges.")
@_job_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def explain(
    ctx: click.Context,
    /,
    where: str | None,
    by: str,
    runs: bool,
    mixture: str | None,
    mixture_file: str | None,
    as_json: bool,
    **opts: Any,
) -> None:
    """Show the SQL of a query and its components; with --mixture, what a job would draw."""
    props = [p.strip() for p in by.split(",") if p.strip()]
    with _catalog(ctx) as cat:
        if mixture is not None or mixture_file is not None:
            client, _ = _submit(cat, where, mixture, mixture_file, opts)
            report = client.explain("cli", chunks=opts["chunks"])
            if as_json:
                click.echo(json.dumps(report, default=str))
                return
            click.echo(render_job(report))
            return
        result = cat.explain(where, by=props)
    if as_json:
        click.echo(json.dumps(result.to_dict(runs=runs), default=str))
        return
    click.echo(render_explain(result))


def render_job(report: dict[str, Any]) -> str:
    lines = [
        f"{'component':<28} {'samples':>9} {'tokens':>10} {'weight':>7} {'draws':>10} {'epochs':>7}  runs out"
    ]
    for row in report["components"]:
        lines.append(
            f"{row['component']:<28} {row['samples']:>9} {row['tokens']:>10} {row['weight']:>7.3f} "
            f"{row.get('draws', 0):>10.0f} {row.get('epochs', 0):>7.2f}  "
            f"{row.get('runs_out_at_chunk', '-')}"
        )
    return "\n".join(lines)


def render_explain(result: Any) -> str:
    """The human-readable explain table."""
    lines = ["sql:", *("  " + line for line in result.sql.splitlines())]
    if result.params:
        lines.append(f"params: {result.params}")
    total_s, total_b = max(result.total_samples, 1), max(result.total_bytes, 1)
    width = max([len(c.selector) for c in result.components] + [9])
    lines.append(
        f"{'component':<{width}} {'samples':>10} {'share':>7} {'MB':>9} {'share':>7} {'runs':>6}"
    )
    for c in result.components:
        lines.append(
            f"{c.selector:<{width}} {c.samples:>10} {c.samples / total_s:>7.1%} "
            f"{c.bytes / 1e6:>9.2f} {c.bytes / total_b:>7.1%} {c.runs.num_rows:>6}"
        )
    lines.append(
        f"{'total':<{width}} {result.total_samples:>10} {'':>7} {result.total_bytes / 1e6:>9.2f}"
    )
    return "\n".join(lines)


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Where to build the corpus (default: <home>/demo).",
)
@click.option(
    "--max-docs", type=int, help="At most this many documents per source (for quick runs)."
)
@click.pass_context
def demo(ctx: click.Context, out: str | None, max_docs: int | None) -> None:
    """Build a small real multi-source corpus, register it, and explain it."""
    from mixplane.demo.run import run_demo

    run_demo(
        home=ctx.obj["home"], out=Path(out) if out else None, max_docs=max_docs, echo=click.echo
    )


@main.group()
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

    with _catalog(ctx) as cat:
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
    trained = train_bpe(texts, vocab_size=vocab_size)
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


def _load(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        msg = f"expected MODULE:FUNCTION, got {spec!r}"
        raise MixplaneError(msg)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import module {module_name!r} ({exc}); is it on PYTHONPATH?"
        raise MixplaneError(msg) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        msg = f"module {module_name!r} has no function {attr!r}"
        raise MixplaneError(msg)
    return fn  # type: ignore[no-any-return]


if __name__ == "__main__":
    main()
