"""The ``mixplane`` command line: register, ls, add-property, count-tokens, explain, plan,
stream, tokenizer, demo.

User errors end with a one-line message and exit status 1 (2 for usage errors); ``--debug``
shows the traceback. Output for scripts is ``--json``; everything else is for people.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypedDict

import click
import orjson

from mixplane.errors import MixplaneError, StateError, shown
from mixplane.job.spec import JobSpec, job_options

if TYPE_CHECKING:
    from mixplane.client.windows import WindowStream, WindowStreamState
    from mixplane.job import JobState

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Turns mixplane errors into one line on stderr unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (MixplaneError, OSError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("error: " + " ".join(str(exc).splitlines()), err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="MIXPLANE_HOME",
    help="Catalog home directory (default: $MIXPLANE_HOME or ~/.mixplane).",
)
@click.option(
    "--server",
    envvar="MIXPLANE_SERVER",
    metavar="URL",
    help="Run ls, register, count-tokens, explain, plan and stream against this mixplane server "
    "(default: $MIXPLANE_SERVER; without it, the catalog at --home in this process).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    envvar="MIXPLANE_TOKEN_FILE",
    help="File holding the server's bearer token (default: $MIXPLANE_TOKEN_FILE).",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False),
    envvar="MIXPLANE_CA_FILE",
    help="PEM certificates that sign an https:// server's certificate, in place of the "
    "system's (default: $MIXPLANE_CA_FILE).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(
    ctx: click.Context,
    home: str | None,
    server: str | None,
    token_file: str | None,
    ca_file: str | None,
    debug: bool,
    verbose: int,
) -> None:
    """mixplane: a declarative training-data plane.

    Register corpora with per-sample properties, query and mix them, and stream them to
    training.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    warnings.showwarning = _show_warning
    ctx.obj = {
        "home": home,
        "debug": debug,
        "server": server,
        "token_file": token_file,
        "ca_file": ca_file,
    }


def _show_warning(message: Warning | str, category: type[Warning], *_args: Any, **_kw: Any) -> None:
    """A warning on stderr as one line: ``warning: MESSAGE`` (mixplane's own, with its fix)."""
    click.echo(f"warning: {message}", err=True)


def _catalog(ctx: click.Context, what: str = "this command") -> Any:
    from mixplane.catalog.catalog import Catalog

    if ctx.obj.get("server"):
        msg = (
            f"{what} runs on the catalog in this process, not through a server: drop --server "
            "(and MIXPLANE_SERVER) and give --home where the catalog is"
        )
        raise MixplaneError(msg)
    return Catalog.open(ctx.obj["home"])


def _client(ctx: click.Context) -> Any:
    """The server's client with --server (or MIXPLANE_SERVER), else the local catalog's."""
    from mixplane.client.client import Client

    if ctx.obj.get("server"):
        return Client.remote(
            ctx.obj["server"], token_file=ctx.obj.get("token_file"), ca_file=ctx.obj.get("ca_file")
        )
    return Client.local(ctx.obj["home"])


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    from mixplane.catalog.properties import parse_assignment

    return dict(parse_assignment(v, what) for v in values)


