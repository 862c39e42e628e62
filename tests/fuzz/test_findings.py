"""Regression tests for what the fuzz campaign found (issue 13, item 7), one per finding, each
the smallest input that shows it. Every test failed before its fix with another exception type
(a traceback), a wrong count, or a half-loaded object.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mixplane.catalog import Catalog
from mixplane.catalog.formats import jsonl
from mixplane.chunking.assign import Topology
from mixplane.cli import main
from mixplane.client import Client
from mixplane.client.reader import Reader
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.windows import WindowStream
from mixplane.errors import (
    CatalogError,
    MalformedRecordError,
    MixplaneError,
    MixtureError,
    PlanError,
    StateError,
)
from mixplane.job import Job, JobSpec
from mixplane.mixture.mixture import Mixture
from tests.catalog.conftest import Corpus, make_records
from tests.conftest import corpus_tokenizer, write_corpus

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
FIELDS = {"language": "meta.language", "quality": "meta.quality"}


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return Corpus(tmp_path / "data")


@pytest.fixture
def catalog(tmp_path: Path) -> Any:
    with Catalog.open(tmp_path / "home") as cat:
        yield cat


def read_back(catalog: Catalog, dataset: str) -> list[str]:
    """Every sample's text through the stream's reader."""
    reader = Reader(catalog)
    try:
        texts: list[str] = []
        for row in catalog.files(dataset).to_pylist():
            texts += reader.read_with_text(row["file_id"], np.arange(row["samples"]))[1]
        return texts
    finally:
        reader.close()


# -- data files -----------------------------------------------------------------------------------


def test_a_corrupt_gzip_stream_is_a_malformed_file(catalog: Catalog, corpus: Corpus) -> None:
    """files/jsonl.gz/flip: zlib's own error (not an OSError) escaped registration."""
    whole = gzip.compress(Corpus.lines(make_records(40)), mtime=0)
    for at in range(12, len(whole)):  # the first flip that zlib itself refuses
        data = bytearray(whole)
        data[at] ^= 0xFF
        try:
            gzip.decompress(bytes(data))
        except zlib.error:
            break
        except (OSError, EOFError):
            continue
    else:
        pytest.fail("no flip made zlib fail")
    path = corpus.raw("d.jsonl.gz", bytes(data))
    with pytest.raises(MalformedRecordError, match="cannot decompress"):
        catalog.register("ds", path, properties=FIELDS)


def test_a_record_missing_two_fields_is_skipped_once(catalog: Catalog, corpus: Corpus) -> None:
    """files/jsonl.gz/mistype/47: a record lacking two requested fields counted as two skips."""
    records: list[Any] = make_records(5)
    records[2] = {"id": "bad", "text": "no meta at all"}
    path = corpus.jsonl("d.jsonl", records)
    info = catalog.register("ds", path, properties=FIELDS, on_error="skip")
    assert (info.samples, info.skipped) == (4, 1)
    assert info.file_reports[0].messages == (
        f"{path.resolve()}:line 3: missing field 'meta.language'",
    )


def test_records_of_mixed_types_stream_and_read_with_a_clear_error(
    catalog: Catalog, corpus: Corpus
) -> None:
    """files/jsonl/mistype: a field no property reads holds a list in one record and text in
    another. Registration accepts it; the stream's reader must read it; Catalog.read (an Arrow
    table of whole records) said ArrowInvalid, now a one-line CatalogError naming the file."""
    records: list[Any] = make_records(4)
    records[1]["tags"] = "not a list"
    path = corpus.jsonl("d.jsonl", records)
    catalog.register("ds", path, properties=FIELDS)
    assert read_back(catalog, "ds") == [r["text"] for r in records]
    with pytest.raises(CatalogError, match="fields of mixed types") as err:
        catalog.read(1, [0, 1])
    assert str(path.resolve()) in str(err.value) and "\n" not in str(err.value)


def test_nan_in_a_record_reads_back(catalog: Catalog, corpus: Corpus) -> None:
    """files/jsonl.zst/mistype/29: DuckDB and Arrow accept NaN and Infinity (Python's json writes
    them), orjson does not: the stream's reader raised JSONDecodeError on a registered line."""
    lines = [b'{"text": "a", "x": NaN}', b'{"text": "b", "x": -Infinity}', b'{"text": "c"}']
    path = corpus.jsonl("d.jsonl", lines)
    assert catalog.register("ds", path).samples == 3
    assert read_back(catalog, "ds") == ["a", "b", "c"]
    assert catalog.read(1, [0, 1, 2]).column("text").to_pylist() == ["a", "b", "c"]


