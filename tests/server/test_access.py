"""Role-scoped tokens (issue 17): every route x every role, with the expectations derived from
the one table the server enforces (``mixplane.server.roles.ROUTES``); the 401 and 403 bodies;
the tokens file's checks; dashboard sessions; tokens never in a log."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mixplane.catalog.catalog import Catalog
from mixplane.errors import ServerConfigError
from mixplane.protocol import PROTOCOL_HEADER
from mixplane.server import roles as roles_module
from mixplane.server.app import create_app
from mixplane.server.auth import Credentials, Sessions, cookie_value, read_tokens_file
from mixplane.server.jobs import JobStore
from mixplane.server.metrics import Metrics
from mixplane.server.roles import ROLES, ROUTES, UnguardedRouteError, allows, require_declared
from tests.server.conftest import (
    NAMES,
    TOKENS,
    RoleServer,
    Server,
    register_corpus,
    spec,
    write_tokens,
)

pytestmark = pytest.mark.integration

ANYONE = (None, *ROLES)  # no token, then each role
_serial = itertools.count()


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, template) of every route of a real app (HEAD is GET's)."""
    catalog = Catalog.open(tmp_path / "home")
    store = JobStore(catalog, tmp_path / "home" / "server" / "jobs", Metrics())
    try:
        app = create_app(store, checkpoint_every=0, metrics=Metrics())
        return {
            (method, str(getattr(route, "path", "")))
            for route in app.routes
            for method in getattr(route, "methods", None) or ()
            if method != "HEAD"
        }
    finally:
        store.close()


def test_every_route_has_a_role_and_every_role_a_route(tmp_path: Path) -> None:
    """The table and the app hold the same routes: a route added without a role, or a role
    left for a route that is gone, fails here (and the first one stops the server's start)."""
    routes = app_routes(tmp_path)
    assert len(routes) >= 20
    assert routes - set(ROUTES) == set(), "routes without a role in roles.ROUTES"
    assert set(ROUTES) - routes == set(), "roles.ROUTES lists routes the app does not have"


def test_a_route_without_a_role_stops_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(roles_module.ROUTES, ("GET", "/v1/files"))
    with pytest.raises(UnguardedRouteError, match="GET /v1/files") as error:
        app_routes(tmp_path)
    assert "mixplane/server/roles.py" in str(error.value)
    with pytest.raises(UnguardedRouteError, match="POST /v1/new, PUT /v1/other"):
        require_declared([("GET", "/healthz"), ("PUT", "/v1/other"), ("POST", "/v1/new")])


def test_the_table_is_least_privilege() -> None:
    """What the issue asks of each role, read from the table."""
    writes = {key for key, access in ROUTES.items() if access.role not in (None, "viewer")}
    reads = {key for key, access in ROUTES.items() if access.role == "viewer"}
    assert all(
        method == "GET"
        for method, _ in reads
        - {("POST", "/v1/explain")}
        - {
            ("POST", "/v1/session"),
            ("DELETE", "/v1/session"),
        }
    )
    assert all(method != "GET" for method, _ in writes)  # every GET is a viewer's (or open)
    admin = {key for key, access in ROUTES.items() if access.role == "admin"}
    assert {
        ("POST", "/v1/datasets"),
        ("POST", "/v1/token-counts"),
        ("DELETE", "/v1/jobs/{job_id}"),
    } <= admin
    trainer = {key for key, access in ROUTES.items() if access.role == "trainer"}
    assert {
        ("POST", "/v1/jobs"),
        ("POST", "/v1/jobs/{job_id}/chunks"),
        ("POST", "/v1/jobs/{job_id}/feedback"),
        ("POST", "/v1/jobs/{job_id}/checkpoint"),
        ("POST", "/v1/jobs/{job_id}/state"),
        ("POST", "/v1/jobs/{job_id}/weights"),
    } == trainer
    opened = {key for key, access in ROUTES.items() if access.role is None}
    assert opened == {
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/"),
        ("GET", "/static/{name}"),
    }
    actions = {access.action for access in ROUTES.values()} - {None}
    assert {"register", "count-tokens", "delete", "restore", "set-weights"} <= actions


