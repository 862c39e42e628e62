"""Dataset commands: register, ls, add-property, count-tokens (in this process, or through
--server where the command allows it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mixplane.cli.options import engine_flags
from mixplane.cli.root import check_engine, load_function, open_catalog, open_client, pairs
from mixplane.errors import MixplaneError


@click.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet", "webdataset", "megatron", "tokens", "arrow"]),
    help="File format (default: from each file's name; .idx megatron, .npy tokens, .arrow arrow).",
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
@engine_flags("Where files are scanned and functions run: this process, or a Ray cluster.")
@click.option(
    "--tokenizer",
    metavar="NAME|PATH",
    help="Pre-tokenized data: the tokenizer its ids belong to (stored as its fingerprint).",
)
@click.option(
    "--token-dtype",
    type=click.Choice(["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"]),
    help="Raw token memmaps (--format tokens): the dtype of the ids.",
)
@click.option(
    "--tokens-field",
    metavar="FIELD",
    help="Arrow and Parquet files: the column holding each document's ids (default input_ids).",
)
@click.option(
    "--path-pattern",
    metavar="REGEX",
    help="Properties from each file's path: named groups, e.g. '/(?P<source>[^/]+)/[^/]+$'.",
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
    engine: str,
    ray_address: str | None,
    tokenizer: str | None,
    token_dtype: str | None,
    tokens_field: str | None,
    path_pattern: str | None,
    as_json: bool,
) -> None:
    """Register files (paths, directories or globs) as dataset NAME, all or nothing.

    Pre-tokenized data (Megatron .bin/.idx, token memmaps, Arrow/Parquet token columns) is
    registered with --tokenizer, the tokenizer its ids belong to."""
    from mixplane.catalog.formats import TOKEN_FORMATS
    from mixplane.catalog.properties import parse_constant

    consts = {k: parse_constant(v) for k, v in pairs(constants, "--constant").items()}
    check_engine(ctx, engine, ray_address)
    if ctx.obj.get("server"):
        if function:
            msg = (
                "--function runs your code, which never travels to a server: register with "
                "field properties and constants through it, or run add-property locally"
            )
            raise MixplaneError(msg)
        if tokenizer or token_dtype or tokens_field or path_pattern or fmt in TOKEN_FORMATS:
            msg = (
                "pre-tokenized data and path patterns are registered where the catalog is "
                "open: stop the server and run 'mixplane --home HOME register ... --tokenizer "
                "...', then serve it"
            )
            raise MixplaneError(msg)
        with open_client(ctx) as client:
            report = client.register(
                name,
                [
                    p if "://" in p or any(c in p for c in "*?[") else str(Path(p).resolve())
                    for p in paths
                ],
                format=fmt,
                properties=pairs(properties, "--property"),
                constants=consts,
                preset=preset,
                text_field=text_field,
                on_error=on_error,  # type: ignore[arg-type]
                replace=replace,
            )
        if as_json:
            click.echo(json.dumps(report, default=str))
            return
        click.echo(
            f"registered {report['name']}: {report['files']} files, {report['samples']} samples, "
            f"{report['bytes'] / 1e6:.1f} MB of text, {report['skipped']} skipped"
        )
        for message in report.get("messages", []):
            click.echo(f"  skipped {message}")
        return
    with open_catalog(ctx) as cat:
        info = cat.register(
            name,
            list(paths),
            format=fmt,
            properties=pairs(properties, "--property"),
            constants=consts,
            preset=preset,
            function=load_function(function) if function else None,
            text_field=text_field,
            on_error=on_error,
            replace=replace,
            text_lengths=text_lengths,
            engine=engine,
            ray_address=ray_address,
            tokenizer=tokenizer,
            token_dtype=token_dtype,
            tokens_field=tokens_field,
            path_pattern=path_pattern,
        )
    if as_json:
        click.echo(json.dumps(info.to_dict()))
        return
    click.echo(
        f"registered {info.name}: {info.files} files, {info.samples} samples, "
        f"{info.bytes / 1e6:.1f} MB of {'token ids' if tokenizer else 'text'}, "
        f"{info.skipped} skipped"
    )
    for report in info.file_reports:
        for message in report.messages:
            click.echo(f"  skipped {message}")


@click.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of datasets.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List registered datasets and properties."""
    if ctx.obj.get("server"):
        with open_client(ctx) as client:
            rows = client.datasets()
        if as_json:
            click.echo(json.dumps(rows, default=str))
            return
        if not rows:
            click.echo("no datasets registered; add one with 'mixplane register NAME PATH...'")
            return
        click.echo(
            f"{'dataset':<24} {'files':>6} {'samples':>12} {'MB':>10} {'skipped':>8}  properties"
        )
        for d in rows:
            click.echo(
                f"{d['name']:<24} {d['files']:>6} {d['samples']:>12} {d['bytes'] / 1e6:>10.1f} "
                f"{d['skipped']:>8}  {', '.join(d['properties'])}"
            )
        return
    with open_catalog(ctx) as cat:
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


