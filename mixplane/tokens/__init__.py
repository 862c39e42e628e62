"""Tokenizers behind one small protocol."""

from mixplane.tokens.tokenizer import HFTokenizer, Tokenizer, load_tokenizer, train_bpe

__all__ = ["HFTokenizer", "Tokenizer", "load_tokenizer", "train_bpe"]