@main.command()
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
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where files are scanned and functions run: this process, or a Ray cluster.",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="The Ray cluster for --engine ray (default: the running one, or a local one).",
)
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

    consts = {k: parse_constant(v) for k, v in _pairs(constants, "--constant").items()}
    _check_engine(ctx, engine, ray_address)
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
        with _client(ctx) as client:
            report = client.register(
                name,
                [
                    p if "://" in p or any(c in p for c in "*?[") else str(Path(p).resolve())
                    for p in paths
                ],
                format=fmt,
                properties=_pairs(properties, "--property"),
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


@main.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of datasets.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List registered datasets and properties."""
    if ctx.obj.get("server"):
        with _client(ctx) as client:
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
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where files are scanned and functions run: this process, or a Ray cluster.",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="The Ray cluster for --engine ray (default: the running one, or a local one).",
)
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
    _check_engine(ctx, engine, ray_address)
    fn = _load(function)
    with _catalog(ctx) as cat:
        n = cat.add_property(
            name,
            fn,
            datasets=datasets.split(",") if datasets else None,
            replace=replace,
            engine=engine,
            ray_address=ray_address,
        )
    click.echo(f"added property {name} to {n} samples")


def _check_engine(ctx: click.Context, engine: str, ray_address: str | None) -> None:
    if ray_address is not None and engine != "ray":
        msg = f"--ray-address {ray_address} needs --engine ray"
        raise MixplaneError(msg)
    if engine == "ray" and ctx.obj.get("server"):
        msg = (
            "--engine ray scans on this machine for its local catalog, not through --server; "
            "drop one of them"
        )
        raise MixplaneError(msg)


@main.command(name="count-tokens")
@click.option(
    "--tokenizer",
    "tokenizer_spec",
    required=True,
    metavar="NAME|PATH",
    help="A tokenizer.json, a .tiktoken rank file, or a name: deepseek, qwen, qwen3.6.",
)
@click.option("--datasets", help="Comma-separated datasets (default: all).")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where texts are read and counted: worker processes here, or a Ray cluster.",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="The Ray cluster for --engine ray (default: the running one, or a local one).",
)
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
    _check_engine(ctx, engine, ray_address)
    names = [n.strip() for n in datasets.split(",") if n.strip()] if datasets else None
    if ctx.obj.get("server"):
        with _client(ctx) as client:
            report = client.count_tokens(
                tokenizer_spec,
                datasets=names,
                workers=workers,
                on_changed=on_changed,  # type: ignore[arg-type]
            )
    else:
        with _catalog(ctx) as cat:
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


def _spec_options() -> list[Callable[..., Any]]:
    """The job options a command line sets, made from ``JobSpec``'s fields that name a flag
    (their type, default and help declared there once)."""
    hints = typing.get_type_hints(JobSpec)
    made = []
    for name, f in job_options().items():
        flag = f.metadata.get("cli")
        if flag is None:
            continue
        hint = hints[name]
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        wire = f.metadata.get("wire", {})
        kind: Any = (
            click.Choice(choices)
            if choices
            else click.IntRange(min=wire.get("ge"))
            if hint is int
            else float
        )
        zero_is_default = f.default == 0 and hint is int and wire.get("ge") == 1
        made.append(
            click.option(
                flag,
                name,
                type=kind,
                default=None if zero_is_default else f.default,
                show_default=not zero_is_default,
                help=f.metadata["help"][:1].upper() + f.metadata["help"][1:] + ".",
            )
        )
    return made


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
        click.option("--chunks", type=int, default=10, show_default=True, help="How many chunks."),
        click.option("--dp-groups", type=int, default=1, show_default=True),
        click.option("--ranks-per-group", type=int, default=1, show_default=True),
        click.option("--workers", type=int, default=1, show_default=True),
        *_spec_options(),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _submit(
    client: Any,
    where: str | None,
    mixture: str | None,
    mixture_file: str | None,
    opts: dict[str, Any],
    *,
    tokenizer: Any = None,
) -> Any:
    """The job 'cli' of a client (``Client.local`` or ``Client.remote``; on a server its id is
    'cli-' and a digest of the options, so the same command line attaches to the same job);
    ``tokenizer`` counts the job's tokens (``--unit tokens``)."""
    from mixplane.chunking.assign import Topology
    from mixplane.job import Phase
    from mixplane.mixture.mixture import Mixture

    if (mixture is None) == (mixture_file is None):
        msg = "give exactly one of --mixture JSON or --mixture-file F"
        raise MixplaneError(msg)
    if mixture is not None:
        try:
            data = json.loads(mixture)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = f"--mixture is not valid JSON ({exc}); e.g. '{{\"language=en\": 1.0}}'"
            raise MixplaneError(msg) from exc
    else:
        import yaml

        text = Path(mixture_file).read_text()  # type: ignore[arg-type]
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
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
        if (
            not isinstance(phases, list)
            or not phases
            or not all(isinstance(p, dict) and isinstance(p.get("mixture"), dict) for p in phases)
        ):
            msg = (
                "phases must be a non-empty list of {start, mixture, where?, on_exhausted?} "
                "objects, e.g. [{start: 0, mixture: {language=en: 1.0}}]"
            )
            raise MixplaneError(msg)
        if unit not in ("chunks", "samples", "tokens"):
            msg = f"schedule unit must be chunks, samples or tokens, got {shown(unit)}"
            raise MixplaneError(msg)
        first = phases[0]
        where = first.get("where", where)
        opts["on_exhausted"] = first.get("on_exhausted", opts["on_exhausted"])
        data = first["mixture"]
        schedule = [Phase.from_json(p) for p in phases[1:]]
    topology = Topology(
        dp_groups=opts["dp_groups"],
        ranks_per_group=opts["ranks_per_group"],
        workers=opts["workers"],
    )
    options: dict[str, Any] = {k: v for k, v in opts.items() if k in job_options()}
    options |= dict(
        where=where,
        mixture=Mixture.from_json(data),
        topology=topology,
        schedule=schedule,
        schedule_unit=unit,
        tokenizer=tokenizer,
    )
    job_id = "cli"
    if client.is_remote:  # a server: one job per distinct command line
        from mixplane.job import make_spec

        fields = {k: v for k, v in options.items() if k != "topology"}
        digest = make_spec("cli", **fields).fingerprint()[:12]
        job_id = f"cli-{digest}-{topology.dp_groups}x{topology.ranks_per_group}x{topology.workers}"
    return client, client.submit(job_id, **options)


_SIZING_TOKENIZER = click.option(
    "--tokenizer",
    "tokenizer_spec",
    metavar="PATH_OR_NAME",
    help="Size the job's token budget with this tokenizer (a tokenizer.json, a .tiktoken rank "
    "file, or a name: deepseek, qwen, qwen3.6); without it and without counted tokens, a fixed "
    "--bytes-per-token.",
)


def _sizing_tokenizer(spec: str | None) -> Any:
    from mixplane.tokens.tokenizer import load_tokenizer

    return load_tokenizer(spec) if spec is not None else None


@main.command()
@click.option("--where", "where", help="Filter, e.g. \"language == 'en' and quality >= 0.5\".")
@_job_options
@_SIZING_TOKENIZER
@click.option("--json", "as_json", is_flag=True, help="Print the plan as a JSON list.")
@click.pass_context
def plan(
    ctx: click.Context,
    /,
    where: str | None,
    mixture: str | None,
    mixture_file: str | None,
    tokenizer_spec: str | None,
    as_json: bool,
    **opts: Any,
) -> None:
    """Plan a job's first chunks: which ranges each chunk reads and who consumes it."""
    tokenizer = _sizing_tokenizer(tokenizer_spec)
    with _client(ctx) as client:
        _, job = _submit(client, where, mixture, mixture_file, opts, tokenizer=tokenizer)
        selectors = job.selectors
        out = []
        for spec, group, worker in _first_chunks(job, opts["chunks"]):
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


def _first_chunks(job: Any, count: int) -> list[tuple[Any, int, int]]:
    """(chunk, dp group, worker) of a job's first chunks in global order; who reads a chunk is
    the job's assignment's answer (after an elastic restore, not ``k mod G``). Chunks no
    consumer reads any more (finished before a restore) are left out."""
    topology = job.topology
    located = [(k, job.assignment.locate(k)) for k in range(count)]
    pairs = [loc for _k, loc in located if loc is not None]
    specs = [spec for spec, _start in job.fetch(pairs)]  # a server's job: one request
    out = []
    for spec, (consumer, _j) in zip(specs, pairs, strict=True):
        if spec is None:
            break
        out.append((spec, consumer % topology.dp_groups, consumer // topology.dp_groups))
    return out


STREAM_STATE_FORMAT = "mixplane stream state"
STREAM_STATE_VERSION = 1
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class StreamState(TypedDict):
    """The file ``stream --state-out`` writes (JSON): where one rank's window stream stands."""

    format: str  # STREAM_STATE_FORMAT
    version: int
    dp_group: int
    rank: int
    worker: int
    seq_len: int
    bos: bool
    topology: dict[str, int]
    tokenizer: str  # --tokenizer as given (for messages)
    tokenizer_fingerprint: str
    job: dict[str, Any]  # JobSpec.to_json(): the job options (for messages)
    windows: int  # windows of this rank's stream written so far, by all runs
    job_state: JobState
    window_state: WindowStreamState


_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "dp_group": int,
    "rank": int,
    "worker": int,
    "seq_len": int,
    "bos": bool,
    "topology": dict,
    "tokenizer": str,
    "tokenizer_fingerprint": str,
    "job": dict,
    "windows": int,
    "job_state": dict,
    "window_state": dict,
}

# job option of each JobSpec field that a user sets on the command line
_JOB_OPTION_NAMES = {
    "where": "--where",
    "mixture": "--mixture",
    "schedule": "--mixture-file phases",
    "schedule_unit": "--mixture-file unit",
    **{n: f.metadata["cli"] for n, f in job_options().items() if f.metadata.get("cli")},
}


@main.command()
@click.option("--where", "where", help="Filter, e.g. \"language == 'en' and quality >= 0.5\".")
@_job_options
@click.option(
    "--tokenizer",
    "tokenizer_spec",
    required=True,
    metavar="PATH_OR_NAME",
    help="A tokenizer.json, a .tiktoken rank file, or a name: deepseek, qwen, qwen3.6.",
)
@click.option(
    "--seq-len",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Input tokens per window (a window reads seq_len + 1 tokens).",
)
@click.option("--bos", is_flag=True, help="Start every document with the tokenizer's BOS token.")
@click.option(
    "--dp-group",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The rank's DP group (below --dp-groups).",
)
@click.option(
    "--rank",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The rank in its group (every rank of a group receives the same windows).",
)
@click.option(
    "--worker",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The rank's dataloader worker (below --workers).",
)
@click.option(
    "--max-windows",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Stop after this many windows (fewer if the job ends first).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="JSONL file to write the windows to ('-': stdout).",
)
@click.option(
    "--state-out",
    type=click.Path(dir_okay=False),
    help="Write the stream's state after the last window to this JSON file.",
)
@click.option(
    "--resume-from",
    type=click.Path(dir_okay=False),
    help="Continue the stream from a file written by --state-out.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary as JSON (component ids and selectors, windows, tokens).",
)
@click.pass_context
def stream(
    ctx: click.Context,
    /,
    where: str | None,
    mixture: str | None,
    mixture_file: str | None,
    tokenizer_spec: str,
    seq_len: int,
    bos: bool,
    dp_group: int,
    rank: int,
    worker: int,
    max_windows: int,
    out: str,
    state_out: str | None,
    resume_from: str | None,
    as_json: bool,
    **opts: Any,
) -> None:
    """Write the token windows one rank would receive, one JSON object per line.

    Each line holds window (its index in the rank's stream), component (the selector),
    component_id, input_ids, labels, domain_ids, position_ids and cu_seqlens. The run stops
    after --max-windows windows or where the job ends (--chunks is not used).

    --state-out F saves the position after the last window written; a later run with
    --resume-from F and the same options writes the windows that follow. A summary (with
    --json, a JSON object) goes to stdout, or to stderr when the windows go to stdout.
    """
    from mixplane.client.windows import WindowStream
    from mixplane.tokens.tokenizer import load_tokenizer

    saved = _read_stream_state(resume_from) if resume_from is not None else None
    tokenizer = load_tokenizer(tokenizer_spec)
    if bos and getattr(tokenizer, "bos_id", None) is None:
        msg = f"tokenizer {tokenizer_spec!r} has no beginning-of-sequence token; drop --bos"
        raise MixplaneError(msg)
    with _client(ctx) as client:
        sizing = tokenizer if opts["unit"] == "tokens" else None  # samples: not in the spec
        _, job = _submit(client, where, mixture, mixture_file, opts, tokenizer=sizing)
        try:
            _check_coordinates(job.topology, dp_group=dp_group, rank=rank, worker=worker)
            job.limit_consumers([(dp_group, worker)])  # plan and keep only this consumer's chunks
            here = {
                "dp_group": dp_group,
                "rank": rank,
                "worker": worker,
                "seq_len": seq_len,
                "bos": bos,
                "topology": job.topology.to_json(),
                "tokenizer": tokenizer_spec,
                "tokenizer_fingerprint": tokenizer.fingerprint,
                "job": orjson.loads(orjson.dumps(job.spec.to_json(), option=_NUMPY)),
            }

            def open_windows() -> WindowStream:
                return WindowStream(
                    job, tokenizer, seq_len, dp_group=dp_group, rank=rank, worker=worker, bos=bos
                )

            if saved is None:
                windows = open_windows()
            else:
                _check_resume(saved, here, resume_from or "")
                try:  # the job's state first, then the window stream's
                    job.load_state_dict(saved["job_state"])
                    windows = open_windows()
                    windows.load_state_dict(saved["window_state"])
                except MixplaneError as exc:
                    msg = f"--resume-from {resume_from}: {exc}"
                    raise StateError(msg) from exc
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    msg = (
                        f"--resume-from {resume_from} holds a corrupt state ({exc!r}); pass a "
                        "file written by 'mixplane stream --state-out'"
                    )
                    raise StateError(msg) from exc
            first = saved["windows"] if saved is not None else 0
            selectors = job.selectors
            iterator = iter(windows)
            try:
                written = _write_windows(iterator, out, max_windows, first, selectors)
                if written is None:  # the reader of stdout went away (e.g. `| head`)
                    if state_out is not None:
                        msg = f"stdout was closed early; --state-out {state_out} not written"
                        raise MixplaneError(msg)
                    return
                # the state right after the last window written, before anything is closed
                state = {
                    "format": STREAM_STATE_FORMAT,
                    "version": STREAM_STATE_VERSION,
                    **here,
                    "windows": first + written,
                    "job_state": job.state_dict(),
                    "window_state": windows.state_dict(),
                }
            finally:
                close = getattr(iterator, "close", None)  # stops a prefetching producer
                if close is not None:
                    close()
        finally:
            job.close()
    if state_out is not None:
        from mixplane.atomic import write_atomic

        write_atomic(Path(state_out), orjson.dumps(state, option=_NUMPY))
    ended = written < max_windows
    summary = {
        "components": dict(enumerate(selectors)),
        "windows": written,
        "tokens": written * seq_len,
        "first_window": first,
        "ended": ended,
        "dp_group": dp_group,
        "rank": rank,
        "worker": worker,
        "seq_len": seq_len,
        "out": out,
        "state_out": state_out,
    }
    to_stderr = out == "-"
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_NON_STR_KEYS).decode(), err=to_stderr)
        return
    span = f"windows {first}..{first + written - 1}" if written else "no windows"
    click.echo(
        f"wrote {span} ({written * seq_len} tokens) of dp group {dp_group} rank {rank} "
        f"worker {worker} to {'stdout' if to_stderr else out}"
        + ("; the job ended" if ended else "")
        + (f"; state in {state_out}" if state_out else ""),
        err=to_stderr,
    )


