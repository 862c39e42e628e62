"""Broken mixture, schedule and job documents, in-process and through the CLI.

What the package accepts as such documents: a mixture as JSON (``Mixture.from_json``,
``Client.submit(mixture=...)``, ``mixplane plan --mixture JSON``), a mixture or schedule file as
JSON or YAML (``--mixture-file``, with ``phases`` and ``unit``), and a job definition in
``JobSpec.to_json()``'s form (snapshots, state files and the server's ``POST /v1/jobs``). Each is
mistyped (one node replaced, dropped or added) or its text cut, bit-flipped or spliced.

In-process each must give a job or a one-line ``MixplaneError``; through the CLI (click's runner:
the real command in this process) exit status 0, or 1 with one ``error:`` line on stderr. A few
inputs also go through a real ``mixplane`` process to check what reaches the terminal.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mixplane.catalog import Catalog
from mixplane.chunking.assign import Topology
from mixplane.cli import main
from mixplane.client import Client
from mixplane.errors import MixplaneError
from mixplane.job import Job, JobSpec
from mixplane.mixture.mixture import Mixture
from tests.conftest import COMMAND, write_corpus
from tests.fuzz.harness import BYTE_MUTATIONS, SEED, Tally, count, mistype, one_line, rng_for

PROPERTIES = {"language": "meta.language", "source": "meta.source", "quality": "meta.quality"}
MIXTURES: list[Any] = [
    {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2},
    {"language=en,source=web": 0.5, "language=en,source=wiki": 0.25, "language=de": 0.25},
    {
        "language=en": {"weight": 0.6, "children": {"source=web": 0.5, "source=wiki": 0.5}},
        "language=de": 0.4,
    },
    {"uniform": ["language"]},
    {"inferred": ["language", "source"]},
    {"weights": {"language=en": 0.7, "language=xx": 0.3}, "allow_empty": True},
]
SCHEDULES: list[Any] = [
    {
        "unit": "chunks",
        "phases": [
            {"start": 0, "mixture": MIXTURES[0]},
            {"start": 3, "mixture": MIXTURES[3], "where": "quality > 0.5"},
            {"start": 6, "mixture": MIXTURES[1], "on_exhausted": "stop"},
        ],
    },
    {"unit": "samples", "phases": [{"start": 0, "mixture": MIXTURES[2]}]},
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-documents")
    write_corpus(root / "data", files=2, per_file=150)
    with Catalog.open(root / "home") as catalog:
        catalog.register("corpus", root / "data", properties=PROPERTIES, progress=False)
    return root / "home"


def _document(rng: random.Random, seeds: list[Any]) -> Any:
    doc = rng.choice(seeds)
    for _ in range(rng.randint(1, 2)):
        doc = mistype(doc, rng)
    return doc


def _text(doc: Any, rng: random.Random, *, yaml_ok: bool) -> str:
    """A document's text (JSON or YAML), its bytes mutated one time in three; now and then
    nesting deeper than any parser recurses."""
    if rng.random() < 0.05:
        return "[" * 5000
    try:
        text = yaml.safe_dump(doc) if yaml_ok and rng.random() < 0.4 else json.dumps(doc)
    except (ValueError, RecursionError, yaml.YAMLError):
        text = json.dumps(str(doc)[:1000])
    if rng.random() < 0.35:
        mutation = rng.choice(sorted(set(BYTE_MUTATIONS) - {"garbage"}))
        text = BYTE_MUTATIONS[mutation](text.encode(), rng).decode("utf-8", errors="replace")
    return text


def in_process(call: Any, label: str) -> str:
    try:
        call()
    except MixplaneError as exc:
        one_line(str(exc), label)
        return "error"
    except Exception as exc:
        pytest.fail(f"{label}: {type(exc).__name__}: {exc!s:.2000} (seed {SEED})")
    return "accepted"


def cli(runner: CliRunner, home: Path, args: list[str], label: str) -> str:
    result = runner.invoke(main, ["--home", str(home), *args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        pytest.fail(f"{label}: the CLI raised {type(exc).__name__}: {exc!s:.2000} (seed {SEED})")
    if result.exit_code == 0:
        return "accepted"
    assert result.exit_code == 1, f"{label}: exit status {result.exit_code}: {result.output!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{label}: {result.stderr!r}"
    one_line(lines[0], label)
    return "error"


@pytest.fixture(scope="module")
def runner() -> Iterator[CliRunner]:
    yield CliRunner()


def test_broken_documents(home: Path, tmp_path: Path, runner: CliRunner) -> None:
    tally = Tally("documents")
    n = count("documents")
    with Client.local(home) as client:
        catalog = client.catalog
        base = client.submit("base", mixture=MIXTURES[0], chunk_size=20).spec.to_json()
        for i in range(n // 3):
            rng = rng_for("documents", "mixture", i)
            doc = _document(rng, MIXTURES)
            label = f"documents/mixture/{i}"

            def submit(doc: Any = doc) -> None:
                job = client.submit("m", mixture=doc, chunk_size=20)
                job.chunk(0)

            parsed = in_process(lambda doc=doc: Mixture.from_json(doc), label)
            tally.add("mixture (from_json/submit)", f"{parsed}/{in_process(submit, label)}")
        for i in range(n // 3):
            rng = rng_for("documents", "spec", i)
            doc = mistype(base, rng)
            label = f"documents/spec/{i}"

            def build(doc: Any = doc) -> None:
                job = Job(catalog, JobSpec.from_json(doc), Topology(dp_groups=2))
                try:
                    job.chunk(0)
                finally:
                    job.close()

            tally.add("spec/Job", in_process(build, label))
    for i in range(n - 2 * (n // 3)):
        rng = rng_for("documents", "cli", i)
        label = f"documents/cli/{i}"
        if i % 2:
            text = _text(_document(rng, MIXTURES), rng, yaml_ok=False)
            args = ["plan", "--mixture", text, "--chunks", "1", "--chunk-size", "20"]
            kind = "cli/--mixture"
        else:
            path = tmp_path / f"mixture-{i}.yaml"
            path.write_text(_text(_document(rng, SCHEDULES + MIXTURES), rng, yaml_ok=True))
            args = ["plan", "--mixture-file", str(path), "--chunks", "2", "--chunk-size", "20"]
            kind = "cli/--mixture-file"
        tally.add(kind, cli(runner, home, args, label))
    print(tally.report())
    assert tally.inputs >= count("documents")


@pytest.mark.parametrize(
    "args",
    [
        ["--mixture", '{"language=en": "a lot"}'],
        ["--mixture-file", "schedule.yaml"],
    ],
)
def test_real_process_prints_one_line(home: Path, tmp_path: Path, args: list[str]) -> None:
    """What the terminal shows: one 'error:' line on stderr and status 1, no traceback."""
    (tmp_path / "schedule.yaml").write_text("phases:\n  - start: zero\n    mixture: 3\n")
    args = [str(tmp_path / a) if a.endswith(".yaml") else a for a in args]
    proc = subprocess.run(
        [*COMMAND, "--home", str(home), "plan", *args, "--chunks", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
