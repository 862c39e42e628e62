"""Datasets in object storage (issue 8): registered from ``s3://bucket/prefix/`` on a real
S3-compatible server (moto, on loopback), streamed by ranged reads through a bounded cache, and
equal, sample by sample and window by window, to the same files registered locally."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixplane.catalog import Catalog, remote_fs
from mixplane.catalog.remote_fs import ObjectStoreError, RangeCache
from mixplane.client import Client
from mixplane.client.reader import Reader
from mixplane.client.windows import WindowStream
from mixplane.errors import FileChangedError, RegistrationError
from mixplane.tokens import train_bpe
from tests.conftest import write_corpus

pytestmark = pytest.mark.integration

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

PROPERTIES = {"language": "meta.language", "source": "meta.source", "quality": "meta.quality"}
MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
CACHE_BOUND = 48 << 10
SEQ = 32


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; credentials and endpoint only from the environment, as a user sets them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setattr(remote_fs, "_shared", RangeCache(CACHE_BOUND))
    name = f"mixplane-{uuid.uuid4().hex[:12]}"
    s3().create_bucket(Bucket=name)
    return name


def s3() -> Any:
    return boto3.client("s3")  # endpoint, region and keys from the environment


def build_corpus(root: Path, scratch: Path) -> list[Path]:
    """Two JSONL files, one Parquet file (several row groups) and one .jsonl.zst."""
    paths = write_corpus(root, files=2, per_file=300)
    more = write_corpus(scratch, files=2, per_file=250, seed=1)
    records = [[orjson.loads(line) for line in path.read_bytes().splitlines()] for path in more]
    for i, part in enumerate(records):
        for r in part:
            r["id"] += 10_000 * (i + 1)
            r["text"] = f"extra {i} {r['text']}"
    parquet = root / "part-2.parquet"
    pq.write_table(pa.Table.from_pylist(records[0]), parquet, row_group_size=40)
    zst = root / "part-3.jsonl.zst"
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records[1])
    zst.write_bytes(zstandard.ZstdCompressor().compress(lines))
    return [*paths, parquet, zst]


def upload(bucket: str, prefix: str, paths: list[Path]) -> None:
    client = s3()
    for path in paths:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


@pytest.fixture
def pair(bucket: str, tmp_path: Path) -> Iterator[tuple[Client, Client]]:
    """The same corpus registered from local files and from s3://bucket/corpus/."""
    files = build_corpus(tmp_path / "data", tmp_path / "scratch")
    upload(bucket, "corpus", files)
    local = Client.local(tmp_path / "local")
    remote = Client.local(tmp_path / "remote")
    local.catalog.register("corpus", tmp_path / "data", properties=PROPERTIES, progress=False)
    remote.catalog.register(
        "corpus", f"s3://{bucket}/corpus/", properties=PROPERTIES, progress=False
    )
    yield local, remote
    local.close()
    remote.close()


def samples(client: Client) -> Iterator[tuple[Any, ...]]:
    job = client.submit(
        "j", unit="samples", mixture=MIX, chunk_size=37, on_exhausted="redistribute", seed=3
    )
    for s in job.stream():
        yield s.text, s.record, s.component, s.file_id, s.ordinal


def window_hashes(client: Client, tokenizer: Any) -> list[str]:
    job = client.submit(
        "w", unit="samples", mixture=MIX, chunk_size=23, on_exhausted="redistribute", seed=2
    )
    return [
        hashlib.blake2b(
            w.input_ids.tobytes() + w.labels.tobytes() + bytes([w.component]), digest_size=16
        ).hexdigest()
        for w in WindowStream(job, tokenizer, SEQ)
    ]


def test_registered_from_s3_streams_like_local(pair: tuple[Client, Client]) -> None:
    local, remote = pair
    cache = remote_fs.shared_cache()
    here, there = local.catalog, remote.catalog
    assert there.dataset("corpus").to_dict() == here.dataset("corpus").to_dict()
    local_files, remote_files = here.files().to_pylist(), there.files().to_pylist()
    assert [f["path"].rsplit("/", 1)[1] for f in remote_files] == [
        "part-0.jsonl",
        "part-1.jsonl",
        "part-2.parquet",
        "part-3.jsonl.zst",
    ]
    assert all(f["path"].startswith("s3://mixplane-") for f in remote_files)
    for a, b in zip(local_files, remote_files, strict=True):
        assert (a["format"], a["compression"], a["size"], a["samples"]) == (
            b["format"],
            b["compression"],
            b["size"],
            b["samples"],
        )
        pa_, pb = here.pointers(a["file_id"]), there.pointers(b["file_id"])
        assert pa_.keys() == pb.keys()
        assert all(np.array_equal(pa_[k], pb[k]) for k in pa_)

    expected = list(samples(local))
    got = []
    for item in samples(remote):
        got.append(item)
        assert cache.held_bytes <= CACHE_BOUND
    assert len(expected) == here.dataset("corpus").samples
    assert got == expected  # texts, records, components, files and ordinals, per position

    runs = here.components().runs
    positions = np.arange(0, 1100, 7)
    assert there.sample_texts(runs, positions) == here.sample_texts(runs, positions)

    tokenizer = train_bpe([t for t, *_ in expected[:200]], vocab_size=300)
    windows = window_hashes(local, tokenizer)
    assert len(windows) > 500
    assert window_hashes(remote, tokenizer) == windows

    # the cache stayed within its bound while serving and evicting
    assert cache.held_bytes <= CACHE_BOUND
    assert sum(cache.sizes()) == cache.held_bytes
    assert cache.hits > 0
    assert cache.fetched_bytes > CACHE_BOUND


