"""What the access check costs a request (issue 17): ``auth.Gate.decide`` against the check it
replaced, in one process, no HTTP.

Built over a real app (``create_app`` with a tokens file of ``--tokens`` tokens, one role each,
over an empty catalog): the scope and headers of ``POST /v1/jobs/run-1/chunks`` with a trainer's
bearer token, the server's hottest route.

- baseline ``compare_digest``: what the guard did before roles, one ``hmac.compare_digest`` of
  the presented token against the one token;
- ``decide, warm``: the gate on a path it has seen (route from its cache, SHA-256 of the token,
  one dict lookup, ``compare_digest`` of the digests, the role compared);
- ``decide, cold``: the gate on a new job id each time, its cache emptied before each run
  (Starlette's matching over every route, then cached; a server sees this once per job and
  route).

Prints microseconds per request and the ratio to the baseline, and each one's share of a
request at 4,500 requests/s (one Python client process's ceiling here, ~220 us a request).

Usage (from the repository root; a few seconds)::

    .venv/bin/python benchmarks/guard.py [--tokens 3] [--repeat 200000]
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixplane.catalog.catalog import Catalog
from mixplane.protocol import PROTOCOL_HEADER
from mixplane.server.app import create_app
from mixplane.server.auth import Gate, Sessions, read_tokens_file
from mixplane.server.jobs import JobStore
from mixplane.server.metrics import Metrics
from mixplane.server.security import Security

ROLES = ("viewer", "trainer", "admin")


def per_call(fn: Callable[[int], Any], repeat: int, setup: Callable[[], Any] = list) -> float:
    """Microseconds per call of ``fn(i)``, best of three runs (``setup()`` before each)."""
    best = float("inf")
    for _ in range(3):
        setup()
        started = time.perf_counter()
        for i in range(repeat):
            fn(i)
        best = min(best, time.perf_counter() - started)
    return best / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        tokens = [f"token-{i:04d}-" + "x" * 32 for i in range(args.tokens)]
        entries = [
            {"token": t, "role": ROLES[i % 3], "name": f"holder-{i}"} for i, t in enumerate(tokens)
        ]
        path = root / "tokens.json"
        path.write_text(json.dumps({"tokens": entries}))
        path.chmod(0o600)
        credentials = read_tokens_file(path)
        trainer = tokens[1 % len(tokens)] if len(tokens) > 1 else tokens[0]
        catalog = Catalog.open(root / "home")
        store = JobStore(catalog, root / "home" / "server" / "jobs", Metrics())
        app = create_app(
            store, security=Security(credentials=credentials), checkpoint_every=0, metrics=Metrics()
        )
        gate = Gate(credentials, Sessions(), routes=lambda: app.router.routes)
        presented = trainer.encode()
        headers = {
            b"authorization": b"Bearer " + presented,
            PROTOCOL_HEADER.lower().encode(): b"1",
            b"content-type": b"application/msgpack",
        }

        def scope(job: str) -> dict[str, Any]:
            return {
                "type": "http",
                "method": "POST",
                "path": f"/v1/jobs/{job}/chunks",
                "root_path": "",
                "headers": list(headers.items()),
            }

        warm = scope("run-1")
        decision = gate.decide(warm, headers)
        assert decision.refusal is None and decision.access.role == "trainer", decision
        one = tokens[0].encode()

        def baseline(_: int) -> bool:
            scheme, _sep, token = headers[b"authorization"].partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), one)

        cold_scopes = [scope(f"job-{i}") for i in range(min(args.repeat, 4000))]
        cold = min(args.repeat, 4000)
        results = {
            "compare_digest (baseline)": per_call(baseline, args.repeat),
            "decide, warm": per_call(lambda _: gate.decide(warm, headers), args.repeat),
            "decide, cold": per_call(
                lambda i: gate.decide(cold_scopes[i], headers),
                cold,
                setup=gate._cache.clear,
            ),
        }
        store.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores, load {load:.1f}, "
        f"{args.tokens} tokens, {len(app.routes)} routes"
    )
    base = results["compare_digest (baseline)"]
    for name, us in results.items():
        print(
            f"{name:28s} {us:8.2f} us/request  x{us / base:6.1f}  "
            f"{us / 222 * 100:5.2f}% of a request at 4.5k/s"
        )


if __name__ == "__main__":
    main()
