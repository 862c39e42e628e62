"""Bytes-per-token ratios are measured when the plan first needs them, and a restore takes the
ones its state records instead of measuring them again (issue 16: time to the first window
after a resume). The windows are the ones the job planned before, measured or restored."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.errors import MixtureError, StateError
from mixplane.job.components import RATIO_SAMPLES
from tests.conftest import corpus_tokenizer
from tests.resume import check_resume
from tests.test_replay import item

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 24
TOTAL = 120


class Counting:
    """The corpus tokenizer (a real BPE), counting the texts it sizes and those it encodes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.eos_id = inner.eos_id
        self.counted = 0  # texts of count_batch: the sizing sample
        self.encoded = 0  # texts of encode_batch: the stream's documents

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        self.encoded += len(texts)
        return self.inner.encode_batch(texts)  # type: ignore[no-any-return]

    def count_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.counted += len(texts)
        return self.inner.count_batch(texts)  # type: ignore[no-any-return]


@pytest.fixture
def tokenizer(client: Client) -> Counting:
    return Counting(corpus_tokenizer(client.catalog))


def submit(client: Client, tokenizer: Counting, **options: Any) -> Any:
    options = {"mixture": MIX, "unit": "tokens", "chunk_size": 3000, "seed": 5, **options}
    return client.submit("s", tokenizer=tokenizer, **options)  # type: ignore[arg-type]


def saved_after(client: Client, tokenizer: Counting, k: int) -> tuple[Any, Any]:
    job = submit(client, tokenizer)
    stream = WindowStream(job, tokenizer, SEQ, prefetch=0)
    list(itertools.islice(stream, k))
    return copy.deepcopy(job.state_dict()), copy.deepcopy(stream.state_dict())


def test_the_ratio_is_measured_when_the_plan_first_needs_it(
    client: Client, tokenizer: Counting
) -> None:
    job = submit(client, tokenizer)
    assert tokenizer.counted == 0  # submitted, nothing planned yet
    assert job.num_components == 3 and tokenizer.counted == 0
    first = job.chunk(0)
    assert tokenizer.counted == 3 * RATIO_SAMPLES  # once per component, then never again
    assert set(job.token_source.values()) == {"sampled"}
    eager = submit(client, tokenizer).prepare()  # measured at once: the same plan
    assert first is not None and first.to_bytes() == eager.chunk(0).to_bytes()
    assert [s.to_bytes() for s in job.plan(6)] == [s.to_bytes() for s in eager.plan(6)]
    assert tokenizer.counted == 6 * RATIO_SAMPLES


def test_a_resume_takes_the_saved_ratios_and_continues_exactly(
    client: Client, tokenizer: Counting
) -> None:
    full = [
        item(w)
        for w in itertools.islice(WindowStream(submit(client, tokenizer), tokenizer, SEQ), TOTAL)
    ]
    assert len(full) == TOTAL

    def restored_after(k: int) -> list[bytes]:
        job_state, state = saved_after(client, tokenizer, k)
        assert {s["source"] for s in job_state["sizing"].values()} == {"sampled"}
        tokenizer.counted = 0
        job = submit(client, tokenizer)
        stream = WindowStream(job, tokenizer, SEQ, prefetch=0)  # as the peers benchmark does
        job.load_state_dict(copy.deepcopy(job_state))
        stream.load_state_dict(copy.deepcopy(state))
        rest = [item(w) for w in itertools.islice(stream, TOTAL - k)]
        assert tokenizer.counted == 0  # no sizing sample encoded: the state's ratios
        assert job.sizing == job_state["sizing"]
        # the way it was before: measured when submitted, then the state loaded
        measured = submit(client, tokenizer).prepare()
        assert tokenizer.counted == 3 * RATIO_SAMPLES
        measured.load_state_dict(copy.deepcopy(job_state))
        again = WindowStream(measured, tokenizer, SEQ, prefetch=2)
        again.load_state_dict(copy.deepcopy(state))
        assert rest == [item(w) for w in itertools.islice(again, TOTAL - k)]
        assert job.state_dict() == measured.state_dict()
        return rest

    check_resume(full, restored_after, [1, 9, 40, 77, 119])


def test_a_refused_state_leaves_the_job_to_size_as_submitted(
    client: Client, tokenizer: Counting
) -> None:
    job_state, _ = saved_after(client, tokenizer, 30)
    fresh = [s.to_bytes() for s in submit(client, tokenizer).plan(6)]
    window = item(next(iter(WindowStream(submit(client, tokenizer), tokenizer, SEQ))))
    bad_ratio = copy.deepcopy(job_state)
    key = next(iter(bad_ratio["sizing"]))
    bad_ratio["sizing"][key]["bytes_per_token"] = -1.0
    other_query = copy.deepcopy(job_state)
    other_query["query"] = "0" * 32
    not_a_sizing = copy.deepcopy(job_state)
    not_a_sizing["sizing"] = {key: "sampled"}
    for bad in (bad_ratio, other_query, not_a_sizing):
        job = submit(client, tokenizer)
        stream = WindowStream(job, tokenizer, SEQ, prefetch=0)
        with pytest.raises(StateError):
            job.load_state_dict(bad)
        tokenizer.counted = 0
        assert [s.to_bytes() for s in job.plan(6)] == fresh  # as if never restored
        assert tokenizer.counted == 3 * RATIO_SAMPLES  # its own ratios, measured
        assert item(next(iter(stream))) == window
    other_seed, _ = saved_after(client, tokenizer, 3)
    job = submit(client, tokenizer, seed=6)  # another job: its state is refused, not taken
    with pytest.raises(StateError):
        job.load_state_dict(other_seed)
    assert [s.to_bytes() for s in job.plan(2)] != fresh[:2]


def test_a_job_that_waits_to_measure_still_checks_its_mixture_when_submitted(
    client: Client, tokenizer: Counting
) -> None:
    with pytest.raises(MixtureError, match="language=xx"):
        submit(client, tokenizer, mixture={"language=en": 0.5, "language=xx": 0.5})
    assert tokenizer.counted == 0


def test_a_refused_sizing_leaves_a_planned_job_as_it_was(
    client: Client, tokenizer: Counting
) -> None:
    """A job planned already that refuses a state whose sizing cannot be built keeps its own
    sizing (found by tests/fuzz/test_states.py, seed 13: the refused sizing stayed the one to
    size with when next needed, so putting the job back raised again)."""
    job_state, state = saved_after(client, tokenizer, 30)
    clean = submit(client, tokenizer)
    stream = WindowStream(clean, tokenizer, SEQ, prefetch=0)
    clean.load_state_dict(copy.deepcopy(job_state))
    stream.load_state_dict(copy.deepcopy(state))
    expected = [item(w) for w in itertools.islice(stream, 5)]
    key = next(iter(job_state["sizing"]))
    for corrupt in ({"a": {"b": {}}}, {"source": "sampled", "bytes_per_token": -1.0}):
        bad = copy.deepcopy(job_state)
        bad["sizing"][key] = corrupt
        job = submit(client, tokenizer)
        stream = WindowStream(job, tokenizer, SEQ, prefetch=0)
        list(itertools.islice(stream, 3))  # planned, sized, consumed
        before = job.state_dict()
        with pytest.raises(StateError):
            job.load_state_dict(bad)
        assert job.state_dict() == before
        job.load_state_dict(copy.deepcopy(job_state))
        stream.load_state_dict(copy.deepcopy(state))
        assert [item(w) for w in itertools.islice(stream, 5)] == expected
