"""A real ``mixplane serve`` subprocess on loopback, for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r"listening on (http://[\d.]+:(\d+))")


class Server:
    """``mixplane --home HOME serve --port PORT`` started, found and stopped by tests."""

    def __init__(self, home: Path, *, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.home, self.extra = home, extra
        self.port = port
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60) -> Server:
        env = {k: v for k, v in os.environ.items() if k not in ("MIXPLANE_HOME", "MIXPLANE_SERVER")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mixplane.cli",
                "--home",
                str(self.home),
                "serve",
                "--port",
                str(self.port),
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = LISTENING.search(line)
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
                return self
        self.stop()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        raise AssertionError(f"the server did not start: {err[-2000:]}")

    def kill(self) -> None:
        """kill -9: no shutdown handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
