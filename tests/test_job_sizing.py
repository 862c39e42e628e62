"""Issue 13 in one process: recommended defaults, one sizing rule carried by the job, the stream's
tokenizer sizing a job made without one, one rule for selector weights, read_ahead in the
definition, and adaptive changes that land by what was consumed, whatever prefetch does."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.errors import SizingWarning
from mixplane.job import (
    DEFAULT_ADAPTIVE_TOKEN_CHUNK,
    DEFAULT_SAMPLE_CHUNK,
    DEFAULT_TOKEN_CHUNK,
    JobSpec,
    Phase,
    make_spec,
)
from mixplane.mixture import Mixture
from tests.conftest import corpus_tokenizer
from tests.integrations.closed_loop import Trainer, train

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32


def hashes(job: Any, tokenizer: Any, n: int, **kw: Any) -> list[bytes]:
    stream = WindowStream(job, tokenizer, SEQ, **kw)
    return [w.input_ids.tobytes() + bytes([w.component]) for w in itertools.islice(stream, n)]


def test_defaults_are_the_recommended_settings() -> None:
    plain = make_spec("a", mixture=MIX)
    assert plain.unit == "tokens" and plain.chunk_size == DEFAULT_TOKEN_CHUNK == 500_000
    assert plain.read_ahead == 1
    adaptive = make_spec("b", mixture=MIX, algorithm="ado")
    assert adaptive.chunk_size == DEFAULT_ADAPTIVE_TOKEN_CHUNK and adaptive.read_ahead == 1
    samples = make_spec("c", mixture=MIX, unit="samples")
    assert samples.chunk_size == DEFAULT_SAMPLE_CHUNK and samples.read_ahead == 1
    assert make_spec("d", mixture=MIX, unit="samples", chunk_size=100).read_ahead == 10  # legacy
    assert (
        make_spec("e", mixture=MIX, unit="samples", chunk_size=100, algorithm="ado").read_ahead == 1
    )
    # the spec's JSON form (a server body, a state file) fills in the same defaults
    assert (
        JobSpec.from_json({"job_id": "a", "where": None, "mixture": MIX, "chunk_size": None})
        == plain
    )


def test_fingerprints_of_jobs_made_before_read_ahead_are_unchanged() -> None:
    """Saved states name their job's fingerprint: these are the values before the option."""
    mix = {"language=en": 0.7, "language=de": 0.3}
    assert (
        make_spec("a", mixture=mix, unit="samples", chunk_size=100, seed=3).fingerprint()
        == "83e3de07b661bd4af8934db66ee86d5d"
    )
    assert (
        make_spec("b", mixture={"language=en": 1.0}, chunk_size=5000, algorithm="ado").fingerprint()
        == "3a588260851e01611db0a7028e142640"
    )
    spec = make_spec("c", mixture={"language=en": 1.0}, unit="samples", chunk_size=1000)
    assert spec.fingerprint() == "ff5d6c316dcc47400a950985649cbd80"
    assert make_spec("c", mixture={"language=en": 1.0}, read_ahead=2).fingerprint() != (
        make_spec("c", mixture={"language=en": 1.0}).fingerprint()
    )


