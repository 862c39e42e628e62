"""Broken request bodies for every route of one real server (``mixplane serve`` on loopback).

Routes come from the server's own OpenAPI description (so a route added later is fuzzed
without a change here) plus the dashboard's. Each route gets its valid body where one is known
(``VALID``: register, explain, submit, chunks, feedback, restore a real state), mistyped or with
its bytes cut, flipped or spliced, sent as JSON or msgpack, under an odd Content-Type now and
then; a route without a known body gets arbitrary JSON values. Path parameters are the real job
or file, or junk.

Every answer must be below 500, and a 4xx must be ``{"error": one line}`` (with the error's
class as ``type`` where the server names it) in the type the client accepts. A registration that fails leaves the catalog's datasets and files as they were.
(``tests/server/test_fuzz.py`` fuzzes the OpenAPI schema with schemathesis; this campaign
starts from real bodies and breaks them, which reaches deeper, and also covers
``POST /v1/datasets``, whose paths it keeps inside the corpus' folder.)
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from mixplane.protocol import MSGPACK
from tests.fuzz.harness import BYTE_MUTATIONS, SEED, Tally, count, mistype, odd_value, rng_for
from tests.server.conftest import Server, register_corpus, spec

pytestmark = pytest.mark.integration

JOB = "fuzz-job"
#: Routes the OpenAPI description leaves out (the dashboard's page and files).
EXTRA_ROUTES = [("GET", "/"), ("GET", "/static/{name}")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, Path]]:
    root = tmp_path_factory.mktemp("fuzz-http")
    home = register_corpus(root)
    token = "fuzz-token-" + "y" * 20
    (root / "token").write_text(token)
    server = Server(home, "--token-file", str(root / "token"))
    try:
        yield server, token, root / "data"
    finally:
        server.kill()


def valid_bodies(http: httpx.Client, data: Path) -> dict[tuple[str, str], Any]:
    """A valid body per route that takes one (the job's state is fetched from the server)."""
    state = http.get(f"/v1/jobs/{JOB}/state")
    state.raise_for_status()
    return {
        ("POST", "/v1/datasets"): {
            "name": "fuzzed",
            "paths": [str(data)],
            "properties": {"language": "meta.language", "quality": "meta.quality"},
            "constants": {"origin": "fuzz"},
            "on_error": "skip",
        },
        ("POST", "/v1/explain"): {"where": "quality > 0.5", "by": ["language"], "runs": True},
        ("POST", "/v1/jobs"): {"spec": spec("fuzz-other"), "topology": {"dp_groups": 2}},
        ("POST", "/v1/jobs/{job_id}/chunks"): {
            "requests": [{"consumer": 0, "j": 0}, {"consumer": 1, "j": 2}],
            "consumed": [{"consumer": 0, "rank": 0, "j": 0}],
        },
        ("POST", "/v1/jobs/{job_id}/feedback"): {
            "step": 1,
            "loss_sum": [1.0, 2.0, 3.0],
            "token_count": [10.0, 20.0, 30.0],
        },
        ("POST", "/v1/jobs/{job_id}/state"): {"state": state.json()},
    }


def routes(http: httpx.Client) -> list[tuple[str, str]]:
    schema = http.get("/openapi.json").json()
    found = [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    ]
    return sorted(set(found) | set(EXTRA_ROUTES))


def _inside(body: Any, data: Path) -> Any:
    """A register body whose paths could name anything outside the corpus' folder (an
    absolute path, '~') gets them moved under it: the campaign must not scan the machine."""
    if isinstance(body, dict) and isinstance(body.get("paths"), list):
        body["paths"] = [
            str(data) + "/" + p.lstrip("/~")
            if isinstance(p, str) and p[:1] in ("/", "~") and not p.startswith(str(data))
            else p
            for p in body["paths"]
        ]
    return body


def _safe_bytes(raw: bytes, data: Path) -> bytes | None:
    """Mutated bytes of a register body, or None when they decode to a body whose paths
    leave the corpus' folder (that input is drawn again)."""
    for decode in (json.loads, lambda b: msgpack.unpackb(b, raw=False)):
        try:
            decoded = decode(raw)
        except Exception:
            continue
        paths = decoded.get("paths") if isinstance(decoded, dict) else None
        if isinstance(paths, list) and any(
            isinstance(p, str) and p[:1] in ("/", "~") and not p.startswith(str(data))
            for p in paths
        ):
            return None
    return raw


def request_for(
    method: str, path: str, valid: Any, rng: random.Random, data: Path
) -> dict[str, Any]:
    """httpx keyword arguments of one broken request to a route."""
    url = path.replace(
        "{job_id}", JOB if rng.random() < 0.85 else rng.choice(["x", "%00", "a" * 300])
    )
    url = url.replace("{file_id}", rng.choice(["1", "0", "-1", "99999999999", "x"]))
    url = url.replace("{name}", rng.choice(["app.js", "../secret", "x" * 70, "%2e%2e"]))
    if method in ("GET", "DELETE") and rng.random() < 0.5:
        key = rng.choice(["chunks", "history", "steps", "token", "x"])
        url += f"?{key}={rng.choice(['-1', '0', '1e9', 'abc', '', '99999999999999999999'])}"
    body: Any = valid if valid is not None else odd_value(rng)
    if valid is not None and rng.random() < 0.75:
        for _ in range(rng.randint(1, 3)):
            body = mistype(body, rng)
    if path == "/v1/datasets":
        body = _inside(body, data)
    as_msgpack = rng.random() < 0.3
    try:
        raw = msgpack.packb(body, use_bin_type=True) if as_msgpack else json.dumps(body).encode()
    except (ValueError, TypeError, OverflowError, RecursionError):
        raw = json.dumps(str(body)[:1000]).encode()
    if rng.random() < 0.3:
        raw = BYTE_MUTATIONS[rng.choice(sorted(BYTE_MUTATIONS))](raw, rng)
    if rng.random() < 0.05:
        raw = b"[" * 100_000 + b"]" * 100_000  # nesting no parser should recurse into
    content_type = MSGPACK if as_msgpack else "application/json"
    if rng.random() < 0.08:
        content_type = rng.choice(["text/plain", "", "application/x-msgpack", "application/xml"])
    headers = {"Content-Type": content_type, "Accept": rng.choice([MSGPACK, "application/json"])}
    return {"method": method, "url": url, "content": raw, "headers": headers}


def check_answer(response: httpx.Response, label: str) -> str:
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:2000]}"
    if response.status_code < 400:
        return "ok"
    media = response.headers.get("content-type", "")
    body = msgpack.unpackb(response.content) if media == MSGPACK else response.json()
    # {"error": text}, and the error's class where the server names it
    assert isinstance(body, dict) and "error" in body, f"{label}: {body!r:.500}"
    assert set(body) <= {"error", "type"}, f"{label}: {body!r:.500}"
    error = body["error"]
    assert isinstance(error, str) and error and "\n" not in error, f"{label}: {error!r:.500}"
    return str(response.status_code)


