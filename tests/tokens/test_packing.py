"""Packer: windows against a reference cut of each component's stream, boundaries, resume."""

from __future__ import annotations

import itertools
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixplane.errors import StateError
from mixplane.tokens import train_bpe
from mixplane.tokens.packing import IGNORE_INDEX, Packer, PackerState, PackingError, Window
from tests.resume import check_resume

EOS = 0
BOS = 1

Doc = tuple[list[int], int]


def _docs(seed: int, n: int, components: int, max_len: int = 40) -> list[Doc]:
    rng = random.Random(seed)
    return [
        (
            [rng.randrange(2, 1000) for _ in range(rng.randrange(0, max_len))],
            rng.randrange(components),
        )
        for _ in range(n)
    ]


def _reference(
    docs: list[Doc], components: int, bos: int | None
) -> list[tuple[list[int], list[bool]]]:
    """Per component: its token stream and, per token, whether a document starts there."""
    out: list[tuple[list[int], list[bool]]] = [([], []) for _ in range(components)]
    for ids, c in docs:
        if not ids:
            continue
        doc = ([bos] if bos is not None else []) + ids + [EOS]
        out[c][0].extend(doc)
        out[c][1].extend([True] + [False] * (len(doc) - 1))
    return out


def _pack(packer: Packer, docs: list[Doc]) -> list[Window]:
    windows = []
    for ids, c in docs:
        windows += packer.add(ids, c)
    return windows


def _check_against_reference(
    windows: list[Window], docs: list[Doc], components: int, seq_len: int, bos: int | None
) -> None:
    reference = _reference(docs, components, bos)
    for c, (stream, starts) in enumerate(reference):
        mine = [w for w in windows if w.component == c]
        assert len(mine) == max(len(stream) - 1, 0) // seq_len
        for k, w in enumerate(mine):
            lo = k * seq_len
            whole = stream[lo : lo + seq_len + 1]
            assert len(whole) == seq_len + 1
            assert w.input_ids.tolist() == whole[:-1]
            assert w.labels.tolist() == whole[1:]
            assert w.domain_ids.tolist() == [c] * seq_len
            # positions by a plain per-token walk; the window start is a segment start
            positions, p = [], 0
            for j in range(seq_len):
                p = 0 if j == 0 or starts[lo + j] else p + 1
                positions.append(p)
            assert w.position_ids.tolist() == positions
            bounds = [j for j in range(seq_len) if positions[j] == 0] + [seq_len]
            assert w.cu_seqlens.tolist() == bounds
            for array in (w.input_ids, w.labels, w.domain_ids, w.position_ids, w.cu_seqlens):
                assert array.dtype == np.int32
        for a, b in itertools.pairwise(mine):  # one token of overlap
            assert a.labels[-1] == b.input_ids[0]
        # every token but the first is a target exactly once, in order
        targets = [t for w in mine for t in w.labels.tolist()]
        assert targets == stream[1 : 1 + len(targets)]


@pytest.mark.parametrize("bos", [None, BOS])
@pytest.mark.parametrize("seq_len", [1, 7, 32])
def test_windows_match_reference(seq_len: int, bos: int | None) -> None:
    docs = _docs(seed=seq_len, n=300, components=3)
    packer = Packer(seq_len, EOS, bos, num_components=3)
    windows = _pack(packer, docs)
    _check_against_reference(windows, docs, 3, seq_len, bos)
    # what was not a target yet waits in the buffers
    reference = _reference(docs, 3, bos)
    emitted = [sum(w.component == c for w in windows) for c in range(3)]
    assert packer.pending() == [
        max(len(s) - 1, 0) - e * seq_len for (s, _), e in zip(reference, emitted, strict=True)
    ]
    assert all(0 <= p < seq_len for p in packer.pending())


def test_eos_between_documents_and_boundaries() -> None:
    packer = Packer(4, EOS, num_components=1)
    assert packer.add([5, 6, 7], 0) == []
    (w0,) = packer.add([8, 9], 0)  # stream 5 6 7 <eos> 8 | 9 <eos>
    assert w0.input_ids.tolist() == [5, 6, 7, EOS]
    assert w0.labels.tolist() == [6, 7, EOS, 8]
    assert w0.position_ids.tolist() == [0, 1, 2, 3]
    assert w0.cu_seqlens.tolist() == [0, 4]
    (w1,) = packer.add([10], 0)  # stream ... 8 9 <eos> 10 <eos>
    assert w1.input_ids.tolist() == [8, 9, EOS, 10]
    assert w1.labels.tolist() == [9, EOS, 10, EOS]
    assert w1.position_ids.tolist() == [0, 1, 2, 0]  # 8 continues a document: segment from 0
    assert w1.cu_seqlens.tolist() == [0, 3, 4]
    assert w1.domain_ids.tolist() == [0, 0, 0, 0]
    assert packer.pending() == [0]