def _check_coordinates(topology: Any, *, dp_group: int, rank: int, worker: int) -> None:
    for option, value, count, limit in (
        ("--dp-group", dp_group, "--dp-groups", topology.dp_groups),
        ("--rank", rank, "--ranks-per-group", topology.ranks_per_group),
        ("--worker", worker, "--workers", topology.workers),
    ):
        if value >= limit:
            msg = (
                f"{option} {value} is outside the topology ({count} {limit}: 0..{limit - 1}); "
                f"pass a smaller {option} or a larger {count}"
            )
            raise MixplaneError(msg)


def _write_windows(
    windows: Iterator[Any], out: str, max_windows: int, first: int, selectors: list[str]
) -> int | None:
    """Write at most ``max_windows`` windows as JSON lines; how many, or None when stdout was
    closed by its reader. Stops right after the last one (no window is drawn beyond it)."""
    from tqdm import tqdm

    written = 0
    sink: BinaryIO = sys.stdout.buffer if out == "-" else open(out, "wb")  # noqa: SIM115
    # a bar on stderr when the windows go to a file (on a terminal; not mixed into stdout)
    bar = tqdm(total=max_windows, unit="window", disable=True if out == "-" else None)
    try:
        for window in windows:
            line = {
                "window": first + written,
                "component": selectors[window.component],
                "component_id": window.component,
                "input_ids": window.input_ids.tolist(),
                "labels": window.labels.tolist(),
                "domain_ids": window.domain_ids.tolist(),
                "position_ids": window.position_ids.tolist(),
                "cu_seqlens": window.cu_seqlens.tolist(),
            }
            sink.write(orjson.dumps(line) + b"\n")
            written += 1
            bar.update()
            if written == max_windows:
                break
        sink.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return None
    finally:
        bar.close()
        if out != "-":
            sink.close()
    return written


