"""Tokenizers: one small protocol, Hugging Face ``tokenizer.json`` files behind it.

``load_tokenizer(path)`` loads any HF ``tokenizer.json`` (no network). A tokenizer's
*fingerprint* is the BLAKE2b digest of its serialized form, recorded with token counts in the
catalog and in job state, so counts made with another tokenizer are never mixed in.
``train_bpe(texts)`` trains a small byte-level BPE in seconds, for tests and demos.
Batch encoding runs in the Rust library with the GIL released.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from mixplane.errors import MixplaneError


class TokenizerError(MixplaneError, ValueError):
    """A tokenizer that cannot be loaded or used."""


class Tokenizer(Protocol):
    @property
    def fingerprint(self) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def count_batch(self, texts: Sequence[str]) -> np.ndarray: ...


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer``."""

    def __init__(self, inner: object, source: str) -> None:
        from tokenizers import Tokenizer as _Inner

        assert isinstance(inner, _Inner)
        self._inner = inner
        self.source = source
        self._fingerprint = hashlib.blake2b(inner.to_str().encode(), digest_size=16).hexdigest()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._inner.encode_batch(list(texts), add_special_tokens=False)]

    def count_batch(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._inner.encode_batch(list(texts), add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))

    def save(self, path: str | Path) -> None:
        self._inner.save(str(path))


def load_tokenizer(path: str | Path) -> HFTokenizer:
    from tokenizers import Tokenizer as _Inner

    p = Path(path)
    if not p.is_file():
        msg = f"tokenizer file {p} does not exist; pass the path of a tokenizer.json"
        raise TokenizerError(msg)
    try:
        inner = _Inner.from_file(str(p))
    except Exception as exc:
        msg = f"cannot load tokenizer {p} ({exc}); is it a Hugging Face tokenizer.json?"
        raise TokenizerError(msg) from exc
    return HFTokenizer(inner, str(p))


def train_bpe(texts: Iterable[str], *, vocab_size: int = 2000) -> HFTokenizer:
    """A byte-level BPE trained on ``texts`` (seconds for a few MB); ``<eos>`` is id 0."""
    from tokenizers import Tokenizer as _Inner
    from tokenizers import decoders, models, pre_tokenizers, trainers

    inner = _Inner(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    inner.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(inner, "trained")
