"""Exact token counts through a real server (issue 13, item 2): ``POST /v1/token-counts`` with
a tokenizer by name or sent as file content stores the counts an in-process count stores, is
cached, serves token-budgeted jobs, and refuses bad tokenizers and changed files with a 4xx."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from mixplane.catalog import Catalog
from mixplane.client import Client
from mixplane.client.remote import RemoteError
from mixplane.server.audit import read_audit
from mixplane.tokens import load_tokenizer
from mixplane.tokens.tokenizer import TokenizerError
from tests.conftest import corpus_tokenizer, run_cli
from tests.server.conftest import (
    MIX,
    NAMES,
    PROPERTIES,
    TOKENS,
    Server,
    packed,
    register_corpus,
    write_tokens,
)

pytestmark = pytest.mark.integration

Counts = dict[tuple[str, int], int]


def stored(home: Path, fingerprint: str) -> Counts:
    with Catalog.open(home) as cat:
        rows = cat._con.execute(
            "SELECT f.path, t.ordinal, t.tokens FROM token_counts t JOIN files f USING (file_id) "
            "WHERE t.tokenizer = ?",
            [fingerprint],
        ).fetchall()
    return {(str(p), int(o)): int(n) for p, o, n in rows}


def rank_file(tmp_path: Path) -> Path:
    """A copy of Qwen's rank file: sent as data, read with the default (cl100k) pattern."""
    qwen = load_tokenizer("qwen")
    path = tmp_path / "ranks.tiktoken"
    shutil.copyfile(qwen.source, path)  # type: ignore[union-attr]
    return path


def samples(job: object, n: int) -> list[tuple[int, int, int]]:
    stream = job.stream(0, 0, 0)  # type: ignore[attr-defined]
    return [(s.file_id, s.ordinal, s.component) for s in itertools.islice(stream, n)]


def test_server_counts_what_local_counts(start: Callable[..., Server], tmp_path: Path) -> None:
    server_home = register_corpus(tmp_path / "s")
    local_home = tmp_path / "local"
    with Client.local(local_home) as client:
        client.catalog.register(
            "corpus", tmp_path / "s" / "data", properties=PROPERTIES, progress=False
        )
        corpus_tokenizer(client.catalog).save(tmp_path / "tokenizer.json")
    json_path, ranks = tmp_path / "tokenizer.json", rank_file(tmp_path)
    tokenizers = {"json": json_path, "ranks": ranks, "qwen": "qwen"}
    fingerprints = {k: load_tokenizer(v).fingerprint for k, v in tokenizers.items()}
    server = start(server_home)
    with Client.remote(server.url) as remote:
        for kind, spec in tokenizers.items():
            workers = 2 if kind == "json" else None  # the server's spawned worker processes
            report = remote.count_tokens(spec, workers=workers)
            assert report.tokenizer == fingerprints[kind], kind
            assert report.workers == (2 if workers else 0)
            assert (report.counted, report.cached, report.files_counted) == (1200, 0, 3)
            again = remote.count_tokens(spec)
            assert (again.counted, again.cached, again.files_cached) == (0, 1200, 3)
            assert again.tokens == report.tokens
        # a loaded tokenizer is sent as its definition: the same fingerprint, so cached
        loaded = remote.count_tokens(load_tokenizer(ranks), datasets=["corpus"])
        assert (loaded.tokenizer, loaded.counted, loaded.cached) == (fingerprints["ranks"], 0, 1200)
    # the CLI through the server: the same report, cached
    cli = run_cli(
        tmp_path, "--server", server.url, "count-tokens", "--tokenizer", str(json_path), "--json"
    )
    answer = json.loads(cli.stdout)
    assert (answer["tokenizer"], answer["counted"], answer["cached"]) == (
        fingerprints["json"], 0, 1200,
    )  # fmt: skip
    # JSON bodies carry the file's text (tokens/wire.py)
    body = {"tokenizer": {"kind": "hf", "data": json_path.read_text()}}
    with server.client() as http:
        answer = http.post("/v1/token-counts", json=body).json()
    assert (answer["tokenizer"], answer["cached"]) == (fingerprints["json"], 1200)

    # a token-budgeted job uses the exact counts on the server as in-process
    with Catalog.open(local_home) as cat:
        for spec in tokenizers.values():
            assert cat.count_tokens(spec, progress=False).counted == 1200
    tokenizer = load_tokenizer(json_path)
    options = {"mixture": MIX, "unit": "tokens", "chunk_size": 3000, "seed": 5}
    with Client.local(local_home) as client:
        job = client.submit("t", tokenizer=tokenizer, **options)  # type: ignore[arg-type]
        assert set(job.token_source.values()) == {"exact"}
        expected = samples(job, 400)
    with Client.remote(server.url) as remote:
        remote_job = remote.submit("t", tokenizer=tokenizer, **options)  # type: ignore[arg-type]
        assert samples(remote_job, 400) == expected
    assert server.stop() in (0, -15)
    for kind in tokenizers:
        counts = stored(server_home, fingerprints[kind])
        assert len(counts) == 1200 and counts == stored(local_home, fingerprints[kind]), kind


