"""torchtitan's ``torchtitan.train`` on a mixplane job (issue 14): ``examples/torchtitan_loader.py``
as a test, in torchtitan's own venv (it pins datasets<4.8; ``make venv`` builds
``.venv-torchtitan``, and this test builds it when it is missing).

One rank on an ADO job with the loss paired with the loader (``with_loss_feedback``):
resuming in a new process from torchtitan's own checkpoint (DCP) gives the uninterrupted run's
batches and losses; resuming without the data state differs. (The example's static 2-rank
in-process run, ``--ranks 1 2``, is left to the command line: the server test below covers two
DP ranks with FSDP, each DP rank's loader state under its key, at a third less test time.) The
paired loss sends feedback once per optimizer step, numbered alike after the
resume, without changing the loss value; on the ADO job it moved the weights, and the resumed
run ends with the uninterrupted run's weights and mixture log. Second test: two DP ranks on an
ADO job of a mixplane server (adaptive mixing on several ranks needs one planner): stopped at
half the steps and resumed in new processes, every rank's batches and the losses after the
resume are the uninterrupted run's (another job of the same definition), and both jobs end with
the same weights and mixture log. Third: tensor parallel ranks of one DP group get the same
batches. Fourth (in one process, seconds): what the paired loss refuses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def run_example(tmp_path: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    """The example's stdout and reports, run in torchtitan's venv."""
    report_path = tmp_path / "report.json"
    command = [str(titan_python()), str(EXAMPLE), "--steps", "6", "--algorithm", "ado", *args]
    run = subprocess.run(
        [*command, "--report", str(report_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return run.stdout, json.loads(report_path.read_text())


@pytest.mark.integration
@pytest.mark.slow
def test_torchtitan_train_resumes_exactly_on_a_mixplane_job(tmp_path: Path) -> None:
    stdout, (one,) = run_example(tmp_path, "--ranks", "1")
    assert "resume matched" in stdout
    assert one["resumed_matched"], "a rank's batches after the resume differ"
    assert one["losses_matched"], "losses after the resume differ"
    losses = one["losses"]["resumed"]
    assert len(losses) == one["ranks"] and all(len(rank) == 3 for rank in losses)
    fed = one["feedback"]
    assert fed["steps"] == [1, 2, 3, 4, 5, 6] and fed["resumed_steps"] == [4, 5, 6]
    assert fed["same_loss"], "the paired loss changed the loss value"
    assert fed["log_matched"], "the resumed run's weights or mixture log differ"
    assert one["control_differs"], "resuming without the data state gave the same batches"
    ado = one["feedback"]
    assert ado["changes"] > 0 and ado["weights"] != ado["weights0"], "feedback did not move ADO"


@pytest.mark.integration
@pytest.mark.slow
def test_torchtitan_adapts_on_two_ranks_through_the_server(tmp_path: Path) -> None:
    _, (remote,) = run_example(tmp_path, "--ranks", "--server")
    assert remote["resumed_matched"], "a rank's batches after the resume differ"
    assert remote["losses_matched"], "losses after the resume differ"
    assert remote["dp_disjoint"], "the two DP ranks read a common window"
    assert remote["changes"] > 0 and remote["weights"] != remote["weights0"], "ADO did not move"
    assert remote["log_matched"], "the resumed job's weights or mixture log differ"
    assert remote["resumed_steps"] == [4, 5, 6] and remote["same_loss"]


@pytest.mark.integration
@pytest.mark.slow
def test_torchtitan_tensor_parallel_ranks_get_the_same_batches(tmp_path: Path) -> None:
    """Two ranks in one DP group (tensor parallel degree 2, ``dp_world_size=1``), inside the
    running trainer: the same batch on both at every step, and both send their part of every
    step's feedback (the all-reduce is divided by the 2 ranks of the group)."""
    _, (tp,) = run_example(tmp_path, "--ranks", "--tp")
    assert tp["steps"] == 3 and tp["identical"], "the ranks of one DP group got different batches"
    assert tp["sent"] == [[1, 2, 3], [1, 2, 3]] and tp["same_loss"]


@pytest.mark.integration
def test_the_paired_loss_refuses_what_breaks_the_pairing() -> None:
    """``titan_checks.py`` in torchtitan's venv: the loss value is the plain loss's,
    validation batches are not kept, one ``send`` per step reaches the job once, and labels
    that are not the recorded batch's, a batch the loss never saw, a second feedback loader,
    pipeline and context parallelism are refused by name."""
    run = subprocess.run(
        [str(titan_python()), str(ROOT / "tests" / "integrations" / "titan_checks.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["same_loss"] and out["kept"] == 2 and out["sent"] == [1, 1]
    assert "labels at the loss differ" in out["wrong_labels"]
    assert "before the loss saw every batch" in out["unseen_batch"]
    assert "feedback=False" in out["second_loader"]
    assert "pipeline parallelism" in out["pipeline"]
    assert "context parallelism" in out["context"]
