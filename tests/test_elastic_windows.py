"""An elastic restore of window streams is exact per token (guarantee 5): every token an old
rank's window stream had not yielded is yielded once after the restore, none twice.

Every document is made of ids used nowhere else (a word-level tokenizer of 30,000 words, text
``w<id> ...`` or the same ids stored as Megatron ``.bin/.idx``), so each input token names its
place in the corpus: a token yielded twice, or lost, is seen as such.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.documents import DocumentReader
from mixplane.client.handover import handed_over
from mixplane.client.windows import WindowStream
from mixplane.errors import StateError
from mixplane.job import Job, place_windows
from tests.tokendata import tiny_tokenizer, write_megatron

SEQ = 16
WORDS = 30_000  # the EOS is id WORDS
DOMAINS = {"a": (90, 1, 40), "b": (40, 20, 120), "c": (160, 1, 8)}  # docs, shortest, longest


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("elastic")
    tok = tiny_tokenizer(root / "tok", WORDS)
    rng = np.random.default_rng(3)
    first = 0
    with Client.local(root / "home") as client:
        for domain, (n, low, high) in DOMAINS.items():
            docs = []
            for _ in range(n):
                size = int(rng.integers(low, high + 1))
                docs.append(np.arange(first, first + size, dtype=np.int64))
                first += size
            (root / "text").mkdir(exist_ok=True)
            with (root / "text" / f"{domain}.jsonl").open("wb") as f:
                for doc in docs:
                    text = " ".join(f"w{i}" for i in doc)
                    f.write(orjson.dumps({"text": text, "domain": domain}) + b"\n")
            write_megatron(root / "tokens" / domain / "part", docs, "int32")
        client.catalog.register("text", root / "text", properties={"domain": "domain"})
        client.catalog.register(
            "tok", root / "tokens", tokenizer=tok, path_pattern=r"/(?P<domain>[a-z])/part"
        )
        client.catalog.count_tokens(tok, datasets=["text"], progress=False)
    assert first < WORDS
    return root / "home", tok


def submit(client: Any, dataset: str, tok: Any, topology: Topology, **extra: Any) -> Job:
    """The job, in-process (``Client.local``) or on a server (``Client.remote``)."""
    return client.submit(
        "el",
        where=f"dataset == '{dataset}'",
        mixture={"domain=a": 0.5, "domain=b": 0.3, "domain=c": 0.2},
        unit="tokens",
        chunk_size=200,
        seed=5,
        tokenizer=tok,
        topology=topology,
        on_exhausted="stop",
        **extra,
    )


def streams(job: Job, tok: Any) -> list[WindowStream]:
    t = job.topology
    return [
        WindowStream(job, tok, SEQ, dp_group=g, worker=w, prefetch=0)
        for w in range(t.workers)
        for g in range(t.dp_groups)
    ]


def take(windows: list[WindowStream], limit: int | None) -> list[Any]:
    """Windows of the streams in turn, one each, up to ``limit`` in all (None: to the end)."""
    out: list[Any] = []
    its = [iter(s) for s in windows]
    live = list(range(len(its)))
    while live and (limit is None or len(out) < limit):
        for i in list(live):
            if limit is not None and len(out) >= limit:
                break
            w = next(its[i], None)
            if w is None:
                live.remove(i)
            else:
                out.append(w)
    return out


def corpus_ids(job: Job, tok: Any) -> Counter[int]:
    """Per component, the ids of every document the job's chunks hold (any topology)."""
    specs = list(job.plan(10_000))
    rests = DocumentReader(tok)(job.reader(), specs, job.spec.seed, shuffle=False)
    out: Counter[int] = Counter()
    for rest in rests:
        for doc in rest.docs:
            ids = tok.encode_batch([doc])[0] if isinstance(doc, str) else doc.tolist()
            out.update(ids)
    return out


def inputs(windows: list[Any]) -> Counter[int]:
    out: Counter[int] = Counter()
    for w in windows:
        out.update(int(i) for i in w.input_ids if i != WORDS)
    return out