def _read_stream_state(path: str) -> StreamState:
    """A state file written by ``stream --state-out``, checked for shape (not yet for fit)."""
    fix = "pass a file written by 'mixplane stream --state-out'"
    try:
        data = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        msg = f"--resume-from {path}: no such file; {fix}, or start without --resume-from"
        raise StateError(msg) from None
    except orjson.JSONDecodeError as exc:
        msg = f"--resume-from {path} is not JSON ({exc}); {fix}"
        raise StateError(msg) from exc
    if not isinstance(data, dict) or data.get("format") != STREAM_STATE_FORMAT:
        msg = f"--resume-from {path} is not a stream state file; {fix}"
        raise StateError(msg)
    if data.get("version") != STREAM_STATE_VERSION:
        msg = (
            f"--resume-from {path} has stream state version {data.get('version')!r}, this "
            f"mixplane reads version {STREAM_STATE_VERSION}; {fix} of this version"
        )
        raise StateError(msg)
    bad = [k for k, t in _STATE_TYPES.items() if not isinstance(data.get(k), t)]
    if bad:
        msg = f"--resume-from {path} is corrupt (missing or mistyped: {', '.join(bad)}); {fix}"
        raise StateError(msg)
    return data  # type: ignore[return-value]


def _check_resume(saved: StreamState, here: dict[str, Any], path: str) -> None:
    """Refuse a state saved for another rank, window shape, tokenizer or job, naming each."""
    diffs = []
    for key, option in (
        ("dp_group", "--dp-group"),
        ("rank", "--rank"),
        ("worker", "--worker"),
        ("seq_len", "--seq-len"),
    ):
        if saved[key] != here[key]:  # type: ignore[literal-required]
            diffs.append(f"{option} {saved[key]} (saved) vs {here[key]}")  # type: ignore[literal-required]
    if saved["bos"] != here["bos"]:
        diffs.append("--bos " + ("given (saved) vs not" if saved["bos"] else "not given (saved)"))
    if saved["topology"] != here["topology"]:

        def shape(t: dict[str, Any]) -> str:
            return f"{t.get('dp_groups')}/{t.get('ranks_per_group')}/{t.get('workers')}"

        diffs.append(
            f"--dp-groups/--ranks-per-group/--workers {shape(saved['topology'])} (saved) vs "
            f"{shape(here['topology'])}"
        )
    if saved["tokenizer_fingerprint"] != here["tokenizer_fingerprint"]:
        diffs.append(
            f"--tokenizer {saved['tokenizer']} (saved) vs {here['tokenizer']} (fingerprints differ)"
        )
    for key in sorted((set(saved["job"]) | set(here["job"])) - {"job_id", "tokenizer"}):
        a, b = saved["job"].get(key), here["job"].get(key)
        if a != b:
            show = orjson.dumps
            diffs.append(
                f"{_JOB_OPTION_NAMES.get(key, key)} {show(a).decode()} (saved) vs {show(b).decode()}"
            )
    if diffs:
        msg = (
            f"--resume-from {path} was saved with other options: {', '.join(diffs)}; pass the "
            "options it was saved with, or start without --resume-from"
        )
        raise StateError(msg)


