"""Every script in examples/ runs and ends in its own asserts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
# examples that are their own integration test (run there, with their figures checked)
OWN_TEST = {
    "olmo_core_trainer.py": "tests/integrations/test_olmo_core.py",
    "torchtitan_loader.py": "tests/integrations/test_torchtitan.py",  # in its own venv
    "hf_trainer.py": "tests/integrations/test_trainers.py",
    "lightning_trainer.py": "tests/integrations/test_trainers.py",
    "trainer_harness.py": "tests/integrations/test_trainers.py",  # the two above's harness
}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path) -> None:
    if script.name in OWN_TEST:
        pytest.skip(f"runs in {OWN_TEST[script.name]}")
    run = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