def test_a_fixed_ratio_job_says_so_once_when_it_plans(client: Client) -> None:
    job = client.submit("fixed", mixture=MIX, chunk_size=2000)
    assert set(job.token_source.values()) == {"bytes"}
    with pytest.warns(SizingWarning, match="fixed 4.0 bytes per token"):
        job.chunk(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        job.chunk(3)  # once
    report = job.explain()
    assert {r["sizing"] for r in report["components"]} == {"bytes"}
    assert "count-tokens" in report["note"]


def test_the_stream_tokenizer_sizes_a_job_made_without_one(client: Client) -> None:
    tokenizer = corpus_tokenizer(client.catalog)
    sized = client.submit("sized", mixture=MIX, chunk_size=900, tokenizer=tokenizer)
    late = client.submit("late", mixture=MIX, chunk_size=900)
    assert set(sized.token_source.values()) == {"sampled"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # adopting is silent
        windows = hashes(late, tokenizer, 80)
    assert late.spec.tokenizer == tokenizer.fingerprint
    assert late.sizing == sized.sizing
    assert windows == hashes(sized, tokenizer, 80)
    # too late once it has been planned: it says so, and keeps its sizing
    planned = client.submit("planned", mixture=MIX, chunk_size=900)
    with pytest.warns(SizingWarning):
        planned.chunk(0)
    with pytest.warns(SizingWarning, match="streamed with tokenizer"):
        WindowStream(planned, tokenizer, SEQ)
    assert planned.spec.tokenizer is None


def test_a_restore_sizes_as_the_saved_run_did(client: Client) -> None:
    """Counting tokens after a run started does not change its remaining stream."""
    tokenizer = corpus_tokenizer(client.catalog)
    job = client.submit("r", mixture=MIX, chunk_size=600, tokenizer=tokenizer)
    stream = WindowStream(job, tokenizer, SEQ, prefetch=0)
    it = iter(stream)
    list(itertools.islice(it, 30))
    job_state, stream_state = job.state_dict(), stream.state_dict()
    expected = [w.input_ids.tobytes() for w in itertools.islice(it, 50)]
    assert job_state["sizing"] and {s["source"] for s in job_state["sizing"].values()} == {
        "sampled"
    }
    client.catalog.count_tokens(tokenizer, progress=False)
    again = client.submit("r", mixture=MIX, chunk_size=600, tokenizer=tokenizer)
    assert set(again.token_source.values()) == {"exact"}  # a new run would be exact
    again.load_state_dict(job_state)
    assert again.sizing == job.sizing  # the restored one sizes as it was
    restored = WindowStream(again, tokenizer, SEQ, prefetch=0)
    restored.load_state_dict(stream_state)
    assert [w.input_ids.tobytes() for w in itertools.islice(iter(restored), 50)] == expected


def test_selector_weights_split_by_the_jobs_unit_in_phases_and_set_weights(
    client: Client,
) -> None:
    """A selector naming several components splits its weight by their size in the job's unit,
    whether it comes from a phase or from set_weights (set_weights split by samples)."""
    for unit in ("tokens", "samples"):
        job = client.submit(
            f"split-{unit}",
            mixture=Mixture.uniform(["language", "source"]),
            unit=unit,  # type: ignore[arg-type]
            chunk_size=500,
            schedule=[Phase(start=2, mixture=Mixture.static({"language=en": 1.0}))],
            bytes_per_token=3.0,
        )
        # group by source too: the selector language=en names several components
        assert len(job.selectors) > 3
        list(job.plan(3))
        phase = np.asarray(job.mixture_log[-1]["weights"])
        job.set_weights({"language=en": 1.0})
        np.testing.assert_allclose(job.weights, phase)


def test_read_ahead_is_part_of_the_definition(client: Client) -> None:
    job = client.submit("ra", mixture=MIX, chunk_size=300, read_ahead=3)
    assert job.read_group == 3 and job.spec.to_json()["read_ahead"] == 3
    other = client.submit("ra", mixture=MIX, chunk_size=300, read_ahead=2)
    with pytest.raises(Exception, match="different job definition"):
        other.load_state_dict(job.state_dict())


class SlowTokenizer:
    """A tokenizer that takes its time on some batches (a prefetch thread falls behind)."""

    def __init__(self, inner: Any, delays: Sequence[float]) -> None:
        self.inner, self.delays, self.calls = inner, delays, 0
        self.fingerprint, self.eos_id = inner.fingerprint, inner.eos_id

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        time.sleep(self.delays[self.calls % len(self.delays)])
        self.calls += 1
        return self.inner.encode_batch(texts)

    def count_batch(self, texts: Sequence[str]) -> Any:
        return self.inner.count_batch(texts)


@pytest.mark.parametrize("read_ahead", [1, 2])
def test_adaptive_changes_land_by_consumption_whatever_prefetch_does(
    client: Client, read_ahead: int
) -> None:
    """A closed loop of ADO feedback: with no prefetch, with prefetch ahead of a fast trainer,
    and with a prefetch thread that falls behind now and then, every step's batch and the
    mixture log are the same (where a change lands depends on what was consumed only)."""
    tokenizer = corpus_tokenizer(client.catalog)
    options = {"start_step": 6, "refit_interval": 6, "ignore_steps": 1, "subsample": 1}
    options |= {"savgol_window": 5, "seq_len": SEQ}
    runs = []
    for name, prefetch, delays in [
        ("inline", 0, [0.0]),
        ("ahead", 2, [0.0]),
        ("behind", 2, [0.0, 0.03, 0.0, 0.0, 0.05]),
    ]:
        job = client.submit(
            f"loop-{name}",
            mixture=MIX,
            chunk_size=300,
            seed=4,
            tokenizer=tokenizer,
            algorithm="ado",
            algorithm_options=options,
            read_ahead=read_ahead,
            topology=Topology(),
        )
        slow = SlowTokenizer(tokenizer, delays)
        trainer = train(job, slow, Trainer(), 30, prefetch=prefetch)
        runs.append((trainer.hashes, job.mixture_log))
    assert sum(e["cause"] == "adapt" for e in runs[0][1]) >= 10
    assert runs[1] == runs[0] and runs[2] == runs[0]
