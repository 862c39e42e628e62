"""A server job's feedback: ``job show`` (requested vs delivered shares, mixture versions),
``job trace`` (its loss trace), and ``replay`` (a mixing algorithm run on such a trace)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mixplane.cli.root import open_client, pairs
from mixplane.errors import MixplaneError, StateError


@click.command()
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
    options = {k: parse_value(v) for k, v in pairs(params, "--param").items()}
    table = run_replay(algorithm, losses, prior=weights, params=options, progress=None)
    write_weights(table, out)
    click.echo(
        f"replayed {algorithm} over {table.num_rows} steps and {table.num_columns - 1} domains; "
        f"weights in {out}"
    )


@click.group()
def job() -> None:
    """Inspect a server job's data manifest: what was requested and what was delivered."""


def job_manifest(ctx: click.Context, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, records) of a server job: through --server, or read from the home's server
    files (``{home}/server/jobs``) when no server is named (running or not)."""
    from mixplane.server.feedback_log import read_job_files, summary

    if ctx.obj.get("server"):
        with open_client(ctx) as client:
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
    report, _records = job_manifest(ctx, job_id)
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

    report, records = job_manifest(ctx, job_id)
    selectors = [row["component"] for row in report["components"]]
    table = export_trace(padded(records, len(selectors)), selectors)
    write_trace(table, out)
    click.echo(f"wrote {len(records)} steps x {len(selectors)} components to {out}", err=True)
