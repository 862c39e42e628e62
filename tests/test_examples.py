"""Every script in examples/ runs and ends in its own asserts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# the trainer examples (and their shared harness) run in tests/integrations/test_trainers.py
ELSEWHERE = {"hf_trainer.py", "lightning_trainer.py", "trainer_harness.py"}
EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.py")
    if p.name not in ELSEWHERE
)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
