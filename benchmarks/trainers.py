"""Does a trainer wait for mixplane's data? HF Trainer and Lightning, 2 CPU processes each.

Runs each example's uninterrupted training (``examples/hf_trainer.py``,
``examples/lightning_trainer.py``: a tiny model, an ADO job on a local mixplane server, batches
of 4 x 32 tokens per rank, per-step feedback) for ``--steps`` steps, with the dataset's default
prefetch and with ``prefetch=0`` (the named baseline: reading and tokenizing in the training
thread), and prints the share of the training loop spent in the loader's ``next()`` per rank:
overall, and after the first batch (the stream's start: the job's first chunks).

Run: ``.venv/bin/python benchmarks/trainers.py [--steps 60]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from trainer_harness import measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    steps = parser.parse_args().steps
    print(f"{steps} steps, 2 processes (gloo), batches of 4 x 32 tokens per rank")
    print("| trainer | prefetch | rank | loop (s) | waiting | waiting after the first batch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("hf_trainer", "lightning_trainer"):
        with tempfile.TemporaryDirectory(prefix="mixplane-bench-trainers-") as tmp:
            runs = measure(EXAMPLES / f"{name}.py", Path(tmp), steps, [-1, 0])
        for depth, waits in zip(("default (2)", "0 (baseline)"), runs, strict=True):
            for rank, w in enumerate(waits):
                print(
                    f"| {name} | {depth} | {rank} | {w['total_s']:.2f} | "
                    f"{100 * w['fraction']:.1f}% | {100 * w['after_first']:.1f}% |"
                )


if __name__ == "__main__":
    main()
