"""OLMo-core's ``Trainer`` on a mixplane job: its smallest model on the CPU (gloo), 1 and 2 ranks.

An ADO job runs in-process in every rank: this process submits it and saves one snapshot, each
rank opens the job from it, and ``MixplaneFeedback`` feeds it the train module's per-domain loss
(with several ranks, ``LossFeedback`` all-reduces it and every rank applies the same numbers from
the same chunk, so all ranks keep one plan). For each number of ranks it trains ``--steps`` steps
uninterrupted; then half of them, stops the processes, and resumes from OLMo-core's own
checkpoint (model, optimizer and each rank's ``train/rank<R>.pt`` with the loader state, the job's
state included) in new processes for the rest. It checks that every rank trained on the same
batches (token hashes) with the same losses, ADO weights and mixture log after the resume as the
uninterrupted run (chunks planned with changed weights are read after the resume), that ADO's
weights moved, that all ranks hold the same weights and mixture log at every step, and that the
DP ranks read disjoint windows. A negative control resumes without the data state (the loader
starts its stream over) and must differ. Each run prints the share of step time spent waiting
for the next batch.

Run: ``.venv/bin/python examples/olmo_core_trainer.py [--ranks 1 2] [--steps 12]``
(needs ``pip install 'mixplane[olmo]'``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mixplane.chunking import Topology
from mixplane.client import Client
from mixplane.client.snapshot import JobSnapshot
from mixplane.job import Job
from mixplane.tokens.tokenizer import load_tokenizer

SEQ = 32  # tokens per window
WINDOWS = 4  # windows per rank per step
ADO = {"start_step": 3, "refit_interval": 2, "ignore_steps": 0, "subsample": 1,
       "savgol_window": 3, "savgol_order": 1, "seq_len": SEQ}  # fmt: skip
MIXTURE = {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2}


def write_corpus(root: Path) -> tuple[Path, Path]:
    """A JSONL corpus of three languages and a 300-token BPE trained on it."""
    from trainer_harness import write_language_corpus

    write_language_corpus(root, root / "tokenizer.json")
    return root / "home", root / "tokenizer.json"


# ---------------------------------------------------------------- one rank (a child process)


def rank_main(config: dict[str, Any]) -> None:
    """Train one rank with OLMo-core's Trainer; writes a JSON line per step to ``out``."""
    from olmo_core.distributed.utils import get_rank, get_world_size
    from olmo_core.nn.transformer import TransformerConfig
    from olmo_core.optim import AdamWConfig
    from olmo_core.train import Duration, TrainerConfig, prepare_training_environment
    from olmo_core.train.callbacks import Callback, CheckpointerCallback
    from olmo_core.train.train_module import (
        TransformerDataParallelConfig,
        TransformerDataParallelWrappingStrategy,
    )

    from mixplane.integrations.olmo_core import (
        DomainLossTrainModule,
        MixplaneDataLoader,
        MixplaneFeedback,
    )

    world = int(os.environ.get("WORLD_SIZE", "1"))
    prepare_training_environment(seed=0, backend="gloo" if world > 1 else None)
    rank, world = get_rank(), get_world_size()
    tokenizer = load_tokenizer(config["tokenizer"])
    job = Job.from_snapshot(JobSnapshot.load(config["snapshot"]), tokenizer)  # same on every rank

    class Forgetful(MixplaneDataLoader):  # type: ignore[misc]
        """The negative control: a loader that keeps no data position in the checkpoint."""

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.batches_processed = state_dict["batches_processed"]
            self.tokens_processed = state_dict["tokens_processed"]

    loader_class = MixplaneDataLoader if config["data_state"] else Forgetful
    loader = loader_class(
        job,
        tokenizer,
        sequence_length=SEQ,
        global_batch_size=world * WINDOWS * SEQ,
        work_dir=Path(config["save_folder"]) / "work",
        dp_world_size=world,
        dp_rank=rank,
    )
    model = TransformerConfig.olmo2_1M(vocab_size=384).build(init_device="cpu")
    dp = None
    if world > 1:
        dp = TransformerDataParallelConfig(
            name=config["dp"], wrapping_strategy=TransformerDataParallelWrappingStrategy.full
        )
    module = DomainLossTrainModule(
        model=model,
        optim=AdamWConfig(lr=3e-3),
        rank_microbatch_size=WINDOWS * SEQ,
        max_sequence_length=SEQ,
        dp_config=dp,
    )

    class Record(Callback):  # type: ignore[misc]
        """Per step: the batch's token hash, this rank's loss, the job's weights and mixture log
        (a digest), the chunk being read and its mixture version, and the time from asking the loader for a batch to getting it (waiting) vs.
        the whole step."""

        def __init__(self) -> None:
            super().__init__()
            self.out = Path(config["out"]) / f"rank{rank}.jsonl"
            self.asked = self.got = 0.0
            self.row: dict[str, Any] = {}

        def pre_load_batch(self) -> None:
            self.asked = time.perf_counter()

        def pre_step(self, batch: dict[str, Any]) -> None:
            self.got = time.perf_counter()
            digest = hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()[:16]
            self.row = {"step": self.step, "hash": digest, "wait": self.got - self.asked}
            windows = {
                hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16] for w in batch["input_ids"]
            }
            self.row["windows"] = sorted(windows)

        def pre_optim_step(self) -> None:
            taken = module.step_domain_losses()
            assert taken is not None
            self.row["loss"] = float(taken[0].mean())

        def post_step(self) -> None:
            self.row["time"] = time.perf_counter() - self.asked
            self.row["weights"] = [float(w) for w in job.weights]
            log = json.dumps(job.mixture_log, sort_keys=True).encode()
            self.row["log"] = [len(job.mixture_log), hashlib.sha256(log).hexdigest()[:16]]
            consumer = job.topology.consumer(rank, 0)
            index, _ = job.assignment.chunk(consumer, job.progress().positions[consumer]["j"])
            chunk = job.chunk(index)
            self.row["chunk"] = [index, chunk.mixture_version if chunk is not None else None]
            self.row["params"] = sum(float(p.detach().double().sum()) for p in model.parameters())
            with self.out.open("a") as f:
                f.write(json.dumps(self.row) + "\n")

    callbacks: dict[str, Callback] = {
        "record": Record(),
        "mixplane_feedback": MixplaneFeedback(job),
    }
    callbacks["checkpointer"] = CheckpointerCallback(
        save_interval=config["save_at"] or 10**6, pre_train_checkpoint=False, save_async=False
    )
    trainer = TrainerConfig(
        save_folder=config["save_folder"],
        max_duration=Duration.steps(config["steps"]),
        metrics_collect_interval=1,
        device="cpu",
        callbacks=callbacks,
    ).build(module, loader)
    trainer.fit()


