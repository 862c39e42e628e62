"""The dashboard in a real browser (issue 7): headless Chromium, driven over the Chrome DevTools
Protocol, loads the page from a server with tokens, asks for a token and trades it for an
HttpOnly, SameSite=Strict session cookie of the viewer role (issue 17: no token in the address,
the script cannot read the cookie, the session cannot write), draws every chart with data
points, draws more as feedback and chunk requests arrive, and logs no error (a script error, a
refused request, a Content-Security-Policy violation). An old ``/?token=`` link is traded the
same way and the token removed from the address. A screenshot is left in
``tests/browser/artifacts/dashboard.png``.

Chromium is Debian's ``chromium`` package; the module's set-up installs it with apt-get when it
is missing (as root) and skips, saying why, when it cannot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import NAMES, TOKENS, Server, register_corpus, spec, write_tokens
from tests.server.test_dashboard import ask_chunks, send_feedback, submit_ado

pytestmark = pytest.mark.integration

websockets_client = pytest.importorskip("websockets.sync.client")

ARTIFACTS = Path(__file__).parent / "artifacts"
WIDTH, HEIGHT = 1400, 2000
NOISE = 0.02  # relative error of the synthetic losses (a realistic picture)
CHARTS = ("weights", "planned", "losses", "throughput", "consumers")
# what the page shows, read in the page (numbers of data points drawn per chart)
PROBE = """(() => {
  const status = document.getElementById("status");
  if (!status) return JSON.stringify({ updates: 0, charts: {} });  // not loaded yet
  return JSON.stringify({
    updates: Number(document.body.dataset.updates),
    status: status.textContent,
    charts: Object.fromEntries([...document.querySelectorAll("[data-chart]")]
      .map((e) => [e.dataset.chart, Number(e.dataset.points)])),
    svgs: document.querySelectorAll("svg.plot").length,
    rows: document.querySelectorAll("#jobs tbody tr").length,
    title: document.getElementById("job-title").textContent,
    laws: document.querySelectorAll("#laws tbody tr").length,
  });
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium executable, installed with apt-get when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it with")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed; installing it needs root: apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    errors = ""
    for commands in ([install], [["apt-get", "update", "-q"], install]):
        for command in commands:
            proc = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=900, check=False
            )
            if proc.returncode != 0:
                errors = proc.stderr.strip()[-500:]
                break
        else:
            break
    found = shutil.which("chromium")
    if found is None:
        pytest.skip(f"chromium is missing and 'apt-get install chromium' failed: {errors}")
    return found


class Browser:
    """One headless Chromium and one page of it, driven over the DevTools Protocol."""

    def __init__(self, executable: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.stack = contextlib.ExitStack()
        self.log = (profile / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--mute-audio",
                "about:blank",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        port_file = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                text = (profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"chromium did not start: {text}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        url = f"ws://127.0.0.1:{port}{path}"
        self.ws = self.stack.enter_context(
            websockets_client.connect(url, max_size=None, open_timeout=30)
        )
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session=True)

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = False
    ) -> dict[str, Any]:
        """Send one command and wait for its answer (events meanwhile are kept)."""
        message: dict[str, Any] = {"id": next(self.ids), "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + 30
        while True:
            answer = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if answer.get("id") == message["id"]:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return dict(answer["result"])
            if "method" in answer:
                self.events.append(answer)

    def evaluate(self, expression: str, *, wait: bool = False) -> Any:
        """The value of ``expression`` in the page (``wait``: of the promise it gives)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": wait}
        result = self.call("Runtime.evaluate", params, session=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def problems(self, since: int = 0) -> list[str]:
        """Errors the page met (from event ``since`` on): exceptions, and error entries of the
        log (failed requests, refused by the Content-Security-Policy, ...)."""
        out = []
        for event in self.events[since:]:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                out.append(str(params.get("exceptionDetails", {}))[:500])
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
            elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                out.append(f"console: {params.get('args')}"[:500])
        return out

    def close(self) -> None:
        self.stack.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    started = Browser(chromium, tmp_path / "profile")
    try:
        yield started
    finally:
        started.close()


def wait_until(read: Callable[[], dict[str, Any]], ready: Callable[[dict[str, Any]], bool]) -> Any:
    deadline = time.monotonic() + 20
    seen = read()
    while not ready(seen):
        assert time.monotonic() < deadline, f"the page did not get there: {seen}"
        time.sleep(0.2)
        seen = read()
    return seen


SESSION_PROBE = """(() => JSON.stringify({
  login: Boolean(document.getElementById("login")) && !document.getElementById("login").hidden,
  who: document.getElementById("who") ? document.getElementById("who").textContent : "",
  cookie: document.cookie,
  address: window.location.href,
}))()"""
WRITE_ATTEMPT = """fetch("/v1/jobs/live", {method: "DELETE", headers: {"X-Mixplane-Protocol": "1"}})
  .then(async (r) => JSON.stringify({status: r.status, body: await r.json()}))"""


def test_the_dashboard_draws_and_follows_a_job(tmp_path: Path, browser: Browser) -> None:
    started = time.monotonic()
    tokens = write_tokens(tmp_path / "tokens.json")
    server = Server(register_corpus(tmp_path), "--tokens-file", str(tokens))
    try:
        client = server.client(TOKENS["trainer"])
        submit_ado(client, "live", {"dp_groups": 2, "workers": 2})
        for j in range(3):
            ask_chunks(client, "live", 4, j)
        send_feedback(client, "live", range(30), NOISE)  # one refit (step 20): curves to draw

        def read() -> dict[str, Any]:
            return dict(json.loads(browser.evaluate(PROBE)))

        def session() -> dict[str, Any]:
            return dict(json.loads(browser.evaluate(SESSION_PROBE)))

        # the page loads without a token and asks for one; a wrong one is refused
        browser.call("Page.navigate", {"url": f"{server.url}/"}, session=True)
        wait_until(session, lambda s: s["login"])
        assert read()["updates"] == 0
        browser.evaluate(
            'document.getElementById("login-token").value = "wrong-token-000000000000";'
            'document.getElementById("login").requestSubmit()'
        )
        note = 'document.getElementById("login-note").textContent'
        wait_until(lambda: {"note": browser.evaluate(note)}, lambda s: "401" in s["note"])
        assert session()["login"]
        # the viewer's token is traded for the session cookie, then forgotten
        logged_in = len(browser.events)
        browser.evaluate(
            f'document.getElementById("login-token").value = "{TOKENS["viewer"]}";'
            'document.getElementById("login").requestSubmit()'
        )
        first = wait_until(read, lambda s: s["updates"] >= 1 and s["charts"].get("losses", 0) > 0)
        facts = session()
        assert not facts["login"] and facts["who"] == f"{NAMES['viewer']} (viewer)"
        assert facts["cookie"] == ""  # HttpOnly: the page's script cannot read it
        assert facts["address"] == f"{server.url}/"  # no token in the address
        assert browser.evaluate('document.getElementById("login-token").value') == ""
        cookies = browser.call("Network.getCookies", {"urls": [server.url]}, session=True)
        (cookie,) = cookies["cookies"]
        assert cookie["name"] == "mixplane_session" and cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert TOKENS["viewer"] not in cookie["value"]

        assert set(first["charts"]) == set(CHARTS), first
        assert first["svgs"] == len(CHARTS) and first["rows"] == 1 and first["laws"] == 3
        assert first["status"].startswith("live"), first["status"]
        charts = first["charts"]
        assert charts["weights"] == 3 * 11  # 1 + 10 log entries per component
        assert charts["planned"] == 3 and charts["consumers"] == 4
        assert charts["losses"] >= 3 * 30 + 3 * 10  # loss dots and fitted curves

        # more feedback and chunks: the next polls draw more
        send_feedback(client, "live", range(30, 60), NOISE)
        for j in range(3, 6):
            ask_chunks(client, "live", 4, j)
        later = wait_until(
            read,
            lambda s: s["charts"]["losses"] >= 3 * 60 + 3 * 10 and s["charts"]["weights"] == 3 * 41,
        )
        assert later["updates"] > first["updates"]
        assert later["charts"]["throughput"] >= 1

        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=True)
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard.png").write_bytes(png)

        # another job appears in the list by itself; its link shows its panels
        plain = {"spec": spec("plain"), "topology": {"dp_groups": 1, "workers": 1}}
        assert client.post("/v1/jobs", json=plain).status_code == 200
        wait_until(read, lambda s: s["rows"] == 2)
        browser.evaluate("document.querySelector(\"a[href='#job=plain']\").click()")
        other = wait_until(read, lambda s: s["title"] == "plain")
        assert other["charts"]["losses"] == 0  # no feedback yet
        assert other["charts"]["weights"] == 3  # its one mixture, per component
        assert browser.problems(since=logged_in) == []

        # the session reads and nothing more: a script in the page cannot delete a job
        attempt = json.loads(browser.evaluate(WRITE_ATTEMPT, wait=True))
        assert attempt["status"] == 403
        assert "session of 'viewer-holder' has role 'viewer'" in attempt["body"]["error"]
        assert client.get("/v1/jobs/live").status_code == 200

        # signing out ends the session; an old /?token= link is traded and leaves the address
        browser.evaluate('document.getElementById("logout").click()')
        wait_until(session, lambda s: s["login"])
        browser.call("Network.clearBrowserCookies", session=True)
        link = f"{server.url}/?token={TOKENS['admin']}#job=plain"
        browser.call("Page.navigate", {"url": link}, session=True)
        traded = wait_until(
            session, lambda s: s["who"] == f"{NAMES['admin']} (viewer)" and not s["login"]
        )
        assert traded["address"] == f"{server.url}/#job=plain"
        history = browser.call("Page.getNavigationHistory", session=True)
        assert all(TOKENS["admin"] not in entry["url"] for entry in history["entries"])
        wait_until(read, lambda s: s["title"] == "plain" and s["updates"] >= 1)
    finally:
        server.kill()
    assert time.monotonic() - started < 60
