"""Secure by default (DESIGN guarantee 7): loopback unless a token is set, bearer tokens, the
protocol header, bounded bodies, validated input (test_no_code.py: no pickle or eval)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from mixplane.protocol import MAX_BODY_BYTES, MAX_CHUNK_REQUESTS, MSGPACK, PROTOCOL_HEADER
from tests.server.conftest import Server, packed, register_corpus, spec

pytestmark = pytest.mark.integration


def serve_command(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mixplane.cli", "--home", str(home), "serve", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_non_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.run(
        serve_command(tmp_path / "home", "--host", "0.0.0.0", "--port", str(port)),
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MIXPLANE_TOKEN_FILE"},
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "refusing to listen on 0.0.0.0" in lines[0] and "--token-file" in lines[0]
    with socket.socket() as s:  # nothing listens on the port it was given
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "home" / "catalog.duckdb").exists()  # refused before opening it


@pytest.mark.parametrize("content", ["", "  \n"])
def test_an_empty_token_file_is_an_error(tmp_path: Path, content: str) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    proc = subprocess.run(
        serve_command(tmp_path / "home", "--port", "0", "--token-file", str(token)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "is empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_token_from_the_environment(tmp_path: Path, start: Callable[..., Server]) -> None:
    home = register_corpus(tmp_path)
    (tmp_path / "token").write_text("from-env-token\n")
    server = start(home, env={"MIXPLANE_TOKEN_FILE": str(tmp_path / "token")})
    assert server.client().get("/v1/datasets").status_code == 401
    assert server.client("from-env-token").get("/v1/datasets").status_code == 200


def test_tokens(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    for path in ("/v1/datasets", "/v1/jobs", "/metrics"):
        missing = server.client().get(path)
        assert missing.status_code == 401
        assert "bearer token" in missing.json()["error"]
        assert missing.headers["www-authenticate"] == "Bearer"
        assert server.client("wrong-" + token).get(path).status_code == 401
        assert server.client(token[:-1]).get(path).status_code == 401
        assert server.client(token).get(path).status_code == 200
    basic = server.client().get("/v1/datasets", headers={"Authorization": f"Basic {token}"})
    assert basic.status_code == 401
    health = httpx.get(server.url + "/healthz")  # open: no token, no protocol header
    assert health.status_code == 200 and health.json() == {"status": "ok", "protocol": 1}


def test_protocol_header(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    auth = {"Authorization": f"Bearer {token}"}
    missing = httpx.get(server.url + "/v1/datasets", headers=auth)
    assert missing.status_code == 400
    assert "protocol 1" in missing.json()["error"] and "got none" in missing.json()["error"]
    wrong = httpx.get(server.url + "/v1/datasets", headers={**auth, PROTOCOL_HEADER: "2"})
    assert wrong.status_code == 400
    assert "protocol 1" in wrong.json()["error"] and "'2'" in wrong.json()["error"]
    # errors answer in the type the client accepts
    packed_error = httpx.get(
        server.url + "/v1/datasets", headers={**auth, "Accept": MSGPACK, PROTOCOL_HEADER: "0"}
    )
    assert packed_error.headers["content-type"] == MSGPACK
    assert "protocol 1" in msgpack.unpackb(packed_error.content)["error"]


def test_body_limit(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    client = server.client(token)
    big = b"[" + b"0," * (MAX_BODY_BYTES // 2) + b"0]"
    declared = client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413

    def chunked() -> Any:  # no Content-Length: the limit is counted as the body streams in
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 2):
            yield b" " * (1 << 20)

    streamed = client.post(
        "/v1/jobs", content=chunked(), headers={"Content-Type": "application/json"}
    )
    assert streamed.request.headers.get("transfer-encoding") == "chunked"
    assert streamed.status_code == 413
    assert "larger than" in streamed.json()["error"]
    assert server.client(token).get("/v1/jobs").status_code == 200  # still serving


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{", "application/json", 400),
        (b'{"spec": NaN}', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"\xc1", MSGPACK, 400),  # a msgpack byte that is never valid
        (b"\x92\x01", MSGPACK, 400),  # truncated array
        (msgpack.packb({"a": 1}) + b"\x01", MSGPACK, 400),  # extra bytes
        (msgpack.packb({1: 2}), MSGPACK, 400),  # non-string map key
        (msgpack.packb(msgpack.ExtType(1, b"x")), MSGPACK, 400),  # extension types
        (b"\xdd\xff\xff\xff\xff", MSGPACK, 400),  # an array claiming 4G items
        (b"{}", "text/plain", 415),
        (b"{}", "application/x-python-pickle", 415),
        (b"", "application/json", 400),
        (b"[]", "application/json", 422),
        (b"{}", "application/json", 422),
    ],
)
def test_malformed_bodies(
    shared: tuple[Server, str, Path], content: bytes, content_type: str, status: int
) -> None:
    server, token, _ = shared
    answer = server.client(token).post(
        "/v1/jobs", content=content, headers={"Content-Type": content_type}
    )
    assert answer.status_code == status, answer.text
    assert isinstance(answer.json()["error"], str) and answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"spec": spec("t1"), "unknown": 1}),
        ("/v1/jobs", {"spec": {**spec("t1"), "extra_field": 1}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "chunk_size": "50"}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "chunk_size": 0}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "seed": -1}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "seed": 2**64}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "unit": "bytes"}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "descending": 1}}),
        ("/v1/jobs", {"spec": spec("../../etc/passwd")}),
        ("/v1/jobs", {"spec": spec("t1"), "topology": {"dp_groups": 0}}),
        ("/v1/jobs", {"spec": spec("t1"), "topology": {"dp_groups": 65536, "workers": 1024}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "where": "language == "}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "where": "nope == 'x'"}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "mixture": {"language=en": 2.0}}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "mixture": {"language=en": [1]}}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "mixture": {"uniform": 5}}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "mixture": {"weights": 1, "allow_empty": True}}}),
        ("/v1/jobs", {"spec": {**spec("t1"), "algorithm": "nope"}}),
        (
            "/v1/jobs",
            {
                "spec": {
                    **spec("t1"),
                    "algorithm": "loss-proportional",
                    "algorithm_options": {"bogus": 1},
                }
            },
        ),
        ("/v1/jobs", {"spec": {**spec("t1"), "schedule": [{"start": 0, "mixture": {}}]}}),
        ("/v1/datasets", {"name": "x", "paths": ["relative/path"]}),
        ("/v1/datasets", {"name": "x", "paths": ["/no/such/file.jsonl"]}),
        ("/v1/datasets", {"name": "x", "paths": ["/tmp/a\x00b"]}),
        ("/v1/datasets", {"name": "x y", "paths": ["/tmp"]}),
        ("/v1/datasets", {"name": "x", "paths": "/tmp"}),
        ("/v1/datasets", {"name": "x", "paths": ["/tmp"], "function": "os:system"}),
        ("/v1/datasets", {"name": "x", "paths": ["/tmp"], "preset": "nope"}),
        ("/v1/explain", {"where": "language ==", "by": []}),
        ("/v1/explain", {"where": "quality > 'high'"}),
        ("/v1/explain", {"where": "language == 'en'", "by": ["nope"]}),
        ("/v1/explain", {"where": "language == 'en'", "by": "language"}),
        ("/v1/explain", {"where": f"quality > {10**40}"}),
    ],
)
def test_invalid_input_is_a_4xx_with_a_message(
    shared: tuple[Server, str, Path], path: str, body: dict[str, Any]
) -> None:
    server, token, _ = shared
    encodings: list[dict[str, Any]] = [{"json": body}]
    with contextlib.suppress(OverflowError):  # msgpack has no integers past 64 bits
        encodings.append(packed(body))
    for kwargs in encodings:
        answer = server.client(token).post(path, **kwargs)
        assert 400 <= answer.status_code < 500, answer.text
        error = (
            msgpack.unpackb(answer.content)
            if answer.headers["content-type"] == MSGPACK
            else answer.json()
        )["error"]
        assert isinstance(error, str) and error
    assert server.client(token).get("/v1/jobs").json() == []  # nothing was created


def test_unknown_job_and_bad_chunk_requests(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    client = server.client(token)
    for method, path in [
        ("GET", "/v1/jobs/none"),
        ("DELETE", "/v1/jobs/none"),
        ("GET", "/v1/jobs/none/state"),
        ("GET", "/v1/jobs/none/weights"),
        ("GET", "/v1/jobs/none/explain"),
        ("POST", "/v1/jobs/none/checkpoint"),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 404, (method, path)
        assert "unknown job 'none'" in answer.json()["error"]
    body = {"requests": [{"consumer": 0, "j": 0}]}
    assert client.post("/v1/jobs/none/chunks", json=body).status_code == 404
    assert client.get("/v1/files/123456/pointers").status_code == 404
    assert client.get("/v1/files/-1/pointers").status_code == 422

    assert client.post("/v1/jobs", json={"spec": spec("bad-chunks")}).status_code == 200
    for bad in [
        {"requests": [{"consumer": 1, "j": 0}]},  # one consumer in the topology
        {"requests": [{"consumer": -1, "j": 0}]},
        {"requests": [{"consumer": 0, "j": -1}]},
        {"requests": [{"consumer": 0, "j": 10**9}]},  # far past what was planned
        {"requests": [{"consumer": 0}]},
        {"requests": [], "consumed": [{"consumer": 0, "rank": 1, "j": 0}]},
        {"requests": [{"consumer": 0, "j": 0}] * (MAX_CHUNK_REQUESTS + 1)},
    ]:
        answer = client.post("/v1/jobs/bad-chunks/chunks", json=bad)
        assert 400 <= answer.status_code < 500, (bad, answer.text)
    assert client.delete("/v1/jobs/bad-chunks").status_code == 200


def test_restoring_a_bad_state_leaves_the_job_as_it_was(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    client = server.client(token)
    client.post("/v1/jobs", json={"spec": spec("keep")}).raise_for_status()
    body = {"requests": [{"consumer": 0, "j": 3}], "consumed": [{"consumer": 0, "rank": 0, "j": 3}]}
    before = client.post("/v1/jobs/keep/chunks", json=body).json()
    state = client.get("/v1/jobs/keep/state").json()
    broken = [
        {},
        {**state, "version": 99},
        {**state, "spec": "0" * 32},
        {**state, "planner": {**state["planner"], "positions": [1]}},
        {**state, "planner": "x"},
        {**state, "consumers": {"0": {"j": "x"}}},
        {**state, "topology": {"dp_groups": -1}},
    ]
    for bad in broken:
        answer = client.post("/v1/jobs/keep/state", json={"state": bad})
        assert 400 <= answer.status_code < 500, answer.text
    after = client.get("/v1/jobs/keep/state").json()
    after.pop("planned"), state.pop("planned")  # how far planning ran ahead in the background
    assert after == state
    assert client.post("/v1/jobs/keep/chunks", json=body).json() == before
    assert client.delete("/v1/jobs/keep").status_code == 200


def test_msgpack_bytes_where_text_belongs_are_refused(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    client = server.client(token)
    options = {"spec": {**spec("b1"), "algorithm_options": {"mix": b"\x80"}}}
    assert client.post("/v1/jobs", **packed(options)).status_code == 422
    named = {"spec": {**spec("b1"), "where": b"language == 'en'"}}
    assert client.post("/v1/jobs", **packed(named)).status_code == 422
    client.post("/v1/jobs", json={"spec": spec("b2")}).raise_for_status()
    state = client.get("/v1/jobs/b2/state").json()
    state["mixture_log"][0]["note"] = b"\x00\x01"
    answer = client.post("/v1/jobs/b2/state", **packed({"state": state}))
    assert answer.status_code == 400
    assert "not a job state" in msgpack.unpackb(answer.content)["error"]
    assert client.post("/v1/jobs/b2/checkpoint").status_code == 200
    assert client.delete("/v1/jobs/b2").status_code == 200
