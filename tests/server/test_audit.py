"""The audit log (issue 17): registration, deletion, restores and replacing submits leave one
JSON line each in ``{home}/server/audit.log`` with the time, the token's name and what was
done, refused attempts included, each on disk before its answer leaves; concurrent lines never
interleave."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mixplane.server.audit import AuditLog, read_audit
from tests.server.conftest import (
    NAMES,
    TOKENS,
    Server,
    register_corpus,
    spec,
    write_records,
    write_tokens,
)

pytestmark = pytest.mark.integration


def test_admin_actions_are_audited(tmp_path: Path, start: Callable[..., Server]) -> None:
    home = register_corpus(tmp_path)
    root = tmp_path / "root"
    write_records(root / "web.jsonl")
    server = start(
        home, "--tokens-file", str(write_tokens(tmp_path / "tokens.json")), "--data-root", str(root)
    )
    admin, trainer, viewer = (server.client(TOKENS[r]) for r in ("admin", "trainer", "viewer"))
    register = {"name": "web", "paths": [str(root / "web.jsonl")]}
    assert viewer.post("/v1/datasets", json=register).status_code == 403
    assert admin.post("/v1/datasets", json=register).status_code == 200
    trainer.post("/v1/jobs", json={"spec": spec("audited")}).raise_for_status()
    state = trainer.get("/v1/jobs/audited/state").json()
    assert trainer.post("/v1/jobs/audited/state", json={"state": state}).status_code == 200
    replaced = {"spec": spec("audited", seed=9), "replace": True}
    assert trainer.post("/v1/jobs", json=replaced).status_code == 200
    assert trainer.post("/v1/jobs", json={"spec": spec("audited", seed=9)}).status_code == 200
    assert trainer.delete("/v1/jobs/audited").status_code == 403
    assert server.client().delete("/v1/jobs/audited").status_code == 401  # names nobody
    assert admin.delete("/v1/jobs/audited").status_code == 200
    last = read_audit(home / "server" / "audit.log")[-1]  # written before the answer left
    assert (last["action"], last["name"], last["status"]) == ("delete", NAMES["admin"], 200)
    for _ in range(3):  # reading leaves no line
        assert viewer.get("/v1/jobs").status_code == 200

    def delete(i: int) -> int:
        return server.client(TOKENS["admin"]).delete(f"/v1/jobs/missing-{i}").status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(delete, range(64))) == {404}
    server.stop()

    lines = read_audit(home / "server" / "audit.log")
    start_line, *actions = lines
    assert start_line["action"] == "serve" and start_line["name"] == "server"
    assert start_line["details"]["url"] == server.url
    assert sorted(start_line["details"]["tokens"], key=lambda t: t["name"]) == sorted(
        ({"name": NAMES[r], "role": r} for r in TOKENS), key=lambda t: t["name"]
    )
    assert start_line["details"]["data_roots"] == repr(str(root.resolve()))
    seen = [(a["action"], a["name"], a["role"], a["request"], a["status"]) for a in actions[:6]]
    assert seen == [
        ("register", NAMES["viewer"], "viewer", "POST /v1/datasets", 403),
        ("register", NAMES["admin"], "admin", "POST /v1/datasets", 200),
        ("restore", NAMES["trainer"], "trainer", "POST /v1/jobs/audited/state", 200),
        ("replace", NAMES["trainer"], "trainer", "POST /v1/jobs", 200),
        ("delete", NAMES["trainer"], "trainer", "DELETE /v1/jobs/audited", 403),
        ("delete", NAMES["admin"], "admin", "DELETE /v1/jobs/audited", 200),
    ]
    assert actions[1]["details"] == {"dataset": "web", "paths": [str(root / "web.jsonl")]}
    assert actions[3]["details"] == {"job_id": "audited"}
    assert all(a["via"] == "token" for a in actions)
    concurrent = actions[6:]
    assert len(concurrent) == 64  # one whole line each (read_audit parsed every one)
    assert sorted(a["request"] for a in concurrent) == sorted(
        f"DELETE /v1/jobs/missing-{i}" for i in range(64)
    )
    for line in lines:
        assert set(line) == {
            "time",
            "name",
            "role",
            "via",
            "action",
            "request",
            "status",
            "details",
        }
        when = dt.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 600
    text = (home / "server" / "audit.log").read_text()
    assert all(token not in text for token in TOKENS.values())


def test_long_details_are_cut(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.record(
        action="register", name="a", role="admin", via="token", details={"paths": ["p"] * 500}
    )
    log.record(action="register", name="a", role="admin", via="token", details={"x": "y" * 40_000})
    log.close()
    log.record(action="ignored", name="a", role="admin", via="token")  # after close: nothing
    first, second = read_audit(tmp_path / "audit.log")
    assert len(first["details"]["paths"]) == 51 and first["details"]["paths"][-1] == "... 450 more"
    assert len(second["details"]["x"]) < 2000
    assert (tmp_path / "audit.log").stat().st_mode & 0o077 == 0
