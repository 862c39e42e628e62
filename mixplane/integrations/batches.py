"""Token windows as tensors, their collate, and the wire form of a worker's batch.

``window_items`` turns windows into item dicts (``input_ids``, ``labels``, ``domain_ids``,
``position_ids`` int64 ``[seq_len]``, ``cu_seqlens`` int32, ``component`` int64 ``[]``) and
``collate_windows`` stacks them into a batch (``cu_seqlens`` of the whole batch, flash-attention
style, and ``max_seqlen``). In one process the items of a block of windows are rows of one
buffer and a batch is views of it (no copy).

In a DataLoader worker process the batch is a ``SharedBatch``, pickled when the worker sends it
(so edits made to it after collating travel). The four int64 fields of a packed batch are
redundant: ``labels`` are ``input_ids`` shifted by one token, ``domain_ids`` repeat the window's
component and ``position_ids`` count from each segment start. So a batch whose values say so
(checked at pickling on the batch as it is then: each row's ``labels[:-1] == input_ids[1:]``,
``domain_ids == component``, positions ``0, 1, ...`` from each zero, ids in the int32 range)
travels *compact*: ``[B, seq_len + 1]`` int32 ids (the inputs and each row's last label), the
segment starts and ``component`` (~1/8 of the bytes), and the main process rebuilds the four
int64 fields in one buffer when it unpickles it (numpy, ~0.6 ms for 64 x 2048 tokens). Any
other batch (labels edited, padding, ids beyond int32) travels as its full buffer in shared
memory, as one segment. The receiver gets a plain dict equal to the in-process batch either
way (docs/benchmarks.md "Peers", item 2).

Why not fill the batch in shared memory in the worker: fresh shared-memory pages cost ~6 ms
per 4 MB buffer (64 x 2048 tokens x 4 int64 fields) to allocate and fill, against ~1 ms for
reused private memory; and reusing a shared buffer across batches is unsafe (the worker cannot
know when the main process is done with it). So a worker's item owns its own private memory
(one buffer per window: an item pickled as it is, by another collate or ``batch_size=None``,
moves only its own storage), its batch is a private buffer, and only the compact ids (or a
fallback's full buffer) go to shared memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from mixplane.errors import DependencyError, PlanError
from mixplane.tokens.packing import Window

try:
    import torch
    from torch.utils.data import get_worker_info
except ImportError as exc:  # pragma: no cover - the torch extra is installed in development
    msg = "mixplane.integrations.batches needs PyTorch: pip install 'mixplane[torch]'"
    raise DependencyError(msg) from exc

FIELDS = ("input_ids", "labels", "domain_ids", "position_ids")
INLINE_BYTES = 65_536  # a batch's tensors (or compact ids) up to this size travel in the pickle
_INT32 = np.iinfo(np.int32)


def window_tensors(window: Window) -> dict[str, torch.Tensor]:
    """One window as tensors (token fields int64, as embeddings and losses take them)."""
    return next(window_items([window], 1))


def window_items(
    windows: Iterable[Window], block: int, *, worker: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """The windows as items whose token fields and ``component`` are rows of one int64 buffer
    per ``block`` windows (``[4, block, seq_len]`` then ``[block]``): one copy per field, and
    ``collate_windows`` takes consecutive rows of one buffer as views instead of copying them
    again. In a DataLoader ``worker`` every item has a buffer of its own (see the module).
    ``cu_seqlens`` shares the window's array."""
    fields = len(FIELDS)
    block = 1 if worker else block
    row = block
    for window in windows:
        if row == block:
            length = len(window.input_ids)
            flat = torch.empty(block * (fields * length + 1), dtype=torch.int64)
            tokens = flat[: fields * block * length].view(fields, block, length)
            components = flat[fields * block * length :]
            array, of_rows, row = tokens.numpy(), components.numpy(), 0
        for f, name in enumerate(FIELDS):
            array[f, row] = getattr(window, name)
        of_rows[row] = window.component
        out = dict(zip(FIELDS, tokens[:, row].unbind(0), strict=True))
        out["cu_seqlens"] = torch.from_numpy(
            np.ascontiguousarray(window.cu_seqlens, dtype=np.int32)
        )
        out["component"] = components[row]
        row += 1
        yield out


