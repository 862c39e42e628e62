"""Resume inside a chunk of text from the per-component replay state (issue 16): the same
windows as the whole-chunk path, and only the documents the next window needs tokenized."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.errors import StateError
from tests.conftest import corpus_tokenizer
from tests.resume import check_resume

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 24
TOTAL = 150


class Counting:
    """The corpus tokenizer, counting the texts it encodes (the real one does the work)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.eos_id = inner.eos_id
        self.texts = 0

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        self.texts += len(texts)
        return self.inner.encode_batch(texts)  # type: ignore[no-any-return]

    def count_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.count_batch(texts)  # type: ignore[no-any-return]


@pytest.fixture
def tokenizer(client: Client) -> Counting:
    return Counting(corpus_tokenizer(client.catalog))


def submit(client: Client) -> Any:
    return client.submit("r", unit="samples", mixture=MIX, chunk_size=60, seed=4)


def item(window: Any) -> bytes:
    return (
        window.input_ids.tobytes()
        + window.labels.tobytes()
        + window.position_ids.tobytes()
        + window.cu_seqlens.tobytes()
        + bytes([window.component])
    )


def saved_after(client: Client, tokenizer: Counting, k: int) -> tuple[Any, Any]:
    job = submit(client)
    stream = WindowStream(job, tokenizer, SEQ, prefetch=0)
    list(itertools.islice(stream, k))
    return job.state_dict(), stream.state_dict()


def resumed(
    client: Client, tokenizer: Counting, job_state: Any, state: Any, prefetch: int = 0
) -> WindowStream:
    job = submit(client)
    job.load_state_dict(job_state)
    stream = WindowStream(job, tokenizer, SEQ, prefetch=prefetch)
    stream.load_state_dict(copy.deepcopy(state))
    return stream


@pytest.mark.filterwarnings("ignore:job .r. is budgeted in samples")
def test_replay_resume_is_exact_and_tokenizes_less(client: Client, tokenizer: Counting) -> None:
    full = [item(w) for w in itertools.islice(WindowStream(submit(client), tokenizer, SEQ), TOTAL)]
    assert len(full) == TOTAL
    lazier = 0

    def restored_after(k: int) -> list[bytes]:
        nonlocal lazier
        job_state, state = saved_after(client, tokenizer, k)
        assert "replay" in state  # a chunk of text
        old = {key: v for key, v in state.items() if key != "replay"}  # as saved before
        tokenizer.texts = 0
        legacy = resumed(client, tokenizer, job_state, old)
        next(iter(legacy))
        whole_chunk = tokenizer.texts
        tokenizer.texts = 0
        stream = resumed(client, tokenizer, job_state, state)
        windows = iter(stream)
        first = item(next(windows))
        lazier += tokenizer.texts < whole_chunk  # the first window needed a slice only
        rest = [first, *(item(w) for w in itertools.islice(windows, TOTAL - k - 1))]
        again = resumed(client, tokenizer, job_state, old, prefetch=2)
        assert rest == [item(w) for w in itertools.islice(again, TOTAL - k)]  # old states too
        return rest

    ks = [1, 2, 7, 19, 40, 77, 120, 149]
    check_resume(full, restored_after, ks)
    assert lazier >= len(ks) // 2


@pytest.mark.filterwarnings("ignore:job .r. is budgeted in samples")
def test_state_saved_inside_a_resumed_chunk_resumes_exactly(
    client: Client, tokenizer: Counting
) -> None:
    full = [item(w) for w in itertools.islice(WindowStream(submit(client), tokenizer, SEQ), TOTAL)]
    for first, then in [(5, 1), (5, 3), (11, 0), (30, 9), (64, 20)]:
        job_state, state = saved_after(client, tokenizer, first)
        job = submit(client)
        job.load_state_dict(job_state)
        stream = WindowStream(job, tokenizer, SEQ, prefetch=2)  # the chunks after it prefetched
        stream.load_state_dict(state)
        got = [item(w) for w in itertools.islice(stream, then)]
        assert got == full[first : first + then]
        inner_job, inner = job.state_dict(), stream.state_dict()
        restored = resumed(client, tokenizer, inner_job, inner)
        k = first + then
        assert [item(w) for w in itertools.islice(restored, TOTAL - k)] == full[k:]
        more = [item(w) for w in itertools.islice(stream, 4)]  # the first stream continues too
        assert more == full[k : k + 4]


@pytest.mark.filterwarnings("ignore:job .r. is budgeted in samples")
def test_corrupt_replay_is_refused_and_changes_nothing(client: Client, tokenizer: Counting) -> None:
    job_state, state = saved_after(client, tokenizer, 9)
    replay = state["replay"]
    n = len(replay["counts"])
    broken = [
        {**replay, "counts": replay["counts"][:-1]},
        {**replay, "docs": [-1] * n},
        {**replay, "skips": ["0"] * n},
        {**replay, "counts": [0] * n},  # fewer windows than already yielded
        {**replay, "packer": {**replay["packer"], "tokens": [[1] * (SEQ + 1)] * n}},
        [],
    ]
    for bad in broken:
        job = submit(client)
        job.load_state_dict(job_state)
        stream = WindowStream(job, tokenizer, SEQ, prefetch=0)
        before = stream.state_dict()
        with pytest.raises(StateError):
            stream.load_state_dict({**state, "replay": bad})
        assert stream.state_dict() == before
    # a replay place that does not fit the data is found while resuming
    job = submit(client)
    job.load_state_dict(job_state)
    stream = WindowStream(job, tokenizer, SEQ, prefetch=0)
    stream.load_state_dict({**state, "replay": {**replay, "skips": [10**6] * n}})
    with pytest.raises(StateError, match="does not fit"):
        list(itertools.islice(stream, 50))
