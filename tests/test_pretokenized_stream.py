"""Streaming pre-tokenized data: ids pass through unchanged, mixed with text of the same
tokenizer, token-exact, deterministic, resumable. Issue 15."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.windows import WindowStream
from mixplane.errors import PlanError
from mixplane.job import Job
from mixplane.mixture import Mixture
from mixplane.tokens import load_tokenizer, train_bpe
from mixplane.tokens.tokenizer import TokenizerError
from tests.resume import check_resume
from tests.tokendata import (
    Docs,
    documents,
    save_to_disk,
    stored,
    tiny_tokenizer,
    token_table,
    write_megatron,
    write_memmap,
    write_parquet,
)

ROOT = Path(__file__).resolve().parents[1]
SEQ = 7
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 25)))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tok = train_bpe(texts(0, 300), vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(path)
    return load_tokenizer(str(path))


def window_items(stream: Any, n: int | None = None) -> list[bytes]:
    return [
        w.input_ids.tobytes()
        + w.labels.tobytes()
        + w.position_ids.tobytes()
        + w.cu_seqlens.tobytes()
        + bytes([w.component])
        for w in itertools.islice(stream, n)
    ]


def component_streams(windows: list[Any]) -> dict[int, list[int]]:
    """Each component's token stream as its windows carry it (first input, then labels)."""
    out: dict[int, list[int]] = {}
    for w in windows:
        if w.component not in out:
            out[w.component] = [int(w.input_ids[0])]
        assert out[w.component][-1] == int(w.input_ids[0])  # windows overlap by one token
        out[w.component] += w.labels.tolist()
    return out


