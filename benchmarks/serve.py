"""Server under load: chunk descriptors per second and batched-request latency for 64 to 4096
simulated ranks, through one real ``mixplane serve`` on loopback.

Corpus (generated, not timed): ``--samples`` small JSONL records (default 200k, ~100 bytes of
text each) in 20 files, property ``source`` (6 sources, skewed shares) laid out in runs of 1-100
records, so a component is spread over every file in many ranges. Registered in a scratch catalog
with ``Client.local`` before the server starts (the catalog is then closed: DuckDB admits one
writer).

For each rank count R (``--ranks``, default 64, 512, 4096): a job ``serve-R`` is submitted with
``Topology(dp_groups=R / 8, ranks_per_group=8, workers=1)`` (``--ranks-per-group`` 8: as the
tensor-parallel ranks of one node; every rank asks for its group's chunks itself, so each chunk
is answered 8 times; with 1, every descriptor is a chunk of its own), chunks of
256 samples, shuffled, static mixture over the sources. ``--procs`` load-generator processes
(default 4, spawned) each own R / procs consecutive ranks (whole groups) and loop for
``--warmup`` + ``--seconds`` seconds: one ``POST /v1/jobs/ID/chunks`` (msgpack,
``X-Mixplane-Protocol: 1``, one keep-alive ``http.client`` connection per process, closed loop)
asks the next chunk for each of up to ``--batch`` (256) of its ranks, reporting each of those
ranks as consuming that chunk (the ``consumed`` list), then the ranks advance; the next request
takes the next ``--batch`` ranks, round-robin. Each answered descriptor is checked to be chunk
``group + G * j``. Latency is one request's round trip (sent to the last byte read; decoding the
answer is the client's own time, outside it). Only requests started after the warm-up count;
descriptors/s = descriptors answered to them / (last answer - first measured request, across
processes). The server's ``mixplane_chunks_served_total`` counter for the job must equal the
descriptors the load processes received (warm-up included); the server's own latency histogram
for the endpoint (from the app being called to the answer sent: waits for the thread pool, the
job's lock and the GIL included; the socket and HTTP parsing not), differenced between scrapes
before the job is submitted and after its load (warm-up included), is shown beside the clients'
figures.

Open loop (``--paced``, default 0.05,0.25,0.5,0.75): then, at the largest rank count, the same
load offered on a fixed schedule: each load process sends its batches so that all of them
together offer that fraction of the closed-loop descriptors/s just measured there (the four
processes send at the same instants, as ranks stepping in lockstep would); a request's latency
counts from its scheduled time, so one that leaves late behind a slow one is charged the wait.
A closed loop measures capacity (four requests always in flight: by Little's law its latency is
set by the throughput); the open loop measures latency at a given load. Training needs far less
than either: 4,096 ranks each taking a 256-sample chunk every 32 s (8 samples per rank per 1 s
step) ask for 128 descriptors/s.

Named baseline, same run, before the server starts: the same descriptors computed in-process
(``Client.local``, one thread): a ``Job`` with the same spec and topology, the same batches of
ranks, each rank's position moved (``Stream.load_state_dict``, what the server does for
``consumed``) and ``job.consumer_chunk(consumer, j)`` called, releasing finished chunks every
0.2 s as the server does; timed for ``--baseline-seconds`` after a 1 s warm-up. Printed:
descriptors/s in-process and through the server, and their ratio (the cost of HTTP, validation,
serialization and threads on top of planning).

Target: at 4096 ranks, p99 of a batched request (256 descriptors) under 50 ms (judged in every
row at 4096 ranks, closed and open loop).

``--profile``: after the load runs (the server stopped), the server-side work of 200 batched
requests at the largest rank count, in this process and one thread (a ``JobStore`` over the
catalog, its planning thread stopped): planning the chunks they need (``Job.chunk``), then per
request msgpack decode, body validation (``chunk_items``), ``ServerJob.chunks`` and msgpack
encode, timed stage by stage over 100 requests with the garbage collector's passes recorded
(``gc.callbacks``), then 100 more under cProfile. No HTTP, no threads: what one request costs
the server's CPU, not what it waits for.

Usage (from the repository root; about 3 minutes on 2 cores)::

    .venv/bin/python benchmarks/serve.py [--ranks 64,512,4096] [--seconds 12] [--procs 4]
        [--batch 256] [--ranks-per-group 8] [--samples 200000] [--paced 0.05,0.25,0.5,0.75]
        [--profile] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import http.client
import io
import multiprocessing as mp
import os
import platform
import pstats
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson
from common import load, print_summary, scratch

FILES = 20
#: source: share of the samples (and of the mixture)
SOURCES = {"web": 0.35, "books": 0.2, "code": 0.15, "forum": 0.12, "news": 0.1, "wiki": 0.08}
MIXTURE = {f"source={s}": w for s, w in SOURCES.items()}
RANKS_PER_GROUP = 8  # default --ranks-per-group
CHUNK_SIZE = 256
SEED = 5
TARGET_RANKS = 4096
TARGET_P99_MS = 50.0
RELEASE_EVERY_S = 0.2  # as the server (mixplane.server.serving.RELEASE_EVERY_S)
LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")
HEADERS = {
    "X-Mixplane-Protocol": "1",
    "Accept": "application/msgpack",
    "Content-Type": "application/msgpack",
}


# -- corpus ------------------------------------------------------------------------------------


def generate(directory: Path, samples: int, seed: int = SEED) -> list[Path]:
    """``samples`` JSONL records in ``FILES`` files; sources in runs of 1-100 records."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(SOURCES)
    shares = np.array(list(SOURCES.values()))
    words = np.array(["the", "of", "and", "to", "in", "data", "mixture", "chunk", "rank"])
    paths = []
    per_file = samples // FILES
    for f in range(FILES):
        count = per_file + (1 if f < samples % FILES else 0)
        runs = rng.integers(1, 101, count)
        run_sources = rng.choice(len(names), len(runs), p=shares)
        sources = np.repeat(run_sources, runs)[:count]
        lengths = rng.integers(8, 25, count)
        path = directory / f"part-{f:02d}.jsonl"
        with path.open("wb") as out:
            for i in range(count):
                text = " ".join(words[rng.integers(0, len(words), lengths[i])])
                record = {"id": f"{f}-{i}", "source": names[sources[i]], "text": text}
                out.write(orjson.dumps(record) + b"\n")
        paths.append(path)
    return paths