# -- every route x every role --------------------------------------------------------------------
def request_for(key: tuple[str, str], admin: httpx.Client, rs: RoleServer) -> dict[str, Any]:
    """A request that succeeds (2xx) for a role the route allows: for the routes known here;
    any other route gets its template filled and an empty body (then only 'not 401/403' is
    expected of an allowed role)."""
    method, template = key
    n = next(_serial)
    job = "access"
    if key == ("DELETE", "/v1/jobs/{job_id}"):
        job = f"doomed-{n}"
        admin.post("/v1/jobs", json={"spec": spec(job)}).raise_for_status()
    file_id = str(admin.get("/v1/files").json()[0]["file_id"])
    path = (
        template.replace("{job_id}", job).replace("{file_id}", file_id).replace("{name}", "app.js")
    )
    body: Any = None
    if key == ("POST", "/v1/datasets"):
        body = {"name": f"reg-{n}", "paths": [str(rs.root / "a.jsonl")]}
    elif key == ("POST", "/v1/token-counts"):
        body = {"tokenizer": {"name": "qwen"}}
    elif key == ("POST", "/v1/explain"):
        body = {"where": "language == 'en'", "by": ["language"]}
    elif key == ("POST", "/v1/jobs"):
        body = {"spec": spec(job)}
    elif key == ("POST", "/v1/jobs/{job_id}/chunks"):
        body = {"requests": [{"consumer": 0, "j": 0}]}
    elif key == ("POST", "/v1/jobs/{job_id}/feedback"):
        body = {"step": n, "loss_sum": [1.0, 1.0, 1.0], "token_count": [10.0, 10.0, 10.0]}
    elif key == ("POST", "/v1/jobs/{job_id}/state"):
        body = {"state": admin.get(f"/v1/jobs/{job}/state").json()}
    elif key == ("POST", "/v1/jobs/{job_id}/weights"):
        body = {"weights": [1.0, 2.0, 1.0]}
    elif method in ("POST", "PUT", "PATCH") and key != ("POST", "/v1/session"):
        body = {}
    known = body is not None or method in ("GET", "DELETE") or key == ("POST", "/v1/session")
    return {"method": method, "url": path, "json": body, "known": known}


def test_every_route_for_every_role(roles: RoleServer) -> None:
    admin = roles.client("admin")
    admin.post("/v1/jobs", json={"spec": spec("access")}).raise_for_status()
    clients = {role: roles.client(role) for role in ANYONE}
    wrong = roles.server.client("unknown-token-" + "u" * 20)
    checked = 0
    for key, access in ROUTES.items():
        method, template = key
        for role in ANYONE:
            request = request_for(key, admin, roles)
            known = request.pop("known")
            answer = clients[role].request(**request)
            label = (method, template, role, answer.status_code, answer.text[:300])
            if access.role is None:
                assert answer.status_code == 200, label
            elif role is None:
                assert answer.status_code == 401, label
                assert answer.headers["www-authenticate"] == "Bearer"
                assert "bearer token" in answer.json()["error"], label
                assert wrong.request(**request).status_code == 401, label
            elif allows(role, access.role):
                assert answer.status_code not in (401, 403), label
                if known:
                    assert 200 <= answer.status_code < 300, label
            else:
                assert answer.status_code == 403, label
                assert answer.json()["error"] == (
                    f"{method} {template} needs role {access.role!r}; "
                    f"the token of {NAMES[role]!r} has role {role!r}"
                ), label
            checked += 1
    assert checked == len(ROUTES) * len(ANYONE)
    # refused requests changed nothing: the job a viewer and a trainer tried to delete is there
    assert admin.get("/v1/jobs/access").status_code == 200
    names = {d["name"] for d in admin.get("/v1/datasets").json()}
    registered = {n for n in names if n.startswith("reg-")}
    assert len(registered) == 1  # the admin's registration only


