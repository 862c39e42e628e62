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
from tests.conftest import corpus_tokenizer
from tests.resume import check_resume

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32


@pytest.fixture
def tokenizer(client: Client):  # type: ignore[no-untyped-def]
    return corpus_tokenizer(client.catalog)


def submit(client: Client, **kw: Any):  # type: ignore[no-untyped-def]
    return client.submit(
        "w",
        mixture=MIX,
        chunk_size=23,
        seed=2,
        topology=Topology(workers=2),
        **{"unit": "samples", **kw},
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
    job = client.submit(
        "all", unit="samples", mixture=MIX, chunk_size=50, on_exhausted="redistribute", seed=1
    )
    windows = list(WindowStream(job, tokenizer, SEQ))
    reference = client.submit(
        "all", unit="samples", mixture=MIX, chunk_size=50, on_exhausted="redistribute", seed=1
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


# -- prefetch ------------------------------------------------------------------------------------
def _prefetch_threads() -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name == "mixplane-prefetch"]


def test_prefetch_changes_nothing_in_the_stream(client: Client, tokenizer: Any) -> None:
    runs = {
        depth: [
            item(w)
            for w in itertools.islice(
                WindowStream(submit(client), tokenizer, SEQ, prefetch=depth), 400
            )
        ]
        for depth in (0, 1, 4)
    }
    assert len(runs[0]) == 400
    assert runs[0] == runs[1] == runs[4]


def test_prefetch_runs_ahead_but_boundedly(client: Client, tokenizer: Any) -> None:
    import time

    depth = 3
    stream = WindowStream(submit(client, local=[(0, 0)]), tokenizer, SEQ, prefetch=depth)
    it = iter(stream)
    next(it)
    deadline = time.monotonic() + 30
    # one chunk consumed, `depth` queued, one more made and waiting to be queued
    while stream.stats.chunks_produced < 1 + depth + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert stream.stats.chunks_produced == 1 + depth + 1
    # the job sees the consumer's position, not the producer's
    state = stream.job.state_dict()
    consumer = state["consumers"]["0"]
    assert {"j": consumer["j"], "offset": consumer["offset"]} == stream.state_dict()["stream"]
    assert consumer["window"]["taken"] == stream.state_dict()["taken"]  # one window: the first
    it.close()  # type: ignore[attr-defined]
    assert not _prefetch_threads()


def test_a_producer_failure_reaches_the_consumer(client: Client, tokenizer: Any) -> None:
    class Failing:
        """A user tokenizer that fails on its third batch."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.calls = inner, 0
            self.fingerprint, self.eos_id = inner.fingerprint, inner.eos_id

        def encode_batch(self, texts: Any) -> Any:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("tokenizer broke")
            return self.inner.encode_batch(texts)

    stream = WindowStream(submit(client), Failing(tokenizer), SEQ, prefetch=2)
    with pytest.raises(RuntimeError, match="tokenizer broke"):
        list(stream)
    assert not _prefetch_threads()