def test_a_line_only_duckdb_reads_is_a_clear_error_when_streamed(
    catalog: Catalog, corpus: Corpus
) -> None:
    """DuckDB's reader accepts a trailing comma; no Python parser does: reading the sample is a
    one-line error naming the file and byte, not a JSONDecodeError (docs/catalog.md)."""
    path = corpus.jsonl("d.jsonl", [b'{"text": "a"}', b'{"text": "b", "x": [1,],}'])
    assert catalog.register("ds", path).samples == 2
    with pytest.raises(MalformedRecordError, match=r":byte 14: the registered line cannot"):
        read_back(catalog, "ds")


def _tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return sink.getvalue()


def test_webdataset_members_of_mixed_types_stream(catalog: Catalog, corpus: Corpus) -> None:
    """files/webdataset/mistype/17: the stream's reader built an Arrow table of the records,
    so json members whose fields differ in type (a list, then text) crashed streaming."""
    samples = [
        ("a", {"txt": b"first", "json": json.dumps({"tags": ["x"]}).encode()}),
        ("b", {"txt": b"second", "json": json.dumps({"tags": "y"}).encode()}),
    ]
    catalog.register("ds", corpus.raw("w.tar", _tar(samples)))
    assert read_back(catalog, "ds") == ["first", "second"]
    with pytest.raises(CatalogError, match="fields of mixed types"):
        catalog.read(1, [0, 1])


def test_a_member_registration_did_not_decode_is_a_clear_error_when_read(
    catalog: Catalog, corpus: Corpus
) -> None:
    """A json member no property reads is decoded only when the record is read: a corrupt one
    raised orjson's error; now a MalformedRecordError naming the file and byte."""
    samples = [("a", {"txt": b"first", "json": b"{not json"})]
    path = corpus.raw("w.tar", _tar(samples))
    catalog.register("ds", path)
    with pytest.raises(MalformedRecordError, match=r"w\.tar:byte 0: a member of the sample"):
        read_back(catalog, "ds")


def test_data_after_the_end_of_archive_marker_is_an_error(catalog: Catalog, corpus: Corpus) -> None:
    """files/webdataset/zero: zeros over two header blocks read as the end of the archive, and
    the members after them were dropped without a word."""
    data = bytearray(_tar([(f"k{i}", {"txt": f"text {i}".encode()}) for i in range(4)]))
    data[1024 : 1024 + 1024] = bytes(1024)  # the second member's header and data block
    path = corpus.raw("w.tar", bytes(data))
    with pytest.raises(MalformedRecordError, match=r"w\.tar:byte 1024: the end-of-archive marker"):
        catalog.register("ds", path)
    info = catalog.register("ds", path, on_error="skip")
    assert (info.samples, info.skipped) == (0, 1)


def test_a_corrupt_parquet_column_is_a_clear_error_when_streamed(
    catalog: Catalog, corpus: Corpus
) -> None:
    """files/parquet: registration decodes only the columns it needs; a damaged other column
    made the stream's reader raise pyarrow's own error."""
    path = corpus.path("p.parquet")
    records = make_records(50)
    pq.write_table(pa.Table.from_pylist(records), path, compression="none", row_group_size=50)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    column = next(
        meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "id"
    )
    data = bytearray(path.read_bytes())
    at = column.data_page_offset
    data[at : at + 24] = b"\xff" * 24  # the page header
    path.write_bytes(bytes(data))
    assert catalog.register("ds", path, properties=FIELDS).samples == 50
    with pytest.raises(MalformedRecordError, match="cannot read row group 0"):
        read_back(catalog, "ds")


def test_a_text_field_that_is_a_quoted_key_streams(catalog: Catalog, corpus: Corpus) -> None:
    """A text field written with the field-path escape ('"body text"') reads back (the
    reader looked the quoted text up as a key)."""
    path = corpus.jsonl("d.jsonl", [{"body text": f"t{i}"} for i in range(3)])
    catalog.register("ds", path, text_field='"body text"')
    assert read_back(catalog, "ds") == ["t0", "t1", "t2"]


# -- documents ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        5,
        ["language=en"],
        {"uniform": 5},
        {"inferred": [1, 2]},
        {"weights": {"language=en": 1.0}, "allow_empty": "yes"},
        {"language=en": {"weight": 1.0, "children": 7}},
    ],
)
def test_mixture_documents_of_other_shapes(doc: Any) -> None:
    """documents/mixture: TypeError, AttributeError or RecursionError before."""
    with pytest.raises(MixtureError) as err:
        Mixture.from_json(doc)
    assert "\n" not in str(err.value)


