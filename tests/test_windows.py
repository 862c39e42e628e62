"""Token windows of a consumer: chunks tokenized and packed per component, resumable."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.errors import StateError
from mixplane.tokens import train_bpe
from tests.resume import check_resume

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32


@pytest.fixture
def tokenizer(client: Client):  # type: ignore[no-untyped-def]
    texts = client.catalog.sample_texts(client.catalog.components().runs, np.arange(200))
    return train_bpe(texts, vocab_size=300)


def submit(client: Client, **kw: Any):  # type: ignore[no-untyped-def]
    return client.submit(
        "w", mixture=MIX, chunk_size=23, seed=2, topology=Topology(workers=2), **kw
    )


def item(window: Any) -> bytes:
    return window.input_ids.tobytes() + window.labels.tobytes() + bytes([window.component])


def test_windows_resume_exactly(client: Client, tokenizer: Any) -> None:
    full = [
        item(w)
        for w in itertools.islice(WindowStream(submit(client), tokenizer, SEQ, worker=1), 120)
    ]
    assert len(full) == 120

    def restored_after(k: int) -> list[bytes]:
        job = submit(client)
        first = WindowStream(job, tokenizer, SEQ, worker=1)
        list(itertools.islice(first, k))
        job_state, window_state = job.state_dict(), first.state_dict()
        again = submit(client)
        again.load_state_dict(job_state)
        second = WindowStream(again, tokenizer, SEQ, worker=1)
        second.load_state_dict(window_state)
        return [item(w) for w in itertools.islice(second, 120 - k)]

    check_resume(full, restored_after, [0, 1, 5, 17, 60, 119])


def test_windows_hold_every_token_once(client: Client, tokenizer: Any) -> None:
    job = client.submit("all", mixture=MIX, chunk_size=50, on_exhausted="redistribute", seed=1)
    windows = list(WindowStream(job, tokenizer, SEQ))
    reference = client.submit(
        "all", mixture=MIX, chunk_size=50, on_exhausted="redistribute", seed=1
    )
    streams: dict[int, list[int]] = {}
    for sample in reference.stream():
        ids = tokenizer.encode_batch([sample.text])[0]
        streams.setdefault(sample.component, []).extend([*ids, tokenizer.eos_id])
    for comp, tokens in streams.items():
        labels = np.concatenate([w.labels for w in windows if w.component == comp] or [np.zeros(0)])
        inputs = [w.input_ids for w in windows if w.component == comp]
        assert labels.tolist() == tokens[1 : 1 + len(labels)]  # every target once, in order
        assert len(tokens) - 1 - len(labels) < SEQ  # only the last partial window is pending
        assert inputs[0][0] == tokens[0]
    assert all((w.domain_ids == w.component).all() for w in windows)


def test_state_from_another_tokenizer_is_refused(client: Client, tokenizer: Any) -> None:
    stream = WindowStream(submit(client), tokenizer, SEQ)
    list(itertools.islice(stream, 3))
    state = stream.state_dict()
    texts = client.catalog.sample_texts(client.catalog.components().runs, np.arange(50))
    other = WindowStream(submit(client), train_bpe(texts, vocab_size=280), SEQ)
    with pytest.raises(StateError, match="another tokenizer"):
        other.load_state_dict(state)