def topology_of(ranks: int, per_group: int) -> dict[str, int]:
    if ranks % per_group:
        msg = f"--ranks {ranks} is not a multiple of {per_group} ranks per group"
        raise SystemExit(msg)
    return {"dp_groups": ranks // per_group, "ranks_per_group": per_group, "workers": 1}


def job_args(ranks: int, per_group: int) -> dict[str, Any]:
    from mixplane.chunking.assign import Topology

    return {
        "mixture": MIXTURE,
        "topology": Topology(**topology_of(ranks, per_group)),
        "seed": SEED,
        "unit": "samples",
        "chunk_size": CHUNK_SIZE,
    }


def owned_ranks(ranks: int, per_group: int, procs: int, p: int) -> list[tuple[int, int]]:
    """(consumer, rank in group) of load process ``p``: consecutive ranks, whole groups."""
    groups = ranks // per_group
    lo, hi = groups * p // procs, groups * (p + 1) // procs
    return [(g, r) for g in range(lo, hi) for r in range(per_group)]


def batches(owned: list[tuple[int, int]], batch: int) -> Iterator[list[int]]:
    """Indices into ``owned``, ``batch`` at a time, round-robin forever."""
    starts = list(range(0, len(owned), batch))
    while True:
        for s in starts:
            yield list(range(s, min(s + batch, len(owned))))


# -- named baseline: in-process ----------------------------------------------------------------


def in_process(
    home: Path, ranks: int, per_group: int, batch: int, seconds: float
) -> dict[str, float]:
    """Descriptors/s of ``Job.consumer_chunk`` for the server's request pattern, one thread."""
    from mixplane.client import Client
    from mixplane.client.stream import ConsumerState

    with Client.local(home) as client:
        job = client.submit(f"inproc-{ranks}", **job_args(ranks, per_group))
        groups = ranks // per_group
        owned = owned_ranks(ranks, per_group, 1, 0)
        streams = [job.stream(g, r, 0) for g, r in owned]
        nxt = [0] * len(owned)
        released = 0.0
        warm_until = time.perf_counter() + 1.0
        measured = 0
        start = stop = 0.0
        for idx in batches(owned, batch):
            now = time.perf_counter()
            if now >= warm_until and not start:
                start = now
            if start and now - start >= seconds:
                stop = now
                break
            for i in idx:
                streams[i].load_state_dict(ConsumerState(j=nxt[i], offset=0))
            for i in idx:
                consumer = owned[i][0]
                spec, _ = job.consumer_chunk(consumer, nxt[i])
                assert spec is not None and spec.index == consumer + groups * nxt[i]
                nxt[i] += 1
            if start:
                measured += len(idx)
            if now - released >= RELEASE_EVERY_S:
                released = now
                job.release()
    return {"descriptors": measured, "seconds": stop - start, "rate": measured / (stop - start)}


# -- the server ----------------------------------------------------------------------------------


@contextlib.contextmanager
def server(home: Path, log: Path) -> Iterator[str]:
    """``mixplane --home HOME serve --port 0`` (loopback); yields its URL; stops it after."""
    env = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME", "MIXPLANE_SERVER")}
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mixplane.cli", "--home", str(home), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            url = ""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                match = LISTENING.search(line)
                if match:
                    url = match.group(1)
                    break
            if not url:
                msg = f"the server did not start: {log.read_text()[-2000:]}"
                raise RuntimeError(msg)
            yield url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)