def test_bad_tokenizers_and_changed_files_are_4xx(
    start: Callable[..., Server], tmp_path: Path
) -> None:
    home = register_corpus(tmp_path)
    server = start(home)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"model": {"type": "BPE"')
    partial = "QQ== 0\nQg== 1\n"  # 'A' and 'B' only
    qwen = load_tokenizer("qwen").fingerprint
    with Client.remote(server.url) as remote:
        # a name or path is loaded by the client first: a bad one never leaves it
        for spec, expected in (
            ("nope", "unknown tokenizer 'nope'; known names"),
            (bad_json, "cannot load tokenizer"),
        ):
            with pytest.raises(TokenizerError, match=expected):
                remote.count_tokens(spec)
        with server.client() as http:
            for body, status, expected in (
                ({"tokenizer": {"name": "/etc/passwd"}}, 400, "unknown tokenizer name"),
                (
                    {"tokenizer": {"kind": "hf", "data": bad_json.read_text()}},
                    400,
                    "tokenizer.json",
                ),
                ({"tokenizer": {"kind": "tiktoken", "data": partial}}, 400, "lacks 254 of the 256"),
                (
                    {"tokenizer": {"kind": "tiktoken", "data": "hi there\n"}},
                    400,
                    ":1: not a tiktoken",
                ),
                ({"tokenizer": {"name": "qwen", "fingerprint": "0" * 32}}, 400, "fingerprint"),
                ({"tokenizer": {"kind": "hf"}}, 400, "needs 'data'"),
                ({}, 422, "tokenizer"),
                ({"tokenizer": {"name": "qwen"}, "workers": 0}, 422, "workers"),
                (
                    {"tokenizer": {"name": "qwen"}, "datasets": ["nope"]},
                    404,
                    "unknown dataset 'nope'",
                ),
            ):
                answer = http.post("/v1/token-counts", **packed(body))
                assert answer.status_code == status, (body, answer.content)
                error = msgpack.unpackb(answer.content)["error"]
                assert expected in error and "\n" not in error, (body, error)
        # a file changed after registration: a 409 naming it, or left out and listed
        changed = tmp_path / "data" / "part-1.jsonl"
        changed.write_bytes(changed.read_bytes() + b'{"text": "one more"}\n')
        with pytest.raises(RemoteError) as info:
            remote.count_tokens("qwen")
        assert info.value.status == 409 and str(changed) in str(info.value)
        report = remote.count_tokens("qwen", on_changed="skip")
        assert (report.tokenizer, report.counted, report.files_counted) == (qwen, 800, 2)
        assert report.cached == 0  # nothing was stored by the refused requests
        assert len(report.changed) == 1 and str(changed) in report.changed[0]
    proc = run_cli(
        tmp_path, "--server", server.url, "count-tokens", "--tokenizer", str(bad_json), check=False
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: cannot load tokenizer")
    proc = run_cli(tmp_path, "--server", server.url, "count-tokens", "--tokenizer", "qwen",
                   "--datasets", "nope", check=False)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "unknown dataset 'nope'" in proc.stderr and "HTTP 404" in proc.stderr


def test_counting_needs_the_admin_role_and_is_audited(
    start: Callable[..., Server], tmp_path: Path
) -> None:
    home = register_corpus(tmp_path)
    server = start(home, "--tokens-file", str(write_tokens(tmp_path / "tokens.json")))
    body = {"tokenizer": {"name": "qwen"}, "datasets": ["corpus"]}
    trainer, admin = server.client(TOKENS["trainer"]), server.client(TOKENS["admin"])
    refused = trainer.post("/v1/token-counts", json=body)
    assert refused.status_code == 403 and "needs role 'admin'" in refused.json()["error"]
    answer = admin.post("/v1/token-counts", json=body)
    assert answer.status_code == 200 and answer.json()["counted"] == 1200
    lines = [r for r in read_audit(home / "server" / "audit.log") if r["action"] == "count-tokens"]
    assert [(r["name"], r["status"]) for r in lines] == [
        (NAMES["trainer"], 403),
        (NAMES["admin"], 200),
    ]
    assert lines[-1]["details"] == {"tokenizer": "qwen", "datasets": ["corpus"]}
