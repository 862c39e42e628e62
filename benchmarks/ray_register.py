"""Ray engine benchmark: registration with ``engine="ray"`` against ``engine="local"``.

What it measures, in one process tree: N records ``{"id", "text" (~300 ASCII chars), "meta":
{"language", "source", "quality"}}`` written as F JSONL files, registered with properties
``language, source, quality`` from ``meta.*`` (1) with field properties only (JSONL's DuckDB fast
path, itself multi-threaded) and (2) with a property function as well (word and byte counts per
record: records are parsed by Arrow's reader and the function runs per batch). Each case runs
with the named baseline, the local engine, and with the Ray engine on a loopback Ray instance
(2 CPUs, 200 MB object store) started once beforehand (its start-up time is printed apart); runs
alternate, each on a fresh catalog home, and both catalogs are compared row by row (they must
be identical). Files are freshly written, so these are warm-cache figures.

On a machine with few cores the point is correctness and overhead: the owner still inserts
every batch, and Ray adds task start-up, Arrow serialization through the object store and the
first file scanned alone (it tells later files their property types).

Usage::

    .venv/bin/python benchmarks/ray_register.py --samples 1000000 --files 16 [--repeat 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from common import load, print_summary, scratch, timed

from mixplane.catalog import Catalog

PROPERTIES = {"language": "meta.language", "source": "meta.source", "quality": "meta.quality"}
WORDS = [f"w{i:03d}" for i in range(500)]


def write(root: Path, samples: int, files: int) -> int:
    """F JSONL files of about ``samples / files`` records each; returns the bytes written."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    per_file, total, n = -(-samples // files), 0, 0
    for f in range(files):
        lines = []
        for _ in range(min(per_file, samples - n)):
            record = {
                "id": n,
                "text": " ".join(rng.choices(WORDS, k=rng.randint(30, 90))),
                "meta": {
                    "language": rng.choice(("en", "de", "fr", "zh")),
                    "source": rng.choice(("web", "books", "wiki")),
                    "quality": round(rng.random(), 4),
                },
            }
            lines.append(orjson.dumps(record))
            n += 1
        data = b"\n".join(lines) + b"\n"
        (root / f"part-{f:03d}.jsonl").write_bytes(data)
        total += len(data)
    return total


def counts(table: pa.Table) -> dict[str, Any]:
    """The property function: words and UTF-8 bytes of each text."""
    text = table["text"]
    return {"words": pc.add(pc.count_substring(text, " "), 1), "n_bytes": pc.binary_length(text)}


def tables(home: Path) -> dict[str, pa.Table]:
    with Catalog.open(home) as cat:
        con = cat._con
        con.execute("SELECT 1").fetchall()  # ends the result ensure_schema leaves open on reopen
        return {
            "files": con.sql("SELECT * FROM files ORDER BY file_id").to_arrow_table(),
            "samples": con.sql("SELECT * FROM samples ORDER BY file_id, ordinal").to_arrow_table(),
        }


def register(home: Path, data: Path, engine: str, function: bool) -> int:
    with Catalog.open(home) as cat:
        info = cat.register(
            "corpus",
            data,
            properties=PROPERTIES,
            function=counts if function else None,
            progress=False,
            engine=engine,  # type: ignore[arg-type]
        )
    return info.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    os.environ.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0"
    )
    import ray  # after the environment: Ray reads it on import

    with scratch("mixplane-ray-bench-") as root:
        seconds, size = timed(lambda: write(root / "data", args.samples, args.files))
        print(
            f"wrote {args.samples:,} samples in {args.files} files, {size / 1e6:.0f} MB, {seconds:.1f} s"
        )
        started = time.perf_counter()
        ray.init(
            num_cpus=2,
            object_store_memory=200 << 20,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
        )
        print(f"ray.init: {time.perf_counter() - started:.1f} s, {ray.cluster_resources()}")
        rows = []
        for function in (False, True):
            best: dict[str, float] = {}
            for rep in range(args.repeat):
                order = ("local", "ray") if rep % 2 == 0 else ("ray", "local")
                homes = {}
                for engine in order:
                    home = homes[engine] = root / f"home-{engine}-{int(function)}-{rep}"
                    secs, n = timed(partial(register, home, root / "data", engine, function))
                    assert n == args.samples, n
                    best[engine] = min(best.get(engine, secs), secs)
                    print(
                        f"  function={function} {engine:<5} {secs:6.2f} s "
                        f"{n / secs:12,.0f} samples/s (load {load()})"
                    )
                assert tables(homes["ray"]) == tables(homes["local"]), "catalogs differ"
            local, remote = args.samples / best["local"], args.samples / best["ray"]
            case = "fields + function" if function else "fields only"
            rows.append((case, f"{local:,.0f}", f"{remote:,.0f}", f"{remote / local:.2f}x", True))
        ray.shutdown()
    print_summary(
        f"{args.samples:,} samples in {args.files} JSONL files, best of {args.repeat}",
        ["case", "local samples/s", "ray samples/s", "ray / local", "identical catalogs"],
        rows,
    )


if __name__ == "__main__":
    main()