def test_bos_option() -> None:
    packer = Packer(4, EOS, BOS, num_components=1)
    windows = packer.add([5, 6], 0) + packer.add([7], 0)  # 1 5 6 0 1 | 7 0
    (w,) = windows
    assert w.input_ids.tolist() == [BOS, 5, 6, EOS]
    assert w.labels.tolist() == [5, 6, EOS, BOS]
    (w,) = packer.add([8, 9], 0)  # 1 7 0 1 8 | 9 0
    assert w.input_ids.tolist() == [BOS, 7, EOS, BOS]
    assert w.position_ids.tolist() == [0, 1, 2, 0]
    assert w.cu_seqlens.tolist() == [0, 3, 4]


def test_components_are_packed_apart_and_carry_over() -> None:
    packer = Packer(8, EOS, num_components=2)
    out = packer.add([2] * 5, 0) + packer.add([3] * 5, 1) + packer.add([4] * 5, 0)
    (w,) = out  # component 1 (6 tokens) is still waiting; component 0 held 12
    assert w.component == 0
    assert w.input_ids.tolist() == [2] * 5 + [EOS] + [4] * 2
    assert packer.pending() == [3, 5]
    (w,) = packer.add([5] * 3, 1)
    assert w.component == 1
    assert w.domain_ids.tolist() == [1] * 8
    assert w.input_ids.tolist() == [3] * 5 + [EOS] + [5] * 2


def test_empty_documents_add_nothing() -> None:
    packer = Packer(4, EOS, BOS, num_components=2)
    assert packer.add([], 1) == []
    assert packer.add(np.array([], dtype=np.int64), 0) == []
    assert packer.pending() == [0, 0]
    assert packer.state_dict()["tokens"] == [[], []]
    docs: list[Doc] = [([], 0), ([5, 6, 7], 0), ([], 0), ([8], 0), ([], 1), ([9, 9, 9, 9], 0)]
    _check_against_reference(_pack(Packer(4, EOS, BOS, num_components=2), docs), docs, 2, 4, BOS)


def test_document_longer_than_several_windows() -> None:
    seq_len = 16
    doc = list(range(2, 2 + 10 * seq_len + 3))
    packer = Packer(seq_len, EOS, num_components=1)
    windows = packer.add(np.array(doc, dtype=np.int32), 0)
    assert len(windows) == 10  # 10*16 + 4 tokens with eos: 10 windows, 4 tokens wait
    _check_against_reference(windows, [(doc, 0)], 1, seq_len, None)
    assert all(w.cu_seqlens.tolist() == [0, seq_len] for w in windows)
    assert all(w.position_ids.tolist() == list(range(seq_len)) for w in windows)
    assert packer.pending() == [3]


def test_eos_is_not_doubled() -> None:
    """Issue 15: a document that already ends with the EOS (stored ids) gets no second one."""
    packer = Packer(4, EOS, num_components=1)
    windows = packer.add([5, 6, EOS], 0) + packer.add([EOS], 0) + packer.add([7, 8], 0)
    (w,) = windows  # stream 5 6 <eos> <eos> 7 | 8 <eos>
    assert w.input_ids.tolist() == [5, 6, EOS, EOS]
    assert w.labels.tolist() == [6, EOS, EOS, 7]
    assert w.cu_seqlens.tolist() == [0, 3, 4]  # the lone EOS is a document of its own
    assert packer.pending() == [2]


@pytest.mark.parametrize("bos", [None, BOS])
@pytest.mark.parametrize("seq_len", [1, 5, 64])
def test_add_many_is_add_for_each(seq_len: int, bos: int | None) -> None:
    """Stored ids (arrays of any integer dtype, views of one buffer, some ending with the EOS)
    added in batches give the windows and state of adding them one by one."""
    rng = np.random.default_rng(seq_len)
    buffer = rng.integers(2, 60_000, 5_000).astype(np.uint16)
    buffer[rng.random(5_000) < 0.05] = EOS
    cuts = np.sort(rng.choice(5_000, 300, replace=False))
    docs = [buffer[a:b] for a, b in itertools.pairwise(cuts)]
    comps = rng.integers(0, 3, len(docs)).tolist()
    one = Packer(seq_len, EOS, bos, num_components=3)
    single = [w for d, c in zip(docs, comps, strict=True) for w in one.add(d, c)]
    many = Packer(seq_len, EOS, bos, num_components=3)
    batched: list[Window] = []
    for start in range(0, len(docs), 37):
        part = list(zip(docs[start : start + 37], comps[start : start + 37], strict=True))
        for c in range(3):
            mine = [d for d, k in part if k == c]
            ends = [len(d) > 0 and d[-1] == EOS for d in mine] if start % 2 else None
            batched += many.add_many(mine, c, ends=ends)

    def key(w: Window) -> tuple[Any, ...]:
        return (
            w.component,
            w.input_ids.tolist(),
            w.labels.tolist(),
            w.position_ids.tolist(),
            w.cu_seqlens.tolist(),
            w.domain_ids.tolist(),
        )

    for c in range(3):
        assert [key(w) for w in single if w.component == c] == [
            key(w) for w in batched if w.component == c
        ]
    assert json.dumps(one.state_dict()) == json.dumps(many.state_dict())
    assert all(w.input_ids.dtype == w.labels.dtype == np.int32 for w in batched)