@main.command()
@click.option("--where", "where", help="Filter, e.g. \"language == 'en' and quality >= 0.5\".")
@click.option("--by", "by", default="", help="Comma-separated grouping properties.")
@click.option("--runs", is_flag=True, help="With --json: include each component's ranges.")
@_job_options
@_SIZING_TOKENIZER
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
    tokenizer_spec: str | None,
    as_json: bool,
    **opts: Any,
) -> None:
    """Show the SQL of a query and its components; with --mixture, what a job would draw
    (per component: samples, tokens and how they were sized)."""
    props = [p.strip() for p in by.split(",") if p.strip()]
    with _client(ctx) as client:
        if mixture is not None or mixture_file is not None:
            tokenizer = _sizing_tokenizer(tokenizer_spec)
            _, job = _submit(client, where, mixture, mixture_file, opts, tokenizer=tokenizer)
            report = client.explain(job.spec.job_id, chunks=opts["chunks"])
            if as_json:
                click.echo(json.dumps(report, default=str))
                return
            click.echo(render_job(report))
            return
        result = client.explain_query(where, props, runs=runs)
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    click.echo(render_explain(result))


def render_job(report: dict[str, Any]) -> str:
    lines = [
        f"{'component':<28} {'samples':>9} {'tokens':>10} {'sizing':>14} {'weight':>7} "
        f"{'draws':>10} {'epochs':>7}  runs out"
    ]
    for row in report["components"]:
        ratio = row.get("bytes_per_token")
        sizing = row.get("sizing", "-") + (f" {ratio:.2f}" if ratio is not None else "")
        lines.append(
            f"{row['component']:<28} {row['samples']:>9} {row['tokens']:>10} {sizing:>14} "
            f"{row['weight']:>7.3f} {row.get('draws', 0):>10.0f} {row.get('epochs', 0):>7.2f}  "
            f"{row.get('runs_out_at_chunk', '-')}"
        )
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    return "\n".join(lines)


