"""``mixplane serve``: the catalog and its jobs over HTTP (``mixplane.server``)."""

from __future__ import annotations

import sys

import click


@click.command()
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