def test_domain_ids_are_one_read_only_row() -> None:
    packer = Packer(4, EOS, num_components=2)
    a, b = packer.add(list(range(2, 12)), 1)
    assert a.domain_ids is b.domain_ids and a.domain_ids.tolist() == [1] * 4
    with pytest.raises(ValueError, match="read-only"):
        a.domain_ids[0] = 0


def test_labels_do_not_share_memory_with_inputs() -> None:
    packer = Packer(4, EOS, num_components=1)
    a, b = packer.add(list(range(2, 12)), 0)  # 2..6 | 6..10
    a.labels[-1] = IGNORE_INDEX  # masking a label in place must not touch the next input
    assert b.input_ids[0] == 6


@settings(max_examples=150, deadline=None)
@given(
    seq_len=st.integers(1, 12),
    use_bos=st.booleans(),
    docs=st.lists(
        st.tuples(st.lists(st.integers(2, 50), max_size=30), st.integers(0, 2)), max_size=40
    ),
)
def test_property_random_documents(seq_len: int, use_bos: bool, docs: list[Doc]) -> None:
    bos = BOS if use_bos else None
    packer = Packer(seq_len, EOS, bos, num_components=3)
    windows = _pack(packer, docs)
    _check_against_reference(windows, docs, 3, seq_len, bos)
    total = [len(s) for s, _ in _reference(docs, 3, bos)]
    for c in range(3):
        trained = sum(w.component == c for w in windows) * seq_len
        assert trained + packer.pending()[c] == max(total[c] - 1, 0)


def _item(windows: list[Window]) -> tuple[tuple[bytes, ...], ...]:
    return tuple(
        (
            w.input_ids.tobytes(),
            w.labels.tobytes(),
            w.domain_ids.tobytes(),
            w.position_ids.tobytes(),
            w.cu_seqlens.tobytes(),
            w.component.to_bytes(4, "little"),
        )
        for w in windows
    )


@pytest.mark.parametrize("bos", [None, BOS])
def test_resume(bos: int | None) -> None:
    docs = _docs(seed=3, n=120, components=3, max_len=30)

    def packer() -> Packer:
        return Packer(16, EOS, bos, num_components=3)

    def items(p: Packer, rest: list[Doc]) -> list[tuple[tuple[bytes, ...], ...]]:
        # one item per document (the windows it completed), then the padded flush
        return [_item(p.add(ids, c)) for ids, c in rest] + [_item(p.flush(pad_id=EOS))]

    full = items(packer(), docs)
    assert sum(len(i) for i in full) > 40  # windows were emitted: the check is not vacuous

    def restored_after(k: int) -> list[tuple[tuple[bytes, ...], ...]]:
        first = packer()
        for ids, c in docs[:k]:
            first.add(ids, c)
        state = json.loads(json.dumps(first.state_dict()))
        assert all(len(t) <= 16 for t in state["tokens"])
        second = packer()
        second.load_state_dict(state)
        return items(second, docs[k:])

    check_resume(full, restored_after, [0, 1, 2, 7, 33, 60, 119, 120])


def test_state_checks() -> None:
    packer = Packer(8, EOS, num_components=2)
    packer.add([5, 6, 7], 1)
    state = packer.state_dict()
    assert state == {
        "version": 1,
        "seq_len": 8,
        "eos_id": EOS,
        "bos_id": None,
        "tokens": [[], [5, 6, 7, EOS]],
        "starts": [[], [0]],
    }
    with pytest.raises(StateError, match="seq_len 8 \\(saved\\) vs 16"):
        Packer(16, EOS, num_components=2).load_state_dict(state)
    with pytest.raises(StateError, match="num_components 2 \\(saved\\) vs 3"):
        Packer(8, EOS, num_components=3).load_state_dict(state)
    old: PackerState = {**state, "version": 0}
    with pytest.raises(StateError, match="version 0"):
        Packer(8, EOS, num_components=2).load_state_dict(old)
    corrupt: PackerState = {**state, "starts": [[], [9]]}
    with pytest.raises(StateError, match="component 1"):
        Packer(8, EOS, num_components=2).load_state_dict(corrupt)


