"""The file formats the campaign breaks, one entry each in ``FILE_FORMATS``.

An entry writes a small valid dataset from records (``write``: file name -> bytes; several
files for a format that needs them, e.g. ``.bin`` + ``.idx``) and says how to register it
(``properties``, ``options``). The campaign then cuts, bit-flips, splices, zeroes and replaces
those bytes, and mistypes the records before writing (``mistype``, or the generic value
mutation of ``harness.mistype`` on a few records). Adding a format is one line::

    FILE_FORMATS["megatron"] = FileFormat(write=write_megatron, options={"format": "megatron"})

where ``write_megatron(records)`` returns ``{"d.bin": ..., "d.idx": ...}``.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from tests.fuzz.harness import mistype, odd_value

Records = list[dict[str, Any]]
Files = dict[str, bytes]

WORDS = ["alpha", "beta", "gamma", "délta", "字", 'quo"te', "new\nline", "tab\t", "5", "{", "—"]


def records(rng: random.Random, n: int = 12) -> Records:
    return [
        {
            "id": f"r{i}",
            "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))),
            "meta": {
                "language": rng.choice(["en", "de", "fr"]),
                "quality": round(rng.random(), 3),
            },
            "tags": rng.sample(["news", "code", "wiki"], rng.randint(0, 3)),
        }
        for i in range(n)
    ]


@dataclass(frozen=True, kw_only=True)
class FileFormat:
    """How the campaign writes and registers one format (see the module)."""

    write: Callable[[Records], Files]
    properties: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    #: records -> files holding values of other types; None: ``harness.mistype`` on records
    mistype: Callable[[Records, random.Random], Files] | None = None
    #: how many records a file holds, for formats where each is a line (samples + skipped must
    #: add up to it after a registration under on_error='skip'); None: not checked
    records_in: Callable[[Files], int | None] | None = None
    #: whether samples read back carry a text field (False for pre-tokenized formats: reading
    #: back is then checked only for clean errors)
    reads_text: bool = True


def _lines(rs: Records) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n"
        for r in rs
    )


def write_jsonl(rs: Records) -> Files:
    return {"d.jsonl": _lines(rs)}


def write_gzip(rs: Records) -> Files:
    return {"d.jsonl.gz": gzip.compress(_lines(rs), mtime=0)}


def write_zstd(rs: Records) -> Files:
    return {"d.jsonl.zst": zstandard.ZstdCompressor().compress(_lines(rs))}


def jsonl_records(files: Files) -> int | None:
    """The lines holding anything but whitespace (blank lines are not records), or None when
    the stream does not decompress."""
    ((name, data),) = files.items()
    try:
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        elif name.endswith(".zst"):
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except (OSError, EOFError, zstandard.ZstdError):
        return None
    return sum(1 for line in data.split(b"\n") if _record_line(line))


def _record_line(line: bytes) -> bool:
    """Whether a line is a record (or a malformed one): not blank as Python strips text."""
    try:
        return bool(line.decode("utf-8").strip())
    except UnicodeDecodeError:
        return True


def write_parquet(rs: Records) -> Files:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rs), sink, row_group_size=5)
    return {"d.parquet": sink.getvalue()}


def mistype_parquet(rs: Records, rng: random.Random) -> Files:
    """A column of another Arrow type (a Parquet column holds one type)."""
    table = pa.Table.from_pylist(rs)
    name = rng.choice(table.column_names)
    n = table.num_rows
    replacement = rng.choice(
        [
            pa.array([rng.randint(-5, 5) for _ in range(n)]),
            pa.array([str(rng.random()) for _ in range(n)]),
            pa.array([None] * n, pa.string()),
            pa.array([[1, 2]] * n),
            pa.array([{"a": 1}] * n),
            pa.array([b"\xff\xfe"] * n, pa.binary()),
            pa.array([True] * n),
        ]
    )
    sink = io.BytesIO()
    pq.write_table(table.set_column(table.column_names.index(name), name, replacement), sink)
    return {"d.parquet": sink.getvalue()}


def _tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return sink.getvalue()


def _tar_samples(rs: Records) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (
            str(r.get("id", "x")),
            {
                "txt": str(r.get("text")).encode(),
                "json": json.dumps({k: v for k, v in r.items() if k != "text"}).encode(),
            },
        )
        for r in rs
    ]


def write_tar(rs: Records) -> Files:
    return {"d.tar": _tar(_tar_samples(rs))}


def mistype_tar(rs: Records, rng: random.Random) -> Files:
    """Members of a sample replaced: odd JSON, text that is not UTF-8 or is JSON, a member
    missing or renamed."""
    samples = _tar_samples(rs)
    for _ in range(rng.randint(1, 3)):
        _, members = rng.choice(samples)
        ext = rng.choice(["txt", "json"])
        action = rng.random()
        if action < 0.2:
            members.pop(ext, None)
        elif action < 0.3:
            members[ext + ".bak"] = members.pop(ext, b"")
        elif ext == "txt":
            members["txt"] = rng.choice([b"\xff\xfe\xfd", b"", json.dumps(odd_value(rng)).encode()])
        else:
            doc = json.loads(members["json"])
            members["json"] = json.dumps(mistype(doc, rng)).encode()
    return {"d.tar": _tar(samples)}


FIELDS = {"language": "meta.language", "quality": "meta.quality"}

#: The formats the campaign breaks: name -> entry (see the module to add one).
FILE_FORMATS: dict[str, FileFormat] = {
    "jsonl": FileFormat(write=write_jsonl, properties=FIELDS, records_in=jsonl_records),
    "jsonl.gz": FileFormat(write=write_gzip, properties=FIELDS, records_in=jsonl_records),
    "jsonl.zst": FileFormat(write=write_zstd, properties=FIELDS, records_in=jsonl_records),
    "parquet": FileFormat(write=write_parquet, properties=FIELDS, mistype=mistype_parquet),
    "webdataset": FileFormat(
        write=write_tar,
        properties={"language": "json.meta.language", "quality": "json.meta.quality"},
        mistype=mistype_tar,
    ),
}
