"""Broken data files: every format of ``files.FILE_FORMATS`` cut, bit-flipped, spliced,
zeroed, replaced by garbage and mistyped, registered under both error policies.

Each input must end one of three ways:

- **error**: a ``MixplaneError`` with a one-line message, and the catalog exactly as before
  (every table and the columns of ``samples``; the catalog already holds a dataset);
- **skip** (``on_error="skip"`` only): registered with the broken records or the broken file
  counted as skipped (docs/catalog.md);
- **accepted**: the damage left a valid file (a flipped bit inside a text, say).

After a registration that succeeded, every registered sample reads back by pointer, its text is
a string, and for line formats the samples plus the skipped records are the file's non-blank
lines. Anything else (another exception type, a multi-line message, a half-written catalog, a
sample that does not read back) fails with the input's label and seed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixplane.catalog import Catalog
from mixplane.catalog.formats import get_path
from mixplane.client.reader import Reader
from mixplane.errors import MixplaneError
from tests.fuzz.files import FILE_FORMATS, FileFormat, Files, records
from tests.fuzz.harness import BYTE_MUTATIONS, SEED, Tally, count, mistype, one_line, rng_for

MUTATIONS = [*BYTE_MUTATIONS, "mistype"]


def snapshot(catalog: Catalog) -> tuple[Any, ...]:
    """Every row of the catalog's tables and the columns of ``samples``, as one query of
    order-independent hashes (a failed registration must leave all of them as they were)."""
    return tuple(
        catalog._con.execute(
            "SELECT (SELECT count(*) FROM samples), (SELECT sum(hash(s)) FROM samples s), "
            "(SELECT sum(hash(f)) FROM files f), (SELECT sum(hash(d)) FROM datasets d), "
            "(SELECT sum(hash(p)) FROM properties p), (SELECT string_agg(column_name || ' ' || "
            "data_type, ', ' ORDER BY column_index) FROM duckdb_columns() "
            "WHERE table_name = 'samples')"
        ).fetchall()[0]
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    root = tmp_path_factory.mktemp("fuzz-files")
    (root / "base").mkdir()
    (root / "base" / "b.jsonl").write_text('{"text": "kept", "meta": {"language": "en"}}\n')
    cat = Catalog.open(root / "home")
    cat.register("base", root / "base", properties={"language": "meta.language"})
    yield cat
    cat.close()


def broken(fmt: FileFormat, mutation: str, label: str) -> Files:
    """The input ``label``: a valid dataset of the format with ``mutation`` applied."""
    rng = rng_for(label)
    rs = records(rng)
    if mutation == "mistype":
        if fmt.mistype is not None:
            return fmt.mistype(rs, rng)
        for _ in range(5):  # records the writer cannot hold are drawn again
            bad = list(rs)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(bad))
                bad[i] = mistype(bad[i], rng)
            try:
                return fmt.write(bad)
            except (TypeError, ValueError, OverflowError, RecursionError):
                continue
        return fmt.write(rs)
    files = fmt.write(rs)
    name = rng.choice(sorted(files))
    files[name] = BYTE_MUTATIONS[mutation](files[name], rng)
    return files


def register(
    catalog: Catalog, folder: Path, fmt: FileFormat, on_error: Any, label: str, before: Any
) -> tuple[str, Any]:
    """('error', message) or ('ok', DatasetInfo); anything else fails the test. ``before`` is
    the catalog's snapshot, which a failed registration must leave as it was."""
    try:
        info = catalog.register(
            "fuzz",
            folder,
            properties=dict(fmt.properties),
            on_error=on_error,
            progress=False,
            **fmt.options,
        )
    except MixplaneError as exc:
        one_line(str(exc), label)
        assert snapshot(catalog) == before, f"{label}: a failed registration left rows behind"
        return "error", str(exc)
    except Exception as exc:
        pytest.fail(f"{label}: {type(exc).__name__}: {exc!s:.2000} (seed {SEED})")
    return "ok", info


