"""The Hugging Face datasets adapter yields the PyTorch dataset's windows and resumes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

pytest.importorskip("datasets")
pytest.importorskip("torch")

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.integrations.hf import hf_dataset
from mixplane.integrations.pytorch import TokenWindowDataset
from mixplane.job import Job
from tests.conftest import corpus_tokenizer

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32


@pytest.fixture
def tokenizer(client: Client) -> Any:
    return corpus_tokenizer(client.catalog)


def submit(client: Client) -> Job:
    return client.submit(
        "h", unit="samples", mixture=MIX, chunk_size=19, seed=5, topology=Topology(workers=2)
    )


def test_same_windows_as_the_torch_dataset(client: Client, tokenizer: Any) -> None:
    torch_windows = [
        (w["input_ids"].tolist(), w["cu_seqlens"].tolist(), int(w["component"]))
        for w in itertools.islice(TokenWindowDataset(submit(client), tokenizer, SEQ), 40)
    ]
    hf_windows = [
        (list(e["input_ids"]), list(e["cu_seqlens"]), e["component"])
        for e in itertools.islice(hf_dataset(submit(client), tokenizer, SEQ), 40)
    ]
    assert len(hf_windows) == 40
    assert hf_windows == torch_windows
    example = next(iter(hf_dataset(submit(client), tokenizer, SEQ).with_format("torch")))
    assert example["input_ids"].shape == (SEQ,)


def test_hf_state_dict_resumes(client: Client, tokenizer: Any) -> None:
    full = [
        list(e["input_ids"])
        for e in itertools.islice(hf_dataset(submit(client), tokenizer, SEQ), 30)
    ]
    first = hf_dataset(submit(client), tokenizer, SEQ)
    it = iter(first)
    for _ in range(11):
        next(it)
    state = first.state_dict()
    second = hf_dataset(submit(client), tokenizer, SEQ)
    second.load_state_dict(state)
    assert [list(e["input_ids"]) for e in itertools.islice(second, 19)] == full[11:]


def test_iterating_again_starts_again(client: Client, tokenizer: Any) -> None:
    dataset = hf_dataset(submit(client), tokenizer, SEQ)
    first = [list(e["input_ids"]) for e in itertools.islice(dataset, 12)]
    assert [list(e["input_ids"]) for e in itertools.islice(dataset, 12)] == first