def test_reads_fetch_only_the_named_bytes(pair: tuple[Client, Client]) -> None:
    _, remote = pair
    catalog = remote.catalog
    files = {f["path"].rsplit("/", 1)[1]: f for f in catalog.files().to_pylist()}
    cache = RangeCache(1 << 20)
    reader = Reader(catalog, cache=cache)
    try:
        plain = files["part-0.jsonl"]
        ptr = catalog.pointers(plain["file_id"])
        records = reader.read(plain["file_id"], np.array([12, 10, 11]))
        assert [r["id"] for r in records] == [12, 10, 11]
        span = int(ptr["offset"][12] + ptr["length"][12] - ptr["offset"][10])
        assert (cache.misses, cache.fetched_bytes) == (1, span)  # one ranged GET of the lines
        reader.read(plain["file_id"], np.array([11]))
        assert (cache.hits, cache.fetched_bytes) == (1, span)  # served from the cached range

        packed = files["part-3.jsonl.zst"]
        before = cache.fetched_bytes
        reader.read(packed["file_id"], np.array([3, 200]))
        assert cache.fetched_bytes - before == packed["size"]  # the whole object, once

        table = files["part-2.parquet"]
        before = cache.fetched_bytes
        assert [r["id"] for r in reader.read(table["file_id"], np.array([5, 6]))] == [
            10_005,
            10_006,
        ]
        assert 0 < cache.fetched_bytes - before <= table["size"]  # the footer, row group 0
        hits, fetched = cache.hits, cache.fetched_bytes
        assert reader.read(table["file_id"], np.array([130]))[0]["id"] == 10_130  # group 3
        assert cache.hits > hits  # the footer again, from the cache
        assert cache.fetched_bytes - fetched < table["size"]
    finally:
        reader.close()


def test_webdataset_shard_from_s3(
    bucket: str, tmp_path: Path, corpus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mixplane.catalog.formats import webdataset

    monkeypatch.setattr(webdataset, "REMOTE_BLOCK", 4096)  # members straddle blocks
    records = corpus.records(120)
    records[7]["text"] = "long " * 3000  # a member longer than the blocks kept
    shard = corpus.tar("shard-0.tar", corpus.samples(records))
    upload(bucket, "wds", [shard])
    props = {"language": "json.meta.language"}
    with Catalog.open(tmp_path / "a") as here, Catalog.open(tmp_path / "b") as there:
        here.register("w", shard, properties=props, progress=False)
        there.register("w", f"s3://{bucket}/wds/shard-0.tar", properties=props, progress=False)
        assert there.dataset("w").to_dict() == here.dataset("w").to_dict()
        ordinals = np.arange(120)[::-1]
        (a,), (b,) = here.files()["file_id"].to_pylist(), there.files()["file_id"].to_pylist()
        assert there.read(b, ordinals).to_pylist() == here.read(a, ordinals).to_pylist()
        reader = Reader(there, cache=RangeCache(1 << 20))
        try:
            got = reader.read_with_text(b, ordinals)[1]
        finally:
            reader.close()
        assert got == [r["text"] for r in records][::-1]


def all_texts(client: Client, job_id: str) -> list[str]:
    job = client.submit(
        job_id, unit="samples", mixture=MIX, chunk_size=16, on_exhausted="redistribute"
    )
    return [s.text for s in job.stream()]


def test_overwritten_object_is_reported(bucket: str, tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "data", files=2, per_file=50)
    upload(bucket, "c", files)
    with Client.local(tmp_path / "home") as client:
        client.catalog.register("c", f"s3://{bucket}/c/", properties=PROPERTIES, progress=False)
        before = all_texts(client, "a")
        assert before
        data = files[0].read_bytes()
        middle = data.index(b"word", len(data) // 2)
        changed = data[:middle] + b"WORD" + data[middle + 4 :]  # same size, new bytes inside
        s3().put_object(Bucket=bucket, Key="c/part-0.jsonl", Body=changed)
        uri = f"s3://{bucket}/c/part-0.jsonl"
        with pytest.raises(FileChangedError, match=re.escape(f"file {uri} of dataset 'c' changed")):
            client.catalog.check_files()
        with pytest.raises(FileChangedError, match="re-register"):
            all_texts(client, "b")

        # re-registered, the new bytes are read (cached ranges belong to the old version)
        client.catalog.register(
            "c", f"s3://{bucket}/c/", properties=PROPERTIES, progress=False, replace=True
        )
        after = all_texts(client, "c")
        assert any("WORD" in t for t in after)
        assert sorted(t.replace("WORD", "word") for t in after) == sorted(before)

        s3().delete_object(Bucket=bucket, Key="c/part-1.jsonl")
        with pytest.raises(
            FileChangedError, match=re.escape("part-1.jsonl of dataset 'c' was removed")
        ):
            client.catalog.check_files()


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://", "names no bucket; write s3://BUCKET/PREFIX"),
        ("s3:/bucket/corpus", "is not a URI (one slash after the scheme); write 's3://bucket"),
        ("nosuchscheme://x/y", "unknown scheme 'nosuchscheme'"),
        ("s3://{bucket}/nothing-here/", "nothing at 's3://"),
    ],
)
def test_bad_uris_say_what_to_write(catalog: Catalog, bucket: str, uri: str, message: str) -> None:
    with pytest.raises(RegistrationError) as exc:
        catalog.register("x", uri.format(bucket=bucket), progress=False)
    assert message in one_line(exc)


