"""A catalog of 1e8 samples: query, components, job planning and memory stay lean.

What it measures:

1. Synthesis (not timed as a target): a catalog of ``--samples`` (default 1e8) samples in 1,000
   files of equal size, written straight into DuckDB with ``range()`` (no files are read):
   properties ``source`` (10 values, by file), ``lang`` (10 values, changing every 1,000
   ordinals) and ``bucket`` (10 values, changing every 10,000 ordinals), so grouping by all
   three gives 1,000 components of 1e5 samples each, every component a few hundred runs.
2. In a fresh process each (peak RSS is the child's ``ru_maxrss``):
   - query + components: ``Catalog.components(where, by=[source, lang, bucket])`` on a filter
     keeping 90% of the samples;
   - job: ``client.submit`` with a mixture over ``source`` (its query, per-component orders and
     weights), then planning chunks of 10,000 samples for ``--seconds``: chunks/s;
   - named baseline: the same filter's samples fetched one row per sample (``file_id``,
     ``ordinal``) as a DuckDB result table, what a design holding per-sample objects loads
     (10% of the catalog only, extrapolated x10 and said so).

Run: ``.venv/bin/python benchmarks/scale.py [--samples 100000000] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import load, scratch

FILES = 1000
WHERE = "bucket != 3"
SOURCES = [f"s{i}" for i in range(10)]
LANGS = ["en", "de", "fr", "es", "it", "zh", "ja", "ru", "pt", "bg"]


def synthesize(home: Path, samples: int) -> float:
    """Write the catalog (schema from mixplane, rows from DuckDB's range())."""
    import duckdb

    from mixplane.catalog.catalog import DB_NAME, Catalog

    Catalog.open(home).close()  # creates the schema
    per_file = samples // FILES
    start = time.perf_counter()
    con = duckdb.connect(str(home / DB_NAME))
    con.execute("BEGIN TRANSACTION")
    con.execute(
        "INSERT INTO datasets (dataset_id, name, format, text_field, samples, skipped) "
        "VALUES (1, 'synthetic', 'jsonl', 'text', ?, 0)",
        [per_file * FILES],
    )
    con.execute(
        "INSERT INTO files SELECT i + 1, 1, '/synthetic/part-' || i || '.jsonl', 'jsonl', NULL, "
        "?, 0, 'synthetic', ?, 0 FROM range(?) t(i)",
        [per_file * 300, per_file, FILES],
    )
    for name, kind, sql in (
        ("source", "string", "VARCHAR"),
        ("lang", "string", "VARCHAR"),
        ("bucket", "integer", "BIGINT"),
    ):
        con.execute("INSERT INTO properties VALUES (?, ?)", [name, kind])
        con.execute(f"ALTER TABLE samples ADD COLUMN {name} {sql}")
    sources = "[" + ",".join(f"'{s}'" for s in SOURCES) + "]"
    langs = "[" + ",".join(f"'{s}'" for s in LANGS) + "]"
    con.execute(
        f"""INSERT INTO samples
        SELECT f + 1 AS file_id, o AS ordinal, o * 300 AS "offset", 300 AS length,
               NULL, NULL, 280 AS bytes,
               {sources}[(f % 10) + 1] AS source,
               {langs}[((o // 1000) % 10) + 1] AS lang,
               (o // 10000) % 10 AS bucket
        FROM (SELECT i // {per_file} AS f, i % {per_file} AS o FROM range({per_file * FILES}) t(i))
        """
    )
    con.execute("COMMIT")
    con.close()
    return time.perf_counter() - start


def child(mode: str, home: str, seconds: float) -> None:
    """One measurement in this process; prints JSON."""
    from mixplane.client import Client

    out: dict[str, float] = {}
    client = Client.local(home, read_only=True)
    if mode == "components":
        t = time.perf_counter()
        result = client.catalog.components(WHERE, by=["source", "lang", "bucket"])
        out["seconds"] = time.perf_counter() - t
        out["components"] = len(result.components)
        out["runs"] = result.runs.num_rows
        out["samples"] = result.total_samples
    elif mode == "plan":
        t = time.perf_counter()
        job = client.submit(
            "scale",
            unit="samples",
            where=WHERE,
            mixture={f"source={s}": 1 / len(SOURCES) for s in SOURCES},
            chunk_size=10_000,
        )
        out["submit_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        k = 0
        while time.perf_counter() - t < seconds:
            job.chunk(k)
            job.release()
            k += 1
        out["chunks"] = k
        out["chunks_per_s"] = k / (time.perf_counter() - t)
        out["samples_per_s"] = out["chunks_per_s"] * 10_000
    elif mode == "per-sample":
        t = time.perf_counter()
        table = (
            client.catalog._con.cursor()
            .sql(  # the baseline: one row per sample (10% of files)
                f"SELECT file_id, ordinal FROM samples WHERE {WHERE} AND file_id <= {FILES // 10}"
            )
            .to_arrow_table()
        )
        rows = table.to_pylist()  # per-sample Python objects
        out["seconds"] = time.perf_counter() - t
        out["rows"] = len(rows)
    client.close()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(mode: str, home: Path, seconds: float) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--home", str(home), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, help="Keep (or reuse) the catalog in this folder.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.seconds)
        return
    with scratch("mixplane-scale-", keep=args.keep is not None) as work:
        home = args.keep or work / "home"
        if not (home / "catalog.duckdb").exists():
            home.mkdir(parents=True, exist_ok=True)
            took = synthesize(home, args.samples)
            print(f"synthesized {args.samples:,} samples in {took:.1f} s; load {load()}")
        size = sum(p.stat().st_size for p in home.iterdir()) / 1e9
        print(f"catalog file: {size:.2f} GB")
        comps = measure("components", home, args.seconds)
        print(
            f"query + components: {comps['seconds']:.2f} s, {comps['components']:.0f} "
            f"components, {comps['runs']:,.0f} runs, {comps['samples']:,.0f} samples; "
            f"peak RSS {comps['peak_rss_mb']:.0f} MB"
        )
        plan = measure("plan", home, args.seconds)
        print(
            f"job submit (query, orders, weights): {plan['submit_seconds']:.2f} s; planning "
            f"{plan['chunks_per_s']:.0f} chunks/s of 10,000 samples ({plan['samples_per_s']:,.0f} "
            f"samples/s); peak RSS {plan['peak_rss_mb']:.0f} MB"
        )
        base = measure("per-sample", home, args.seconds)
        print(
            f"baseline, per-sample rows for 10% of the files: {base['seconds']:.2f} s, "
            f"{base['rows']:,.0f} rows, peak RSS {base['peak_rss_mb']:.0f} MB (x10 for the "
            f"whole catalog: ~{10 * base['seconds']:.0f} s, ~{10 * base['peak_rss_mb'] / 1024:.0f} GB)"
        )
        print(f"load {load()}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