@click.command(name="add-property")
@click.argument("name")
@click.argument("function", metavar="MODULE:FUNCTION")
@click.option("--datasets", help="Comma-separated datasets (default: all).")
@click.option("--replace", is_flag=True, help="Recompute a property that has values.")
@engine_flags("Where files are scanned and functions run: this process, or a Ray cluster.")
@click.pass_context
def add_property(
    ctx: click.Context,
    name: str,
    function: str,
    datasets: str | None,
    replace: bool,
    engine: str,
    ray_address: str | None,
) -> None:
    """Compute property NAME with a Python function over batches of registered records.

    The function takes a pyarrow.Table of records and returns one value per record.
    """
    check_engine(ctx, engine, ray_address)
    fn = load_function(function)
    with open_catalog(ctx) as cat:
        n = cat.add_property(
            name,
            fn,
            datasets=datasets.split(",") if datasets else None,
            replace=replace,
            engine=engine,
            ray_address=ray_address,
        )
    click.echo(f"added property {name} to {n} samples")


@click.command(name="count-tokens")
@click.option(
    "--tokenizer",
    "tokenizer_spec",
    required=True,
    metavar="NAME|PATH",
    help="A tokenizer.json, a .tiktoken rank file, or a name: deepseek, qwen, qwen3.6.",
)
@click.option("--datasets", help="Comma-separated datasets (default: all).")
@engine_flags("Where texts are read and counted: worker processes here, or a Ray cluster.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes (local; default: one per core, none for a small count; 1: count in "
    "this process) or Ray tasks at once (default: the cluster's CPUs).",
)
@click.option(
    "--on-changed",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="A file changed since registration: stop before counting, or count the others and "
    "list it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def count_tokens(
    ctx: click.Context,
    tokenizer_spec: str,
    datasets: str | None,
    engine: str,
    ray_address: str | None,
    workers: int | None,
    on_changed: str,
    as_json: bool,
) -> None:
    """Count and store every sample's exact tokens for a tokenizer (cached per tokenizer and
    file: a second run counts nothing). Token-budgeted jobs with that tokenizer use them."""
    check_engine(ctx, engine, ray_address)
    names = [n.strip() for n in datasets.split(",") if n.strip()] if datasets else None
    if ctx.obj.get("server"):
        with open_client(ctx) as client:
            report = client.count_tokens(
                tokenizer_spec,
                datasets=names,
                workers=workers,
                on_changed=on_changed,  # type: ignore[arg-type]
            )
    else:
        with open_catalog(ctx) as cat:
            report = cat.count_tokens(
                tokenizer_spec,
                datasets=names,
                workers=workers,
                engine=engine,  # type: ignore[arg-type]
                ray_address=ray_address,
                on_changed=on_changed,  # type: ignore[arg-type]
            )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(render_token_counts(tokenizer_spec, report))
    for message in report.changed:
        click.echo(f"left out: {message}", err=True)


def render_token_counts(spec: str, report: Any) -> str:
    """The human-readable report of a count (``TokenCountReport``)."""
    where = "in this process" if not report.workers else f"{report.workers} {report.engine} workers"
    rate = report.counted_bytes / report.seconds / 1e6 if report.seconds > 0 else 0.0
    lines = [
        f"count-tokens {spec} (fingerprint {report.tokenizer}): counted {report.counted} samples "
        f"in {report.files_counted} files ({report.counted_bytes / 1e6:.1f} MB of text, "
        f"{report.seconds:.1f} s, {rate:.2f} MB/s, {where}); cached {report.cached} samples in "
        f"{report.files_cached} files",
        f"{'dataset':<24} {'files':>6} {'counted':>8} {'samples':>12} {'tokens':>14}",
    ]
    for d in report.datasets:
        lines.append(
            f"{d.name:<24} {d.files:>6} {d.counted_files:>8} {d.samples:>12} {d.tokens:>14}"
        )
    lines.append(f"{report.tokens} tokens in all")
    if report.changed:
        lines.append(
            f"{len(report.changed)} changed files left out (listed on stderr); re-register "
            "their datasets (--replace) and run count-tokens again"
        )
    return "\n".join(lines)