def connect(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)


def scrape(url: str) -> str:
    conn = connect(url)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus text (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name) and (f"{{{want}}}" in line if want else " " in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def histogram(text: str) -> tuple[float, float, dict[float, float]]:
    """(count, sum s, {bucket bound: cumulative count}) of the chunks endpoint's latency."""
    endpoint = 'endpoint="POST /v1/jobs/{job_id}/chunks"'
    buckets = {}
    for line in text.splitlines():
        if line.startswith("mixplane_request_seconds_bucket") and endpoint in line:
            le = re.search(r'le="([^"]+)"', line)
            assert le is not None
            buckets[float(le.group(1))] = float(line.rsplit(" ", 1)[1])
    count = metric(text, "mixplane_request_seconds_count", endpoint="POST /v1/jobs/{job_id}/chunks")
    total = metric(text, "mixplane_request_seconds_sum", endpoint="POST /v1/jobs/{job_id}/chunks")
    return count, total, buckets


def server_latency(before: str, after: str) -> tuple[float, float, float]:
    """(requests, mean s, p99 upper bucket bound s) of the chunks endpoint between two scrapes
    (the histogram is per endpoint, not per job)."""
    n0, s0, b0 = histogram(before)
    n1, s1, b1 = histogram(after)
    count = n1 - n0
    delta = sorted((le, n - b0.get(le, 0.0)) for le, n in b1.items())
    p99 = next((le for le, n in delta if n >= 0.99 * count), float("nan"))
    return count, (s1 - s0) / max(count, 1), p99


def load_process(
    url: str,
    job_id: str,
    ranks: int,
    per_group: int,
    procs: int,
    p: int,
    batch: int,
    warmup: float,
    seconds: float,
    barrier: Any,
    results: Any,
    rate: float | None = None,
) -> None:
    """One load generator (see the module); puts its figures on ``results``. With ``rate``
    (this process's descriptors/s) requests leave on a fixed schedule (open loop) and each
    latency counts from its scheduled time, so a request that leaves late because the one
    before it was slow is charged its wait."""
    try:
        groups = ranks // per_group
        owned = owned_ranks(ranks, per_group, procs, p)
        nxt = [0] * len(owned)
        conn = connect(url)
        path = f"/v1/jobs/{job_id}/chunks"
        latencies: list[float] = []
        total = measured = 0
        first = last = 0.0
        barrier.wait()
        t0 = time.time()
        measure_from, stop_at = t0 + warmup, t0 + warmup + seconds
        clock0 = time.perf_counter() - (time.time() - t0)  # perf_counter at t0
        for idx in batches(owned, batch):
            scheduled = None
            if rate is not None:
                scheduled = clock0 + total / rate
                pause = scheduled - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            sent = time.time()
            if sent >= stop_at:
                break
            body = msgpack.packb(
                {
                    "requests": [{"consumer": owned[i][0], "j": nxt[i]} for i in idx],
                    "consumed": [
                        {"consumer": owned[i][0], "rank": owned[i][1], "j": nxt[i]} for i in idx
                    ],
                }
            )
            start = time.perf_counter()
            conn.request("POST", path, body=body, headers=HEADERS)
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - (start if scheduled is None else min(start, scheduled))
            if response.status != 200:
                msg = f"HTTP {response.status}: {data[:500]!r}"
                raise RuntimeError(msg)
            answer = msgpack.unpackb(data, raw=False)["chunks"]
            if len(answer) != len(idx):
                msg = f"asked {len(idx)} chunks, got {len(answer)}"
                raise RuntimeError(msg)
            for i, item in zip(idx, answer, strict=True):
                consumer = owned[i][0]
                chunk = item["chunk"]
                if chunk is None or chunk["index"] != consumer + groups * nxt[i]:
                    msg = f"rank {owned[i]} chunk {nxt[i]}: unexpected answer {item!r:.300}"
                    raise RuntimeError(msg)
                nxt[i] += 1
            total += len(idx)
            if sent >= measure_from:
                if not first:
                    first = sent
                last = time.time()
                latencies.append(elapsed)
                measured += len(idx)
        conn.close()
        results.put(
            {
                "p": p,
                "latencies": latencies,
                "measured": measured,
                "total": total,
                "first": first,
                "last": last,
                "furthest": max(nxt),
            }
        )
    except BaseException as exc:
        results.put({"p": p, "error": f"{type(exc).__name__}: {exc}"})
        raise


def through_server(
    url: str, ranks: int, args: argparse.Namespace, rate: float | None = None
) -> dict[str, Any]:
    """One load run; closed loop, or open loop offering ``rate`` descriptors/s in all."""
    from mixplane.client import Client

    job_id = f"serve-{ranks}" if rate is None else f"serve-{ranks}-paced-{rate:.0f}"
    client = Client.remote(url, retry_for=10)
    before = scrape(url)
    try:
        client.submit(job_id, **job_args(ranks, args.ranks_per_group), replace=True)
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(args.procs + 1)
        results = ctx.Queue()
        workers = [
            ctx.Process(
                target=load_process,
                args=(
                    url,
                    job_id,
                    ranks,
                    args.ranks_per_group,
                    args.procs,
                    p,
                    args.batch,
                    args.warmup,
                    args.seconds,
                    barrier,
                    results,
                    None if rate is None else rate / args.procs,
                ),
                daemon=True,
            )
            for p in range(args.procs)
        ]
        for w in workers:
            w.start()
        got: list[dict[str, Any]] = []
        try:
            barrier.wait(timeout=120)
            limit = time.monotonic() + args.warmup + args.seconds + 120
            got = [results.get(timeout=max(1.0, limit - time.monotonic())) for _ in workers]
        finally:
            for w in workers:  # all reported: they are exiting; else stop them now
                w.join(timeout=30 if len(got) == len(workers) else 0)
                if w.is_alive():
                    w.terminate()
                    w.join()
        errors = [g["error"] for g in got if "error" in g]
        if errors:
            msg = f"load process failed: {errors[0]}"
            raise RuntimeError(msg)
        text = scrape(url)
        client.connection.call("DELETE", f"/v1/jobs/{job_id}")
    finally:
        client.close()
    lat = np.array([x for g in got for x in g["latencies"]]) * 1e3
    measured = sum(g["measured"] for g in got)
    window = max(g["last"] for g in got) - min(g["first"] for g in got)
    received = sum(g["total"] for g in got)
    count, mean, p99_bound = server_latency(before, text)
    return {
        "requests": len(lat),
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "max": float(lat.max()),
        "rate": measured / window,
        "window": window,
        "received": received,
        "served": metric(text, "mixplane_chunks_served_total", job=job_id),
        "server_count": count,
        "server_mean_ms": mean * 1e3,
        "server_p99_bound_ms": p99_bound * 1e3,
        "chunks_per_rank": min(g["furthest"] for g in got),
    }


# -- where the server's time goes ------------------------------------------------------------------


@contextlib.contextmanager
def gc_pauses() -> Iterator[dict[int, list[float]]]:
    """Durations of the garbage collector's passes while inside, by generation."""
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(watch)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(watch)


def profile(home: Path, ranks: int, per_group: int, batch: int, rounds: int) -> None:
    """The server-side work of ``rounds`` batched requests (see the module), in this process,
    one thread: the job's planning thread is stopped and the chunks the requests need are
    planned first (timed apart), so each stage's cost is its own."""
    from mixplane.catalog.catalog import Catalog
    from mixplane.chunking.assign import Topology
    from mixplane.job import make_spec
    from mixplane.server.http import unpack
    from mixplane.server.jobs import JobStore
    from mixplane.server.metrics import Metrics
    from mixplane.server.routes.chunks import chunk_items

    catalog = Catalog.open(home)
    store = JobStore(catalog, home / "profile-jobs", Metrics())
    try:
        args = job_args(ranks, per_group)
        topology: Topology = args.pop("topology")
        sj, _ = store.submit(make_spec(f"profile-{ranks}", **args), topology, replace=True)
        sj._stop.set()  # no planning thread: planning is timed on its own below
        sj._wake.set()
        if sj._thread is not None:
            sj._thread.join()
        groups = ranks // per_group
        owned = owned_ranks(ranks, per_group, 1, 0)
        nxt = [0] * len(owned)
        bodies = []
        for _, idx in zip(range(rounds), batches(owned, batch), strict=False):
            requests = [{"consumer": owned[i][0], "j": nxt[i]} for i in idx]
            consumed = [{"consumer": owned[i][0], "rank": owned[i][1], "j": nxt[i]} for i in idx]
            bodies.append(msgpack.packb({"requests": requests, "consumed": consumed}))
            for i in idx:
                nxt[i] += 1
        furthest = max(c + groups * (j - 1) for (c, _), j in zip(owned, nxt, strict=True))
        stages = {"msgpack decode": 0.0, "body validation": 0.0, "ServerJob.chunks": 0.0,
                  "msgpack encode": 0.0}  # fmt: skip

        def one(raw: bytes) -> int:
            t = time.perf_counter()
            data = unpack(raw)
            t1 = time.perf_counter()
            wanted, consumed = chunk_items(data)
            t2 = time.perf_counter()
            out = sj.chunks(wanted, consumed)
            t3 = time.perf_counter()
            encoded = sj.encode_msgpack(out)
            t4 = time.perf_counter()
            for name, dt in zip(stages, (t1 - t, t2 - t1, t3 - t2, t4 - t3), strict=False):
                stages[name] += dt
            return len(encoded)

        planned_before = sj.job.next_chunk
        half = len(bodies) // 2
        with gc_pauses() as pauses:
            t = time.perf_counter()
            sj._plan_to(sj.job, furthest)
            planning = time.perf_counter() - t
            sizes = [one(raw) for raw in bodies[:half]]
        planned = sj.job.next_chunk - planned_before
        stages["planning (Job.chunk), share"] = planning * half / len(bodies)
        total = sum(stages.values())
        n = half
        print(f"\n## Server-side work per batched request ({ranks} ranks, {batch} descriptors, "
              f"{n} requests, one thread, no HTTP)")  # fmt: skip
        for name, dt in stages.items():
            print(f"  {name:<30} {dt / n * 1e3:7.2f} ms  ({dt / total:5.1%})")
        print(f"  {'total':<30} {total / n * 1e3:7.2f} ms = {n * batch / total:,.0f} "
              f"descriptors/s; answer {np.mean(sizes) / 1e3:.0f} kB (msgpack); planning "
              f"{planning / planned * 1e3:.3f} ms a chunk ({planned:,} chunks)")  # fmt: skip
        full = pauses[2]
        young = pauses[0] + pauses[1]
        spent = planning + sum(stages.values()) - stages["planning (Job.chunk), share"]
        print(f"  inside the above (planning all {len(bodies)} requests' chunks, then {n} "
              f"requests): {len(full)} full (gen2) collections, {sum(full) * 1e3:.0f} ms in all "
              f"(longest {max(full, default=0) * 1e3:.0f} ms; {sum(full) / spent:.1%} of the "
              f"time); {len(young)} young ones, {sum(young) * 1e3:.0f} ms; "
              f"{len(gc.get_objects()):,} objects tracked")  # fmt: skip
        profiler = cProfile.Profile()
        profiler.enable()
        for raw in bodies[half:]:
            one(raw)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(15)
        print(
            f"\n## cProfile of {len(bodies) - half} more requests, planning excluded (own time)\n"
        )
        print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))
    finally:
        store.close()


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="64,512,4096", help="comma-separated rank counts")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per count")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes")
    parser.add_argument("--batch", type=int, default=256, help="ranks per request")
    parser.add_argument("--ranks-per-group", type=int, default=RANKS_PER_GROUP)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument(
        "--paced",
        default="0.05,0.25,0.5,0.75",
        help="open-loop runs at the largest rank count, offering these fractions of the "
        "closed-loop descriptors/s measured there ('' for none)",
    )
    parser.add_argument("--profile", action="store_true", help="time the server side (module)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) on SIGTERM too
    counts: Sequence[int] = [int(r) for r in args.ranks.split(",")]
    for r in counts:
        topology_of(r, args.ranks_per_group)
        if r // args.ranks_per_group < args.procs:
            parser.error(f"--ranks {r}: fewer groups ({r // args.ranks_per_group}) than --procs")
    print(f"# serve.py: {platform.platform()}, {os.cpu_count()} CPUs, load {load()}")
    with scratch("mixplane-serve-", keep=args.keep) as work:
        if args.keep:
            print(f"scratch folder (kept): {work}")
        from mixplane.client import Client

        t = time.perf_counter()
        paths = generate(work / "corpus", args.samples)
        home = work / "home"
        with Client.local(home) as client:
            client.catalog.register("corpus", paths, properties={"source": "source"},
                                    progress=False)  # fmt: skip
        print(f"corpus: {args.samples:,} samples in {FILES} files, {len(SOURCES)} sources "
              f"(generated and registered in {time.perf_counter() - t:.1f} s)")  # fmt: skip

        print(f"\n## In-process baseline (Client.local, one thread, {args.baseline_seconds:g} s)")
        base = {}
        for r in counts:
            base[r] = in_process(home, r, args.ranks_per_group, args.batch, args.baseline_seconds)
            print(f"  {r:>5} ranks: {base[r]['rate']:>9,.0f} descriptors/s  load {load()}")

        print(f"\n## Through the server ({args.procs} load processes, batches of up to "
              f"{args.batch} ranks, {args.warmup:g} s warm-up + {args.seconds:g} s)")  # fmt: skip
        res = {}
        with server(home, work / "server.log") as url:
            print(f"  server {url}")
            for r in counts:
                res[r] = x = through_server(url, r, args)
                same = "equal" if x["served"] == x["received"] else "DIFFER"
                print(
                    f"  {r:>5} ranks: {x['requests']:,} requests, p50 {x['p50']:.1f} ms, p99 "
                    f"{x['p99']:.1f} ms (max {x['max']:.1f}); {x['rate']:,.0f} descriptors/s; "
                    f"in the app: mean {x['server_mean_ms']:.1f} ms, p99 <= "
                    f"{x['server_p99_bound_ms']:g} ms; metrics served {x['served']:,.0f} vs "
                    f"received {x['received']:,} ({same}); "
                    f"~{x['chunks_per_rank']:,} chunks per rank; load {load()}"
                )

            top = max(counts)
            paced = {}
            fractions = [float(f) for f in args.paced.split(",") if f.strip()]
            if fractions:
                print(f"\n## Open loop at {top} ranks: requests on a fixed schedule offering a "
                      f"fraction of the closed-loop {res[top]['rate']:,.0f} descriptors/s; "
                      "latency from each request's scheduled time")  # fmt: skip
            for f in fractions:
                offered = f * res[top]["rate"]
                paced[f] = x = through_server(url, top, args, rate=offered)
                same = "equal" if x["served"] == x["received"] else "DIFFER"
                print(
                    f"  {f:.2f} x capacity = {offered:,.0f} offered: {x['rate']:,.0f} "
                    f"descriptors/s answered, {x['requests']:,} requests, p50 {x['p50']:.1f} ms, "
                    f"p99 {x['p99']:.1f} ms (max {x['max']:.1f}); in the app: mean "
                    f"{x['server_mean_ms']:.1f} ms; metrics served {x['served']:,.0f} vs "
                    f"received {x['received']:,} ({same}); load {load()}"
                )

        if args.profile:
            profile(home, max(counts), args.ranks_per_group, args.batch, rounds=200)

    rows = []
    for r in counts:
        x, b = res[r], base[r]
        per_req = min(args.batch, r // args.procs)
        target = f"p99 < {TARGET_P99_MS:g} ms" if r == TARGET_RANKS else "-"
        met = x["p99"] < TARGET_P99_MS if r == TARGET_RANKS else None
        rows.append((
            f"{r:,}", f"{r // args.ranks_per_group:,} x {args.ranks_per_group}", per_req,
            f"{x['p50']:.1f}", f"{x['p99']:.1f}", f"{x['rate']:,.0f}", f"{b['rate']:,.0f}",
            f"{x['rate'] / b['rate']:.2f}", f"{x['served']:,.0f} / {x['received']:,}", target, met,
        ))  # fmt: skip
    for f, x in paced.items():
        met = x["p99"] < TARGET_P99_MS if top == TARGET_RANKS else None
        rows.append((
            f"{top:,} open loop, {f:.2f} x capacity", "", min(args.batch, top // args.procs),
            f"{x['p50']:.1f}", f"{x['p99']:.1f}", f"{x['rate']:,.0f}", f"{base[top]['rate']:,.0f}",
            f"{x['rate'] / base[top]['rate']:.2f}", f"{x['served']:,.0f} / {x['received']:,}",
            f"p99 < {TARGET_P99_MS:g} ms" if top == TARGET_RANKS else "-", met,
        ))  # fmt: skip
    header = ["ranks", "groups x ranks", "descriptors/request", "p50 ms", "p99 ms",
              "server descr/s", "in-process descr/s", "server / in-process",
              "metrics served / received", "target", "met"]  # fmt: skip
    print_summary(f"server under load, {args.procs} load processes, load {load()}", header, rows)


if __name__ == "__main__":
    main()
