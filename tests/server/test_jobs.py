"""Jobs through a real server: registration, idempotent submission, chunks equal to an
in-process job's, feedback, durable checkpoints across kill -9, and metrics."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest

from mixplane.chunking import Topology
from mixplane.chunking.spec import ChunkSpec
from mixplane.client import Client
from mixplane.job import Phase
from mixplane.mixture.mixture import Mixture
from mixplane.protocol import MSGPACK
from mixplane.server.feedback_log import read_records
from tests.conftest import run_cli
from tests.server.conftest import (
    MIX,
    Server,
    packed,
    register_corpus,
    spec,
    wait_for,
)

pytestmark = pytest.mark.integration

TOPOLOGY = Topology(dp_groups=2, ranks_per_group=2, workers=2)
CONSUMERS = range(TOPOLOGY.consumers)


def decode(answer: Any) -> Any:
    assert answer.status_code < 400, answer.text
    if answer.headers["content-type"] == MSGPACK:
        return msgpack.unpackb(answer.content)
    return answer.json()


def submit_body(
    job_spec: dict[str, Any], topology: Topology = TOPOLOGY, **kw: Any
) -> dict[str, Any]:
    return {"spec": job_spec, "topology": topology.to_json(), **kw}


def ask(
    client: Any,
    job_id: str,
    pairs: list[tuple[int, int]],
    *,
    as_msgpack: bool = False,
    consumed: list[dict[str, int]] | None = None,
) -> dict[tuple[int, int], tuple[Any, int]]:
    body = {"requests": [{"consumer": c, "j": j} for c, j in pairs], "consumed": consumed or []}
    kwargs = packed(body) if as_msgpack else {"json": body}
    answer = decode(client.post(f"/v1/jobs/{job_id}/chunks", **kwargs))
    return {
        (item["consumer"], item["j"]): (
            ChunkSpec.from_wire(item["chunk"]) if item["chunk"] is not None else None,
            item["start"],
        )
        for item in answer["chunks"]
    }


def test_register_through_the_server_and_ls(tmp_path: Path, start: Callable[..., Server]) -> None:
    home = register_corpus(tmp_path)
    more = tmp_path / "more"
    more.mkdir()
    (more / "a.jsonl").write_text(
        "\n".join(json.dumps({"text": f"extra {i}", "meta": {"language": "en"}}) for i in range(7))
        + "\n"
    )
    server = start(home)
    client = server.client()
    report = decode(
        client.post(
            "/v1/datasets",
            **packed(
                {
                    "name": "extra",
                    "paths": [str(more)],
                    "properties": {"language": "meta.language"},
                    "constants": {"source": "web", "year": 2024},
                    "format": None,
                    "preset": None,
                    "text_field": None,
                    "on_error": "raise",
                    "replace": False,
                }
            ),
        )
    )
    assert report["name"] == "extra" and report["samples"] == 7 and report["files"] == 1
    again = client.post("/v1/datasets", json={"name": "extra", "paths": [str(more)]})
    assert again.status_code == 409 and "already registered" in again.json()["error"]
    listed = {d["name"]: d for d in decode(client.get("/v1/datasets"))}
    assert listed["extra"]["samples"] == 7 and listed["corpus"]["samples"] == 1200
    files = decode(client.get("/v1/files"))
    assert {f["dataset"] for f in files} == {"corpus", "extra"}
    explained = decode(
        client.post("/v1/explain", json={"where": "year == 2024", "by": ["language"]})
    )
    assert [c["samples"] for c in explained["components"]] == [7]
    assert server.stop() in (0, -15)
    ls = json.loads(run_cli(home, "ls", "--json").stdout)  # the catalog kept it
    assert {d["name"]: d["samples"] for d in ls} == {"corpus": 1200, "extra": 7}


def test_submit_is_idempotent_and_another_spec_is_a_conflict(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    server = start(register_corpus(tmp_path))
    client = server.client()
    first = decode(client.post("/v1/jobs", json=submit_body(spec("run"))))
    assert first["job_id"] == "run" and first["num_components"] == 3
    assert first["selectors"] == ["language=de", "language=en", "language=fr"]
    assert first["topology"] == TOPOLOGY.to_json() and first["read_group"] == 20
    assert decode(client.post("/v1/jobs", **packed(submit_body(spec("run"))))) == first
    state = decode(client.get("/v1/jobs/run/state"))
    for other in (
        submit_body(spec("run", seed=4)),
        submit_body(spec("run"), Topology(dp_groups=3)),
    ):
        conflict = client.post("/v1/jobs", json=other)
        assert conflict.status_code == 409
        assert "exists with another definition" in conflict.json()["error"]
    assert "seed" in client.post("/v1/jobs", json=submit_body(spec("run", seed=4))).json()["error"]
    ask(client, "run", [(0, 0)], consumed=[{"consumer": 0, "rank": 0, "j": 2}])
    replaced = decode(client.post("/v1/jobs", json=submit_body(spec("run", seed=4), replace=True)))
    assert replaced["spec"]["seed"] == 4
    assert decode(client.get("/v1/jobs/run/state"))["spec"] != state["spec"]
    assert [j["job_id"] for j in decode(client.get("/v1/jobs"))] == ["run"]
    assert decode(client.delete("/v1/jobs/run")) == {"job_id": "run", "deleted": True}
    assert client.get("/v1/jobs/run").status_code == 404
    assert not (tmp_path / "home" / "server" / "jobs" / "run.json").exists()


def _in_process_jobs(
    home: Path,
) -> list[tuple[dict[str, Any], dict[tuple[int, int], tuple[Any, int]]]]:
    """Job definitions and their chunks (consumer, j) -> (chunk, start), computed in-process."""
    out = []
    with Client.local(home) as client:
        for job in (
            client.submit(
                "samples", unit="samples", mixture=MIX, chunk_size=40, seed=5, topology=TOPOLOGY
            ),
            client.submit(
                "tokens",
                where="quality > 0.2",
                mixture={"uniform": ["language"]},
                unit="tokens",
                chunk_size=900,
                seed=1,
                bytes_per_token=3.5,
                topology=TOPOLOGY,
                schedule=[Phase(start=3, mixture=Mixture.from_json({"language=en": 1.0}))],
            ),
            client.submit(
                "ends",
                unit="samples",
                mixture={"language=de": 1.0},
                chunk_size=90,
                on_exhausted="stop",
                order="as-stored",
                topology=TOPOLOGY,
            ),
        ):
            chunks = {(c, j): job.consumer_chunk(c, j) for c in CONSUMERS for j in range(3)}
            out.append((job.spec.to_json(), chunks))
    return out


def test_chunks_equal_an_in_process_job(tmp_path: Path, start: Callable[..., Server]) -> None:
    home = register_corpus(tmp_path)
    jobs = _in_process_jobs(home)  # before the server owns the catalog
    server = start(home)
    client = server.client()
    ended = 0
    for job_spec, expected in jobs:
        decode(client.post("/v1/jobs", json=submit_body(job_spec)))
        pairs = sorted(expected, key=lambda p: (p[1], p[0]), reverse=True)  # far chunks first
        for as_msgpack in (False, True):
            got = ask(client, job_spec["job_id"], pairs, as_msgpack=as_msgpack)
            assert got == expected
        ended += sum(chunk is None for chunk, _ in expected.values())
        assert decode(client.get(f"/v1/jobs/{job_spec['job_id']}/state"))["version"] == 1
    assert ended > 0  # the 'stop' job ran out: null chunks past the end
    tokens = ask(client, "tokens", [(0, 0)])[(0, 0)][0]
    assert tokens.unit == "tokens" and tokens.tokens.sum() >= 900


def test_feedback_is_validated_and_weight_changes_are_durable(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    home = register_corpus(tmp_path)
    server = start(home, "--checkpoint-every", "0")
    client = server.client()
    decode(client.post("/v1/jobs", json=submit_body(spec("static"))))
    adaptive = spec("adaptive", algorithm="loss-proportional", algorithm_options={"mix": 0.5})
    decode(client.post("/v1/jobs", json=submit_body(adaptive)))
    for bad in [
        {"step": 1, "loss_sum": [1.0, 2.0], "token_count": [1, 2]},
        {"step": 1, "loss_sum": [1.0, 2.0, 3.0], "token_count": [1, 2]},
        {"step": 1, "loss_sum": [1.0, math.nan, 3.0], "token_count": [1, 2, 3]},
        {"step": 1, "loss_sum": [1.0, 2.0, math.inf], "token_count": [1, 2, 3]},
        {"step": 1, "loss_sum": [1.0, 2.0, 3.0], "token_count": [1, -2, 3]},
        {"step": 1, "loss_sum": [-1.0, 2.0, 3.0], "token_count": [1, 2, 3]},
    ]:
        for job_id in ("static", "adaptive"):
            answer = client.post(f"/v1/jobs/{job_id}/feedback", **packed(bad))
            assert answer.status_code == 400, answer.content
            assert "feedback" in msgpack.unpackb(answer.content)["error"]
    wrong_type = client.post(
        "/v1/jobs/static/feedback", json={"step": 1, "loss_sum": ["a"], "token_count": [1]}
    )
    assert wrong_type.status_code == 422
    good = {"step": 1, "loss_sum": [4.0, 1.0, 2.0], "token_count": [2, 2, 2]}
    assert decode(client.post("/v1/jobs/static/feedback", json=good)) == {"applies_from": None}
    ask(client, "adaptive", [(c, 0) for c in CONSUMERS])
    at = decode(client.post("/v1/jobs/adaptive/feedback", json=good))["applies_from"]
    assert at is not None and at >= TOPOLOGY.consumers
    weights = decode(client.get("/v1/jobs/adaptive/weights"))
    assert (
        weights["mixture_log"][-1]["chunk"] == at and weights["mixture_log"][-1]["cause"] == "adapt"
    )
    # the message is on disk before the answer (no periodic checkpoint runs on this server):
    # in the job's feedback log, with the change it made; the static job logs its own
    logged = [r for _, r in read_records(home / "server" / "jobs" / "adaptive.feedback")]
    assert [(r["step"], r["applies_from"]) for r in logged] == [(1, at)]
    assert logged[0]["weights"] == weights["mixture_log"][-1]["weights"]
    assert logged[0]["loss_sum"] == [4.0, 1.0, 2.0] and logged[0]["version"] == 0
    static = [r for _, r in read_records(home / "server" / "jobs" / "static.feedback")]
    assert [(r["step"], r["applies_from"], r["weights"]) for r in static] == [(1, None, None)]
    # a restart (kill -9, no checkpoint since the submit) applies it again
    server.kill()
    restarted = start(home).client()
    assert decode(restarted.get("/v1/jobs/adaptive/weights")) == weights


def _chunk_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "server" / "jobs").iterdir())


def test_checkpoints_survive_kill_9(tmp_path: Path, start: Callable[..., Server]) -> None:
    home = register_corpus(tmp_path)
    server = start(home, "--checkpoint-every", "0.2")
    client = server.client()
    decode(client.post("/v1/jobs", json=submit_body(spec("durable"))))
    consumed = [{"consumer": c, "rank": r, "j": 2} for c in CONSUMERS for r in range(2)]
    pairs = [(c, j) for c in CONSUMERS for j in range(2, 6)]
    before = ask(client, "durable", pairs, consumed=consumed)
    path = home / "server" / "jobs" / "durable.json"

    def saved_positions() -> bool:
        consumers = orjson.loads(path.read_bytes())["state"]["consumers"]
        return {int(c): s["j"] for c, s in consumers.items()} == dict.fromkeys(CONSUMERS, 2)

    wait_for(saved_positions)  # the periodic checkpoint wrote the new positions

    stop = threading.Event()
    errors: list[str] = []

    def hammer() -> None:
        with server.client() as own:
            while not stop.is_set():
                answer = own.post("/v1/jobs/durable/checkpoint")
                if answer.status_code != 200 or answer.json()["path"] != str(path):
                    errors.append(answer.text)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):  # a reader sees the old file or the new one, never a part
            assert orjson.loads(path.read_bytes())["format"] == "mixplane server job"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    server.kill()
    # no temporary file left behind (beside the checkpoint: the job's feedback log)
    assert _chunk_files(home) == ["durable.feedback", "durable.json"]

    (home / "server" / "jobs" / "broken.json").write_text("{not json")
    (home / "server" / "jobs" / "alien.json").write_text('{"format": "something else"}')
    (home / "server" / "jobs" / ".durable.json.0123.tmp").write_text("{")  # cut short
    restarted = start(home)
    client = restarted.client()
    assert [j["job_id"] for j in decode(client.get("/v1/jobs"))] == ["durable"]
    assert ask(client, "durable", pairs) == before
    assert restarted.stop() in (0, -15)
    log = restarted.log()
    assert "skipping job file" in log and "broken.json" in log and "alien.json" in log
    assert ".tmp" not in "".join(_chunk_files(home))


METRIC_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)\})?'
    r" (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))$"
)
COMMENT_LINE = re.compile(
    r"^# (?P<kind>HELP|TYPE) (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) (?P<rest>.+)$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text exposition; every line must match the format and each
    family's TYPE must come before its samples."""
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    samples = {}
    for line in text.splitlines():
        comment = COMMENT_LINE.match(line)
        if comment:
            if comment["kind"] == "TYPE":
                assert comment["rest"] in ("counter", "gauge", "histogram")
                typed[comment["name"]] = comment["rest"]
            continue
        match = METRIC_LINE.match(line)
        assert match, f"not a metric line: {line!r}"
        family = re.sub(r"_(bucket|sum|count)$", "", match["name"])
        assert match["name"] in typed or family in typed, line
        labels = tuple(LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def test_metrics(tmp_path: Path, start: Callable[..., Server]) -> None:
    server = start(register_corpus(tmp_path))
    client = server.client()
    decode(client.post("/v1/jobs", json=submit_body(spec("m1"))))
    served = 0
    for j in range(3):
        for rank in range(2):  # both ranks of each group ask: every answer counts
            got = ask(
                client,
                "m1",
                [(c, j) for c in CONSUMERS],
                consumed=[{"consumer": c, "rank": rank, "j": j} for c in CONSUMERS],
            )
            served += sum(chunk is not None for chunk, _ in got.values())
    decode(
        client.post(
            "/v1/jobs/m1/feedback", json={"step": 1, "loss_sum": [1.0] * 3, "token_count": [1] * 3}
        )
    )
    answer = client.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(answer.text)
    assert samples[("mixplane_chunks_served_total", (("job", "m1"),))] == served == 24
    assert samples[("mixplane_feedback_total", (("job", "m1"),))] == 1
    assert samples[("mixplane_jobs", ())] == 1
    planned = {
        labels: v
        for (name, labels), v in samples.items()
        if name == "mixplane_samples_planned_total"
    }
    assert {dict(k)["component"] for k in planned} == {"language=en", "language=de", "language=fr"}
    assert sum(planned.values()) >= 12 * 50  # 12 distinct chunks of 50 samples, and ahead
    assert sum(planned.values()) % 50 == 0
    endpoint = "POST /v1/jobs/{job_id}/chunks"
    buckets = [
        (dict(labels)["le"], v)
        for (name, labels), v in samples.items()
        if name == "mixplane_request_seconds_bucket" and dict(labels)["endpoint"] == endpoint
    ]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == "+Inf"
    assert (
        buckets[-1][1]
        == samples[("mixplane_request_seconds_count", (("endpoint", endpoint),))]
        == 6
    )
    assert samples[("mixplane_responses_total", (("endpoint", endpoint), ("code", "200")))] == 6
    decode(client.delete("/v1/jobs/m1"))
    after = parse_metrics(client.get("/metrics").text)
    assert ("mixplane_chunks_served_total", (("job", "m1"),)) not in after
    assert after[("mixplane_jobs", ())] == 0


def test_clean_shutdown_checkpoints_and_releases_the_catalog(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    home = register_corpus(tmp_path)
    server = start(home, "--checkpoint-every", "0")  # no periodic checkpoints
    client = server.client()
    decode(client.post("/v1/jobs", json=submit_body(spec("bye"))))
    consumed = [{"consumer": c, "rank": r, "j": 2} for c in CONSUMERS for r in range(2)]
    ask(client, "bye", [(c, 2) for c in CONSUMERS], consumed=consumed)
    path = home / "server" / "jobs" / "bye.json"
    at_submit = orjson.loads(path.read_bytes())["state"]["consumers"]
    assert at_submit == {}  # no consumer had reported when the job was submitted
    assert server.stop() in (0, -15)  # SIGTERM: graceful
    assert server.proc.stdout is not None
    assert server.proc.stdout.read() == ""  # the listening line was the only one
    saved = orjson.loads(path.read_bytes())["state"]["consumers"]
    assert {int(c): s["j"] for c, s in saved.items()} == dict.fromkeys(CONSUMERS, 2)
    with Client.local(home) as local:  # the server let go of the catalog
        assert [d.name for d in local.catalog.datasets()] == ["corpus"]


def test_a_rank_behind_the_jobs_state_gets_its_chunks_again_and_the_job_stays_saveable(
    tmp_path: Path, start: Callable[..., Server]
) -> None:
    server = start(register_corpus(tmp_path))
    client = server.client()
    decode(client.post("/v1/jobs", json=submit_body(spec("ahead"), Topology())))
    first = client.post(
        "/v1/jobs/ahead/chunks", json={"requests": [{"consumer": 0, "j": 0}], "consumed": []}
    ).json()["chunks"][0]
    position = [{"consumer": 0, "rank": 0, "j": 6}]
    ask(client, "ahead", [(0, 6)], consumed=position)

    def released() -> bool:  # chunks before 6 are dropped within RELEASE_EVERY_S
        ask(client, "ahead", [(0, 6)], consumed=position)
        state = decode(client.get("/v1/jobs/ahead/state"))
        return bool(state["planner"]["next_chunk"] == 6)

    wait_for(released)
    behind = client.post(
        "/v1/jobs/ahead/chunks",
        json={
            "requests": [{"consumer": 0, "j": 0}],
            "consumed": [{"consumer": 0, "rank": 0, "j": 0}],
        },
    )
    assert behind.status_code == 200  # planned again from the job's milestones
    assert behind.json()["chunks"][0] == first
    assert decode(client.post("/v1/jobs/ahead/checkpoint"))["path"].endswith("ahead.json")
    state = decode(client.get("/v1/jobs/ahead/state"))
    assert state["consumers"] == {"0": {"j": 0, "offset": 0}}
    assert state["planner"]["next_chunk"] == 0
