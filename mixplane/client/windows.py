"""Token windows of one consumer: its chunks, tokenized in batches and packed per component.

``WindowStream(job, tokenizer, seq_len, dp_group=, rank=, worker=)`` takes the consumer's
chunks one at a time (``Stream.chunk_rests``), tokenizes each chunk's texts with one
``encode_batch`` call (the tokenizer's own thread pool, GIL released), feeds the documents in the
chunk's seeded order to a per-component ``Packer`` and yields the windows. Windows of different
components come out interleaved in the chunk's order, as their buffers fill.

State, O(components x seq_len): the consumer position at the start of the current chunk, the
packer's state at that point, and how many of the chunk's windows were already yielded.
Restoring re-reads and re-tokenizes that one chunk and skips the windows already yielded, so the
window stream continues exactly. Load the job's state first (``Job.load_state_dict``), then the
window stream's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypedDict

from mixplane.client.stream import ConsumerState
from mixplane.errors import StateError
from mixplane.tokens.packing import Packer, PackerState, Window
from mixplane.tokens.tokenizer import Tokenizer, TokenizerError

if TYPE_CHECKING:
    from mixplane.job import Job

STATE_VERSION = 1


class WindowStreamState(TypedDict):
    version: int
    tokenizer: str  # fingerprint
    stream: ConsumerState  # consumer position at the start of the current chunk
    packer: PackerState  # packer state at that point
    windows: int  # windows of the current chunk already yielded


class WindowStream:
    def __init__(
        self,
        job: Job,
        tokenizer: Tokenizer,
        seq_len: int,
        *,
        dp_group: int = 0,
        rank: int = 0,
        worker: int = 0,
        bos: bool = False,
    ) -> None:
        eos = getattr(tokenizer, "eos_id", None)
        if eos is None:
            msg = "the tokenizer has no end-of-sequence token; train or load one with an EOS"
            raise TokenizerError(msg)
        bos_id = getattr(tokenizer, "bos_id", None) if bos else None
        self.job = job
        self.tokenizer = tokenizer
        self._stream = job.stream(dp_group, rank, worker)
        self._packer = Packer(seq_len, eos, bos_id, num_components=len(job.orders))
        self._start: ConsumerState = self._stream.state_dict()
        self._start_packer: PackerState = self._packer.state_dict()
        self._windows = 0

    def state_dict(self) -> WindowStreamState:
        return WindowStreamState(
            version=STATE_VERSION,
            tokenizer=self.tokenizer.fingerprint,
            stream=dict(self._start),  # type: ignore[typeddict-item]
            packer=self._start_packer,
            windows=self._windows,
        )

    def load_state_dict(self, state: WindowStreamState | dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            msg = f"window stream state version {state.get('version')!r}, expected {STATE_VERSION}"
            raise StateError(msg)
        if state["tokenizer"] != self.tokenizer.fingerprint:
            msg = "the window stream state was saved with another tokenizer (fingerprints differ)"
            raise StateError(msg)
        self._stream.load_state_dict(state["stream"])
        self._packer.load_state_dict(state["packer"])
        self._start = ConsumerState(j=state["stream"]["j"], offset=state["stream"]["offset"])
        self._start_packer = state["packer"]
        self._windows = int(state["windows"])

    def __iter__(self) -> Iterator[Window]:
        skip = self._windows
        for samples in self._stream.chunk_rests():
            self._start = self._stream.state_dict()  # the start of this chunk's rest
            self._start_packer = self._packer.state_dict()
            self._windows = skip
            ids = self.tokenizer.encode_batch([s.text for s in samples])
            windows: list[Window] = []
            for sample, doc in zip(samples, ids, strict=True):
                windows += self._packer.add(doc, sample.component)
            for window in windows[skip:]:
                self._windows += 1
                yield window
            skip = 0
