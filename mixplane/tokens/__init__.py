"""Tokenizers behind one small protocol."""

from mixplane.tokens.packing import Packer, PackerState, PackingError, Window
from mixplane.tokens.tokenizer import (
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe,
)

__all__ = [
    "HFTokenizer",
    "Packer",
    "PackerState",
    "PackingError",
    "TiktokenTokenizer",
    "Tokenizer",
    "Window",
    "load_tokenizer",
    "train_bpe",
]
