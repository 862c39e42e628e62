"""Packing: tokenized documents into fixed ``seq_len + 1`` token windows for causal LM training.

Each document becomes ``[bos] + ids + [eos]`` (``bos`` only when ``bos_id`` is given; ``eos``
only when the document does not already end with it, so stored ids that carry their EOS, as
Megatron and Dolma write them, are never doubled) and is appended to the buffer of its
*component*. ``add`` takes one document; ``add_many`` takes a batch of one component's
documents (the token arrays a reader gives, views into memory maps, parked without a copy). Packing is per component: every component has its
own buffer, so a window holds tokens of one component only and its ``domain_ids`` are constant
(per-domain loss needs no splitting inside a window, and a mixture's token shares hold window by
window). Tokens left in a component's buffer when a chunk ends are not dropped: they carry over
to that component's next documents, whichever chunk those come in.

Windows overlap by one token, the standard packing of a stream: window k of a component covers
its stream tokens ``[k * seq_len, k * seq_len + seq_len + 1)``; ``input_ids`` are the first
``seq_len`` tokens, ``labels`` the last ``seq_len``. So every token of a component's stream,
except the very first one, is a target exactly once, in order. A window is emitted as soon as
its component's buffer holds ``seq_len + 1`` tokens.

Document boundaries are given per window for attention masked per document: ``cu_seqlens`` holds
the offsets where a segment starts (0, each document start inside the window) and ends with
``seq_len``; ``position_ids`` restart at 0 at each of them. A window that begins inside a
document starts a segment at 0 too (its earlier tokens are in another window and cannot be
attended to), so ``position_ids`` and ``cu_seqlens`` always describe the same segments, as
Hugging Face's packed flash-attention path expects. The input token ``eos`` of one document
has the next document's first token as its label, as in any packed stream; the ``eos`` itself
is a target of its own document.

Empty documents are skipped: an id list of length 0 adds nothing (not even ``eos``).

End of stream: ``flush()`` does not pad by default. It returns no window, drops what the
buffers hold and logs how many target tokens each component lost (at most ``seq_len`` per
component; ``pending()`` tells the counts beforehand). ``flush(pad_id=...)`` instead emits one
last window per component with pending targets, its tail filled with ``pad_id`` in
``input_ids`` and ``IGNORE_INDEX`` (-100) in ``labels``, the padding being a segment of its own.

Resume: ``state_dict()`` holds the buffered tokens of each component and the offsets of the
documents starting among them (at most ``seq_len`` tokens per component, O(components x
seq_len) ints, JSON-able); a packer restored from it continues byte-identically.
``checkpoint(component)`` is one component's buffer between two documents, kept without a copy
(references to the parked arrays, at most ``seq_len`` tokens); ``state_at(checkpoints)`` is the
state of a packer whose buffers are those checkpoints (the window stream saves, per component,
the buffer before the document its next window comes from).

Cost: O(tokens) numpy work and O(documents + windows) Python steps, no per-token Python loop.
A document is parked as it comes (a list is converted once, an array is not copied); when a
buffer fills, its pieces are concatenated once into int32 and all its windows are cut from that
one array: inputs and labels by reshape (labels copied: they may be edited), positions as one
concatenation of slices of ``arange(seq_len)`` (one per segment: window starts and document
starts), ``domain_ids`` one read-only row per component shared by its windows. Three copies of
the tokens (the stream, the labels, the positions) and ~5 us of Python per window, ~0.3 us per
document. The at most ``seq_len`` tokens carried over are copied
again at the next fill, which emits at least ``seq_len`` tokens' worth, so each token is copied
O(1) times amortized.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from mixplane.errors import MixplaneError, StateError

logger = logging.getLogger(__name__)

STATE_VERSION = 1
IGNORE_INDEX = -100  # label of padded positions (PyTorch cross-entropy's default ignore_index)

_INT32_MAX = np.iinfo(np.int32).max


class PackingError(MixplaneError, ValueError):
    """A packer option or a document that cannot be packed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """One training sequence: ``seq_len`` inputs and their next-token labels (all int32).

    ``domain_ids`` is constant and equal to ``component`` (packing is per component; one
    read-only array shared by the component's windows: copy it to edit it);
    ``cu_seqlens`` starts at 0 and ends at ``seq_len``, one entry per segment start in between.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    domain_ids: np.ndarray
    position_ids: np.ndarray
    cu_seqlens: np.ndarray
    component: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One component's buffer between two documents (see ``Packer.checkpoint``)."""

    pieces: tuple[np.ndarray, ...]
    starts: tuple[int, ...]

    def tokens(self) -> list[int]:
        if not self.pieces:
            return []
        return np.concatenate(self.pieces, dtype=np.int32, casting="unsafe").tolist()  # type: ignore[no-any-return]


