"""Planning commands: plan (a job's first chunks: which ranges each reads, who consumes it)
and explain (a query's SQL and components; with a mixture, what a job would draw)."""

from __future__ import annotations

import json
from typing import Any

import click

from mixplane.cli.options import SIZING_TOKENIZER, WHERE, job_flags, sizing_tokenizer, submit
from mixplane.cli.root import open_client


@click.command()
@WHERE
@job_flags
@SIZING_TOKENIZER
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
    tokenizer = sizing_tokenizer(tokenizer_spec)
    with open_client(ctx) as client:
        _, job = submit(client, where, mixture, mixture_file, opts, tokenizer=tokenizer)
        selectors = job.selectors
        out = []
        for spec, group, worker in first_chunks(job, opts["chunks"]):
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


def first_chunks(job: Any, count: int) -> list[tuple[Any, int, int]]:
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


@click.command()
@WHERE
@click.option("--by", "by", default="", help="Comma-separated grouping properties.")
@click.option("--runs", is_flag=True, help="With --json: include each component's ranges.")
@job_flags
@SIZING_TOKENIZER
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
    with open_client(ctx) as client:
        if mixture is not None or mixture_file is not None:
            tokenizer = sizing_tokenizer(tokenizer_spec)
            _, job = submit(client, where, mixture, mixture_file, opts, tokenizer=tokenizer)
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