def check_registered(catalog: Catalog, info: Any, fmt: FileFormat, files: Files, label: str) -> str:
    """Every registered sample reads back: through the stream's reader (texts are strings)
    and ``Catalog.read`` (whole records as a table); where a file registered whole but some
    part the registration did not read is damaged, reading is a one-line ``MixplaneError``
    ('unreadable'). Line formats: samples + skipped = the file's non-blank lines."""
    if fmt.records_in is not None and info.file_reports:
        held = fmt.records_in(files)
        report = info.file_reports[0]
        if held is not None:
            assert report.samples + report.skipped == held, (
                f"{label}: {report.samples} samples + {report.skipped} skipped, the file holds "
                f"{held} records: {report.messages}"
            )
    unreadable = False
    reader = Reader(catalog)
    try:
        for row in catalog.files("fuzz").to_pylist():
            if not row["samples"]:
                continue
            file_id, ordinals = row["file_id"], np.arange(row["samples"])
            for read in (
                lambda f=file_id, o=ordinals: reader.read_with_text(f, o)[1],
                lambda f=file_id, o=ordinals: catalog.read(f, o),
            ):
                try:
                    got = read()
                except MixplaneError as exc:
                    one_line(str(exc), label)
                    if os.environ.get("MIXPLANE_FUZZ_VERBOSE"):
                        print(f"{label}: unreadable: {exc}")
                    unreadable = True
                    continue
                except Exception as exc:
                    pytest.fail(f"{label}: reading back: {type(exc).__name__}: {exc!s:.2000}")
                if not fmt.reads_text:
                    continue
                if isinstance(got, list):
                    assert all(isinstance(t, str) for t in got), label
                else:
                    field = row["text_field"] or (
                        "txt" if row["format"] == "webdataset" else "text"
                    )
                    texts = get_path(got, field)
                    assert texts is not None, f"{label}: no text field read back"
                    assert all(isinstance(t, str) for t in texts.to_pylist()), label
    finally:
        reader.close()
    return "unreadable" if unreadable else "read"


def test_broken_files(catalog: Catalog, tmp_path: Path) -> None:
    tally = Tally("files")
    per_format = -(-count("files") // len(FILE_FORMATS))
    before = snapshot(catalog)
    for name, fmt in FILE_FORMATS.items():
        for i in range(per_format):
            mutation = MUTATIONS[i % len(MUTATIONS)]
            label = f"files/{name}/{mutation}/{i}"
            files = broken(fmt, mutation, label)
            folder = tmp_path / label.replace("/", "-")
            folder.mkdir()
            for file_name, data in files.items():
                (folder / file_name).write_bytes(data)
            outcomes = []
            for on_error in ("raise", "skip"):
                if on_error == "skip" and outcomes[0] != "error":
                    break  # a file registered whole registers the same under 'skip'
                where = f"{label}/{on_error}"
                what, result = register(catalog, folder, fmt, on_error, where, before)
                if what == "ok":
                    read = check_registered(catalog, result, fmt, files, where)
                    skipped = result.skipped > 0 or any(
                        "no samples" in m for r in result.file_reports for m in r.messages
                    )
                    what = "skip" if skipped else "accepted"
                    what += "-unreadable" if read == "unreadable" else ""
                    if os.environ.get("MIXPLANE_FUZZ_VERBOSE"):
                        print(f"{where}: {what} {result.samples} samples {result.skipped} skipped")
                    catalog.unregister("fuzz")
                    before = snapshot(catalog)  # property types and columns stay registered
                outcomes.append(what)
            assert outcomes[0] != "skip", f"{label}: on_error='raise' skipped records"
            tally.add(f"{name}/{mutation}", "/".join(outcomes))
            shutil.rmtree(folder)
    print(tally.report())
    assert tally.inputs >= count("files")
