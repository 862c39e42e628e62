"""Tokenizers behind one small protocol."""

from mixplane.tokens.packing import Packer, PackerState, PackingError, Window
from mixplane.tokens.tokenizer import HFTokenizer, Tokenizer, load_tokenizer, train_bpe

__all__ = [
    "HFTokenizer",
    "Packer",
    "PackerState",
    "PackingError",
    "Tokenizer",
    "Window",
    "load_tokenizer",
    "train_bpe",
]
