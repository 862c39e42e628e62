"""How far a sampled bytes-per-token ratio is from the true one, by the number of samples.

A token job over text that was not counted sizes each component by a bytes-per-token ratio
measured on ``RATIO_SAMPLES`` (64) seeded samples of it (``mixplane/job/components.py``); a
ratio off by x% moves that component's realized token share by about x% of its share. This
script generates the peers benchmark's corpus (``benchmarks/peers.py``, the same seed), tokenizes
every document with ``deepseek`` once (the true ratio: all bytes over all tokens, per domain),
then draws ``--draws`` random samples of 64, 256 and 1,024 documents and prints the relative
standard deviation of their ratio, and the tokens one such sample costs to tokenize.

    .venv/bin/python benchmarks/ratio_samples.py --size full
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers

from mixplane.tokens import load_tokenizer

COUNTS = (64, 256, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(peers.SIZES), default="small")
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    tok = load_tokenizer("deepseek")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="mixplane-ratio-") as work:
        files = peers.generate(Path(work), peers.SIZES[args.size])
        print(
            "| domain | documents | true bytes/token | "
            + " | ".join(f"rel. std %, {n} samples (tokens a sample)" for n in COUNTS)
            + " |"
        )
        print("|---|---|---|" + "---|" * len(COUNTS))
        for domain, paths in files.items():
            texts = [
                json.loads(line)["text"]
                for p in paths
                for line in Path(p).read_text(encoding="utf-8").splitlines()
            ]
            nbytes = np.array([len(t.encode()) for t in texts], dtype=float)
            ntokens = np.asarray(tok.count_batch(texts), dtype=float)
            true = nbytes.sum() / ntokens.sum()
            cells = []
            for n in COUNTS:
                size = min(n, len(texts))
                errors = []
                for _ in range(args.draws):
                    pick = rng.choice(len(texts), size=size, replace=False)
                    errors.append(nbytes[pick].sum() / ntokens[pick].sum() / true - 1)
                cost = ntokens.mean() * size
                cells.append(f"{np.std(errors) * 100:.2f} ({cost:,.0f})")
            print(f"| {domain} | {len(texts):,} | {true:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