def test_the_token_must_be_a_bearer_token(roles: RoleServer) -> None:
    server = roles.server
    token = TOKENS["admin"]
    for header in (f"Basic {token}", f"Bearer {token[:-1]}", f"Bearer {token}x", "Bearer", token):
        answer = httpx.get(
            server.url + "/v1/jobs", headers={"Authorization": header, PROTOCOL_HEADER: "1"}
        )
        assert answer.status_code == 401, header
    assert roles.client("admin").get("/v1/jobs", headers={"Authorization": f"bearer {token}"})
    # a refused request is refused before its body is read, whatever the body
    big = roles.client("viewer").post(
        "/v1/datasets", content=b"{" * 1000, headers={"Content-Type": "application/json"}
    )
    assert big.status_code == 403


# -- the tokens file -------------------------------------------------------------------------------
def entry(token: str, role: str = "viewer", name: str = "someone") -> dict[str, str]:
    return {"token": token, "role": role, "name": name}


GOOD = "g" * 32
OTHER = "o" * 32


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        ({"tokens": [entry(GOOD)]}, 0o644, "mode 0644: other users could read or change it"),
        ({"tokens": [entry(GOOD)]}, 0o604, "mode 0604"),
        ({"tokens": [entry(GOOD)]}, 0o660, "mode 0660"),
        ("{not json", 0o600, "is not JSON (line 1, column 2"),
        ([], 0o600, 'must hold one object {"tokens": [...]}'),
        ({"tokens": []}, 0o600, "'tokens' must be a list of 1 to"),
        ({"tokens": [entry(GOOD)], "extra": 1}, 0o600, "got ['extra', 'tokens']"),
        ({"tokens": ["x"]}, 0o600, "tokens[0] must be an object"),
        ({"tokens": [entry(GOOD, role="root", name="ops")]}, 0o600, "tokens[0] ('ops'): unknown role 'root'; roles: viewer, trainer, admin"),
        ({"tokens": [entry(GOOD, name="a"), entry(GOOD, name="b")]}, 0o600, "tokens[1] ('b') holds the same token as tokens[0] ('a')"),
        ({"tokens": [entry(GOOD, name="a"), entry(OTHER, name="a")]}, 0o600, "name 'a' is also tokens[0]'s"),
        ({"tokens": [entry("short")]}, 0o600, "the token has 5 characters; use 16 to"),
        ({"tokens": [entry("has space " * 3)]}, 0o600, "printable ASCII without spaces"),
        ({"tokens": [entry(GOOD, name="two words")]}, 0o600, "name 'two words' must be"),
        ({"tokens": [{"token": GOOD, "role": "viewer"}]}, 0o600, "missing ['name']"),
        ({"tokens": [{**entry(GOOD), "expires": 1}]}, 0o600, "unknown ['expires']"),
    ],
)  # fmt: skip
def test_a_bad_tokens_file_is_refused(
    tmp_path: Path, content: Any, mode: int, expected: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(mode)
    with pytest.raises(ServerConfigError) as error:
        read_tokens_file(path)
    message = str(error.value)
    assert expected in message and str(path) in message
    assert "\n" not in message
    assert GOOD not in message and OTHER not in message  # never a token in a message


def test_a_good_tokens_file(tmp_path: Path) -> None:
    credentials = read_tokens_file(write_tokens(tmp_path / "tokens.json"))
    assert len(credentials) == 3
    for role, token in TOKENS.items():
        found = credentials.identify(token.encode())
        assert found is not None and (found.name, found.role, found.via) == (
            NAMES[role],
            role,
            "token",
        )
        for near in (token[:-1], token + "x", token.upper(), "", token[1:]):
            assert credentials.identify(near.encode()) is None
    assert sorted(h["role"] for h in credentials.holders()) == sorted(ROLES)
    assert all(set(h) == {"name", "role"} for h in credentials.holders())  # no tokens
    single = Credentials.single("one-admin-token")
    principal = single.identify(b"one-admin-token")
    assert principal is not None and (principal.name, principal.role) == ("token-file", "admin")


def serve_refused(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIXPLANE_")}
    return subprocess.run(
        [sys.executable, "-m", "mixplane.cli", "--home", str(home), "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("tokens", "mode", "extra", "expected"),
    [
        ([entry(GOOD)], 0o644, (), "chmod 600"),
        ([entry(GOOD, role="superuser")], 0o600, (), "unknown role 'superuser'"),
        ([entry(GOOD, name="a"), entry(GOOD, name="b")], 0o600, (), "holds the same token"),
        ([entry(GOOD)], 0o600, ("--token-file", "{tokens}"), "not both"),
    ],
)
def test_the_server_refuses_to_start_with_a_bad_tokens_file(
    tmp_path: Path, tokens: list[dict[str, str]], mode: int, extra: tuple[str, ...], expected: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": tokens}))
    path.chmod(mode)
    args = [a.replace("{tokens}", str(path)) for a in extra]
    proc = serve_refused(tmp_path / "home", "--tokens-file", str(path), *args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert GOOD not in proc.stderr
    assert not (tmp_path / "home" / "catalog.duckdb").exists()  # refused before opening it


def test_token_file_still_serves_one_admin_token(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    home = register_corpus(tmp_path)
    (tmp_path / "token").write_text("single-admin-token\n")
    server = start(home, "--token-file", str(tmp_path / "token"))
    admin = server.client("single-admin-token")
    admin.post("/v1/jobs", json={"spec": spec("one")}).raise_for_status()
    assert admin.delete("/v1/jobs/one").status_code == 200  # admin: may delete
    assert server.client("other").get("/v1/jobs").status_code == 401
    # a token server without --data-root registers nothing (403 naming the fix)
    refused = admin.post("/v1/datasets", json={"name": "x", "paths": [str(tmp_path / "data")]})
    assert refused.status_code == 403
    assert "no data roots" in refused.json()["error"] and "--data-root" in refused.json()["error"]


def test_the_environment_token_file_yields_to_tokens_file(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    """MIXPLANE_TOKEN_FILE set for the clients does not add an admin to a --tokens-file server."""
    home = register_corpus(tmp_path)
    (tmp_path / "token").write_text("environment-admin-token\n")
    tokens = write_tokens(tmp_path / "tokens.json")
    server = start(
        home, "--tokens-file", str(tokens), env={"MIXPLANE_TOKEN_FILE": str(tmp_path / "token")}
    )
    assert server.client("environment-admin-token").get("/v1/jobs").status_code == 401
    assert server.client(TOKENS["viewer"]).get("/v1/jobs").status_code == 200


# -- dashboard sessions ----------------------------------------------------------------------------
def test_a_token_is_traded_for_a_viewer_session_cookie(roles: RoleServer) -> None:
    for role in ROLES:
        with httpx.Client(base_url=roles.server.url, timeout=30) as browser:
            protocol = {PROTOCOL_HEADER: "1"}
            opened = browser.post(
                "/v1/session", headers={**protocol, "Authorization": f"Bearer {TOKENS[role]}"}
            )
            assert opened.status_code == 200, opened.text
            assert opened.json() == {"name": NAMES[role], "role": "viewer", "expires_in": 43200}
            cookie = opened.headers["set-cookie"]
            parts = [p.strip() for p in cookie.split(";")]
            assert parts[0].startswith("mixplane_session=") and len(parts[0]) > 40
            assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(parts)
            assert "Secure" not in parts  # plain HTTP here (tests/server/test_tls.py: Secure)
            assert TOKENS[role] not in cookie
            # the cookie reads...
            assert browser.get("/v1/dashboard/jobs", headers=protocol).status_code == 200
            assert browser.get("/metrics").status_code == 200
            # ...and nothing more, whatever the token's role was
            denied = browser.post("/v1/jobs", json={"spec": spec("cookie")}, headers=protocol)
            assert denied.status_code == 403
            assert denied.json()["error"] == (
                f"POST /v1/jobs needs role 'trainer'; the dashboard session of {NAMES[role]!r} "
                "has role 'viewer'"
            )
            # a session does not open another one
            assert browser.post("/v1/session", headers=protocol).status_code == 400
            # without the protocol header (a form another site posts) nothing is answered
            assert browser.get("/v1/dashboard/jobs").status_code == 400
            closed = browser.delete("/v1/session", headers=protocol)
            assert closed.status_code == 200 and closed.json() == {"closed": True}
            assert "Max-Age=0" in closed.headers["set-cookie"]
            value = cookie_value(parts[0].encode())
            assert value is not None
            ended = httpx.get(
                roles.server.url + "/v1/dashboard/jobs",
                headers={**protocol, "Cookie": f"mixplane_session={value.decode()}"},
            )
            assert ended.status_code == 401 and "session has ended" in ended.json()["error"]
    forged = roles.server.client(None, cookies={"mixplane_session": "x" * 43})
    assert forged.get("/v1/jobs").status_code == 401


def test_sessions_expire_and_are_bounded() -> None:
    now = [1000.0]
    sessions = Sessions(seconds=60, limit=3, clock=lambda: now[0])
    holder = Credentials.single("a-token-of-admin").identify(b"a-token-of-admin")
    assert holder is not None
    first = sessions.open(holder)
    found = sessions.identify(first.encode())
    assert found is not None and (found.name, found.role, found.via) == (
        "token-file",
        "viewer",
        "session",
    )
    now[0] += 61
    assert sessions.identify(first.encode()) is None  # expired
    values = [sessions.open(holder) for _ in range(5)]
    assert len(sessions) == 3  # the oldest ended first
    assert sessions.identify(values[0].encode()) is None
    assert sessions.identify(values[-1].encode()) is not None
    sessions.close(values[-1].encode())
    assert sessions.identify(values[-1].encode()) is None
    assert len({*values}) == 5 and all(len(v) >= 43 for v in values)
    assert cookie_value(b"a=1; mixplane_session=abc; b=2") == b"abc"
    assert cookie_value(b"mixplane_sessionx=abc") is None


# -- tokens never logged ---------------------------------------------------------------------------
def test_tokens_never_reach_the_log_or_the_audit_log(tmp_path: Path) -> None:
    home = register_corpus(tmp_path)
    root = tmp_path / "data"
    tokens = write_tokens(tmp_path / "tokens.json")
    wrong = "wrong-token-" + "w" * 30
    server = Server(
        home, "--tokens-file", str(tokens), "--data-root", str(root), env={"PYTHONWARNINGS": ""}
    )
    try:
        for role in ANYONE:
            client = roles_client(server, role)
            client.post("/v1/jobs", json={"spec": spec("logged")})
            client.get("/v1/jobs/none")
            client.post("/v1/datasets", json={"name": "x", "paths": ["/etc"]})
            client.delete("/v1/jobs/logged")
            client.post("/v1/session")
        server.client(wrong).get("/v1/jobs")
        server.client(wrong).get("/v1/jobs", params={"token": wrong})
    finally:
        server.stop()
    text = server.log() + (home / "server" / "audit.log").read_text()
    assert '"action":"delete"' in text  # the audit log was written
    for secret in (*TOKENS.values(), wrong):
        assert secret not in text


def roles_client(server: Server, role: str | None) -> httpx.Client:
    return server.client(TOKENS[role] if role else None)


def test_the_route_cache_is_bounded() -> None:
    """Paths are the client's: the gate remembers at most ROUTE_CACHE of them, none longer than
    ROUTE_CACHE_PATH characters, so no flood of distinct paths grows the server's memory."""
    from mixplane.server.auth import ROUTE_CACHE, ROUTE_CACHE_PATH, Gate

    gate = Gate(None, Sessions(), routes=list)
    long = {"type": "http", "method": "GET", "path": "/v1/" + "x" * ROUTE_CACHE_PATH}
    decision = gate.decide(long, {})
    assert decision.route is None and decision.access.role == "viewer"
    assert len(gate._cache) == 0
    for i in range(ROUTE_CACHE + 10):
        gate.decide({"type": "http", "method": "GET", "path": f"/other/{i}"}, {})
        assert len(gate._cache) <= ROUTE_CACHE
    assert gate.decide({"type": "http", "method": "GET", "path": "/x"}, {}).access.role is None
