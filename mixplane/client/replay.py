"""Resume inside a chunk of text without re-tokenizing it: per component, the document its next
window comes from.

A chunk's windows are interleaved across components in an order that depends only on how many
windows each component makes in the chunk (``counts``; ``stream.interleave`` seeded by the
chunk). Packing is per component. So the rest of a chunk after k windows is known from
``counts``, k and, per component c, where c's next window comes from: the document whose
``Packer.add`` makes it (``doc``, its index in the chunk's rest), how many windows that add makes
before it (``skip``) and c's buffer before that document (at most ``seq_len`` tokens). A
component whose windows were all yielded keeps the place after its last one (its last
document, ``skip`` one more than that window's), or, with no window in the chunk, the chunk's
start (document 0, its buffer there).

``ReplayState`` holds exactly that: O(components x seq_len), like the packer state. On resume
(``replay_chunk``) each component re-adds its own documents from ``doc`` on, tokenized lazily in
growing slices (8, 16, ... 256 documents per ``encode_batch``) only when the component's next
window is due, drops its first ``skip`` windows, and the windows come out in the chunk's order;
then the components' remaining documents are packed (they make no more windows) so the packer
leaves the chunk in the state the uninterrupted run had. The first window after a resume costs
one slice of one component's documents instead of the whole chunk.

Windows are byte-identical to the whole-chunk path: the same documents reach each component's
packer in the same order from the same buffer, and ``Packer.add`` is deterministic. The
producer records a ``Mark`` per window of a chunk of text (``client.documents.pack_marked``;
one tuple and one buffer reference per window); a chunk holding stored token ids (read from
memory maps, packed per component in one batch) has no marks and resumes by re-packing the
chunk as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypedDict

import numpy as np

from mixplane.chunking.order import PURPOSE_WINDOWS, generator
from mixplane.client.documents import Documents, Mark
from mixplane.client.stream import interleave
from mixplane.errors import StateError, shown
from mixplane.tokens.packing import Checkpoint, Packer, PackerState, Window

FIRST_SLICE = 8  # documents tokenized for a component's first window after a resume
MAX_SLICE = 256


class ReplayState(TypedDict):
    counts: list[int]  # windows each component makes in the chunk
    docs: list[int]  # per component: index in the chunk's rest of its next window's document
    skips: list[int]  # per component: windows of that document before its next one
    packer: PackerState  # per component: its buffer before that document


def window_order(counts: Sequence[int] | np.ndarray, seed: int, chunk: int) -> np.ndarray:
    """The component of each window of a chunk, in the order the window stream yields them."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() <= 1:  # one window or none: nothing to interleave, no draw
        return np.repeat(np.arange(len(counts)), counts)
    return interleave(counts, generator(seed, PURPOSE_WINDOWS, chunk))


def from_marks(
    windows: Sequence[Window],
    marks: Sequence[Mark],
    yielded: int,
    start: PackerState,
    packer: Packer,
) -> ReplayState:
    """The replay state after ``yielded`` of a chunk's (interleaved) ``windows`` with their
    ``marks``; ``start``: the packer state at the chunk's start."""
    n = packer.num_components
    counts = [0] * n
    for window in windows:
        counts[window.component] += 1
    place: list[tuple[int, int, Checkpoint | tuple[list[int], list[int]]] | None] = [None] * n
    for i in range(yielded, len(windows)):  # the next window of each component
        c = windows[i].component
        if place[c] is None:
            doc, skip, before = marks[i]
            place[c] = (doc, skip, before)
    for i in range(yielded - 1, -1, -1):  # after the last yielded window of the others
        c = windows[i].component
        if place[c] is None:
            doc, skip, before = marks[i]
            place[c] = (doc, skip + 1, before)
    for c in range(n):  # no window in the chunk: from its start
        if place[c] is None:
            place[c] = (0, 0, (start["tokens"][c], start["starts"][c]))
    known = [p for p in place if p is not None]
    return ReplayState(
        counts=counts,
        docs=[p[0] for p in known],
        skips=[p[1] for p in known],
        packer=packer.state_at([p[2] for p in known]),
    )