def elastic_run(
    home: Path,
    tok: Any,
    dataset: str,
    before: Topology,
    after: Topology,
    stop: int,
    strip: bool = False,
) -> tuple[list[Any], list[Any], set[int]]:
    with Client.local(home) as client:
        job = submit(client, dataset, tok, before)
        first = take(streams(job, tok), stop)
        state = orjson.loads(orjson.dumps(job.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
        if strip:  # the window streams' places left out: the restore as it was before
            for consumer in state["consumers"].values():
                consumer.pop("window", None)
        again = submit(client, dataset, tok, after)
        again.load_state_dict(state)
        rest = take(streams(again, tok), None)
        return first, rest, owed_ids(again, tok)


def check_exact(
    home: Path,
    tok: Any,
    dataset: str,
    first: list[Any],
    rest: list[Any],
    after: Topology,
    owed: set[int] | None,
    universe: Counter[int] | None = None,
) -> None:
    if universe is None:
        with Client.local(home) as client:
            universe = corpus_ids(submit(client, dataset, tok, after), tok)
    universe.pop(WORDS, None)
    seen = inputs(first) + inputs(rest)
    twice = {i: n for i, n in seen.items() if n > 1}
    assert not twice, f"{len(twice)} tokens yielded twice"
    assert set(seen) <= set(universe)
    missing = set(universe) - set(seen)
    # what is never yielded is each final stream's packer rest: at most SEQ per component
    assert len(missing) <= SEQ * len(DOMAINS) * after.consumers
    if owed is not None:  # exactly the rest the final streams' places say they owe
        assert missing == owed


def owed_ids(job: Job, tok: Any) -> set[int]:
    """The ids the job's window streams still owe where they stand (at the end: what their
    packers hold), from their places in the job's state: the head, then the documents of
    their chunk rest from the handover's skip on (``client.handover``)."""
    out: set[int] = set()
    shuffle = job.spec.order == "shuffled"
    for consumer, position in job.state_dict()["consumers"].items():
        c, j = int(consumer), position["j"]
        handover = handed_over(position["window"], job.assignment.handover(c, j))
        k, start = job.assignment.chunk(c, j)
        spec = job.chunk(k)
        rest = None
        if spec is not None:
            (rest,) = DocumentReader(tok)(job.reader(), [spec], job.spec.seed, shuffle=shuffle)
            rest = rest[start + position["offset"] :]
        for component in range(job.num_components):
            out.update(handover["tokens"][component])
            stream: list[int] = []
            for i in np.flatnonzero(rest.components == component) if rest else []:
                doc = rest.docs[i]  # type: ignore[union-attr]
                ids = tok.encode_batch([doc])[0] if isinstance(doc, str) else doc.tolist()
                stream += [*ids, WORDS] if ids and ids[-1] != WORDS else ids
            out.update(stream[handover["skips"][component] :])
    out.discard(WORDS)
    return out


CASES = [
    ("tok", Topology(dp_groups=2), Topology(dp_groups=1), 37),
    ("text", Topology(dp_groups=2), Topology(dp_groups=1), 37),
    ("tok", Topology(dp_groups=2), Topology(dp_groups=3), 101),
    ("text", Topology(workers=3), Topology(dp_groups=2), 64),
]


@pytest.mark.parametrize(("dataset", "before", "after", "stop"), CASES)
def test_elastic_restore_yields_every_token_once(
    home: tuple[Path, Any], dataset: str, before: Topology, after: Topology, stop: int
) -> None:
    path, tok = home
    first, rest, owed = elastic_run(path, tok, dataset, before, after, stop)
    assert len(first) == stop and rest
    check_exact(path, tok, dataset, first, rest, after, owed)


def test_without_the_window_places_tokens_come_twice(home: tuple[Path, Any]) -> None:
    """The negative control: the restore per chunk (no window places in the state) yields the
    windows of the chunks in progress again, and the check sees it."""
    path, tok = home
    before, after = Topology(dp_groups=2), Topology(dp_groups=1)
    first, rest, owed = elastic_run(path, tok, "tok", before, after, 37, strip=True)
    with pytest.raises(AssertionError, match="yielded twice"):
        check_exact(path, tok, "tok", first, rest, after, owed)


def test_a_handed_over_chunk_resumes_exactly_and_hands_over_again(
    home: tuple[Path, Any],
) -> None:
    """Inside a handed-over chunk: a same-topology resume continues window for window, and a
    second elastic restore from there is exact over all three runs."""
    path, tok = home
    before, after, last = Topology(dp_groups=2), Topology(dp_groups=1), Topology(dp_groups=2)
    with Client.local(path) as client:
        job = submit(client, "text", tok, before)
        first = take(streams(job, tok), 37)
        state = job.state_dict()
        again = submit(client, "text", tok, after)
        again.load_state_dict(state)
        (stream,) = streams(again, tok)
        it = iter(stream)
        second = list(itertools.islice(it, 5))
        assert again.assignment.handover(0, 0) is not None  # 5 windows into a handed-over chunk
        saved_job, saved_stream = again.state_dict(), stream.state_dict()
        continued = [w.input_ids.tobytes() for w in itertools.islice(it, 30)]
        same = submit(client, "text", tok, after)
        same.load_state_dict(saved_job)
        (resumed,) = streams(same, tok)
        resumed.load_state_dict(saved_stream)
        assert [w.input_ids.tobytes() for w in itertools.islice(resumed, 30)] == continued
        third_job = submit(client, "text", tok, last)
        third_job.load_state_dict(saved_job)
        third = take(streams(third_job, tok), None)
        owed = owed_ids(third_job, tok)
    check_exact(path, tok, "text", first, second + third, last, owed)


def test_a_state_saved_in_process_hands_over_through_the_server(
    home: tuple[Path, Any], tmp_path: Path
) -> None:
    """The server restores an in-process state under another topology (``POST state``): its
    clients' window streams get the handovers with the assignment and pack them."""
    from tests.server.conftest import Server

    path, tok = home
    before, after = Topology(dp_groups=2), Topology(dp_groups=1)
    with Client.local(path) as client:
        job = submit(client, "tok", tok, before)
        first = take(streams(job, tok), 37)
        state = orjson.loads(orjson.dumps(job.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
        universe = corpus_ids(submit(client, "tok", tok, after), tok)
    server = Server(path)
    try:
        with Client.remote(server.url) as remote:
            again = submit(remote, "tok", tok, after, replace=True)
            again.restore(state)
            assert again.assignment.handovers  # the handovers came with the assignment
            rest = take([WindowStream(again, tok, SEQ, prefetch=0)], None)
    finally:
        server.kill()
    check_exact(path, tok, "tok", first, rest, after, None, universe)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s["consumers"]["0"]["window"].update(taken=[1, 2]),
        lambda s: s["consumers"]["0"]["window"]["packer"].update(tokens="x"),
        lambda s: s["handovers"][0][1].update(starts=[[3, 1], [], []]),
        lambda s: s["handovers"][0][1].update(skips=[-1, 0, 0]),
        lambda s: s["handovers"][0][1]["tokens"][0].append(2**40),
    ],
)
def test_corrupt_window_places_and_handovers_are_refused(
    home: tuple[Path, Any], corrupt: Any
) -> None:
    path, tok = home
    with Client.local(path) as client:
        job = submit(client, "tok", tok, Topology(dp_groups=2))
        take(streams(job, tok), 37)
        once = submit(client, "tok", tok, Topology(dp_groups=1))
        once.load_state_dict(job.state_dict())
        (stream,) = streams(once, tok)
        take([stream], 3)
        state = orjson.loads(orjson.dumps(once.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
        assert "window" in state["consumers"]["0"] and state["handovers"]
        corrupt(state)
        fresh = submit(client, "tok", tok, Topology(dp_groups=2))
        before = fresh.state_dict()
        with pytest.raises(StateError, match="corrupt"):
            fresh.load_state_dict(state)
        assert fresh.state_dict() == before


def test_a_server_job_restores_elastically_with_its_streams_places(
    home: tuple[Path, Any],
) -> None:
    """A server's state knows the chunks only (its clients pack the windows): with the window
    streams' places added (``place_windows``) its elastic restore is exact; without them it is
    per chunk, and the check sees tokens twice."""
    from tests.server.conftest import Server

    path, tok = home
    before, after = Topology(dp_groups=2), Topology(dp_groups=1)
    with Client.local(path) as client:
        universe = corpus_ids(submit(client, "tok", tok, after), tok)
    server = Server(path)
    try:
        with Client.remote(server.url) as remote:
            job = submit(remote, "tok", tok, before, replace=True)  # the home keeps jobs
            ranks = streams(job, tok)
            first = take(ranks, 37)
            checkpoint = job.checkpoint()
            assert all("window" not in c for c in checkpoint["consumers"].values())
            places = {(g, 0): s.state_dict() for g, s in enumerate(ranks)}
            rests = {}
            for label, state in (
                ("placed", place_windows(checkpoint, places)),
                ("plain", checkpoint),
            ):
                again = submit(remote, "tok", tok, after, replace=True)
                again.restore(state)
                rests[label] = take(streams(again, tok), None)
    finally:
        server.kill()
    check_exact(path, tok, "tok", first, rests["placed"], after, None, universe)
    with pytest.raises(AssertionError, match="yielded twice"):
        check_exact(path, tok, "tok", first, rests["plain"], after, None, universe)


def test_place_windows_refuses_streams_older_than_the_job_state(home: tuple[Path, Any]) -> None:
    path, tok = home
    with Client.local(path) as client:
        job = submit(client, "tok", tok, Topology(dp_groups=2))
        ranks = streams(job, tok)
        take(ranks, 37)
        state = job.state_dict()
        place = ranks[0].state_dict()
        assert place_windows(state, {(0, 0): place})["consumers"]["0"]["window"]["taken"]
        later = copy.deepcopy(state)
        later["planner"]["next_chunk"] = 99
        with pytest.raises(StateError, match="take it at the same step or earlier"):
            place_windows(later, {(0, 0): place})
        old = {k: v for k, v in place.items() if k != "taken"}
        with pytest.raises(StateError, match="older mixplane"):
            place_windows(state, {(0, 0): old})
