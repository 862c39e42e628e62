"""The ``mixplane`` command line: register, ls, add-property, count-tokens, explain, plan,
stream, job, replay, tokenizer, demo, serve.

One module per command group, sharing ``root`` (the group, its global options, one-line
errors, opening the catalog or a client) and ``options`` (the job options, made from
``JobSpec`` where each is declared once):

- ``datasets``: register, ls, add-property, count-tokens
- ``planning``: plan, explain
- ``streaming``: stream (its state file: ``mixplane.client.stream_state``)
- ``jobs``: job show, job trace, replay
- ``tokenizers``: tokenizer train, tokenizer info
- ``demos``: demo
- ``server``: serve

User errors end with a one-line message and exit status 1 (2 for usage errors); ``--debug``
shows the traceback. Output for scripts is ``--json``; everything else is for people. Commands
import what they run (torch, the server, DuckDB) when they run, so ``mixplane --help`` is
instant.
"""

from __future__ import annotations

from mixplane.cli.datasets import add_property, count_tokens, ls, register
from mixplane.cli.demos import demo
from mixplane.cli.jobs import job, replay
from mixplane.cli.planning import explain, plan
from mixplane.cli.root import main
from mixplane.cli.server import serve
from mixplane.cli.streaming import stream
from mixplane.cli.tokenizers import tokenizer

for _command in (
    register,
    ls,
    add_property,
    count_tokens,
    plan,
    stream,
    explain,
    demo,
    replay,
    job,
    tokenizer,
    serve,
):
    main.add_command(_command)

__all__ = [
    "add_property",
    "count_tokens",
    "demo",
    "explain",
    "job",
    "ls",
    "main",
    "plan",
    "register",
    "replay",
    "serve",
    "stream",
    "tokenizer",
]