def check_replay(replay: Any, num_components: int, yielded: int) -> ReplayState:
    """``replay`` as loaded from a saved state, checked for shape (the packer state is checked
    by ``Packer.load_state_dict``)."""

    def counts_of(key: str) -> bool:
        values = replay.get(key)
        return (
            isinstance(values, list)
            and len(values) == num_components
            and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in values
            )
        )

    if not (
        isinstance(replay, dict)
        and all(counts_of(k) for k in ("counts", "docs", "skips"))
        and isinstance(replay.get("packer"), dict)
        and sum(replay["counts"]) >= yielded
    ):
        msg = (
            f"the window stream state's 'replay' is corrupt ({shown(replay)}); pass a state "
            "saved by WindowStream.state_dict()"
        )
        raise StateError(msg)
    return replay  # type: ignore[return-value]


class _Component:
    """One component's windows of the chunk from its replay place on, made on demand."""

    def __init__(
        self,
        rest: Documents,
        component: int,
        doc: int,
        skip: int,
        packer: Packer,
        encode: Callable[[Sequence[str]], list[list[int]]],
    ) -> None:
        where = np.flatnonzero(rest.components == component)
        self._docs = where[where >= doc].tolist()
        self._rest, self._component, self._packer, self._encode = rest, component, packer, encode
        self._next = 0  # into _docs
        self._ids: dict[int, list[int]] = {}  # tokenized, not added yet
        self._slice = FIRST_SLICE
        self._pending: deque[Window] = deque()
        # where the next window comes from: (document, windows of it before, buffer before it)
        self._doc, self._taken, self._before = doc, skip, packer.checkpoint(component)
        self._skip = skip  # windows of the first document to drop

    def place(self) -> tuple[int, int, Checkpoint]:
        """(document, skip, buffer) of this component's next window, as ``ReplayState``."""
        if self._pending or self._next == 0:
            return self._doc, self._taken, self._before
        following = self._docs[self._next] if self._next < len(self._docs) else len(self._rest)
        return following, 0, self._packer.checkpoint(self._component)

    def _add_next(self) -> list[Window]:
        """Add the next document (tokenizing the next slice first if needed); its windows,
        less the ``skip`` first of the first document."""
        i = self._docs[self._next]
        if i not in self._ids:
            ahead = self._docs[self._next : self._next + self._slice]
            texts = [self._rest.docs[a] for a in ahead]
            self._ids = dict(zip(ahead, self._encode(texts), strict=True))  # type: ignore[arg-type]
            self._slice = min(self._slice * 2, MAX_SLICE)
        before = self._packer.checkpoint(self._component)
        made = self._packer.add(self._ids.pop(i), self._component)
        skip = self._skip if self._next == 0 else 0
        if len(made) < skip:
            raise _mismatch(self._component)
        self._doc, self._taken, self._before = i, skip, before
        self._next += 1
        return made[skip:]

    def take(self) -> Window:
        """The component's next window."""
        while not self._pending:
            if self._next >= len(self._docs):
                raise _mismatch(self._component)
            self._pending.extend(self._add_next())
        self._taken += 1
        return self._pending.popleft()

    def finish(self) -> None:
        """Pack the component's remaining documents; they must make no window."""
        if self._pending:
            raise _mismatch(self._component)
        while self._next < len(self._docs):
            if self._add_next():
                raise _mismatch(self._component)


def _mismatch(component: int) -> StateError:
    msg = (
        f"the window stream state does not fit the job's data (component {component} makes "
        "other windows than when it was saved); resume with the job and catalog it was saved with"
    )
    return StateError(msg)


class Replay(NamedTuple):
    """A chunk's windows from a replay state on (``windows``), its place at any moment
    (``state``) and the packer state after the chunk (``packer``, once ``windows`` ended)."""

    windows: Iterator[Window]
    state: Callable[[], ReplayState]
    packer: Packer


def replay_chunk(
    rest: Documents,
    replay: ReplayState,
    yielded: int,
    packer: Packer,
    encode: Callable[[Sequence[str]], list[list[int]]],
    seed: int,
) -> Replay:
    """The windows of ``rest``'s chunk after the first ``yielded``, from ``replay`` (see the
    module); ``packer`` must hold ``replay['packer']``."""
    order = window_order(replay["counts"], seed, rest.chunk)
    parts = [
        _Component(rest, c, replay["docs"][c], replay["skips"][c], packer, encode)
        for c in range(packer.num_components)
    ]
    counts = list(replay["counts"])

    def windows() -> Iterator[Window]:
        for c in order[yielded:].tolist():
            yield parts[c].take()
        for part in parts:
            part.finish()

    def state() -> ReplayState:
        places = [part.place() for part in parts]
        return ReplayState(
            counts=counts,
            docs=[p[0] for p in places],
            skips=[p[1] for p in places],
            packer=packer.state_at([p[2] for p in places]),
        )

    return Replay(windows(), state, packer)
