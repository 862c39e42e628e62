"""The options commands share: the job options (``job_flags``: made from ``JobSpec``'s fields
that name a flag, declared there once, plus the mixture and the topology), ``--where``, the
sizing ``--tokenizer``, and turning them into a submitted job (``submit``).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mixplane.errors import MixplaneError, shown
from mixplane.job.spec import JobSpec, job_options

WHERE = click.option(
    "--where", "where", help="Filter, e.g. \"language == 'en' and quality >= 0.5\"."
)


def spec_flags() -> list[Callable[..., Any]]:
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


def engine_flags(where: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--engine local|ray`` (``where``: what runs there) and ``--ray-address``."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option(
            "--ray-address",
            metavar="ADDR",
            help="The Ray cluster for --engine ray (default: the running one, or a local one).",
        )(fn)
        return click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help=where,
        )(fn)

    return add


def job_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with the job options: mixture, chunks, topology, ``spec_flags``."""
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
        *spec_flags(),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def submit(
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


SIZING_TOKENIZER = click.option(
    "--tokenizer",
    "tokenizer_spec",
    metavar="PATH_OR_NAME",
    help="Size the job's token budget with this tokenizer (a tokenizer.json, a .tiktoken rank "
    "file, or a name: deepseek, qwen, qwen3.6); without it and without counted tokens, a fixed "
    "--bytes-per-token.",
)


def sizing_tokenizer(spec: str | None) -> Any:
    """The tokenizer ``--tokenizer`` names, or None."""
    from mixplane.tokens.tokenizer import load_tokenizer

    return load_tokenizer(spec) if spec is not None else None
