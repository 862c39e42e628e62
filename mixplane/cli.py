"""The ``mixplane`` command line: register, ls, add-property, explain, demo.

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


@main.command()
@click.option("--where", "where", help="Filter, e.g. \"language == 'en' and quality >= 0.5\".")
@click.option("--by", "by", default="", help="Comma-separated grouping properties.")
@click.option("--runs", is_flag=True, help="With --json: include each component's ranges.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def explain(ctx: click.Context, where: str | None, by: str, runs: bool, as_json: bool) -> None:
    """Show the SQL of a query and its components with sample and byte counts."""
    props = [p.strip() for p in by.split(",") if p.strip()]
    with _catalog(ctx) as cat:
        result = cat.explain(where, by=props)
    if as_json:
        click.echo(json.dumps(result.to_dict(runs=runs), default=str))
        return
    click.echo(render_explain(result))


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
