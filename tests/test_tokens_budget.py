"""Token budgets: exact counts (count-tokens), sampled ratio, and plain byte estimate."""

from __future__ import annotations

import numpy as np
import pytest

from mixplane.client import Client
from mixplane.query.result import expand_runs
from mixplane.tokens import load_tokenizer, train_bpe

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}


@pytest.fixture
def tokenizer(client: Client, tmp_path):  # type: ignore[no-untyped-def]
    texts = client.catalog.sample_texts(client.catalog.components().runs, np.arange(300))
    tok = train_bpe(texts, vocab_size=400)
    tok.save(tmp_path / "tokenizer.json")
    return load_tokenizer(tmp_path / "tokenizer.json")


def realized(job, chunks: int, true_sizes) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Realized token shares measured with the true per-sample token counts."""
    index = {(c.selector, i): i for i, c in enumerate(job.result.components)}
    del index
    totals = np.zeros(len(job.result.components))
    for spec in job.plan(chunks):
        for comp, f, s, n in zip(
            spec.components, spec.files, spec.starts, spec.lengths, strict=True
        ):
            totals[comp] += sum(true_sizes[(f, o)] for o in range(s, s + n))
    return totals / totals.sum()


def test_count_tokens_is_cached_and_exact(client: Client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert client.catalog.count_tokens(tokenizer, progress=False).counted == 1200
    again = client.catalog.count_tokens(tokenizer, progress=False)  # cached by fingerprint
    assert (again.counted, again.cached) == (0, 1200)
    runs = client.catalog.components().runs
    exact = client.catalog.sample_tokens(runs, tokenizer.fingerprint)
    assert exact is not None and len(exact) == 1200
    texts = client.catalog.sample_texts(runs, np.arange(50))
    assert exact[:50].tolist() == tokenizer.count_batch(texts).tolist()
    assert client.catalog.sample_tokens(runs, "other-fingerprint") is None


def test_token_modes_accuracy(client: Client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    client.catalog.count_tokens(tokenizer, progress=False)
    runs = client.catalog.components().runs
    counts = client.catalog.sample_tokens(runs, tokenizer.fingerprint)
    assert counts is not None
    files, ordinals = expand_runs(
        runs.column("file_id").to_numpy(),
        runs.column("start").to_numpy(),
        runs.column("count").to_numpy(),
    )
    true = dict(
        zip(zip(files.tolist(), ordinals.tolist(), strict=True), counts.tolist(), strict=True)
    )
    errors = {}
    for mode, kwargs in {
        "exact": {"tokenizer": tokenizer},
        "bytes": {"bytes_per_token": 4.0},
    }.items():
        job = client.submit(mode, mixture=MIX, unit="tokens", chunk_size=2000, seed=1, **kwargs)
        assert set(job.token_source.values()) == {mode}
        shares = realized(job, 150, true)
        order = [c.selector for c in job.result.components]
        errors[mode] = max(abs(shares[order.index(s)] - w) for s, w in MIX.items())
    assert errors["exact"] < 0.005  # within 0.5 percentage points
    assert errors["exact"] <= errors["bytes"] + 1e-9


def test_sampled_ratio_when_not_counted(client: Client, tokenizer) -> None:  # type: ignore[no-untyped-def]
    job = client.submit("s", mixture=MIX, unit="tokens", chunk_size=2000, tokenizer=tokenizer)
    assert set(job.token_source.values()) == {"sampled"}
    again = client.submit("s", mixture=MIX, unit="tokens", chunk_size=2000, tokenizer=tokenizer)
    assert [s.to_bytes() for s in job.plan(5)] == [s.to_bytes() for s in again.plan(5)]
