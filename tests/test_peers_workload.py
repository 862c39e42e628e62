"""``benchmarks/peers.py``'s generated workload: each domain's bytes follow its target token share,
the domains' documents differ in length (so sample and token shares differ), and the packer
every text peer shares keeps the EOS between documents and counts each window's tokens by domain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import peers


def test_domain_bytes_follow_the_token_shares(tmp_path: Path) -> None:
    files = peers.generate(tmp_path, 2e6)
    sizes = {d: sum(Path(p).stat().st_size for p in paths) for d, paths in files.items()}
    total = sum(sizes.values())
    for domain, (share, *_rest) in peers.DOMAINS.items():
        assert abs(sizes[domain] / total - share) < 0.01, (domain, sizes[domain] / total)
    lengths = {
        d: np.mean(
            [
                len(json.loads(line)["text"])
                for p in paths
                for line in Path(p).read_text().splitlines()
            ]
        )
        for d, paths in files.items()
    }
    assert lengths["forum"] < lengths["web"] < lengths["code"] < lengths["books"]


def test_packer_windows_overlap_by_one_and_count_domains() -> None:
    packer = peers.Packer()
    docs = [([5] * 1500, 0), ([7] * 1500, 2), ([9] * 3000, 1)]
    windows = list(packer.add(docs))
    stream = np.concatenate([np.r_[np.asarray(ids), peers.EOS] for ids, _ in docs])
    assert len(windows) == (len(stream) - 1) // peers.SEQ
    for i, (ids, counts) in enumerate(windows):
        assert np.array_equal(ids, stream[i * peers.SEQ : (i + 1) * peers.SEQ + 1])
        assert counts.sum() == peers.SEQ
    assert windows[0][1].tolist() == [1501, 0, 547, 0]
    assert len(packer.ids) == len(stream) - len(windows) * peers.SEQ

    # a caller that stops after one window resumes with the rest of them (the state holds them)
    stopped = peers.Packer()
    first = next(iter(stopped.add(docs)))
    resumed = peers.Packer(stopped.state())
    rest = list(resumed.add([]))
    assert [w[0].tolist() for w in [first, *rest]] == [w[0].tolist() for w in windows]
