"""torchtitan's ``torchtitan.train`` on a mixplane job (issue 14): ``examples/torchtitan_loader.py``
as a test, in torchtitan's own venv (it pins datasets<4.8; ``make venv`` builds
``.venv-torchtitan``, and this test builds it when it is missing).

One rank, then two DP ranks (FSDP on gloo): resuming in new processes from torchtitan's own
checkpoint (DCP, each DP rank's loader state under its key) gives every rank the uninterrupted
run's batches and losses; resuming without the data state differs; the DP ranks read disjoint
windows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "torchtitan_loader.py"
VENV = ROOT / ".venv-torchtitan"


def titan_python() -> Path:
    """The torchtitan venv's interpreter, built (``pip install -e '.[torchtitan]'``) if absent."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if not stamp.exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        build = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[torchtitan]"],
            check=False,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if build.returncode != 0:
            pytest.fail(f"cannot build {VENV} for torchtitan:\n{build.stderr[-3000:]}")
        stamp.touch()
    return python


@pytest.mark.integration
@pytest.mark.slow
def test_torchtitan_train_resumes_exactly_on_a_mixplane_job(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [str(titan_python()), str(EXAMPLE), "--steps", "4", "--ranks", "1", "2"]
    run = subprocess.run(
        [*command, "--report", str(report_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "resume matched" in run.stdout
    one, two = json.loads(report_path.read_text())
    for report in (one, two):
        assert report["resumed_matched"], "a rank's batches after the resume differ"
        assert report["losses_matched"], "losses after the resume differ"
        losses = report["losses"]["resumed"]
        assert len(losses) == report["ranks"] and all(len(rank) == 2 for rank in losses)
    assert one["control_differs"], "resuming without the data state gave the same batches"
    assert two["dp_disjoint"], "the two DP ranks read a common window"
