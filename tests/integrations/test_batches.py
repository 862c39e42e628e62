"""A worker's batch on the wire (issue 16): sent compact (int32 ids, segment starts,
components; the int64 fields rebuilt on arrival) when its values allow, else as its buffer;
either way it arrives equal to plain stacking of its windows."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # registers its tensor reducers with ForkingPickler
from multiprocessing.reduction import ForkingPickler  # noqa: E402

from mixplane.integrations.batches import (  # noqa: E402
    FIELDS,
    SharedBatch,
    collate_windows,
    window_items,
)
from mixplane.tokens.packing import Packer, Window  # noqa: E402

SEQ = 16
EOS = 0


def windows(docs: list[list[int]], *, mixed: bool = True, pad: bool = False) -> list[Window]:
    """The packer's windows of ``docs``, the documents' components in turn when ``mixed``."""
    packer = Packer(SEQ, EOS, num_components=3)
    out = [w for i, d in enumerate(docs) for w in packer.add(np.array(d), i % 3 * mixed)]
    return out + (packer.flush(pad_id=EOS) if pad else [])


def stacked(items: list[dict[str, Any]]) -> dict[str, Any]:
    out = {name: torch.stack([i[name] for i in items]) for name in FIELDS}
    starts = [i["cu_seqlens"][:-1] + k * SEQ for k, i in enumerate(items)]
    out["cu_seqlens"] = torch.cat([*starts, torch.tensor([len(items) * SEQ], dtype=torch.int32)])
    out["max_seqlen"] = int(out["cu_seqlens"].diff().max())
    out["component"] = torch.stack([i["component"] for i in items])
    return out


def sent(batch: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the wire form, the batch received) of ``batch`` (a ``collate_windows`` result) sent
    as a DataLoader worker sends it."""
    views = {name: batch[name] for name in (*FIELDS, "component")}
    buffer = torch.empty(0, dtype=torch.uint8).set_(batch["input_ids"].untyped_storage())
    shared = SharedBatch(batch, buffer, views)
    form = "compact" if shared.__reduce__()[0].__name__ == "_unpack_compact" else "buffer"
    return form, pickle.loads(ForkingPickler.dumps(shared))


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert type(got) is dict and list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


DOCS = {
    # a document spanning three windows, then short ones (several segments per window)
    "spanning": [list(range(1, 40)), [5, 6, 7], [8, 9], list(range(10, 30)), list(range(3, 25))],
    # each window one document ending with EOS at its end (the next starts a window)
    "one per window": [[*range(k, k + SEQ - 1), EOS] for k in range(1, 8)],
    # one long document: every window a piece of it, positions from 0 in each
    "one document": [list(range(1, 6 * SEQ + 2))],
}


@pytest.mark.parametrize("case", list(DOCS))
@pytest.mark.parametrize("worker", [True, False])
def test_packed_batches_travel_compact_and_arrive_equal(case: str, *, worker: bool) -> None:
    items = list(window_items(windows(DOCS[case], mixed=case == "spanning"), 4, worker=worker))
    assert len(items) >= 4
    for group in (items[:4], items[1:2], items[:3]):
        form, got = sent(collate_windows(group))
        assert form == "compact"
        assert_same(got, stacked(group))
        storage = got["input_ids"].untyped_storage().data_ptr()  # one buffer, as in-process
        assert all(got[k].untyped_storage().data_ptr() == storage for k in (*FIELDS, "component"))


def test_ids_beyond_int32_travel_as_the_buffer() -> None:
    big = 2**31 + 5
    ws = windows(DOCS["spanning"])
    ws[1] = Window(
        input_ids=ws[1].input_ids.astype(np.int64) + big,
        labels=ws[1].labels.astype(np.int64) + big,
        domain_ids=ws[1].domain_ids,
        position_ids=ws[1].position_ids,
        cu_seqlens=ws[1].cu_seqlens,
        component=ws[1].component,
    )
    items = list(window_items(ws[:3], 3, worker=True))
    form, got = sent(collate_windows(items))
    assert form == "buffer"
    assert_same(got, stacked(items))
    assert int(got["input_ids"][1].max()) > np.iinfo(np.int32).max


def test_a_padded_window_travels_as_the_buffer() -> None:
    items = list(window_items(windows([list(range(1, 20))], pad=True), 2, worker=True))
    assert (items[-1]["labels"] == -100).any()
    form, got = sent(collate_windows(items))
    assert form == "buffer"
    assert_same(got, stacked(items))


def test_edits_after_collating_travel() -> None:
    """The wire form is chosen when the batch is pickled, from its values then."""
    items = list(window_items(windows(DOCS["spanning"]), 4, worker=True))[:4]
    batch = collate_windows(items)
    batch["labels"][0, 3] = -100  # masked after collating, in the worker's collate
    batch["shift_labels"] = batch["labels"]
    want = stacked(items)
    want["labels"][0, 3] = -100
    want["shift_labels"] = want["labels"]
    form, got = sent(batch)
    assert form == "buffer"
    assert got["shift_labels"] is got["labels"]
    assert_same(got, want)
    assert int(got["labels"][0, 3]) == -100


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: b["domain_ids"][1, 5].fill_(2),  # not the component
        lambda b: b["position_ids"][1].add_(7),  # positions continued from another window
        lambda b: b["position_ids"][0, 2].fill_(0),  # a zero the next position does not follow
    ],
)
def test_fields_not_derived_from_the_ids_travel_as_the_buffer(edit: Any) -> None:
    items = list(window_items(windows(DOCS["spanning"]), 4, worker=True))[:4]
    batch = collate_windows(items)
    edit(batch)
    want = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    form, got = sent(batch)
    assert form == "buffer"
    assert_same(got, want)


def test_worker_items_own_their_memory() -> None:
    """In a worker every item has its own buffer: pickling one (another collate, or
    ``batch_size=None``) moves no memory a later item is written to."""
    items = list(window_items(windows(DOCS["spanning"]), 4, worker=True))
    pointers = {i["input_ids"].untyped_storage().data_ptr() for i in items}
    assert len(pointers) == len(items)