def render_explain(result: dict[str, Any]) -> str:
    """The human-readable explain table, from ``QueryResult.to_dict()``."""
    from mixplane.query.result import format_value

    lines = ["sql:", *("  " + line for line in result["sql"].splitlines())]
    if result["params"]:
        lines.append(f"params: {result['params']}")
    total_s, total_b = max(result["total_samples"], 1), max(result["total_bytes"], 1)
    rows = [
        (
            ",".join(f"{k}={format_value(v)}" for k, v in c["properties"].items()) or "*",
            c,
        )
        for c in result["components"]
    ]
    width = max([len(sel) for sel, _ in rows] + [9])
    lines.append(
        f"{'component':<{width}} {'samples':>10} {'share':>7} {'MB':>9} {'share':>7} {'runs':>6}"
    )
    for sel, c in rows:
        runs = c["runs"] if isinstance(c["runs"], int) else len(c.get("ranges", []))
        lines.append(
            f"{sel:<{width}} {c['samples']:>10} {c['samples'] / total_s:>7.1%} "
            f"{c['bytes'] / 1e6:>9.2f} {c['bytes'] / total_b:>7.1%} {runs:>6}"
        )
    lines.append(
        f"{'total':<{width}} {result['total_samples']:>10} {'':>7} "
        f"{result['total_bytes'] / 1e6:>9.2f}"
    )
    return "\n".join(lines)