class PackerState(TypedDict):
    version: int
    seq_len: int
    eos_id: int
    bos_id: int | None
    tokens: list[list[int]]  # per component: buffered tokens (at most seq_len)
    starts: list[list[int]]  # per component: offsets in ``tokens`` where a document starts


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_id(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= _INT32_MAX:
        msg = f"{name} must be a token id in [0, 2**31), got {value}"
        raise PackingError(msg)


class Packer:
    """Packs each component's documents into ``seq_len + 1`` token windows (see the module)."""

    def __init__(
        self, seq_len: int, eos_id: int, bos_id: int | None = None, *, num_components: int
    ) -> None:
        if seq_len < 1:
            msg = f"seq_len must be at least 1, got {seq_len}"
            raise PackingError(msg)
        if num_components < 1:
            msg = f"num_components must be at least 1, got {num_components}"
            raise PackingError(msg)
        _check_id("eos_id", eos_id)
        _check_id("bos_id", bos_id)
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.bos_id = bos_id
        self.num_components = num_components
        self._eos = np.array([eos_id], dtype=np.int32)
        self._bos = np.array([bos_id], dtype=np.int32) if bos_id is not None else None
        self._base = np.arange(seq_len, dtype=np.int32)  # positions are slices of it
        self._domains: dict[int, np.ndarray] = {}
        # per component: parked arrays, their total length, and document start offsets
        self._pieces: list[list[np.ndarray]] = [[] for _ in range(num_components)]
        self._lengths = [0] * num_components
        self._starts: list[list[int]] = [[] for _ in range(num_components)]

    # -- packing -----------------------------------------------------------------------------
    def add(self, ids: np.ndarray | Sequence[int], component: int) -> list[Window]:
        """Append one document to its component; return the windows it completes (often none,
        several for a long document)."""
        self._check_component(component)
        tokens = self._as_tokens(ids)
        if len(tokens) == 0:
            return []
        pieces = self._pieces[component]
        self._starts[component].append(self._lengths[component])
        if self._bos is not None:
            pieces.append(self._bos)
        pieces.append(tokens)
        ends = int(tokens[-1]) == self.eos_id  # already ends with its EOS: not doubled
        if not ends:
            pieces.append(self._eos)
        self._lengths[component] += len(tokens) + (not ends) + (self._bos is not None)
        if self._lengths[component] < self.seq_len + 1:
            return []
        return self._emit(component)

    def add_many(
        self,
        docs: Sequence[np.ndarray | Sequence[int]],
        component: int,
        *,
        ends: Sequence[bool] | np.ndarray | None = None,
    ) -> list[Window]:
        """Append documents to one component, in order; return the windows they complete (the
        same as ``add`` for each). Arrays are trusted to hold ids in [0, 2**31) (the reader's,
        checked at registration) and parked without a copy; lists are checked as by ``add``.
        ``ends[i]``: document i already ends with the EOS (found by the caller, vectorized)."""
        self._check_component(component)
        pieces = self._pieces[component]
        starts = self._starts[component]
        length = self._lengths[component]
        eos, bos, eos_id = self._eos, self._bos, self.eos_id
        extra = 1 if bos is not None else 0
        if ends is None:
            ends = [len(d) > 0 and int(d[-1]) == eos_id for d in docs]
        elif isinstance(ends, np.ndarray):
            ends = ends.tolist()
        append, mark = pieces.append, starts.append
        for doc, ended in zip(docs, ends, strict=True):
            tokens = doc if isinstance(doc, np.ndarray) else self._as_tokens(doc)
            n = len(tokens)
            if n == 0:
                continue
            mark(length)
            if bos is not None:
                append(bos)
            append(tokens)
            length += n + extra
            if not ended:
                append(eos)
                length += 1
        self._lengths[component] = length
        if length < self.seq_len + 1:
            return []
        return self._emit(component)

    def extend(
        self, tokens: np.ndarray | Sequence[int], component: int, starts: Sequence[int] = (0,)
    ) -> list[Window]:
        """Append a piece of a component's stream as it is (no BOS or EOS added): ``starts``
        are the offsets in it where a document starts (0 should be one: the piece follows a
        document's end). An elastic restore hands the rest of another consumer's stream on this
        way (``client.handover``); return the windows it completes."""
        self._check_component(component)
        array = self._as_tokens(tokens)
        if len(array) == 0:
            return []
        length = self._lengths[component]
        self._starts[component].extend(length + int(s) for s in starts if 0 <= s < len(array))
        self._pieces[component].append(array)
        self._lengths[component] = length + len(array)
        if self._lengths[component] < self.seq_len + 1:
            return []
        return self._emit(component)

    def _check_component(self, component: int) -> None:
        if not 0 <= component < self.num_components:
            msg = (
                f"component {component} is out of range; this packer has "
                f"num_components={self.num_components}"
            )
            raise PackingError(msg)

    def _as_tokens(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                msg = f"a document must be a 1-d array of token ids, got {ids.dtype} {ids.shape}"
                raise PackingError(msg)
            array = ids
        else:
            if len(ids) == 0:
                return np.empty(0, dtype=np.int32)
            try:
                array = np.asarray(ids, dtype=np.int64)
            except (TypeError, ValueError, OverflowError) as exc:
                msg = f"a document must be a sequence of integer token ids ({exc})"
                raise PackingError(msg) from exc
            if array.ndim != 1:
                msg = f"a document must be a flat sequence of token ids, got shape {array.shape}"
                raise PackingError(msg)
        if array.size and (int(array.min()) < 0 or int(array.max()) > _INT32_MAX):
            msg = (
                f"token ids must lie in [0, 2**31), got values from {int(array.min())} to "
                f"{int(array.max())}"
            )
            raise PackingError(msg)
        return array.astype(np.int32)  # a copy: the caller may reuse its array

    def _emit(self, component: int) -> list[Window]:
        length = self.seq_len
        stream = np.concatenate(self._pieces[component], dtype=np.int32, casting="unsafe")
        n = (len(stream) - 1) // length  # windows ready
        end = n * length
        inputs = stream[:end].reshape(n, length)
        labels = stream[1 : end + 1].reshape(n, length).copy()  # own memory: may be edited
        starts = self._starts[component]
        inside = bisect.bisect_left(starts, end)
        # segments: every window start and every document start inside the windows; one flat
        # list of each window's segment starts and its end (cu_seqlens), and of segment lengths
        bounds: list[int] = []
        spans: list[int] = []
        firsts = [0] * (n + 1)  # where each window's cu_seqlens begin in ``bounds``
        at = 0  # the next document start to place
        for window in range(n):
            firsts[window] = len(bounds)
            bounds.append(0)
            low = window * length
            high = low + length
            previous = 0
            while at < inside and starts[at] < high:
                offset = starts[at] - low
                if offset:
                    bounds.append(offset)
                    spans.append(offset - previous)
                    previous = offset
                at += 1
            bounds.append(length)
            spans.append(length - previous)
        firsts[n] = len(bounds)
        base = self._base
        position_ids = np.concatenate([base[:span] for span in spans]).reshape(n, length)
        cu = np.array(bounds, dtype=np.int32)
        domain = self._domain(component)
        windows = [
            _window(a, b, domain, d, cu[firsts[i] : firsts[i + 1]], component)
            for i, (a, b, d) in enumerate(
                zip(list(inputs), list(labels), list(position_ids), strict=True)
            )
        ]
        rest = stream[end:].copy()  # 1..seq_len tokens; rest[0] is the overlap token
        self._pieces[component] = [rest]
        self._lengths[component] = len(rest)
        self._starts[component] = [s - end for s in starts[inside:]]
        return windows

    def _domain(self, component: int) -> np.ndarray:
        """The component's ``domain_ids`` row, one read-only array shared by its windows."""
        row = self._domains.get(component)
        if row is None:
            row = np.full(self.seq_len, component, dtype=np.int32)
            row.flags.writeable = False
            self._domains[component] = row
        return row

    # -- end of stream -----------------------------------------------------------------------
    def pending(self) -> list[int]:
        """Per component, the buffered tokens that have not been a target yet."""
        return [max(n - 1, 0) for n in self._lengths]

    def flush(self, *, pad_id: int | None = None) -> list[Window]:
        """End of stream: empty every buffer. Without ``pad_id`` the pending tokens are dropped
        (logged) and no window is returned; with it, each component with pending targets gets
        one last window padded to ``seq_len`` (labels ``IGNORE_INDEX`` on the padding)."""
        _check_id("pad_id", pad_id)
        lost = self.pending()
        windows = []
        if pad_id is not None:
            for component in range(self.num_components):
                if lost[component] > 0:
                    windows.append(self._padded(component, pad_id))
        elif any(lost):
            logger.info("packer flush dropped pending target tokens per component: %s", lost)
        for component in range(self.num_components):
            self._pieces[component] = []
            self._lengths[component] = 0
            self._starts[component] = []
        return windows

    def _padded(self, component: int, pad_id: int) -> Window:
        length = self.seq_len
        stream = np.concatenate(self._pieces[component], dtype=np.int32, casting="unsafe")
        real = len(stream) - 1  # 1 <= real < seq_len + 1 inputs with a real label
        input_ids = np.full(length, pad_id, dtype=np.int32)
        input_ids[:real] = stream[:real]
        labels = np.full(length, IGNORE_INDEX, dtype=np.int32)
        labels[:real] = stream[1:]
        marks = np.zeros(length, dtype=bool)
        starts = np.asarray(self._starts[component], dtype=np.int64)
        marks[starts[starts < real]] = True
        marks[0] = True
        if real < length:
            marks[real] = True  # the padding is a segment of its own
        return Window(
            input_ids=input_ids,
            labels=labels,
            domain_ids=np.full(length, component, dtype=np.int32),
            position_ids=_positions(marks[None, :])[0],
            cu_seqlens=np.append(np.flatnonzero(marks), length).astype(np.int32),
            component=component,
        )

    # -- state -------------------------------------------------------------------------------
    def checkpoint(self, component: int) -> Checkpoint:
        """The component's buffer now (no copy: parked arrays are never changed)."""
        return Checkpoint(tuple(self._pieces[component]), tuple(self._starts[component]))

    def state_at(self, buffers: Sequence[Checkpoint | tuple[list[int], list[int]]]) -> PackerState:
        """The state of this packer with each component's buffer given as a checkpoint or as
        (tokens, document starts) lists, one per component."""
        tokens, starts = [], []
        for buffer in buffers:
            if isinstance(buffer, Checkpoint):
                tokens.append(buffer.tokens())
                starts.append(list(buffer.starts))
            else:
                tokens.append(list(buffer[0]))
                starts.append(list(buffer[1]))
        return self._state(tokens, starts)

    def state_dict(self) -> PackerState:
        """The buffered tokens of each component (at most ``seq_len`` each); JSON-able."""
        tokens = [
            np.concatenate(p, dtype=np.int32, casting="unsafe").tolist() if p else []
            for p in self._pieces
        ]
        return self._state(tokens, [list(s) for s in self._starts])

    def _state(self, tokens: list[list[int]], starts: list[list[int]]) -> PackerState:
        return PackerState(
            version=STATE_VERSION,
            seq_len=self.seq_len,
            eos_id=self.eos_id,
            bos_id=self.bos_id,
            tokens=tokens,
            starts=starts,
        )

    def load_state_dict(self, state: PackerState) -> None:
        """Continue exactly where the packer that saved ``state`` stopped."""
        if state.get("version") != STATE_VERSION:
            msg = f"packer state version {state.get('version')!r}, expected {STATE_VERSION}"
            raise StateError(msg)
        saved = (state["seq_len"], state["eos_id"], state["bos_id"], len(state["tokens"]))
        mine = (self.seq_len, self.eos_id, self.bos_id, self.num_components)
        if saved != mine:
            names = ("seq_len", "eos_id", "bos_id", "num_components")
            diff = ", ".join(
                f"{name} {a!r} (saved) vs {b!r}"
                for name, a, b in zip(names, saved, mine, strict=True)
                if a != b
            )
            msg = f"packer state was saved with other options: {diff}; build the same packer"
            raise StateError(msg)
        if not isinstance(state["starts"], list) or len(state["starts"]) != self.num_components:
            msg = "packer state is inconsistent: 'tokens' and 'starts' differ in length"
            raise StateError(msg)
        for component, (tokens, starts) in enumerate(
            zip(state["tokens"], state["starts"], strict=True)
        ):
            if not (
                isinstance(tokens, list)
                and isinstance(starts, list)
                and len(tokens) <= self.seq_len
                and all(_is_int(t) and 0 <= t <= _INT32_MAX for t in tokens)
                and all(_is_int(s) and 0 <= s < len(tokens) for s in starts)
            ):
                msg = f"packer state of component {component} is inconsistent (corrupt state?)"
                raise StateError(msg)
        for component, (tokens, starts) in enumerate(
            zip(state["tokens"], state["starts"], strict=True)
        ):
            self._pieces[component] = [np.asarray(tokens, dtype=np.int32)] if tokens else []
            self._lengths[component] = len(tokens)
            self._starts[component] = [int(s) for s in starts]


_new = Window.__new__
_set = object.__setattr__


def _window(
    input_ids: np.ndarray,
    labels: np.ndarray,
    domain_ids: np.ndarray,
    position_ids: np.ndarray,
    cu_seqlens: np.ndarray,
    component: int,
) -> Window:
    """A Window without the frozen dataclass's keyword ``__init__`` (a third of its cost; a
    packer makes one per ``seq_len`` tokens)."""
    window = _new(Window)
    _set(window, "input_ids", input_ids)
    _set(window, "labels", labels)
    _set(window, "domain_ids", domain_ids)
    _set(window, "position_ids", position_ids)
    _set(window, "cu_seqlens", cu_seqlens)
    _set(window, "component", component)
    return window


def _positions(marks: np.ndarray) -> np.ndarray:
    """Per row, each index minus the index of the latest segment start at or before it
    (``marks[:, 0]`` must be True)."""
    index = np.broadcast_to(np.arange(marks.shape[1], dtype=np.int32), marks.shape)
    latest = np.maximum.accumulate(np.where(marks, index, 0), axis=1)
    return (index - latest).astype(np.int32)