def test_flush_drops_by_default_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    packer = Packer(8, EOS, num_components=2)
    packer.add([5, 6, 7], 1)
    assert packer.pending() == [0, 3]
    with caplog.at_level(logging.INFO, logger="mixplane.tokens.packing"):
        assert packer.flush() == []
    assert "[0, 3]" in caplog.text
    assert packer.pending() == [0, 0]
    assert packer.state_dict()["tokens"] == [[], []]


def test_flush_with_padding() -> None:
    packer = Packer(8, EOS, num_components=2)
    packer.add([5, 6, 7], 1)
    assert packer.add([2] * 7, 0) == []  # 8 tokens with eos: one short of a window
    (w0,) = packer.add([3], 0)  # 2*7 eos 3 | eos: a window; 3 eos wait
    assert w0.labels.tolist() == [2] * 6 + [EOS, 3]
    assert packer.pending() == [1, 3]
    last0, last1 = packer.flush(pad_id=99)
    assert last0.component == 0
    assert last0.input_ids.tolist() == [3] + [99] * 7
    assert last0.labels.tolist() == [EOS] + [IGNORE_INDEX] * 7
    assert last0.cu_seqlens.tolist() == [0, 1, 8]
    assert last0.position_ids.tolist() == [0, *range(7)]
    assert last1.input_ids.tolist() == [5, 6, 7] + [99] * 5
    assert last1.labels.tolist() == [6, 7, EOS] + [IGNORE_INDEX] * 5
    assert last1.cu_seqlens.tolist() == [0, 3, 8]
    assert last1.domain_ids.tolist() == [1] * 8
    assert packer.flush(pad_id=99) == []  # nothing left


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Packer(0, EOS, num_components=1), "seq_len must be at least 1"),
        (lambda: Packer(4, EOS, num_components=0), "num_components must be at least 1"),
        (lambda: Packer(4, -1, num_components=1), "eos_id must be a token id"),
        (lambda: Packer(4, EOS, num_components=2).add([3], 2), "component 2 is out of range"),
        (lambda: Packer(4, EOS, num_components=1).add([3, -4], 0), "from -4 to 3"),
        (lambda: Packer(4, EOS, num_components=1).add(np.ones(3), 0), "1-d array of token ids"),
        (lambda: Packer(4, EOS, num_components=1).add([[1, 2]], 0), "flat sequence"),  # type: ignore[list-item]
    ],
)
def test_errors_name_the_value(call: object, message: str) -> None:
    with pytest.raises(PackingError, match=message):
        call()  # type: ignore[operator]


def test_real_tokenizer_round_trip(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as Inner

    rng = random.Random(0)
    words = ["data", "mixture", "token", "window", "pack", "loss", "domain", "chunk", "the", "a"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12))) for _ in range(300)]
    tokenizer = train_bpe(texts, vocab_size=300)
    tokenizer.save(tmp_path / "tokenizer.json")
    inner = Inner.from_file(str(tmp_path / "tokenizer.json"))
    eos = inner.token_to_id("<eos>")
    assert eos is not None
    components = [i % 2 for i in range(len(texts))]
    encoded = tokenizer.encode_batch(texts)
    packer = Packer(32, eos, num_components=2)
    windows = [w for ids, c in zip(encoded, components, strict=True) for w in packer.add(ids, c)]
    assert len(windows) > 10
    tail = packer.state_dict()["tokens"]
    for c in range(2):
        mine = [w for w in windows if w.component == c]
        stream = [int(mine[0].input_ids[0])] + [t for w in mine for t in w.labels.tolist()]
        stream += tail[c][1:]  # tail[c][0] is the last target already seen
        expected = [
            t for ids, k in zip(encoded, components, strict=True) if k == c for t in [*ids, eos]
        ]
        assert stream == expected
        # split at eos and decode: the original texts of the component, in order
        cuts = [i for i, t in enumerate(stream) if t == eos]
        pieces = [stream[a + 1 : b] for a, b in zip([-1, *cuts], cuts, strict=False)]
        decoded = [inner.decode(p) for p in pieces]
        assert decoded == [t for t, k in zip(texts, components, strict=True) if k == c]
