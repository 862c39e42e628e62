"""Real ``mixplane serve`` subprocesses on loopback over a small registered corpus."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from mixplane.client import Client
from mixplane.protocol import MSGPACK, PROTOCOL_HEADER
from tests.conftest import write_corpus

LISTENING = re.compile(r"^mixplane server listening on (https?://127\.0\.0\.1:(\d+))$")
PROPERTIES = {"language": "meta.language", "source": "meta.source", "quality": "meta.quality"}
MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}


def spec(job_id: str, **fields: Any) -> dict[str, Any]:
    """A job definition in ``JobSpec.to_json()``'s form (defaults left to the server)."""
    return {
        "job_id": job_id,
        "mixture": MIX,
        "unit": "samples",
        "chunk_size": 50,
        "seed": 3,
        **fields,
    }


class Server:
    """One ``mixplane --home HOME serve`` process; ``url`` once it listens."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME",)}
        environ.pop("MIXPLANE_TOKEN_FILE", None)
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mixplane.cli",
                "--home",
                str(home),
                "serve",
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the first line, or "" when the process ended
        match = LISTENING.match(line.strip())
        if match is None:
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the server did not start: {line!r} {err[-3000:]}")
        self.url = match.group(1)

    def kill(self) -> None:
        """kill -9: no shutdown handler runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        """The server's stderr (only once it has ended)."""
        assert self.proc.poll() is not None
        return self.proc.stderr.read() if self.proc.stderr else ""

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {PROTOCOL_HEADER: "1"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


def packed(data: Any) -> dict[str, Any]:
    """httpx keyword arguments that send ``data`` as msgpack and ask for msgpack back."""
    return {
        "content": msgpack.packb(data, use_bin_type=True),
        "headers": {"Content-Type": MSGPACK, "Accept": MSGPACK},
    }


def register_corpus(root: Path) -> Path:
    """A catalog home with dataset 'corpus' (1200 samples), closed again: the server owns it."""
    write_corpus(root / "data")
    home = root / "home"
    with Client.local(home) as client:
        client.catalog.register("corpus", root / "data", properties=PROPERTIES, progress=False)
    return home


@pytest.fixture
def start(request: pytest.FixtureRequest) -> Callable[..., Server]:
    """Start servers that are killed when the test ends, whatever happens."""
    started: list[Server] = []

    def make(home: Path, *args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(home, *args, env=env)
        started.append(server)
        return server

    def finish() -> None:
        for server in started:
            server.kill()

    request.addfinalizer(finish)
    return make


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, Path]]:
    """One server with a token for the tests of a module: (server, token, home)."""
    root = tmp_path_factory.mktemp("server")
    home = register_corpus(root)
    token = "test-token-" + "x" * 20
    token_file = root / "token"
    token_file.write_text(token + "\n")
    server = Server(home, "--token-file", str(token_file))
    try:
        yield server, token, home
    finally:
        server.kill()


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- a server with role-scoped tokens and a data root (issue 17) -------------------------------
TOKENS = {role: f"{role}-token-" + role[0] * 24 for role in ("viewer", "trainer", "admin")}
NAMES = {role: f"{role}-holder" for role in TOKENS}  # each token's name (the audit log's)


def write_tokens(path: Path, tokens: dict[str, str] | None = None) -> Path:
    """A tokens file (mode 600) holding one token of each role, named ``NAMES[role]``."""
    entries = [
        {"token": token, "role": role, "name": NAMES[role]}
        for role, token in (tokens or TOKENS).items()
    ]
    path.write_text(json.dumps({"tokens": entries}))
    path.chmod(0o600)
    return path


@dataclass
class RoleServer:
    """A server with ``TOKENS`` (one per role) and one data root ``root`` (with
    ``root/a.jsonl``), over the registered corpus at ``home``."""

    server: Server
    home: Path
    root: Path

    def client(self, role: str | None, **kwargs: Any) -> httpx.Client:
        return self.server.client(TOKENS[role] if role else None, **kwargs)


def write_records(path: Path, n: int = 5, language: str = "en") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = (
        json.dumps({"text": f"{path.stem} {i}", "meta": {"language": language}}) for i in range(n)
    )
    path.write_text("\n".join(records) + "\n")
    return path


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleServer]:
    """One ``RoleServer`` for the tests of a module."""
    base = tmp_path_factory.mktemp("roles")
    home = register_corpus(base)
    root = base / "data-root"
    write_records(root / "a.jsonl")
    tokens = write_tokens(base / "tokens.json")
    server = Server(home, "--tokens-file", str(tokens), "--data-root", str(root))
    try:
        yield RoleServer(server=server, home=home, root=root)
    finally:
        server.kill()