# ---------------------------------------------------------------- the runs (this process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PRELOAD = [
    "torch",
    "olmo_core.train",
    "olmo_core.nn.transformer",
    "mixplane.integrations.olmo_core",
]


def _rank_entry(config: dict[str, Any], env: dict[str, str], log: str) -> None:
    """A rank process (forked from the fork server, which imported OLMo-core once and never
    trained): torchrun's environment, output to ``log``."""
    os.environ.update(env)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    rank_main(config)


def launch(config: dict[str, Any], ranks: int, root: Path) -> None:
    """Start ``ranks`` new processes of ``rank_main`` (torchrun's environment) and wait for
    them. They fork from a fork server that has imported OLMo-core (seconds per process saved;
    nothing of a previous run is in it)."""
    Path(config["out"]).mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    port = _free_port()
    name = Path(config["save_folder"]).name
    procs, logs = [], []
    for rank in range(ranks):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks),
               "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        logs.append(root / f"log-{name}-{time.monotonic_ns()}-rank{rank}.txt")
        proc = context.Process(target=_rank_entry, args=(config, env, str(logs[-1])))
        proc.start()
        procs.append(proc)
    for rank, proc in enumerate(procs):
        proc.join(timeout=600)
        if proc.exitcode != 0:
            msg = f"rank {rank} of {name} failed:\n{logs[rank].read_text()[-3000:]}"
            raise RuntimeError(msg)


def rows(out: Path, ranks: int) -> list[list[dict[str, Any]]]:
    return [[json.loads(line) for line in (out / f"rank{r}.jsonl").open()] for r in range(ranks)]


