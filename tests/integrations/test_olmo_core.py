"""OLMo-core's Trainer on a mixplane job (issue 14): ``examples/olmo_core_trainer.py`` as a test.

One rank (an adaptive job with feedback from the train module) and two DP ranks (DDP on gloo):
resume in new processes from OLMo-core's own checkpoint gives every rank the uninterrupted run's
batches and losses; resuming without the data state differs; the DP ranks read disjoint windows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("olmo_core")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "olmo_core_trainer.py"


@pytest.mark.integration
@pytest.mark.slow
def test_olmo_core_trainer_resumes_exactly_and_adapts(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [sys.executable, str(EXAMPLE), "--steps", "8", "--ranks", "1", "2"]
    run = subprocess.run(
        [*command, "--report", str(report_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resume matched" in run.stdout
    one, two = json.loads(report_path.read_text())
    for report in (one, two):
        assert report["resume_matched"], "a rank's batches after the resume differ"
        assert report["losses_matched"], "losses after the resume differ"
        assert report["weights_matched"], "the job's weights after the resume differ"
        assert len(report["full"]) == report["ranks"]
        assert all(len(rows) == 8 for rows in report["full"])
    assert one["control_differs"], "resuming without the data state gave the same batches"
    assert one["weights_first"] != one["weights_last"], "feedback did not move ADO's weights"
    assert two["dp_disjoint"], "the two DP ranks read a common window"
    hashes = [[row["hash"] for row in rows] for rows in two["full"]]
    assert hashes[0] != hashes[1]
