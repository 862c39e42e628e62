"""HF Trainer and Lightning on a mixplane ADO job, 2 CPU processes each (issue 14).

Each test runs its example's protocol (``examples/trainer_harness.py``): train 8 steps
uninterrupted; train 4, stop the processes, resume the framework's own checkpoint in new
processes and train the rest; resume again without the data state (negative control). The
batches of every rank and step (token hashes) and the losses after the resume equal the
uninterrupted run's, the control's differ, feedback moved the ADO weights to the same place in
both runs, and the two DP ranks (``dp_groups=2``) read disjoint windows. Lightning also trains
with both processes in one DP group (``dp_groups=1``, ``ranks_per_group=2``): every step's batch
is the same on both ranks, and their feedback (all-reduced, divided by the ranks per group, one
sender) moves ADO.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest

from mixplane.chunking import Topology
from mixplane.client import Client

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import trainer_harness  # noqa: E402


def check(result: dict[str, Any]) -> None:
    half = trainer_harness.STEPS // 2
    for rank in range(trainer_harness.NPROC):
        full = result["full"][rank]["steps"]
        resumed = result["first"][rank]["steps"] + result["rest"][rank]["steps"]
        assert len(full) == trainer_harness.STEPS
        assert [s["hash"] for s in resumed] == [s["hash"] for s in full], f"rank {rank}"
        assert [s["loss"] for s in resumed[half:]] == [s["loss"] for s in full[half:]]
        control = result["control"][rank]["steps"]
        assert [s["hash"] for s in control] != [s["hash"] for s in full[half:]]
        assert 0 < result["full"][rank]["wait"]["fraction"] < 1
    weights, changes = result["final"]["full"]
    assert changes > 0 and weights != result["weights0"]["full"]  # feedback moved ADO
    assert result["final"]["split"] == result["final"]["full"]  # and to the same place
    assert result["disjoint"]
    if result["group"]:  # one DP group of 2 ranks, inside the running trainer
        steps = [[s["hash"] for s in r["steps"]] for r in result["group"]]
        assert len(steps[0]) == trainer_harness.STEPS // 2
        assert steps[0] == steps[1], "the ranks of one DP group got different batches"
        weights, changes = result["final"]["group"]
        assert changes > 0 and weights != result["weights0"]["group"]


@pytest.mark.parametrize("script", ["hf_trainer.py", "lightning_trainer.py"])
def test_trainer_resumes_every_rank_exactly(script: str, tmp_path: Path) -> None:
    pytest.importorskip("transformers" if script.startswith("hf") else "lightning")
    same_group = script.startswith("lightning")  # one trainer is enough (one more launch)
    result = trainer_harness.prove(EXAMPLES / script, tmp_path, [], same_group=same_group)
    check(result)
    assert bool(result["group"]) == same_group


def test_ranks_of_one_group_read_the_same_batches(tmp_path: Path) -> None:
    """The loaders both adapters build (a ``TokenWindowDataset`` per rank, batched by the
    adapter): identical within a DP group, disjoint across groups."""
    pytest.importorskip("lightning")
    from mixplane.integrations.lightning import MixplaneDataModule
    from mixplane.integrations.pytorch import TokenWindowDataset

    setup = trainer_harness.prepare(tmp_path)
    batches: dict[tuple[int, int], list[str]] = {}
    with Client.local(setup.home) as client:
        for dp_groups in (1, 2):
            job = client.submit(
                f"groups{dp_groups}",
                mixture=trainer_harness.MIX,
                topology=Topology(dp_groups=dp_groups, ranks_per_group=2 // dp_groups),
                tokenizer=str(setup.tokenizer),
                chunk_size=2048,
                seed=3,
            )
            for rank in range(2):
                data = MixplaneDataModule(
                    lambda r, w, job=job: TokenWindowDataset(
                        job, str(setup.tokenizer), trainer_harness.SEQ, rank=r, world_size=w
                    ),
                    trainer_harness.BATCH,
                )
                data.dataset = data.make_dataset(rank, 2)
                batches[dp_groups, rank] = [
                    trainer_harness.batch_hash(b["input_ids"], b["labels"])
                    for b in itertools.islice(data.train_dataloader(), 3)
                ]
    assert batches[1, 0] == batches[1, 1]  # one group of 2 ranks: the same data
    assert not set(batches[2, 0]) & set(batches[2, 1])  # two groups: disjoint


BLOCKED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchdata", "transformers", "accelerate", "lightning"):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
import mixplane.cli, mixplane.client, mixplane.job, mixplane.integrations
for module in ("hf_trainer", "lightning"):
    try:
        __import__(f"mixplane.integrations.{module}")
    except ImportError as exc:
        print(type(exc).__name__, exc)
"""


def test_the_core_imports_without_the_trainers() -> None:
    """The frameworks are imported only by their integration modules, which say what to
    install when they are missing."""
    import subprocess

    run = subprocess.run(
        [sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("DependencyError") == 2 and "pip install" in run.stdout