def test_a_deeply_nested_weight_is_shown_safely() -> None:
    """documents/mixture/3: the message's repr of a value nested thousands deep recursed."""
    value: Any = 1.0
    for _ in range(5000):
        value = [value]
    with pytest.raises(MixtureError, match="must be a number"):
        Mixture.from_json({"language=en": value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", "3"),
        ("seed", -1),
        ("chunk_size", -1),
        ("unit", "bytes"),
        ("block_size", 2.5),
        ("bytes_per_token", float("nan")),
        ("descending", "no"),
        ("schedule", [{"start": "zero", "mixture": MIX}]),
        ("schedule", [7]),
    ],
)
def test_job_definitions_with_mistyped_fields(client: Client, field: str, value: Any) -> None:
    """documents/spec/18: a seed given as text reached numpy ('seed must be integer')."""
    doc = client.submit("j", mixture=MIX, chunk_size=20).spec.to_json() | {field: value}
    with pytest.raises(PlanError, match=r"job definition field|schedule phase"):
        Job(client.catalog, JobSpec.from_json(doc), Topology())


@pytest.mark.parametrize(
    "text",
    [
        "phases: 5\n",
        "phases:\n  - start: 0\n    mixture: {language=en: 1.0}\n  - start: zero\n    mixture: {language=de: 1.0}\n",
        "phases:\n  - 7\n",
        "a: [\x04\n",
        "[" * 5000,  # RecursionError from the YAML parser
    ],
)
def test_cli_schedule_files_of_other_shapes(client: Client, tmp_path: Path, text: str) -> None:
    """documents/cli/4 and /8: a TypeError traceback, and a YAML error over two lines."""
    path = tmp_path / "mixture.yaml"
    path.write_text(text)
    client.close()
    result = CliRunner().invoke(
        main, ["--home", str(client.catalog.home), "plan", "--mixture-file", str(path)]
    )
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_cli_mixture_nested_too_deep(client: Client) -> None:
    """documents/cli: json.loads raised RecursionError for --mixture '[[[[...'."""
    client.close()
    result = CliRunner().invoke(
        main, ["--home", str(client.catalog.home), "plan", "--mixture", "[" * 100_000]
    )
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stderr.startswith("error: --mixture is not valid JSON")


def test_mixplane_errors_are_one_line() -> None:
    """A message quoting a parser's text (YAML, pyarrow) may hold line breaks."""
    assert str(MixplaneError("first\n  second")) == "first   second"
    assert str(MalformedRecordError("a\r\nb", path="f", location="line 1")) == "f:line 1: a b"


# -- saved states ---------------------------------------------------------------------------------


@pytest.fixture
def stream_setup(client: Client) -> tuple[Client, Any]:
    return client, corpus_tokenizer(client.catalog, samples=100)


def _windows(job: Job, tokenizer: Any) -> WindowStream:
    return WindowStream(job, tokenizer, 32, prefetch=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", [2**70, 0, 0]),  # OverflowError in numpy
        ("positions", [-5, 0, 0]),  # a negative cursor planned garbage
        ("weights", [0.0, 0.0, 0.0]),
        ("next_chunk", "3"),
        ("ended", "no"),
    ],
)
def test_a_corrupt_job_state_changes_nothing(
    stream_setup: tuple[Client, Any], key: str, value: Any
) -> None:
    """states/cli/9 and states/job: OverflowError or TypeError from deep inside the planner,
    and a job left half-loaded."""
    client, tokenizer = stream_setup
    job = client.submit("s", mixture=MIX, chunk_size=5, seed=3)
    windows = _windows(job, tokenizer)
    next(iter(windows))
    state, window_state = job.state_dict(), windows.state_dict()
    bad = json.loads(json.dumps(state))
    bad["planner"][key] = value
    with pytest.raises(StateError):
        job.load_state_dict(bad)
    assert job.state_dict() == state
    stream = _windows(job, tokenizer)
    stream.load_state_dict(window_state)
    next(iter(stream))


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("stream", {"j": "0", "offset": 0}),
        ("stream", 5),
        ("packer", {"tokens": 3}),
        ("packer", {"tokens": [[1.5]] * 3}),
        ("windows", -1),
    ],
)
def test_a_corrupt_window_state_changes_nothing(
    stream_setup: tuple[Client, Any], part: str, value: Any
) -> None:
    """states/job: a packer or position that is not what it says raised TypeError; the
    stream was left half-loaded (position moved, packer not)."""
    client, tokenizer = stream_setup
    job = client.submit("s", mixture=MIX, chunk_size=5, seed=3)
    windows = _windows(job, tokenizer)
    next(iter(windows))
    state = windows.state_dict()
    bad: Any = json.loads(json.dumps(state))
    if isinstance(value, dict) and part == "packer":
        bad["packer"].update(value)
    else:
        bad[part] = value
    fresh = _windows(job, tokenizer)
    fresh.load_state_dict(state)
    with pytest.raises(StateError):
        fresh.load_state_dict(bad)
    assert fresh.state_dict() == state


