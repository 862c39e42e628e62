"""A chunk's documents for the window stream: stored token ids as arrays, text as text.

``DocumentReader(tokenizer)`` reads a group of chunks as ``read_chunks`` does (the same samples
in the same seeded order, one batched read per file for the whole group) but gives each chunk
as ``Documents``: a sample of a pre-tokenized file comes as a view of its stored ids (a slice
of the reader's memory map, never copied or decoded) with its last id found in one vectorized
gather per file, a text sample as its text. It refuses token files whose tokenizer is not the
stream's, naming both.

``pack`` turns a chunk's documents into windows: texts are tokenized in one ``encode_batch``
call, and each component's documents go to the packer in one ``Packer.add_many`` call, so
stored ids pass from the memory map to the window arrays in one concatenation. A chunk of text
only takes the text path exactly as before (one ``Packer.add`` per document). Both give the
same windows as adding every document in the chunk's order (packing is per component).

``pack_marked`` is ``pack`` that also gives, for a chunk of text, each window's ``Mark``: the
document whose ``add`` made it, how many windows that add made before it, and its component's
buffer before that document (``client.replay`` resumes from them).

Cost per token document: a slice and a few list steps (~1 us of Python); per window, the
packer's (see ``tokens.packing``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Self

import numpy as np

from mixplane.chunking.spec import ChunkSpec
from mixplane.client.reader import Reader
from mixplane.client.stream import chunk_order
from mixplane.query.result import expand_runs
from mixplane.tokens.packing import Checkpoint, Packer, Window
from mixplane.tokens.tokenizer import Tokenizer, TokenizerError


@dataclass(frozen=True, slots=True)
class Documents:
    """One chunk's samples (or the rest of them) in the chunk's order."""

    chunk: int
    components: np.ndarray  # int64 component of each sample
    docs: list[str | np.ndarray]  # text, or a view of the stored ids
    token: np.ndarray  # bool: the sample is stored as token ids
    last: np.ndarray  # int64 last stored id of a token sample (-1: text or empty)

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, index: slice, /) -> Self:
        return type(self)(
            self.chunk,
            self.components[index],
            self.docs[index],
            self.token[index],
            self.last[index],
        )


class Mark(NamedTuple):
    """Where a window of a chunk comes from (see ``pack_marked``)."""

    doc: int  # index in the chunk's rest of the document whose add made the window
    skip: int  # windows that add made before it
    before: Checkpoint  # its component's buffer before that document


class DocumentReader:
    """Reads groups of chunks as ``Documents`` (a ``ChunkReader``; see the module)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._checked: dict[int, bool] = {}  # file id -> holds token ids (checked)

    def _check(self, reader: Reader, file_id: int) -> bool:
        """Whether the file holds token ids (of this stream's tokenizer, or an error)."""
        known = self._checked.get(file_id)
        if known is not None:
            return known
        info = reader.file_info(file_id)
        if info.token_dtype is not None and info.tokenizer != self.tokenizer.fingerprint:
            msg = (
                f"file {info.path} of dataset {info.dataset!r} holds token ids of tokenizer "
                f"{info.tokenizer_source!r} ({info.tokenizer}), but this stream's tokenizer "
                f"is {getattr(self.tokenizer, 'source', '?')!r} "
                f"({self.tokenizer.fingerprint}); stream it with the tokenizer of its ids"
            )
            raise TokenizerError(msg)
        self._checked[file_id] = info.token_dtype is not None
        return self._checked[file_id]

    def __call__(
        self, reader: Reader, specs: list[ChunkSpec], seed: int, *, shuffle: bool
    ) -> list[Documents]:
        file_of, ordinals = expand_runs(
            np.concatenate([s.files for s in specs]),
            np.concatenate([s.starts for s in specs]),
            np.concatenate([s.lengths for s in specs]),
        )
        total = len(ordinals)
        docs: list[str | np.ndarray] = [""] * total  # in range order
        token = np.zeros(total, dtype=bool)
        last = np.full(total, -1, dtype=np.int64)
        by_file = np.argsort(file_of, kind="stable")
        bounds = np.flatnonzero(np.diff(file_of[by_file])) + 1
        for group in np.split(by_file, bounds):
            if not len(group):
                continue
            file_id = int(file_of[group[0]])
            places = group.tolist()
            if self._check(reader, file_id):
                views, lasts = reader.token_documents(file_id, ordinals[group])
                token[group] = True
                last[group] = lasts
                for i, view in zip(places, views, strict=True):
                    docs[i] = view
            else:
                _, texts = reader.read_with_text(file_id, ordinals[group])
                for i, text in zip(places, texts, strict=True):
                    docs[i] = text
        out = []
        first = 0
        for spec in specs:
            n = int(spec.lengths.sum())
            picks = chunk_order(spec, seed, shuffle=shuffle) + first
            comps = np.repeat(spec.components, spec.lengths).astype(np.int64)
            out.append(
                Documents(
                    spec.index,
                    comps[picks - first],
                    [docs[p] for p in picks.tolist()],
                    token[picks],
                    last[picks],
                )
            )
            first += n
        return out


def pack(
    rest: Documents, packer: Packer, encode: Callable[[Sequence[str]], list[list[int]]]
) -> list[Window]:
    """The windows a chunk's documents complete (see the module), component by component."""
    if not rest.token.any():  # text only: as the window stream always did
        windows: list[Window] = []
        add = packer.add
        for component, ids in zip(
            rest.components.tolist(), encode(rest.docs), strict=True  # type: ignore[arg-type]
        ):
            windows += add(ids, component)
        return windows
    docs: list[str | np.ndarray | list[int]] = list(rest.docs)
    ends = rest.last == packer.eos_id
    text = np.flatnonzero(~rest.token).tolist()
    if text:
        ends = ends.copy()
        encoded = encode([rest.docs[i] for i in text])  # type: ignore[misc]
        for i, ids in zip(text, encoded, strict=True):
            docs[i] = ids
            ends[i] = bool(ids) and ids[-1] == packer.eos_id
    windows = []
    components = rest.components
    for component in np.unique(components).tolist():
        where = np.flatnonzero(components == component)
        windows += packer.add_many(
            [docs[i] for i in where.tolist()],  # type: ignore[misc]
            component,
            ends=ends[where],
        )
    return windows


def pack_marked(
    rest: Documents, packer: Packer, encode: Callable[[Sequence[str]], list[list[int]]]
) -> tuple[list[Window], list[Mark] | None]:
    """``pack``, and for a chunk of text only each window's ``Mark`` (None for a chunk holding
    stored token ids: packed per component in one batch)."""
    if rest.token.any():
        return pack(rest, packer, encode), None
    windows: list[Window] = []
    marks: list[Mark] = []
    add, checkpoint = packer.add, packer.checkpoint
    for i, (component, ids) in enumerate(
        zip(rest.components.tolist(), encode(rest.docs), strict=True)  # type: ignore[arg-type]
    ):
        before = checkpoint(component)
        made = add(ids, component)
        if made:
            windows += made
            marks += [Mark(i, skip, before) for skip in range(len(made))]
    return windows, marks