# -- every format and dtype: the ids streamed are the ids stored --------------------------
def write_format(kind: str, folder: Path, docs: Docs) -> dict[str, Any]:
    """Write ``docs`` in a format; the register() arguments for it."""
    if kind.startswith("megatron"):
        dtype = kind.split("-")[1]
        write_megatron(folder / "a", docs[: len(docs) // 2], dtype, sequences=2)
        write_megatron(folder / "b", docs[len(docs) // 2 :], dtype)
        return {}
    if kind.startswith("tokens"):
        dtype = kind.split("-")[1]
        metadata = dtype == "uint16"  # the other splits at each EOS
        write_memmap(folder / "a.npy", docs[: len(docs) // 2], dtype, metadata=metadata)
        write_memmap(folder / "b.npy", docs[len(docs) // 2 :], dtype, metadata=metadata)
        return {"token_dtype": dtype}
    if kind == "arrow":
        save_to_disk(folder, docs)
        return {}
    write_parquet(folder / "p.parquet", token_table(docs, pa.int64()), row_group_size=33)
    return {"tokens_field": "input_ids"}


FORMATS = [
    "megatron-uint16",
    "megatron-int32",
    "tokens-uint16",
    "tokens-uint32",
    "arrow",
    "parquet",
]


@pytest.mark.parametrize("kind", FORMATS)
def test_streamed_ids_are_the_stored_ids(tmp_path: Path, tokenizer: Any, kind: str) -> None:
    eos = tokenizer.eos_id
    with_eos = 1.0 if kind == "tokens-uint32" else 0.5  # split at EOS: every document ends so
    docs = documents(21, 160, vocab=tokenizer.vocab_size, eos=eos, with_eos=with_eos)
    extra = write_format(kind, tmp_path / "data", docs)
    with Client.local(tmp_path / "home") as client:
        client.catalog.register(
            "t",
            tmp_path / "data",
            tokenizer=tokenizer,
            path_pattern=r"/data/(?P<part>[a-z]|data-0000[01]|p)",
            **extra,
        )
        truth = {}  # (file id, ordinal) -> stored ids
        for f in client.catalog.files("t").to_pylist():
            table = client.catalog.read(f["file_id"], np.arange(f["samples"]))
            for o, ids in enumerate(table.column(f["text_field"]).to_pylist()):
                truth[(f["file_id"], o)] = np.asarray(ids)
        assert sorted(len(v) for v in truth.values()) == sorted(len(d) for d in docs)
        kw: dict[str, Any] = {"unit": "tokens", "chunk_size": 60, "seed": 3, "tokenizer": tokenizer}
        job = client.submit("s", mixture=Mixture.uniform(["part"]), on_exhausted="stop", **kw)
        windows = list(WindowStream(job, tokenizer, SEQ, prefetch=0))
        reference = client.submit("s", mixture=Mixture.uniform(["part"]), on_exhausted="stop", **kw)
        expected: dict[int, list[np.ndarray]] = {}
        for sample in reference.stream():
            expected.setdefault(sample.component, []).append(
                truth[(sample.file_id, sample.ordinal)]
            )
            assert np.array_equal(
                sample.record["input_ids"], truth[(sample.file_id, sample.ordinal)]
            )
        got = component_streams(windows)
        assert set(got) == set(expected)
        for c, docs_c in expected.items():
            want = stored(docs_c, eos)
            assert got[c] == want[: len(got[c])]  # across window boundaries and leftover carry
            assert len(want) - len(got[c]) <= SEQ  # only the last partial window waits
        for w in windows:
            for array in (w.input_ids, w.labels, w.position_ids, w.cu_seqlens, w.domain_ids):
                assert array.dtype == np.int32


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int64"])
def test_every_megatron_dtype_streams_its_ids(tmp_path: Path, dtype: str) -> None:
    tok = tiny_tokenizer(tmp_path / "tok")  # 101 ids: fits every dtype
    eos = tok.eos_id
    docs = documents(5, 70, vocab=tok.vocab_size, eos=eos)
    write_megatron(tmp_path / "m", docs, dtype)
    with Client.local(tmp_path / "home") as client:
        client.catalog.register("m", tmp_path / "m.idx", tokenizer=tok, constants={"k": "m"})
        job = client.submit(
            "e",
            mixture={"k=m": 1},
            order="as-stored",
            on_exhausted="stop",
            chunk_size=300,
            tokenizer=tok,
        )
        windows = list(WindowStream(job, tok, 5, prefetch=0))
    (stream,) = component_streams(windows).values()
    want = stored(docs, eos)
    assert stream == want[: len(stream)] and len(want) - len(stream) <= 5


def test_eos_is_added_unless_there_never_doubled(tmp_path: Path, tokenizer: Any) -> None:
    eos = tokenizer.eos_id
    docs = [
        np.array([5, 6, eos]),
        np.array([7]),
        np.array([eos]),
        np.array([8, 9, 10, eos]),
        np.array([11, 12]),
    ]
    write_megatron(tmp_path / "m", docs * 3, "uint16")
    with Client.local(tmp_path / "home") as client:
        client.catalog.register("m", tmp_path / "m.idx", tokenizer=tokenizer, constants={"k": "m"})
        job = client.submit(
            "e", mixture={"k=m": 1}, order="as-stored", on_exhausted="stop", chunk_size=100
        )
        windows = list(WindowStream(job, tokenizer, 4, prefetch=0))
    (stream,) = component_streams(windows).values()
    one = [5, 6, eos, 7, eos, eos, 8, 9, 10, eos, 11, 12, eos]
    assert stream == (one * 3)[: len(stream)]
    assert len(one * 3) - len(stream) <= 4


# -- text and tokens of one tokenizer --------------------------------------------------------
@pytest.fixture
def twins(tmp_path: Path, tokenizer: Any) -> Any:
    """One corpus twice: as JSONL text and as Megatron ids of the same tokenizer (each
    document's ids then the EOS, as Megatron's preprocessing writes them)."""
    corpus = {"en": texts(1, 150), "de": texts(2, 90)}
    home = tmp_path / "home"
    with Client.local(home) as client:
        for lang, docs in corpus.items():
            (tmp_path / "text").mkdir(exist_ok=True)
            with (tmp_path / "text" / f"{lang}.jsonl").open("wb") as f:
                for t in docs:
                    f.write(orjson.dumps({"text": t, "lang": lang}) + b"\n")
            ids = [np.array([*x, tokenizer.eos_id]) for x in tokenizer.encode_batch(docs)]
            write_megatron(tmp_path / "tokens" / lang / "part", ids, "uint16")
        client.catalog.register("text", tmp_path / "text", properties={"lang": "lang"})
        client.catalog.register(
            "tok",
            tmp_path / "tokens",
            tokenizer=tokenizer,
            path_pattern=r"/(?P<lang>[a-z]{2})/part",
        )
        client.catalog.count_tokens(tokenizer, datasets=["text"], progress=False)
    return home


def test_token_data_streams_as_its_text_does(twins: Path, tokenizer: Any) -> None:
    with Client.local(twins) as client:

        def windows(dataset: str) -> list[bytes]:
            job = client.submit(
                dataset,
                where=f"dataset == '{dataset}'",
                mixture={"lang=en": 0.6, "lang=de": 0.4},
                unit="tokens",
                chunk_size=90,
                seed=11,
                tokenizer=tokenizer,
                topology=Topology(workers=2),
            )
            assert set(job.token_source.values()) == {"exact"}
            return window_items(WindowStream(job, tokenizer, SEQ, worker=1, prefetch=0), 300)

        assert windows("tok") == windows(
            "text"
        )  # ids pass through exactly as tokenizing gives them


def test_mixed_text_and_tokens_have_exact_token_shares(twins: Path, tokenizer: Any) -> None:
    mix = {"dataset=text": 0.25, "dataset=tok": 0.75}
    with Client.local(twins) as client:
        job = client.submit(
            "mix", mixture=mix, unit="tokens", chunk_size=120, seed=5, tokenizer=tokenizer
        )
        selectors = job.selectors
        planned = np.zeros(2)
        for spec in job.plan(60):
            planned += spec.tokens
        total = planned.sum()
        for c, selector in enumerate(selectors):
            runs = job.result.components[c].runs
            sizes = client.catalog.sample_tokens(runs, tokenizer.fingerprint)
            assert sizes is not None
            # cumulative tokens within one document of the exact share
            assert abs(planned[c] - mix[selector] * total) <= sizes.max(), selector
        windows = list(itertools.islice(WindowStream(job, tokenizer, SEQ, prefetch=0), 2000))
        delivered = np.bincount([w.component for w in windows], minlength=2) * SEQ
        shares = delivered / delivered.sum()
        for c, selector in enumerate(selectors):
            assert abs(shares[c] - mix[selector]) < 0.01


@pytest.mark.filterwarnings("ignore::mixplane.errors.SizingWarning")  # sized with the wrong one
def test_jobs_and_streams_of_another_tokenizer_are_refused(twins: Path, tokenizer: Any) -> None:
    other = train_bpe(texts(9, 200), vocab_size=280)
    with Client.local(twins) as client:
        with pytest.raises(PlanError, match="holds token ids of tokenizer"):
            client.submit("x", mixture={"lang=en": 1.0}, tokenizer=other)
        # a token job made without a tokenizer takes its stream's: refused when it is sized
        job = client.submit("x", where="dataset == 'tok'", mixture={"lang=en": 1.0})
        with pytest.raises(PlanError, match="but the job's tokenizer is"):
            WindowStream(job, other, SEQ, prefetch=0)
        # a samples job is not resized: its stream refuses the ids when it reads them
        job = client.submit("y", where="dataset == 'tok'", mixture={"lang=en": 1.0}, unit="samples")
        with pytest.raises(
            TokenizerError, match=r"holds token ids of tokenizer .* but this stream's tokenizer"
        ):
            list(itertools.islice(WindowStream(job, other, SEQ, prefetch=0), 3))


# -- determinism, resume, elastic restore ----------------------------------------------------
def digest(items: list[bytes]) -> str:
    return hashlib.sha256(b"".join(items)).hexdigest()


CHILD = """
import hashlib, itertools, json, sys
from mixplane.job import Job
from mixplane.mixture import Mixture
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.windows import WindowStream
from mixplane.tokens import load_tokenizer
snap, tok = sys.argv[1], sys.argv[2]
job = Job.from_snapshot(JobSnapshot.load(snap), load_tokenizer(tok))
h = hashlib.sha256()
for w in itertools.islice(WindowStream(job, load_tokenizer(tok), 7, worker=1, prefetch=2), 250):
    h.update(w.input_ids.tobytes() + w.labels.tobytes() + w.position_ids.tobytes() + w.cu_seqlens.tobytes() + bytes([w.component]))
print(json.dumps(h.hexdigest()))
"""


def test_another_process_streams_the_same_windows(
    twins: Path, tokenizer: Any, tmp_path: Path
) -> None:
    with Client.local(twins) as client:
        job = client.submit(
            "d",
            mixture={"lang=en": 0.5, "lang=de": 0.5},
            where="dataset == 'tok'",
            unit="tokens",
            chunk_size=80,
            seed=2,
            tokenizer=tokenizer,
            topology=Topology(workers=2),
        )
        job.snapshot().save(tmp_path / "snap")
        mine = digest(window_items(WindowStream(job, tokenizer, SEQ, worker=1, prefetch=0), 250))
    source = tokenizer.source
    runs = [
        subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "snap"), source],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            check=True,
        )
        for _ in range(2)
    ]
    assert [json.loads(r.stdout) for r in runs] == [mine, mine]


def test_windows_resume_exactly(twins: Path, tokenizer: Any) -> None:
    with Client.local(twins) as client:

        def submit() -> Job:
            return client.submit(
                "r",
                mixture={"dataset=text": 0.3, "dataset=tok": 0.7},
                unit="tokens",
                chunk_size=50,
                seed=8,
                tokenizer=tokenizer,
                topology=Topology(workers=2),
            )

        full = window_items(WindowStream(submit(), tokenizer, SEQ, worker=1), 150)
        assert len(full) == 150

        def restored_after(k: int) -> list[bytes]:
            job = submit()
            first = WindowStream(job, tokenizer, SEQ, worker=1)
            list(itertools.islice(first, k))
            job_state, window_state = job.state_dict(), first.state_dict()
            again = submit()
            again.load_state_dict(json.loads(json.dumps(job_state)))
            second = WindowStream(again, tokenizer, SEQ, worker=1)
            second.load_state_dict(json.loads(json.dumps(window_state)))
            return window_items(second, 150 - k)

        check_resume(full, restored_after, [0, 1, 9, 40, 111, 149])


@pytest.mark.parametrize(
    ("before", "after"),
    [(Topology(dp_groups=2), Topology(dp_groups=3)), (Topology(workers=3), Topology(workers=1))],
)
def test_elastic_restore_reads_every_document_once(
    twins: Path, tokenizer: Any, before: Topology, after: Topology
) -> None:
    def submit(client: Client, topology: Topology) -> Job:
        return client.submit(
            "el",
            where="dataset == 'tok'",
            mixture={"lang=en": 0.5, "lang=de": 0.5},
            unit="tokens",
            chunk_size=70,
            seed=4,
            tokenizer=tokenizer,
            topology=topology,
            on_exhausted="stop",
        )

    def consume(job: Job, topology: Topology, limit: int | None) -> list[tuple[int, int]]:
        seen = []
        for g in range(topology.dp_groups):
            for w in range(topology.workers):
                stream = job.stream(g, 0, w)
                seen += [(s.file_id, s.ordinal) for s in itertools.islice(stream, limit)]
        return seen

    with Client.local(twins) as client:
        everything = sorted(consume(submit(client, before), before, None))
        job = submit(client, before)
        first = consume(job, before, 13)
        again = submit(client, after)
        again.load_state_dict(job.state_dict())
        combined = sorted(first + consume(again, after, None))
        assert combined == everything and len(set(combined)) == len(combined)