@pytest.mark.parametrize("state", [None, 3, [], {"version": 1}, {"version": 1, "windows": 5}])
def test_torch_dataset_states_of_other_shapes(stream_setup: tuple[Client, Any], state: Any) -> None:
    """states/torch/0: ``load_state_dict(None)`` raised AttributeError."""
    pytorch = pytest.importorskip("mixplane.integrations.pytorch")
    client, tokenizer = stream_setup
    job = client.submit("t", mixture=MIX, chunk_size=5, seed=3)
    dataset = pytorch.TokenWindowDataset(job, tokenizer, 32, dp_group=0, group_rank=0)
    with pytest.raises(StateError):
        dataset.load_state_dict(state)
        next(iter(dataset))


def test_torch_dataset_with_a_corrupt_part_leaves_the_job(stream_setup: tuple[Client, Any]) -> None:
    """states/torch: the job's part loaded, the windows' part failed: the live job kept the
    loaded state."""
    pytorch = pytest.importorskip("mixplane.integrations.pytorch")
    client, tokenizer = stream_setup
    job = client.submit("t", mixture=MIX, chunk_size=5, seed=3)
    dataset = pytorch.TokenWindowDataset(job, tokenizer, 32, dp_group=0, group_rank=0, prefetch=0)
    windows = iter(dataset)  # no prefetching thread: the job moves only as windows are drawn
    next(windows)
    saved = json.loads(json.dumps(dataset.state_dict()))
    for _ in range(8):  # the job moves on from the saved state
        next(windows)
    before = job.state_dict()
    assert before != saved["windows"]["job"]
    (key,) = saved["windows"]["windows"]
    saved["windows"]["windows"][key]["packer"]["tokens"] = "corrupt"
    fresh = pytorch.TokenWindowDataset(job, tokenizer, 32, dp_group=0, group_rank=0, prefetch=0)
    fresh.load_state_dict(saved)
    with pytest.raises(StateError, match="packer state"):
        next(iter(fresh))
    assert job.state_dict() == before


@pytest.mark.parametrize(
    "change",
    [
        lambda meta: b"\xfb" + json.dumps(meta).encode(),  # not UTF-8
        lambda meta: json.dumps([meta]).encode(),
        lambda meta: json.dumps({**meta, "results": 5}).encode(),
        lambda meta: json.dumps({**meta, "sizes": {"x": [0, "y"]}}).encode(),
    ],
)
def test_a_corrupt_snapshot_is_a_state_error(client: Client, tmp_path: Path, change: Any) -> None:
    """states/snapshot/0: UnicodeDecodeError, KeyError or TypeError from JobSnapshot.load."""
    folder = client.submit("s", mixture=MIX, chunk_size=5).snapshot().save(tmp_path / "snap")
    meta = json.loads((folder / "snapshot.json").read_text())
    (folder / "snapshot.json").write_bytes(change(meta))
    with pytest.raises(StateError, match="snapshot"):
        JobSnapshot.load(folder)


def test_a_snapshot_whose_results_are_corrupt(client: Client, tmp_path: Path) -> None:
    """states/snapshot/8: a grouping property that is a number sorted against text
    (TypeError) while the job was built from the snapshot."""
    folder = client.submit("s", mixture=MIX, chunk_size=5).snapshot().save(tmp_path / "snap")
    meta = json.loads((folder / "snapshot.json").read_text())
    meta["results"][0]["by"] = [1.5]
    (folder / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(StateError, match="snapshot is corrupt"):
        Job.from_snapshot(JobSnapshot.load(folder))


@pytest.fixture
def client(tmp_path: Path) -> Any:
    write_corpus(tmp_path / "corpus", files=2, per_file=150)
    c = Client.local(tmp_path / "client-home")
    c.catalog.register(
        "corpus", tmp_path / "corpus", properties={"language": "meta.language"}, progress=False
    )
    yield c
    c.close()


def test_parse_line_falls_back_to_json() -> None:
    """jsonl.parse_line is the one parser fallback: orjson first, Python's json second."""
    assert jsonl.parse_line(b'{"a": NaN}', "f", 0)["a"] != 0
    with pytest.raises(MalformedRecordError, match="f:byte 7"):
        jsonl.parse_line(b"[1,]", "f", 7)
