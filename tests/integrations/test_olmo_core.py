"""OLMo-core's Trainer on a mixplane job (issue 14): ``examples/olmo_core_trainer.py`` as a test.

An ADO job in-process on two DP ranks (DDP on gloo; every rank opens it from one snapshot and
applies the all-reduced feedback of the train module from the same chunk) and on one rank:
ADO's weights move and both ranks hold the same weights and mixture log after every step; resume
in new processes from OLMo-core's own checkpoint gives every rank the uninterrupted run's
batches, losses, weights and mixture log; resuming without the data state differs; the DP ranks
read disjoint windows.
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
    command = [sys.executable, str(EXAMPLE), "--steps", "8", "--ranks", "2", "1"]
    run = subprocess.run(
        [*command, "--report", str(report_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resume matched" in run.stdout
    two, one = json.loads(report_path.read_text())
    for report in (two, one):
        assert report["resume_matched"], "a rank's batches after the resume differ"
        assert report["losses_matched"], "losses after the resume differ"
        assert report["weights_matched"], "the job's weights after the resume differ"
        assert report["log_matched"], "the job's mixture log after the resume differs"
        assert len(report["full"]) == report["ranks"]
        assert all(len(rows) == 8 for rows in report["full"])
        assert report["changes"] > 0, "feedback changed no mixture"
        assert report["adapted_read"], "no chunk of a changed mixture was trained on"
        for rows in report["full"]:
            assert rows[0]["weights"] != rows[-1]["weights"], "feedback did not move ADO's weights"
    assert two["control_differs"], "resuming without the data state gave the same batches"
    assert two["ranks_agree"], "the ranks' weights or mixture logs differ at some step"
    for key in ("weights", "log"):  # the same check, spelled out on the rows
        for run_rows in (two["full"], two["resumed"]):
            assert [row[key] for row in run_rows[0]] == [row[key] for row in run_rows[1]]
    assert two["dp_disjoint"], "the two DP ranks read a common window"
    hashes = [[row["hash"] for row in rows] for rows in two["full"]]
    assert hashes[0] != hashes[1]
