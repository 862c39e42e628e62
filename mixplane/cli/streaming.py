"""``mixplane stream``: the token windows one rank would receive, as JSON lines; its state saved
and resumed through ``mixplane.client.stream_state``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import click
import orjson

from mixplane.cli.options import WHERE, job_flags, submit
from mixplane.cli.root import open_client
from mixplane.errors import MixplaneError


@click.command()
@WHERE
@job_flags
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
    from mixplane.client import stream_state
    from mixplane.tokens.tokenizer import load_tokenizer

    saved = stream_state.read_stream_state(resume_from) if resume_from is not None else None
    tokenizer = load_tokenizer(tokenizer_spec)
    if bos and getattr(tokenizer, "bos_id", None) is None:
        msg = f"tokenizer {tokenizer_spec!r} has no beginning-of-sequence token; drop --bos"
        raise MixplaneError(msg)
    with open_client(ctx) as client:
        sizing = tokenizer if opts["unit"] == "tokens" else None  # samples: not in the spec
        _, job = submit(client, where, mixture, mixture_file, opts, tokenizer=sizing)
        try:
            stream_state.check_coordinates(
                job.topology, dp_group=dp_group, rank=rank, worker=worker
            )
            job.limit_consumers([(dp_group, worker)])  # plan and keep only this consumer's chunks
            here = stream_state.stream_options(
                job,
                tokenizer,
                tokenizer_spec,
                dp_group=dp_group,
                rank=rank,
                worker=worker,
                seq_len=seq_len,
                bos=bos,
            )
            windows = stream_state.open_window_stream(
                job, tokenizer, here, saved, resume_from or ""
            )
            first = saved["windows"] if saved is not None else 0
            selectors = job.selectors
            iterator = iter(windows)
            try:
                written = write_windows(iterator, out, max_windows, first, selectors)
                if written is None:  # the reader of stdout went away (e.g. `| head`)
                    if state_out is not None:
                        msg = f"stdout was closed early; --state-out {state_out} not written"
                        raise MixplaneError(msg)
                    return
                # the state right after the last window written, before anything is closed
                state = stream_state.capture_state(here, first + written, job, windows)
            finally:
                close = getattr(iterator, "close", None)  # stops a prefetching producer
                if close is not None:
                    close()
        finally:
            job.close()
    if state_out is not None:
        stream_state.write_stream_state(state_out, state)
    summary = {
        "components": dict(enumerate(selectors)),
        "windows": written,
        "tokens": written * seq_len,
        "first_window": first,
        "ended": written < max_windows,
        "dp_group": dp_group,
        "rank": rank,
        "worker": worker,
        "seq_len": seq_len,
        "out": out,
        "state_out": state_out,
    }
    echo_summary(summary, as_json=as_json)


def echo_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    """The summary of a stream run: on stdout, or on stderr when the windows went there."""
    to_stderr = summary["out"] == "-"
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_NON_STR_KEYS).decode(), err=to_stderr)
        return
    first, written = summary["first_window"], summary["windows"]
    state_out = summary["state_out"]
    span = f"windows {first}..{first + written - 1}" if written else "no windows"
    click.echo(
        f"wrote {span} ({summary['tokens']} tokens) of dp group {summary['dp_group']} rank "
        f"{summary['rank']} worker {summary['worker']} to "
        f"{'stdout' if to_stderr else summary['out']}"
        + ("; the job ended" if summary["ended"] else "")
        + (f"; state in {state_out}" if state_out else ""),
        err=to_stderr,
    )


def write_windows(
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
