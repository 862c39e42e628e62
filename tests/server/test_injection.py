"""A crafted field path through the real server is a 400 naming the field, and never reads a
file outside the registered paths (issue 17, item 0).

Before the fix, ``properties={"language": "meta.language' || (SELECT content FROM
read_text('/secret')) || '"}`` was formatted into the JSONL scanner's DuckDB SQL: the dataset
registered and every sample's ``language`` held the secret file's content, which ``explain``
then showed to any client.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mixplane.catalog import Catalog
from tests.server.conftest import Server, register_corpus

pytestmark = pytest.mark.integration

SECRET = "canary-server-b71f-never-read"


def test_crafted_field_path_is_a_400_and_reads_nothing(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    home = register_corpus(tmp_path)
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    data = str((tmp_path / "data").resolve())
    read = f"(SELECT content FROM read_text('{secret}'))"
    server = start(home)
    answers: list[str] = []
    with server.client() as http:

        def register(**body: object) -> tuple[int, str]:
            response = http.post("/v1/datasets", json={"name": "evil", "paths": [data], **body})
            answers.append(response.text)
            return response.status_code, response.json().get("error", "")

        status, error = register(properties={"language": f"meta.language' || {read} || '"})
        assert status == 400
        assert error.startswith("invalid field path") and "for property 'language'" in error
        assert "\n" not in error
        status, error = register(
            properties={"language": "meta.language"}, text_field=f"text') || {read} || ('"
        )
        assert (status, error.startswith("invalid field path")) == (400, True)
        assert "for text_field" in error
        # the documented escape makes the same text one key: looked up as data, found nowhere
        status, error = register(
            properties={"language": "meta." + json.dumps(f"language' || {read} || '")}
        )
        assert status == 400 and "missing field" in error
        status, _ = register(
            properties={"language": "meta." + json.dumps(f"language' || {read} || '")},
            on_error="skip",
        )
        assert status == 200
        for method, url, body in (
            ("GET", "/v1/datasets", None),
            ("GET", "/v1/files", None),
            ("POST", "/v1/explain", {"by": ["language"]}),
            ("POST", "/v1/explain", {"where": "language == 'en'", "by": ["language"]}),
            ("GET", "/metrics", None),
        ):
            response = http.request(method, url, json=body)
            assert response.status_code == 200, response.text
            answers.append(response.text)
    assert server.stop() in (0, -15)  # SIGTERM: graceful, the catalog is released
    assert not [a for a in answers if SECRET in a]
    with Catalog.open(home) as catalog:
        con = catalog._con
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        stored = {t: con.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
    assert SECRET not in json.dumps(stored, default=str)
    assert SECRET not in server.log()
