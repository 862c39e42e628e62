"""Helpers shared by the benchmark scripts: timing, load average, text generation, summaries."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@contextlib.contextmanager
def scratch(prefix: str, parent: Path | None = None, *, keep: bool = False) -> Iterator[Path]:
    """A fresh temporary folder (inside ``parent`` if given), removed afterwards unless ``keep``;
    only this folder is ever deleted, never ``parent``."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, after a garbage collection."""
    gc.collect()
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def best_of(times: int, run: Callable[[], Any]) -> tuple[float, Any]:
    return min((timed(run) for _ in range(times)), key=lambda r: r[0])


def load() -> str:
    """The load average (1/5/15 min): figures on a shared machine need it beside them."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def join_rows(items: pa.Array, per_row: int, separator: str) -> pa.Array:
    """Rows of ``per_row`` consecutive items joined by ``separator`` (Arrow, no Python loop)."""
    rows = len(items) // per_row
    offsets = pa.array(np.arange(0, rows * per_row + 1, per_row, dtype=np.int32))
    return pc.binary_join(pa.ListArray.from_arrays(offsets, items), separator)


def print_summary(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A markdown table; a last column of True/False/None prints as yes/**no**/blank."""
    print(f"\n## Summary ({title}, {datetime.date.today()}, {os.cpu_count()} CPUs)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for *cells, met in rows:
        mark = "" if met is None else ("yes" if met else "**no**")
        print("| " + " | ".join(str(c) for c in cells) + f" | {mark} |")


class Server:
    """``mixplane --home HOME serve`` on loopback (any free port), in a child process."""

    def __init__(self, home: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mixplane.cli", "--home", home, "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "listening on " in line:
                self.url = line.split("listening on ")[1].split()[0]
                return
        msg = "the server did not start"
        raise RuntimeError(msg)

    def peak_rss_mb(self) -> float:
        """The server process's peak RSS (VmHWM), MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