def run(
    root: Path, ranks: int, steps: int, *, dp: str = "ddp", control: bool = True
) -> dict[str, Any]:
    """Uninterrupted, interrupted + resumed, and the negative control, for ``ranks`` ranks."""
    tokenizer = root / "tokenizer.json"
    snapshot = root / f"{ranks}-job"
    with Client.local(root / "home") as client:  # one job, one snapshot: every rank opens it
        job = client.submit(
            "olmo",
            mixture=MIXTURE,
            unit="tokens",
            chunk_size=128,
            seed=0,
            algorithm="ado",
            algorithm_options=ADO,
            topology=Topology(dp_groups=ranks),
            tokenizer=load_tokenizer(str(tokenizer)),
        )
        job.snapshot().save(snapshot)
    base = {"tokenizer": str(tokenizer), "snapshot": str(snapshot), "dp": dp}

    def config(
        name: str, steps: int, *, data_state: bool = True, save_at: int = 0
    ) -> dict[str, Any]:
        return dict(base, save_folder=str(root / f"{ranks}-{name}"), steps=steps,
                    out=str(root / f"{ranks}-{name}-out"), data_state=data_state,
                    save_at=save_at)  # fmt: skip

    half = steps // 2
    launch(config("full", steps, save_at=half), ranks, root)
    full = rows(root / f"{ranks}-full-out", ranks)
    checkpoint = root / f"{ranks}-full" / f"step{half}"
    names = ["resumed", "forgetful"] if control else ["resumed"]
    for name in names:  # a new process resumes from the checkpoint of step `half`
        shutil.copytree(checkpoint, root / f"{ranks}-{name}" / f"step{half}")
        launch(config(name, steps, data_state=name == "resumed"), ranks, root)
    resumed = [
        r[:half] + rest
        for r, rest in zip(full, rows(root / f"{ranks}-resumed-out", ranks), strict=True)
    ]
    forgetful = None
    if control:
        forgetful = [
            r[:half] + rest
            for r, rest in zip(full, rows(root / f"{ranks}-forgetful-out", ranks), strict=True)
        ]

    def column(runs: list[list[dict[str, Any]]], key: str) -> list[list[Any]]:
        return [[row[key] for row in rank_rows] for rank_rows in runs]

    matched = column(resumed, "hash") == column(full, "hash")
    losses = column(resumed, "loss") == column(full, "loss")
    weights = column(resumed, "weights") == column(full, "weights")
    logs = column(resumed, "log") == column(full, "log")
    differs = forgetful is not None and column(forgetful, "hash") != column(full, "hash")
    steady = [row for rank_rows in full for row in rank_rows[1:]]
    waiting = sum(row["wait"] for row in steady) / sum(row["time"] for row in steady)
    report = {
        "ranks": ranks,
        "steps": steps,
        "resume_matched": matched,
        "losses_matched": losses,
        "weights_matched": weights,
        "log_matched": logs,
        # every rank holds the same weights and mixture log after every step
        "ranks_agree": all(
            column(runs, key)[r] == column(runs, key)[0]
            for runs in (full, resumed)
            for key in ("weights", "log")
            for r in range(ranks)
        ),
        "changes": full[0][-1]["log"][0] - 1,  # mixture changes the feedback made
        # after the resume every rank trained on a chunk planned with a changed mixture
        "adapted_read": all(
            (row["chunk"][1] or 0) > 0 for rank_rows in resumed for row in rank_rows[-1:]
        ),
        "control_differs": differs,
        "waiting": waiting,
        "weights_first": full[0][0]["weights"],
        "weights_last": full[0][-1]["weights"],
        "full": full,
        "resumed": resumed,
    }
    if ranks > 1:  # disjoint windows across the DP ranks
        seen = [{w for row in rank_rows for w in row["windows"]} for rank_rows in full]
        report["dp_disjoint"] = sum(map(len, seen)) == len(set().union(*seen))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--dp", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--report", type=Path, help="write the runs' figures here (JSON)")
    args = parser.parse_args()
    reports = []
    with tempfile.TemporaryDirectory(prefix="mixplane-olmo-") as tmp:
        root = Path(os.environ.get("MIXPLANE_EXAMPLE_DIR") or tmp)
        write_corpus(root)
        for ranks in args.ranks:
            report = run(root, ranks, args.steps, dp=args.dp, control=ranks == args.ranks[0])
            reports.append(report)
            if args.report is not None:
                args.report.write_text(json.dumps(reports))
            verdict = (
                "matched" if report["resume_matched"] and report["losses_matched"] else "DIFFERED"
            )
            print(
                f"olmo-core, {ranks} rank(s), {args.steps} steps: resume {verdict} "
                f"(batches and losses on every rank after resuming at step {args.steps // 2}); "
                f"without data state: {'differs' if report['control_differs'] else 'SAME/not run'}; "
                f"waiting for data: {report['waiting']:.1%} of step time"
            )
            first, last = (
                [round(w, 3) for w in report[key]] for key in ("weights_first", "weights_last")
            )
            print(
                f"  ADO weights {first} -> {last} ({report['changes']} mixture changes); "
                f"same weights and mixture log on every rank at every step: "
                f"{report['ranks_agree']}; last step's chunk has a changed mixture on every "
                f"rank: {report['adapted_read']}"
            )
            if ranks > 1:
                print(f"  dp ranks read disjoint windows: {report['dp_disjoint']}")
            assert report["resume_matched"] and report["losses_matched"], report
            assert report["weights_matched"] and report["log_matched"], report
            assert report["ranks_agree"] and report["adapted_read"], report
            assert report["control_differs"] or ranks != args.ranks[0]
            assert report["weights_first"] != report["weights_last"]
            if ranks > 1:
                assert report["dp_disjoint"]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "rank":
        rank_main(json.loads(Path(sys.argv[2]).read_text()))
    else:
        main()