@main.command()
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


@main.command()
@click.option(
    "--algorithm",
    required=True,
    help="A mixing algorithm: ado, ado-mixtera, odm, loss-proportional.",
)
@click.option(
    "--losses",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Trace (CSV or Parquet): columns step, domain, loss_sum, tokens.",
)
@click.option(
    "--prior",
    help="Initial weights: JSON mapping domain -> weight, inline or a file (default: uniform).",
)
@click.option("--param", "params", multiple=True, metavar="K=V", help="Algorithm option.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Weights CSV to write.")
def replay(
    algorithm: str, losses: str, prior: str | None, params: tuple[str, ...], out: str
) -> None:
    """Run a mixing algorithm on a logged loss trace (no training): the weights after each
    step, one column per domain."""
    from mixplane.adapt.replay import parse_value, read_prior, write_weights
    from mixplane.adapt.replay import replay as run_replay

    weights: dict[str, float] | None = None
    if prior is not None:
        if prior.lstrip().startswith("{"):
            try:
                weights = {str(k): float(v) for k, v in json.loads(prior).items()}
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                msg = f"--prior is not a JSON object of domain -> weight ({exc})"
                raise MixplaneError(msg) from exc
        else:
            weights = read_prior(prior)
    options = {k: parse_value(v) for k, v in _pairs(params, "--param").items()}
    table = run_replay(algorithm, losses, prior=weights, params=options, progress=None)
    write_weights(table, out)
    click.echo(
        f"replayed {algorithm} over {table.num_rows} steps and {table.num_columns - 1} domains; "
        f"weights in {out}"
    )


@main.group()
def job() -> None:
    """Inspect a server job's data manifest: what was requested and what was delivered."""


def _job_manifest(ctx: click.Context, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, records) of a server job: through --server, or read from the home's server
    files (``{home}/server/jobs``) when no server is named (running or not)."""
    from mixplane.server.feedback_log import read_job_files, summary

    if ctx.obj.get("server"):
        with _client(ctx) as client:
            remote = client.job(job_id)
            return remote.manifest(), list(remote.feedback_records())
    from mixplane.catalog.catalog import default_home

    home = Path(ctx.obj["home"]) if ctx.obj.get("home") else default_home()
    files = read_job_files(home.expanduser() / "server" / "jobs", job_id)
    checkpoint, records = files["checkpoint"], files["records"]
    selectors = checkpoint.get("selectors")
    if selectors is None:
        msg = (
            f"the checkpoint of job {job_id!r} predates manifests (no selectors); start the "
            "server once so it rewrites it, or pass --server"
        )
        raise StateError(msg)
    report = {
        "job_id": job_id,
        "spec": checkpoint["spec"],
        **summary(records, selectors, checkpoint["state"]["mixture_log"]),
    }
    return report, records


@job.command(name="show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def job_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Requested vs delivered token shares per component, and the mixture versions.

    Requested: each step's tokens at the weights of the mixture in force when its feedback
    arrived; delivered: the tokens the trainer reported per component (the feedback log)."""
    report, _records = _job_manifest(ctx, job_id)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"job {job_id}: {report['steps']} steps of feedback "
        f"({report['first_step']}..{report['last_step']}), {report['tokens']:,.0f} tokens"
    )
    click.echo(f"{'component':<32} {'requested':>10} {'delivered':>10} {'diff pp':>8}")
    for row in report["components"]:
        req, got = row["requested_share"], row["delivered_share"]
        if req is None or got is None:
            click.echo(f"{row['component']:<32} {'-':>10} {'-':>10} {'-':>8}")
            continue
        click.echo(f"{row['component']:<32} {req:>10.4f} {got:>10.4f} {100 * (got - req):>+8.3f}")
    click.echo(f"mixture versions: {len(report['mixture_versions'])}")
    for v in report["mixture_versions"]:
        weights = ", ".join(f"{w:.3f}" for w in v["weights"])
        step = "-" if v["step"] is None else v["step"]
        click.echo(
            f"  v{v['version']:<4} chunk {v['chunk']:>7} step {step:>7} {v['cause']:<7} [{weights}]"
        )


