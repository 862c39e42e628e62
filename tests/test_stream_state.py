"""A rank's window stream saved to a state file and resumed through the library
(``mixplane.client.stream_state``, what ``mixplane stream --state-out/--resume-from`` uses)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client import stream_state as ss
from mixplane.errors import MixplaneError, StateError
from tests.conftest import corpus_tokenizer

MIX = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}
SEQ = 32


def item(window: Any) -> bytes:
    return window.input_ids.tobytes() + window.labels.tobytes() + bytes([window.component])


def test_a_state_file_resumes_exactly_and_refuses_other_options(
    client: Client, tmp_path: Path
) -> None:
    tokenizer = corpus_tokenizer(client.catalog)

    def run(k: int, saved: ss.StreamState | None, seq_len: int = SEQ) -> tuple[list[bytes], Any]:
        job = client.submit(
            "s", mixture=MIX, chunk_size=23, seed=2, unit="samples", topology=Topology(workers=2)
        )
        try:
            ss.check_coordinates(job.topology, dp_group=0, rank=0, worker=1)
            here = ss.stream_options(
                job,
                tokenizer,
                "corpus-bpe",
                dp_group=0,
                rank=0,
                worker=1,
                seq_len=seq_len,
                bos=False,
            )
            windows = ss.open_window_stream(job, tokenizer, here, saved, "s.json")
            got = [item(w) for w in itertools.islice(windows, k)]
            first = saved["windows"] if saved is not None else 0
            return got, ss.capture_state(here, first + len(got), job, windows)
        finally:
            job.close()

    full, _ = run(40, None)
    path = tmp_path / "s.json"
    for k in (1, 7, 23):
        _, state = run(k, None)
        ss.write_stream_state(str(path), state)
        saved = ss.read_stream_state(str(path))
        assert saved["windows"] == k
        rest, after = run(40 - k, saved)
        assert rest == full[k:], f"resume after {k} windows diverged"
        assert after["windows"] == 40
    with pytest.raises(StateError, match=r"--seq-len 32 \(saved\) vs 16"):
        run(1, saved, seq_len=16)
    with pytest.raises(MixplaneError, match="--worker 2 is outside the topology"):
        ss.check_coordinates(Topology(workers=2), dp_group=0, rank=0, worker=2)
    path.write_text("[1]")
    with pytest.raises(StateError, match="not a stream state file"):
        ss.read_stream_state(str(path))
