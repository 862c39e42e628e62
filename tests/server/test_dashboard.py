"""The live dashboard (issue 7): the page and its files are served locally (no other host is
named anywhere), its JSON endpoints answer a job's weights history, planned samples, recent
losses, ADO's fitted laws, throughput and consumer positions, and every datum needs the token
(or a session traded for it, issue 17) when the server has one."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from mixplane.protocol import PROTOCOL_HEADER
from tests.server.conftest import Server, spec

pytestmark = pytest.mark.integration

ADO_OPTIONS = {
    "start_step": 20,
    "refit_interval": 20,
    "ignore_steps": 2,
    "subsample": 2,
    "savgol_window": 11,
    "seq_len": 64,
}
# per component (by component id): the loss law L(n) = eps + beta * n^-alpha of the
# synthetic feedback, and the tokens each step trains on
LAWS = [(2.0, 3.0, 0.5), (2.5, 2.0, 0.3), (1.8, 4.0, 0.6)]
TOKENS = [256.0, 160.0, 96.0]
SAMPLES_PER_STEP = sum(TOKENS) / ADO_OPTIONS["seq_len"]  # ADO's n advances by this (8)
URL = re.compile(r"https?://[^\s\"'<>)`]+")
# a namespace name, which the browser compares and never fetches
NOT_FETCHED = {"http://www.w3.org/2000/svg"}


def true_loss(component: int, n: float) -> float:
    eps, beta, alpha = LAWS[component]
    return eps + beta * n**-alpha


def feedback(step: int, noise: float = 0.0) -> dict[str, Any]:
    """Step ``step``'s feedback: each component's loss at the samples trained after it
    (times 1 + a deterministic uniform error of at most ``noise``)."""
    n = (step + 1) * SAMPLES_PER_STEP
    rng = random.Random(step)
    means = [true_loss(c, n) * (1 + noise * rng.uniform(-1, 1)) for c in range(len(LAWS))]
    return {
        "step": step,
        "loss_sum": [m * t for m, t in zip(means, TOKENS, strict=True)],
        "token_count": TOKENS,
    }


def send_feedback(client: httpx.Client, job_id: str, steps: range, noise: float = 0.0) -> None:
    for step in steps:
        answer = client.post(f"/v1/jobs/{job_id}/feedback", json=feedback(step, noise))
        assert answer.status_code == 200, answer.text


def ask_chunks(client: httpx.Client, job_id: str, consumers: int, j: int) -> int:
    """Each consumer's j-th chunk, its ranks reporting they consume it; returns how many
    chunks were answered."""
    body = {
        "requests": [{"consumer": c, "j": j} for c in range(consumers)],
        "consumed": [{"consumer": c, "rank": 0, "j": j} for c in range(consumers)],
    }
    answer = client.post(f"/v1/jobs/{job_id}/chunks", json=body)
    assert answer.status_code == 200, answer.text
    return sum(item["chunk"] is not None for item in answer.json()["chunks"])


def submit_ado(client: httpx.Client, job_id: str, topology: dict[str, int]) -> dict[str, Any]:
    body = {
        "spec": spec(job_id, algorithm="ado", algorithm_options=ADO_OPTIONS),
        "topology": topology,
    }
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_the_page_and_its_files_are_local(shared: tuple[Server, str, Path]) -> None:
    server, _, _ = shared
    with httpx.Client(base_url=server.url, timeout=30) as browser:  # no headers, like a browser
        page = browser.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert page.headers["referrer-policy"] == "no-referrer"
        links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assets = [link for link in links if link != "data:,"]  # (data:, : no favicon)
        assert sorted(assets) == ["/static/app.js", "/static/style.css"]
        texts = {"/": page.text}
        for asset in assets:
            answer = browser.get(asset)
            assert answer.status_code == 200, asset
            kind = "text/javascript" if asset.startswith("/static/app.js") else "text/css"
            assert answer.headers["content-type"].startswith(kind)
            texts[asset] = answer.text
        for name, text in texts.items():
            urls = set(URL.findall(text)) - NOT_FETCHED
            assert not urls, f"{name} names other hosts: {sorted(urls)}"
            assert "@import" not in text and "url(" not in text.replace("url(#", "")
        assert browser.get("/static/other.js").status_code == 404
        assert browser.get("/static/index.html").status_code == 200


def test_the_page_is_open_and_its_data_needs_a_token_or_a_session(
    shared: tuple[Server, str, Path],
) -> None:
    """Issue 17: the page and its files hold no data and load without a token (nothing secret
    in an address); every datum needs the bearer token or a session cookie traded for it."""
    server, token, _ = shared
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for path in ("/", "/static/app.js", "/static/style.css", "/static/index.html"):
            assert anonymous.get(path).status_code == 200, path
        protocol = {PROTOCOL_HEADER: "1"}
        for path in ("/v1/dashboard/jobs", "/v1/jobs/none/dashboard"):
            refused = anonymous.get(path, headers=protocol)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            # a token in the address is worth nothing
            assert anonymous.get(path, params={"token": token}, headers=protocol).status_code == 401
            bearer = {"Authorization": f"Bearer {token}"}
            assert anonymous.get(path, headers=bearer).status_code == 400  # no protocol header
    with server.client(token) as client:
        assert client.get("/v1/dashboard/jobs").status_code == 200
        missing = client.get("/v1/jobs/none/dashboard")
        assert missing.status_code == 404 and "unknown job 'none'" in missing.json()["error"]


def test_an_ado_jobs_dashboard(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    client = server.client(token)
    submit_ado(client, "ado", {"dp_groups": 2, "workers": 2})
    served = sum(ask_chunks(client, "ado", 4, j) for j in range(3))
    assert served == 12
    send_feedback(client, "ado", range(60))

    answer = client.get("/v1/jobs/ado/dashboard")
    assert answer.status_code == 200, answer.text
    board = answer.json()
    k = 3
    assert board["job_id"] == "ado" and board["algorithm"] == "ado" and board["unit"] == "samples"
    assert sorted(board["selectors"]) == ["language=de", "language=en", "language=fr"]

    # weights over time: the whole mixture log (ADO changes the weights every step from 20 on)
    log = client.get("/v1/jobs/ado/weights").json()["mixture_log"]
    weights = board["weights"]
    assert weights["total"] == len(log) == 1 + 40
    assert len(weights["history"]) == len(log)
    for entry, logged in zip(weights["history"], log, strict=True):
        assert entry["chunk"] == logged["chunk"] and entry["version"] == logged["version"]
        assert entry["weights"] == pytest.approx(logged["weights"])
        assert math.isclose(sum(entry["weights"]), 1.0)
    assert [e["step"] for e in weights["history"][1:]] == list(range(20, 60))
    assert weights["history"][0]["cause"] == "phase" and weights["history"][0]["step"] is None
    assert weights["current"] == pytest.approx(log[-1]["weights"])

    # planned samples per component: the chunks asked for, 50 samples each
    planned = board["planned"]
    assert planned["chunks"] == 12
    assert sum(planned["samples"]) == 12 * 50 and all(s > 0 for s in planned["samples"])
    assert planned["tokens"] is None  # a job budgeted in samples

    # recent losses: the mean loss of each step, at the n ADO counted
    losses = board["losses"]
    assert losses["received"] == 60 and losses["steps"] == list(range(60))
    for c in range(k):
        assert len(losses["mean"][c]) == len(losses["n"][c]) == 60
        for step in (0, 31, 59):
            n = (step + 1) * SAMPLES_PER_STEP
            assert losses["n"][c][step] == pytest.approx(n)
            assert losses["mean"][c][step] == pytest.approx(true_loss(c, n))

    # the laws ADO fitted (two refits: steps 20 and 40), with curves over the n shown
    fits = board["fits"]
    assert fits["algorithm"] == "ado" and fits["refits"] == 2 and fits["step"] == 59
    assert fits["n"] == pytest.approx([60 * SAMPLES_PER_STEP] * k)
    for c, fit in enumerate(fits["components"]):
        law = fit["law"]
        assert law is not None and 0 <= law["alpha"] <= 0.8
        assert law["eps"] > 0 and law["beta"] > 0
        curve = fit["curve"]
        assert curve["n"][0] == pytest.approx(SAMPLES_PER_STEP)
        assert curve["n"][-1] == pytest.approx(60 * SAMPLES_PER_STEP)
        assert curve["n"] == sorted(curve["n"]) and len(curve["n"]) == len(curve["loss"]) > 10
        assert curve["loss"][0] > curve["loss"][-1]  # losses fall with n
        for n, loss in zip(curve["n"], curve["loss"], strict=True):  # noiseless: a close fit
            # (the first steps are left out of the fit and the last 20 came after it)
            close = 0.01 if n >= 5 * SAMPLES_PER_STEP else 0.05
            assert loss == pytest.approx(true_loss(c, n), rel=close)
        assert curve["loss"][-1] == pytest.approx(
            law["eps"] + law["beta"] * curve["n"][-1] ** -law["alpha"]
        )

    # throughput and where each consumer is
    throughput = board["throughput"]
    assert throughput["chunks_served"] == served and throughput["chunks_per_s"] > 0
    assert all(rate >= 0 for _, rate in throughput["series"])
    consumers = board["consumers"]
    assert consumers["count"] == 4 and consumers["live_ranks"] == 4
    assert [c["j"] for c in consumers["shown"]] == [2, 2, 2, 2]
    assert (consumers["min_j"], consumers["max_j"], consumers["mean_j"]) == (2, 2, 2.0)
    assert sorted(c["chunk"] for c in consumers["shown"]) == [8, 9, 10, 11]
    assert [(c["dp_group"], c["worker"]) for c in consumers["shown"]] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
    ]

    # the overview line
    jobs = {j["job_id"]: j for j in client.get("/v1/dashboard/jobs").json()["jobs"]}
    line = jobs["ado"]
    assert line["feedback"] == 60 and line["last_step"] == 59
    assert line["mixture_changes"] == 40 and line["chunks_planned"] == 12
    assert line["chunks_served"] == served and line["consumers"] == 4
    assert line["weights"] == pytest.approx(weights["current"]) and not line["ended"]

    # fewer entries: the log thinned evenly (first and last kept), the last steps
    small = client.get("/v1/jobs/ado/dashboard", params={"history": 5, "steps": 10}).json()
    versions = [e["version"] for e in small["weights"]["history"]]
    assert len(versions) == 5 and versions[0] == 0 and versions[-1] == 40
    assert versions == sorted(versions) and small["weights"]["total"] == 41
    assert small["losses"]["steps"] == list(range(50, 60))
    assert small["fits"]["components"][0]["curve"]["n"][0] == pytest.approx(51 * 8)
    for bad in ({"history": 0}, {"steps": -1}, {"history": "x"}):
        assert client.get("/v1/jobs/ado/dashboard", params=bad).status_code == 422

    # more feedback shows up at the next poll
    send_feedback(client, "ado", range(60, 70))
    later = client.get("/v1/jobs/ado/dashboard").json()
    assert later["losses"]["steps"][-1] == 69 and later["weights"]["total"] == 51
    assert later["fits"]["refits"] == 3
    client.delete("/v1/jobs/ado").raise_for_status()


def test_a_static_jobs_dashboard(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    client = server.client(token)
    body = {"spec": spec("plain"), "topology": {"dp_groups": 1, "workers": 1}}
    assert client.post("/v1/jobs", json=body).status_code == 200
    assert ask_chunks(client, "plain", 1, 0) == 1
    send_feedback(client, "plain", range(5))
    board = client.get("/v1/jobs/plain/dashboard").json()
    assert board["algorithm"] is None and board["fits"] is None
    assert board["weights"]["total"] == 1
    assert board["losses"]["steps"] == list(range(5)) and board["losses"]["n"] is None
    assert board["losses"]["mean"][2][4] == pytest.approx(true_loss(2, 5 * SAMPLES_PER_STEP))
    assert board["consumers"]["shown"] == [
        {"consumer": 0, "dp_group": 0, "worker": 0, "j": 0, "chunk": 0}
    ]
    # a static job plans ahead in the background: what it planned is counted too
    assert sum(board["planned"]["samples"]) == 50 * board["planned"]["chunks"] >= 50
    client.delete("/v1/jobs/plain").raise_for_status()


def test_tokens_planned_for_a_token_budgeted_job(shared: tuple[Server, str, Path]) -> None:
    server, token, _ = shared
    client = server.client(token)
    named = spec("tok", unit="tokens", chunk_size=2000, tokenizer="bytes-fingerprint")
    refused = client.post("/v1/jobs", json={"spec": named, "topology": {}})
    assert refused.status_code == 400  # names a tokenizer it neither sent nor counted with
    assert "cannot size job 'tok' in tokens" in refused.json()["error"]
    job = spec("tok", unit="tokens", chunk_size=2000)  # a fixed bytes-per-token ratio
    answer = client.post("/v1/jobs", json={"spec": job, "topology": {}})
    assert answer.status_code == 200, answer.text
    assert "fixed 4.0 bytes per token" in answer.json()["note"]
    assert ask_chunks(client, "tok", 1, 0) == 1
    planned = client.get("/v1/jobs/tok/dashboard").json()["planned"]
    assert planned["tokens"] is not None and len(planned["tokens"]) == 3
    assert sum(planned["tokens"]) >= 2000 * 0.9 * planned["chunks"]
    client.delete("/v1/jobs/tok").raise_for_status()
