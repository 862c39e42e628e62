"""The ``mixplane`` group: global options, one-line errors, and what commands share to open
the catalog or a client (``open_catalog``, ``open_client``) and to read arguments (``pairs``,
``load_function``, ``check_engine``).

User errors end with a one-line message and exit status 1 (2 for usage errors); ``--debug``
shows the traceback. Nothing here imports torch (``mixplane --help`` stays instant).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import click

from mixplane.errors import MixplaneError


class Group(click.Group):
    """Turns mixplane errors into one line on stderr unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (MixplaneError, OSError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("error: " + " ".join(str(exc).splitlines()), err=True)
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    warnings.showwarning = show_warning
    ctx.obj = {
        "home": home,
        "debug": debug,
        "server": server,
        "token_file": token_file,
        "ca_file": ca_file,
    }


def show_warning(message: Warning | str, category: type[Warning], *_args: Any, **_kw: Any) -> None:
    """A warning on stderr as one line: ``warning: MESSAGE`` (mixplane's own, with its fix)."""
    click.echo(f"warning: {message}", err=True)


def open_catalog(ctx: click.Context, what: str = "this command") -> Any:
    """The catalog at --home, opened in this process (refused with --server)."""
    from mixplane.catalog.catalog import Catalog

    if ctx.obj.get("server"):
        msg = (
            f"{what} runs on the catalog in this process, not through a server: drop --server "
            "(and MIXPLANE_SERVER) and give --home where the catalog is"
        )
        raise MixplaneError(msg)
    return Catalog.open(ctx.obj["home"])


def open_client(ctx: click.Context) -> Any:
    """The server's client with --server (or MIXPLANE_SERVER), else the local catalog's."""
    from mixplane.client.client import Client

    if ctx.obj.get("server"):
        return Client.remote(
            ctx.obj["server"], token_file=ctx.obj.get("token_file"), ca_file=ctx.obj.get("ca_file")
        )
    return Client.local(ctx.obj["home"])


def pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """K=V arguments of option ``what`` as a dict."""
    from mixplane.catalog.properties import parse_assignment

    return dict(parse_assignment(v, what) for v in values)


def load_function(spec: str) -> Callable[..., Any]:
    """The function MODULE:FUNCTION names (the working directory on the import path)."""
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


def check_engine(ctx: click.Context, engine: str, ray_address: str | None) -> None:
    """Refuse --ray-address without --engine ray, and --engine ray with --server."""
    if ray_address is not None and engine != "ray":
        msg = f"--ray-address {ray_address} needs --engine ray"
        raise MixplaneError(msg)
    if engine == "ray" and ctx.obj.get("server"):
        msg = (
            "--engine ray scans on this machine for its local catalog, not through --server; "
            "drop one of them"
        )
        raise MixplaneError(msg)
