"""Time to the first window, fresh and after a resume, for text and for pre-tokenized data,
each in a fresh process, with a baseline side by side in the same run (issue 16, peers item 1).

Workload: the peers benchmark's corpus (``benchmarks/peers.py``: four domains of JSONL, shares
0.4/0.3/0.2/0.1, ``deepseek`` tokenizer, windows of 2,048 + 1 tokens), at ``--size`` (default
``tiny``, ~6 MB of text), and the same corpus pre-tokenized to Megatron ``.bin/.idx``; each
registered once in a scratch catalog (not timed).

Rows (each a new process; imports of ``mixplane.client``/``mixplane.tokens`` done before the
clock starts, as in peers.py; the clock runs from opening the catalog to the first window):

text    mixplane        ``Client.local`` + ``submit`` (token shares) + ``WindowStream``
        mixplane-resume the same, the job's and stream's states (saved after ``--stop`` windows
                        by an untimed run) loaded first
        baseline        the bare tokenizer: ``Tokenizer.from_file`` + ``encode_batch`` of the
                        first documents of one file until 2,049 tokens (what a peer does first)
tokens  mixplane        as for text, over the Megatron files
        mixplane-resume as for text
        baseline        ``np.memmap`` of one ``.bin`` and a copy of its first 2,049 ids

Each row runs ``--repeat`` times, alternating; medians are printed with the ratio to the
baseline of the same data. ``--before DIR``: the mixplane rows also run with ``DIR`` first on
``PYTHONPATH`` (e.g. an earlier commit: ``git archive REV mixplane | tar -x -C DIR``), alternating
with this checkout's, so both columns come from the same minutes of a noisy machine.

Usage (from the repository root)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/first_window.py [--size tiny] [--repeat 3]
        [--before DIR] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402  (the peers benchmark's corpus and settings)

ROWS = [
    ("text", "baseline"),
    ("text", "mixplane"),
    ("text", "mixplane-resume"),
    ("tokens", "baseline"),
    ("tokens", "mixplane"),
    ("tokens", "mixplane-resume"),
]


def _job(client: Any) -> Any:
    return client.submit(
        "first",
        mixture={f"domain={d}": w for d, (w, _, _, _) in peers.DOMAINS.items()},
        unit="tokens",
        seed=peers.SEED,
        tokenizer="deepseek",
    )


def child(data: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One row; returns seconds to the first window (and its digest)."""
    import numpy as np

    if kind == "baseline":
        began = time.perf_counter()
        if data == "text":
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(peers.tokenizer_json())
            ids: list[int] = []
            docs = peers.text_docs(spec["text_files"][0])
            while len(ids) < peers.SEQ + 1:
                batch = [next(docs)["text"] for _ in range(8)]
                for e in tok.encode_batch(batch, add_special_tokens=False):
                    ids += [*e.ids, peers.EOS]
            window = np.asarray(ids[: peers.SEQ + 1], dtype=np.int32)
        else:
            bin_path = spec["prefixes"]["web"] + ".bin"
            window = np.array(np.memmap(bin_path, dtype=np.int32, mode="r")[: peers.SEQ + 1])
        return {"first_s": time.perf_counter() - began, "digest": peers.digest(window)}
    from mixplane.client import Client
    from mixplane.client.windows import WindowStream
    from mixplane.tokens import load_tokenizer

    home = spec[f"home_{data}"]
    state_file = Path(spec["work"]) / f"state-{data}-{spec.get('state_tag', 'now')}.json"
    began = time.perf_counter()
    with Client.local(home, read_only=True) as client:
        job = _job(client)
        stream = WindowStream(
            job, getattr(job, "tokenizer", None) or load_tokenizer("deepseek"), peers.SEQ
        )
        if kind == "mixplane-resume":
            state = json.loads(state_file.read_text())
            job.load_state_dict(state["job"])
            stream.load_state_dict(state["stream"])
        it = iter(stream)
        window = next(it).input_ids
        first = time.perf_counter() - began
        if kind == "save":  # untimed: the state after --stop windows, and the next window
            for _ in range(spec["stop"] - 1):
                next(it)
            state = {"job": job.state_dict(), "stream": stream.state_dict()}
            state_file.write_text(json.dumps(state, default=peers._jsonable))
            window = next(it).input_ids
        return {"first_s": first, "digest": peers.digest(window)}