def test_missing_bucket_names_it(catalog: Catalog, bucket: str, endpoint: str) -> None:
    with pytest.raises(RegistrationError) as exc:
        catalog.register("x", "s3://no-such-bucket-here/corpus/", progress=False)
    assert one_line(exc) == (
        f"bucket 'no-such-bucket-here' of 's3://no-such-bucket-here/corpus/' does not exist at "
        f"{endpoint}; check the URI and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL"
    )


def test_credentials_missing_or_refused(
    catalog: Catalog, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_corpus(tmp_path / "data", files=1, per_file=20)
    upload(bucket, "c", files)
    uri = f"s3://{bucket}/c/part-0.jsonl"
    catalog.register("c", uri, progress=False)
    monkeypatch.setattr("moto.settings.INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks keys

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ObjectStoreError) as exc:
        catalog.register("d", uri, progress=False)
    assert "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both" in one_line(exc)

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(ObjectStoreError) as exc:
        catalog.register("d", uri, progress=False)
    assert one_line(exc).endswith(
        "no AWS credentials in the environment: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )
    with pytest.raises(ObjectStoreError, match="no AWS credentials"):
        catalog.check_files("c")  # a reader meets the same error before its first read

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ObjectStoreError) as exc:
        catalog.register("d", uri, progress=False)
    assert f"cannot look up {uri} (" in one_line(exc)
    assert "the server refused the credentials" in str(exc.value)


def test_fsspec_filesystem_when_pyarrow_has_none(catalog: Catalog, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    root = f"/mixplane-{uuid.uuid4().hex[:8]}"
    files = write_corpus(tmp_path / "data", files=2, per_file=30)
    for path in files:
        memory.pipe(f"{root}/{path.name}", path.read_bytes())
    info = catalog.register("m", f"memory://{root}/*.jsonl", properties=PROPERTIES, progress=False)
    assert info.samples == 60
    job = Client(catalog).submit("m", unit="samples", mixture=MIX, on_exhausted="redistribute")
    texts = [s.text for s in itertools.islice(job.stream(), 100)]
    local = [orjson.loads(line)["text"] for p in files for line in p.read_bytes().splitlines()]
    assert sorted(texts) == sorted(local)


def test_range_cache_serves_contained_ranges_and_evicts_oldest() -> None:
    blob = bytes(range(256)) * 64  # 16 KiB
    fetched: list[tuple[int, int]] = []

    def fetch(nbytes: int, offset: int) -> bytes:
        fetched.append((offset, nbytes))
        return blob[offset : offset + nbytes]

    cache = RangeCache(4096)
    assert cache.read("a#1", 100, 1000, fetch) == blob[100:1100]
    assert cache.read("a#1", 600, 300, fetch) == blob[600:900]  # inside the cached range
    assert cache.read("a#2", 600, 300, fetch) == blob[600:900]  # another version: fetched
    assert fetched == [(100, 1000), (600, 300)]
    cache.read("a#1", 2000, 3000, fetch)  # 4300 bytes > 4096: the oldest range goes
    assert cache.held_bytes == sum(cache.sizes()) == 3300 <= cache.max_bytes
    cache.read("a#1", 100, 10, fetch)
    assert fetched[-1] == (100, 10)  # evicted, fetched again
    cache.read("a#1", 0, 5000, fetch)  # larger than the bound: returned, never held
    assert cache.held_bytes == sum(cache.sizes()) <= cache.max_bytes
    assert (cache.hits, cache.misses) == (1, 5)
