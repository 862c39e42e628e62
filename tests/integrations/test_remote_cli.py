"""The command line against a server (--server / MIXPLANE_SERVER): same answers as local."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mixplane.client import Client
from tests.conftest import COMMAND, corpus_tokenizer, write_corpus
from tests.integrations.server import Server

pytestmark = pytest.mark.integration

MIXTURE = '{"language=en": 0.6, "language=de": 0.4}'
JOB = [
    "--mixture",
    MIXTURE,
    "--unit",
    "samples",
    "--chunk-size",
    "13",
    "--dp-groups",
    "2",
    "--seed",
    "4",
]


def cli(*args: str, server: str | None = None, home: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME", "MIXPLANE_SERVER")}
    head = ["--server", server] if server else ["--home", str(home)]
    proc = subprocess.run(
        [*COMMAND, *head, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_commands_through_the_server_match_local(tmp_path: Path) -> None:
    write_corpus(tmp_path / "data")
    home = tmp_path / "home"
    with Client.local(home) as client:
        client.catalog.register(
            "corpus",
            tmp_path / "data",
            properties={"language": "meta.language", "source": "meta.source"},
            progress=False,
        )
        corpus_tokenizer(client.catalog, samples=100).save(tmp_path / "tok.json")
    stream = ["stream", *JOB, "--tokenizer", str(tmp_path / "tok.json"), "--seq-len", "16"]
    local = {
        "plan": cli("plan", *JOB, "--chunks", "6", "--json", home=home),
        "explain": cli("explain", "--by", "language", "--json", home=home),
        "stream": cli(*stream, "--dp-group", "1", "--max-windows", "9", home=home),
    }
    server = Server(home).start()
    try:
        url = server.url
        assert json.loads(cli("ls", "--json", server=url))[0]["name"] == "corpus"
        assert json.loads(cli("plan", *JOB, "--chunks", "6", "--json", server=url)) == json.loads(
            local["plan"]
        )
        assert json.loads(cli("explain", "--by", "language", "--json", server=url)) == json.loads(
            local["explain"]
        )
        assert cli(*stream, "--dp-group", "1", "--max-windows", "9", server=url) == local["stream"]
        # several client processes at once, each a rank of another DP group
        env = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME", "MIXPLANE_SERVER")}
        procs = [
            subprocess.Popen(
                [*COMMAND, "--server", url, *stream, "--dp-group", str(g), "--max-windows", "9"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for g in (0, 1, 1)
        ]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert outputs[1] == outputs[2] == local["stream"]
        assert outputs[0] != outputs[1]
        state = tmp_path / "s.json"
        first = cli(
            *stream, "--dp-group", "1", "--max-windows", "4", "--state-out", str(state), server=url
        )
        rest = cli(
            *stream,
            "--dp-group",
            "1",
            "--max-windows",
            "5",
            "--resume-from",
            str(state),
            server=url,
        )
        assert first + rest == local["stream"]
        write_corpus(tmp_path / "more", files=1, per_file=50, seed=9)
        report = json.loads(
            cli(
                "register",
                "more",
                str(tmp_path / "more"),
                "--property",
                "language=meta.language",
                "--json",
                server=url,
            )
        )
        assert report["samples"] == 50
        assert {d["name"] for d in json.loads(cli("ls", "--json", server=url))} == {
            "corpus",
            "more",
        }
    finally:
        server.stop()