@job.command(name="trace")
@click.argument("job_id")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV or .parquet file: one row per (step, component), the format replay reads.",
)
@click.pass_context
def job_trace(ctx: click.Context, job_id: str, out: str) -> None:
    """Export every logged step of a server job's feedback (for mixplane replay)."""
    from mixplane.adapt.replay import export_trace, write_trace
    from mixplane.server.feedback_log import padded

    report, records = _job_manifest(ctx, job_id)
    selectors = [row["component"] for row in report["components"]]
    table = export_trace(padded(records, len(selectors)), selectors)
    write_trace(table, out)
    click.echo(f"wrote {len(records)} steps x {len(selectors)} components to {out}", err=True)


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


@main.command()
@click.option(
    "--home",
    "serve_home",
    type=click.Path(file_okay=False),
    help="Catalog home directory (default: the global --home).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback needs --tokens-file or --token-file.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8411,
    show_default=True,
    help="Port to listen on (0: any free port; the listening line names it).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    envvar="MIXPLANE_TOKEN_FILE",
    help="File holding one bearer token, of the admin role (default: $MIXPLANE_TOKEN_FILE).",
)
@click.option(
    "--tokens-file",
    type=click.Path(dir_okay=False),
    envvar="MIXPLANE_TOKENS_FILE",
    help='JSON {"tokens": [{"token", "role": viewer|trainer|admin, "name"}]}, mode 600 '
    "(default: $MIXPLANE_TOKENS_FILE).",
)
@click.option(
    "--data-root",
    "data_roots",
    multiple=True,
    metavar="DIR|URI",
    help="Registration through the server reads only below this directory or s3://bucket/prefix "
    "(repeatable; none: registration refused, unless on loopback without a token).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    help="Serve HTTPS with this PEM certificate chain (with --tls-key).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False),
    help="The private key of --tls-cert (PEM, unencrypted).",
)
@click.option(
    "--checkpoint-every",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds between checkpoints of changed jobs (0: no periodic checkpoints).",
)
@click.option(
    "--feedback-fsync",
    type=click.Choice(["always", "group", "off"]),
    default="group",
    show_default=True,
    help="When the feedback log is fsynced: each message, every few ms (group), or never; "
    "every answered message is written before its answer in all three (kill -9 loses none).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    serve_home: str | None,
    host: str,
    port: int,
    token_file: str | None,
    tokens_file: str | None,
    data_roots: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    checkpoint_every: float,
    feedback_fsync: str,
) -> None:
    """Serve the catalog and jobs over HTTP to remote clients (mixplane/protocol.py).

    Prints 'mixplane server listening on http://HOST:PORT' (https:// with --tls-cert) once it
    accepts connections. One process owns the catalog; stop it with Ctrl-C or SIGTERM (jobs are
    checkpointed). docs/server.md's "Security model" says what each role may do.
    """
    from mixplane.server.app import serve as run_server
    from mixplane.server.security import Security

    source = ctx.get_parameter_source("token_file")
    if tokens_file and token_file and source is click.core.ParameterSource.ENVIRONMENT:
        token_file = None  # MIXPLANE_TOKEN_FILE is the client's; --tokens-file was asked for
    security = Security.configure(
        token_file=token_file,
        tokens_file=tokens_file,
        data_roots=data_roots,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )

    def announce(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    run_server(
        serve_home or ctx.obj["home"],
        host=host,
        port=port,
        security=security,
        checkpoint_every=checkpoint_every,
        feedback_fsync=feedback_fsync,  # type: ignore[arg-type]
        announce=announce,
    )


if __name__ == "__main__":
    main()