def run_child(data: str, kind: str, spec_path: Path, code: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if code is not None:  # another mixplane first on the path
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, __file__, "--child", data, kind, str(spec_path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    msg = f"{data} {kind} failed:\n{out.stderr[-3000:]}"
    raise RuntimeError(msg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(peers.SIZES), default="tiny")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stop", type=int, default=100, help="windows before the saved state")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse a corpus made here")
    parser.add_argument("--before", default=None, help="another mixplane to compare (see above)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        data, kind, path = args.child
        import importlib

        for name in ("mixplane.client", "mixplane.client.windows", "mixplane.tokens", "numpy"):
            importlib.import_module(name)
        result = child(data, kind, json.loads(Path(path).read_text()))
        print("RESULT " + json.dumps(result))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mixplane-first-"))
    spec_path = work / "spec.json"
    if not spec_path.exists():
        setup(work, args)
    spec = json.loads(spec_path.read_text())
    spec["stop"] = args.stop
    spec_path.write_text(json.dumps(spec))
    print(f"first window, size {args.size}, load {peers.load()}, work {work}")
    codes: list[str | None] = [None] if args.before is None else [args.before, None]
    times: dict[tuple[str, str, str | None], list[float]] = {}
    for code in codes:  # each version saves its own state (the format may differ)
        spec["state_tag"] = "before" if code else "now"
        spec_path.write_text(json.dumps(spec))
        for data in ("text", "tokens"):
            saved = run_child(data, "save", spec_path, code)
            if spec.get(f"next_{data}", saved["digest"]) != saved["digest"]:
                msg = f"{data}: the two versions stream different windows"
                raise RuntimeError(msg)
            spec[f"next_{data}"] = saved["digest"]
    for _ in range(args.repeat):
        for data, kind in ROWS:
            for code in codes if kind != "baseline" else [None]:
                spec["state_tag"] = "before" if code else "now"
                spec_path.write_text(json.dumps(spec))
                result = run_child(data, kind, spec_path, code)
                if kind == "mixplane-resume" and result["digest"] != spec[f"next_{data}"]:
                    msg = f"{data}: the window after a resume differs from the uninterrupted run's"
                    raise RuntimeError(msg)
                times.setdefault((data, kind, code), []).append(result["first_s"])
    head = "| data | row | first window s, median (runs) | x baseline |"
    if args.before:
        head += " before: s, median (runs) | before x baseline | before / now |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for data, kind in ROWS:
        base = statistics.median(times[(data, "baseline", None)])
        cells = []
        for code in [None] if kind == "baseline" else codes[::-1]:
            runs = times[(data, kind, code)]
            median = statistics.median(runs)
            shown = " ".join(f"{t:.2f}" for t in runs)
            cells.append((median, f"{median:.3f} ({shown}) | {median / base:.1f}"))
        line = f"| {data} | {kind} | " + " | ".join(c for _, c in cells)
        if args.before and len(cells) == 2:
            line += f" | {cells[1][0] / cells[0][0]:.1f}"
        elif args.before:
            line += " | - | - | -"
        print(line + " |")
    print(f"load at the end {peers.load()}; resumed windows equal the uninterrupted run's")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def setup(work: Path, args: argparse.Namespace) -> None:
    from mixplane.client import Client

    work.mkdir(parents=True, exist_ok=True)
    files = peers.generate(work / "text", peers.SIZES[args.size])
    prefixes, _ = peers.pretokenize(files, work / "megatron")
    spec = {
        "work": str(work),
        "text_files": [p for g in files.values() for p in g],
        "prefixes": prefixes,
        "home_text": str(work / "home-text"),
        "home_tokens": str(work / "home-tokens"),
    }
    with Client.local(spec["home_text"]) as client:
        client.catalog.register(
            "corpus", spec["text_files"], properties={"domain": "domain"}, progress=False
        )
    with Client.local(spec["home_tokens"]) as client:
        client.catalog.register(
            "corpus",
            work / "megatron",
            tokenizer="deepseek",
            path_pattern=r"/(?P<domain>[a-z]+)\.bin$",
            progress=False,
        )
    (work / "spec.json").write_text(json.dumps(spec))


if __name__ == "__main__":
    main()
