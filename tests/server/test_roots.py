"""Registration confined to data roots (issue 17): symlink, ``..`` and glob escapes are refused
before anything outside a root is read, in-process (``DataRoots.confine``) and through the
server (403 naming the roots, the catalog unchanged)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mixplane.errors import AccessDeniedError, RegistrationError, ServerConfigError
from mixplane.server.roots import DataRoots
from mixplane.server.security import Security
from tests.server.conftest import RoleServer, Server, register_corpus, write_records

pytestmark = pytest.mark.integration


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): a data root with files, links and folders, and a folder beside it
    holding a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_records(root / "a.jsonl")
    write_records(root / "sub" / "b.jsonl")
    write_records(outside / "secret.jsonl")
    (outside / "config.json").write_text('{"password": "hunter2"}')
    (root / "link-out.jsonl").symlink_to(outside / "secret.jsonl")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / "link-in.jsonl").symlink_to(root / "a.jsonl")
    write_records(root / "clean" / "c.jsonl")
    (root / "clean" / "d.jsonl").symlink_to(root / "sub" / "b.jsonl")
    write_records(root / "mixed" / "e.jsonl")
    (root / "mixed" / "f.jsonl").symlink_to(outside / "secret.jsonl")
    return root, outside


def refused(roots: DataRoots, *paths: str) -> str:
    with pytest.raises(AccessDeniedError) as error:
        roots.confine(list(paths), None)
    message = str(error.value)
    assert "outside the data roots" in message and str(roots.local[0]) in message
    shown = message
    for path in paths:
        shown = shown.replace(path, "")
    assert "secret" not in shown  # never what a link points at
    return message


def test_paths_below_a_root_are_registered_as_the_files_they_are(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    roots = DataRoots.parse([str(root)])
    assert roots.confine([str(root / "a.jsonl")], None).paths == [str(root / "a.jsonl")]
    assert roots.confine([str(root / "sub")], None).paths == [str(root / "sub" / "b.jsonl")]
    # a link inside the root to a file inside it: the file it is
    assert roots.confine([str(root / "link-in.jsonl")], None).paths == [str(root / "a.jsonl")]
    clean = roots.confine([str(root / "clean")], None)
    assert clean.paths == [str(root / "clean" / "c.jsonl"), str(root / "sub" / "b.jsonl")]
    assert clean.format == "jsonl"
    assert roots.confine([str(root / "sub" / ".." / "a.jsonl")], None).paths == [
        str(root / "a.jsonl")
    ]
    globbed = roots.confine([str(root / "s*" / "*.jsonl")], None)
    assert globbed.paths == [str(root / "sub" / "b.jsonl")]
    uri = roots.confine([(root / "a.jsonl").as_uri()], None)
    assert uri.paths == [str(root / "a.jsonl")]


def test_escapes_are_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    roots = DataRoots.parse([str(root)])
    refused(roots, str(outside / "secret.jsonl"))
    refused(roots, str(outside / "config.json"))
    refused(roots, str(root / ".." / "outside" / "secret.jsonl"))  # ..
    refused(roots, str(root / "link-out.jsonl"))  # a link to a file outside
    refused(roots, str(root / "linked-dir" / "secret.jsonl"))  # through a linked folder
    refused(roots, str(root / "linked-dir"))
    refused(roots, str(root / "mixed"))  # a folder holding one link out
    refused(roots, str(root / "mixed" / "*.jsonl"))  # a glob that matches a link out
    refused(roots, str(root / ".." / "*" / "*.jsonl"))  # a glob reaching outside
    refused(roots, str(root) + "*/*.jsonl")  # whose fixed part is outside, whatever it matches
    refused(roots, str(root.parent / "r*t" / "a.jsonl"))
    refused(roots, "/etc/passwd")
    refused(roots, (outside / "secret.jsonl").as_uri())  # file:// is local
    refused(roots, "~/.ssh/id_rsa")
    refused(roots, str(root / "a.jsonl"), str(outside / "secret.jsonl"))  # one out: all refused


def test_what_is_outside_is_not_told(tree: tuple[Path, Path]) -> None:
    """A missing path below a root is the catalog's 'does not exist' (400); outside, a missing
    path and an existing one get the same refusal."""
    root, outside = tree
    roots = DataRoots.parse([str(root)])
    with pytest.raises(RegistrationError, match="does not exist"):
        roots.confine([str(root / "nothing.jsonl")], None)
    exists = refused(roots, str(outside / "secret.jsonl"))
    missing = refused(roots, str(outside / "nothing.jsonl"))
    assert exists.replace("secret", "nothing") == missing


def test_object_store_roots() -> None:
    roots = DataRoots.parse(["s3://bucket/corpora/", "gs://other"])
    assert roots.remote == ("s3://bucket/corpora", "gs://other")
    allowed = [
        "s3://bucket/corpora",
        "s3://bucket/corpora/web/part-0.jsonl",
        "S3://bucket/corpora/web/",
        "s3://bucket/corpora/web/*.jsonl",
        "s3://bucket/corpora/**/*.parquet",
        "gs://other/anything",
    ]
    for uri in allowed:
        assert roots.confine([uri], None).paths == [uri]
    for uri in [
        "s3://bucket/corpora-private/x.jsonl",  # a '/' boundary, not a string prefix
        "s3://bucket/corpor*/x.jsonl",  # a glob whose fixed part is outside
        "s3://bucket/corpora/../secrets/x.jsonl",
        "s3://bucket/other.jsonl",
        "s3://another/corpora/x.jsonl",
        "s3a://bucket/corpora/x.jsonl",
        "gs://others/x",
        "hdfs://bucket/corpora/x",
    ]:
        with pytest.raises(AccessDeniedError, match="outside the data roots"):
            roots.confine([uri], None)
    with pytest.raises(AccessDeniedError):  # URI roots admit no local path
        roots.confine(["/etc/passwd"], None)


def test_roots_are_checked_at_start(tmp_path: Path) -> None:
    for bad in (str(tmp_path / "missing"), "s3://", "s3://bucket/../x", "s3://bucket/da*"):
        with pytest.raises(ServerConfigError, match="data root"):
            DataRoots.parse([bad])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ServerConfigError, match="not a directory"):
        DataRoots.parse([str(tmp_path / "file")])
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert DataRoots.parse([str(tmp_path / "alias")]).local == ((tmp_path / "real").resolve(),)
    with pytest.raises(AccessDeniedError, match="no data roots"):
        DataRoots().confine(["/x"], None)
    # the defaults: confined (no roots: refused) with tokens, unconfined without
    token = tmp_path / "token"
    token.write_text("a-token-of-some-length")
    assert Security.configure(token_file=token).roots == DataRoots()
    assert Security.configure().roots is None


def test_escapes_through_the_server(roles: RoleServer, tmp_path: Path) -> None:
    root = roles.root
    outside = tmp_path / "outside"
    write_records(outside / "secret.jsonl")
    link = root / f"link-{os.getpid()}.jsonl"
    link.symlink_to(outside / "secret.jsonl")
    admin = roles.client("admin")
    before = admin.get("/v1/datasets").json()
    try:
        for paths in (
            [str(outside / "secret.jsonl")],
            [str(link)],
            [str(root / ".." / outside.name / "secret.jsonl")],
            [str(root / ".." / "*" / "*.jsonl")],
            [str(root / "a.jsonl"), str(outside)],
            [(outside / "secret.jsonl").as_uri()],
        ):
            answer = admin.post("/v1/datasets", json={"name": "escape", "paths": paths})
            assert answer.status_code == 403, (paths, answer.text)
            error = answer.json()["error"]
            assert "outside the data roots" in error and repr(str(root)) in error
        assert admin.get("/v1/datasets").json() == before  # nothing registered
        ok = admin.post("/v1/datasets", json={"name": "inside", "paths": [str(root / "a.jsonl")]})
        assert ok.status_code == 200 and ok.json()["samples"] == 5
        assert admin.delete("/v1/jobs/none").status_code == 404
    finally:
        link.unlink()


def test_loopback_without_a_token_registers_anywhere_and_says_so(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    home = register_corpus(tmp_path)
    server = start(home)
    more = write_records(tmp_path / "elsewhere" / "x.jsonl")
    answer = server.client().post("/v1/datasets", json={"name": "anywhere", "paths": [str(more)]})
    assert answer.status_code == 200, answer.text
    server.stop()
    log = server.log()
    assert "serving without a token: anyone who can connect is admin" in log
    assert "registration reads any file this user can read" in log and "--data-root" in log


def test_loopback_without_a_token_with_roots_is_confined(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    home = register_corpus(tmp_path)
    root = tmp_path / "root"
    write_records(root / "in.jsonl")
    out = write_records(tmp_path / "out" / "x.jsonl")
    server = start(home, "--data-root", str(root))
    client = server.client()
    assert client.post("/v1/datasets", json={"name": "o", "paths": [str(out)]}).status_code == 403
    inside = client.post("/v1/datasets", json={"name": "i", "paths": [str(root)]})
    assert inside.status_code == 200, inside.text