def collate_windows(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack windows into a batch: ``[B, seq_len]`` token fields, ``component`` ``[B]``, and
    ``cu_seqlens`` over the flattened batch (each window's document starts shifted by its
    offset, then ``B * seq_len``) with ``max_seqlen``, for variable-length attention.

    The token fields and ``component`` are views of one buffer: the items' own buffer when
    they are its consecutive rows (``TokenWindowDataset``'s items in one process, batches
    aligned with its blocks: no copy), else a new one they are copied into. In a DataLoader
    worker process the batch is a ``SharedBatch``: it reaches the main process compact or as
    one shared-memory segment (see the module), as the plain dict the in-process collate
    gives."""
    if not batch:
        msg = "collate_windows got an empty batch"
        raise PlanError(msg)
    size = len(batch)
    length = int(batch[0]["input_ids"].shape[0])
    found = _rows_of_one_buffer(batch)
    buffer, views = _copied(batch) if found is None else found
    parts = [b["cu_seqlens"].numpy() for b in batch]
    cu = np.empty(sum(len(c) - 1 for c in parts) + 1, dtype=np.int32)
    at = 0
    for i, c in enumerate(parts):
        cu[at : at + len(c) - 1] = c[:-1] + i * length
        at += len(c) - 1
    cu[at] = size * length
    out: dict[str, Any] = {name: views[name] for name in FIELDS}
    out["cu_seqlens"] = torch.from_numpy(cu)
    out["max_seqlen"] = int(np.diff(cu).max())
    out["component"] = views["component"]
    return SharedBatch(out, buffer, views) if get_worker_info() is not None else out


def _rows_of_one_buffer(
    batch: Sequence[dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
    """(the buffer, the batch's fields as views of it) when every field of the items lies in
    consecutive rows of the first item's buffer (addresses, dtypes and shapes checked), else
    None."""
    storage = batch[0]["input_ids"].untyped_storage()
    start = storage.data_ptr()
    end = start + storage.nbytes()
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    views = {}
    for name in (*FIELDS, "component"):
        first = batch[0][name]
        step = first.numel() * first.element_size()
        at = first.data_ptr()
        if not start <= at <= end - step * len(batch):
            return None
        for i, item in enumerate(batch):
            t = item[name]
            same = t.dtype == first.dtype and t.shape == first.shape and t.is_contiguous()
            if not same or t.data_ptr() != at + i * step:
                return None
        rows = buffer[at - start : at - start + step * len(batch)]
        views[name] = rows.view(first.dtype).view(len(batch), *first.shape)
    return buffer, views


def _copied(
    batch: Sequence[dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A new buffer with the items' fields stacked in it (numpy row copies: ~5x faster than
    ``torch.stack(..., out=)`` for 64 windows of 2,048 tokens)."""
    names = (*FIELDS, "component")
    places = []
    offset = 0
    for name in names:
        first = batch[0][name]
        places.append((offset, first.dtype, (len(batch), *first.shape)))
        offset += (len(batch) * first.numel() * first.element_size() + 7) // 8 * 8
    buffer = torch.empty(offset, dtype=torch.uint8)
    views = {}
    for name, (at, dtype, shape) in zip(names, places, strict=True):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        views[name] = buffer[at : at + nbytes].view(dtype).view(shape)
        rows = [b[name] for b in batch]
        plain = (r.device.type == "cpu" and not r.requires_grad for r in rows)
        if all(r.dtype == dtype and r.shape == shape[1:] for r in rows) and all(plain):
            array = views[name].numpy()
            for i, r in enumerate(rows):
                array[i] = r.numpy()
        else:
            torch.stack(rows, out=views[name])
    return buffer, views


def _shared(array: np.ndarray) -> torch.Tensor | np.ndarray:
    """``array`` as it travels: inline up to ``INLINE_BYTES``, else copied into one new
    shared-memory segment (as ``default_collate`` allocates in a DataLoader worker)."""
    if array.nbytes <= INLINE_BYTES:
        return array
    storage = torch.UntypedStorage._new_shared(array.nbytes)  # type: ignore[no-untyped-call]
    out = torch.empty(0, dtype=torch.uint8).set_(storage).view(torch.from_numpy(array).dtype)
    np.copyto(out.view(array.shape).numpy(), array)
    return out.view(array.shape)


class SharedBatch(dict[str, Any]):
    """A batch from ``collate_windows`` in a DataLoader worker: a dict whose big tensors are
    views of one buffer. Pickled compact when its values allow (see the module), else as the
    buffer (in shared memory: one segment) and each view's place in it; small tensors as
    arrays and the other entries as usual (a key added after collating travels too; one
    holding the same tensor as a field, like ``shift_labels``, stays that tensor). It unpickles
    to a plain dict."""

    def __init__(
        self, items: dict[str, Any], buffer: torch.Tensor, views: dict[str, torch.Tensor]
    ) -> None:
        super().__init__(items)
        self.buffer, self.views = buffer, views

    def __reduce__(self) -> tuple[Any, ...]:
        of_view = {id(t): name for name, t in self.views.items()}
        keys: list[tuple[str, str, Any]] = []
        for key, value in self.items():
            if id(value) in of_view:
                keys.append((key, "view", of_view[id(value)]))
            elif isinstance(value, torch.Tensor) and _inline(value):
                keys.append((key, "inline", value.numpy()))
            else:
                keys.append((key, "value", value))
        compact = _compact(self.views)
        if compact is not None:
            return (_unpack_compact, (*compact, keys))
        base = self.buffer.data_ptr()
        places = {
            name: (t.data_ptr() - base, t.dtype, tuple(t.shape)) for name, t in self.views.items()
        }
        return (_unpack_batch, (self.buffer, places, keys))


def _inline(value: torch.Tensor) -> bool:
    return value.device.type == "cpu" and not value.requires_grad and value.nbytes <= INLINE_BYTES


def _compact(
    views: dict[str, torch.Tensor],
) -> tuple[torch.Tensor | np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids ``[B, L + 1]`` int32: the inputs then each row's last label, the flat segment
    starts, ``component``) when the batch's fields are derived from them, else None."""
    if set(views) != {*FIELDS, "component"}:
        return None
    fields = [views[name] for name in FIELDS]
    component = views["component"]
    if component.dtype != torch.int64 or component.ndim != 1:
        return None
    rows = component.shape[0]
    for t in fields:
        if t.dtype != torch.int64 or t.ndim != 2 or t.shape != fields[0].shape:
            return None
    if rows != fields[0].shape[0] or fields[0].shape[1] == 0:
        return None
    ids, labels, domains, positions = (t.numpy() for t in fields)
    last = labels[:, -1]
    fits = int(min(ids.min(), last.min())) >= _INT32.min
    fits = fits and int(max(ids.max(), last.max())) <= _INT32.max
    if not (fits and np.array_equal(labels[:, :-1], ids[:, 1:])):
        return None
    of_rows = component.numpy()
    if not (domains == of_rows[:, None]).all():
        return None
    flat = positions.reshape(-1)
    starts = np.flatnonzero(flat == 0)
    if not len(starts) or starts[0] != 0 or not np.array_equal(flat, _positions(starts, flat.size)):
        return None
    out = np.empty((rows, ids.shape[1] + 1), dtype=np.int32)
    out[:, :-1] = ids
    out[:, -1] = last
    return _shared(out), starts.astype(np.int64), of_rows.copy()


def _positions(starts: np.ndarray, size: int) -> np.ndarray:
    """Each of ``size`` indices minus the latest of ``starts`` (ascending, from 0) at or
    before it."""
    spans = np.diff(starts, append=size)
    return np.arange(size, dtype=np.int64) - np.repeat(starts.astype(np.int64), spans)


def _unpack_compact(
    ids: torch.Tensor | np.ndarray,
    starts: np.ndarray,
    component: np.ndarray,
    keys: list[tuple[str, str, Any]],
) -> dict[str, Any]:
    """A compact ``SharedBatch`` as a plain dict: the four int64 fields rebuilt in one buffer
    (the layout of ``window_items``' blocks)."""
    ids = ids.numpy() if isinstance(ids, torch.Tensor) else ids
    rows, length = ids.shape[0], ids.shape[1] - 1
    flat = torch.empty(len(FIELDS) * rows * length + rows, dtype=torch.int64)
    tokens = flat[: len(FIELDS) * rows * length].view(len(FIELDS), rows, length)
    array = tokens.numpy()
    array[0] = ids[:, :-1]
    array[1] = ids[:, 1:]
    array[2] = component[:, None]
    array[3] = _positions(starts, rows * length).reshape(rows, length)
    views = dict(zip(FIELDS, tokens.unbind(0), strict=True))
    views["component"] = flat[len(FIELDS) * rows * length :]
    views["component"].numpy()[:] = component
    return _with_keys(views, keys)


def _unpack_batch(
    buffer: torch.Tensor,
    places: dict[str, tuple[int, torch.dtype, tuple[int, ...]]],
    keys: list[tuple[str, str, Any]],
) -> dict[str, Any]:
    """A ``SharedBatch`` sent as its buffer, as a plain dict in the receiving process."""
    views: dict[str, torch.Tensor] = {}
    for name, (at, dtype, shape) in places.items():
        nbytes = int(np.prod(shape)) * dtype.itemsize
        views[name] = buffer[at : at + nbytes].view(dtype).view(shape)
    return _with_keys(views, keys)


def _with_keys(views: dict[str, torch.Tensor], keys: list[tuple[str, str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind, value in keys:
        if kind == "view":
            out[key] = views[value]
        else:
            out[key] = torch.from_numpy(value) if kind == "inline" else value
    return out