def catalog_view(http: httpx.Client) -> tuple[Any, Any]:
    return http.get("/v1/datasets").json(), http.get("/v1/files").json()


def test_broken_requests(server: tuple[Server, str, Path]) -> None:
    srv, token, data = server
    tally = Tally("http")
    with srv.client(token) as http:
        job = {"spec": spec(JOB), "topology": {"dp_groups": 2, "workers": 2}}
        http.post("/v1/jobs", json=job).raise_for_status()
        valid = valid_bodies(http, data)
        every = routes(http)
        assert len(every) >= 18, every
        per_route = -(-count("http") // len(every))
        for method, path in every:
            for i in range(per_route):
                label = f"http/{method} {path}/{i}"
                rng = rng_for(label)
                if "{job_id}" in path:  # the job exists (a DELETE may have removed it)
                    http.post("/v1/jobs", json=job).raise_for_status()
                kwargs = request_for(method, path, valid.get((method, path)), rng, data)
                registering = path == "/v1/datasets" and method == "POST"
                if registering:
                    if _safe_bytes(kwargs["content"], data) is None:
                        kwargs["content"] = json.dumps(valid[(method, path)] | {"name": 5}).encode()
                    before = catalog_view(http)
                try:
                    response = http.request(**kwargs, timeout=60)
                except httpx.HTTPError as exc:
                    pytest.fail(f"{label}: no answer ({exc}) (seed {SEED})")
                outcome = check_answer(response, label)
                if registering and outcome != "ok":
                    assert catalog_view(http) == before, f"{label}: a failed registration left rows"
                tally.add(f"{method} {path}", outcome)
        assert http.get("/healthz").status_code == 200
        assert srv.proc.poll() is None, "the server died"
    print(tally.report())
    assert tally.inputs >= count("http")
