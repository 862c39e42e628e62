"""The real ``mixplane`` command line, run as a subprocess against a catalog in ``tmp_path``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli

LANGUAGES = ("en", "de", "fr")


def records(n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}{i}",
            "text": f"{prefix} doc {i} " + "ü" * i,
            "meta": {"language": LANGUAGES[i % 3], "year": 2000 + i % 4},
        }
        for i in range(n)
    ]


WEB = records(10, "w")
WIKI = records(7, "k")


mixplane = run_cli


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A catalog with 'web' (JSONL with one bad line, skipped) and 'wiki' (Parquet)."""
    root = tmp_path_factory.mktemp("cli")
    web = root / "web.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in WEB]
    lines.insert(4, '{"text": "trunc')
    web.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(WIKI), root / "wiki.parquet", row_group_size=3)
    (root / "web.txt").write_bytes(web.read_bytes())  # a suffix that names no format
    home = root / "home"
    out = mixplane(
        home,
        "register",
        "web",
        str(web),
        "--property",
        "language=meta.language",
        "--property",
        "year=meta.year",
        "--constant",
        "source=web",
        "--constant",
        "weight=0.5",
        "--on-error",
        "skip",
        "--json",
    )
    registered = json.loads(out.stdout)
    mixplane(
        home,
        "register",
        "wiki",
        str(root / "wiki.parquet"),
        "--property",
        "language=meta.language",
        "--constant",
        "source=wiki",
    )
    return home, registered


def test_register_json(home: tuple[Path, dict[str, Any]]) -> None:
    _, info = home
    web = str((home[0].parent / "web.jsonl").resolve())
    assert info["name"] == "web"
    assert (info["files"], info["samples"], info["skipped"]) == (1, 10, 1)
    assert info["skipped_by_file"] == {web: 1}
    assert info["bytes"] == sum(len(r["text"].encode()) for r in WEB)
    assert sorted(info["properties"]) == ["language", "source", "weight", "year"]


def test_ls(home: tuple[Path, dict[str, Any]]) -> None:
    listed = json.loads(mixplane(home[0], "ls", "--json").stdout)
    assert [(d["name"], d["files"], d["samples"], d["skipped"]) for d in listed] == [
        ("web", 1, 10, 1),
        ("wiki", 1, 7, 0),
    ]
    assert listed[1]["properties"] == ["language", "source"]
    text = mixplane(home[0], "ls").stdout
    assert "web" in text and "wiki" in text
    assert "weight (float)" in text and "year (integer)" in text


def test_explain_json(home: tuple[Path, dict[str, Any]]) -> None:
    out = mixplane(
        home[0], "explain", "--where", "language != 'de'", "--by", "source,language", "--json"
    )
    result = json.loads(out.stdout)
    assert isinstance(result["sql"], str) and "?" in result["sql"]
    want: dict[tuple[str, str], list[int]] = {}
    for source, recs in (("web", WEB), ("wiki", WIKI)):
        for r in recs:
            if r["meta"]["language"] != "de":
                want.setdefault((source, r["meta"]["language"]), []).append(len(r["text"].encode()))
    got = {
        (c["properties"]["source"], c["properties"]["language"]): (c["samples"], c["bytes"])
        for c in result["components"]
    }
    assert got == {k: (len(v), sum(v)) for k, v in sorted(want.items())}
    assert [tuple(c["properties"].values()) for c in result["components"]] == sorted(want)
    assert result["total_samples"] == sum(len(v) for v in want.values())

    human = mixplane(home[0], "explain", "--by", "source").stdout
    assert "source=web" in human and "source=wiki" in human and "total" in human


def test_add_property_and_function(tmp_path: Path) -> None:
    (tmp_path / "props_mod.py").write_text(
        "import pyarrow.compute as pc\n\n\n"
        "def n_chars(table):\n"
        "    return pc.utf8_length(table['text'])\n\n\n"
        "def lengths(table):\n"
        "    return {'n_bytes': pc.binary_length(table['text'])}\n"
    )
    data = tmp_path / "data.txt"  # an unknown suffix: --format says what it is
    data.write_text("".join(json.dumps(r) + "\n" for r in WEB), encoding="utf-8")
    home = tmp_path / "home"
    mixplane(
        home,
        "register",
        "web",
        str(data),
        "--format",
        "jsonl",
        "--function",
        "props_mod:lengths",
        cwd=tmp_path,
    )
    out = mixplane(home, "add-property", "n_chars", "props_mod:n_chars", cwd=tmp_path)
    assert out.stdout.strip() == "added property n_chars to 10 samples"
    result = json.loads(mixplane(home, "explain", "--where", "n_chars > 12", "--json").stdout)
    assert result["total_samples"] == sum(len(r["text"]) > 12 for r in WEB) > 0
    result = json.loads(mixplane(home, "explain", "--where", "n_bytes > 12", "--json").stdout)
    assert result["total_samples"] == sum(len(r["text"].encode()) > 12 for r in WEB)

    again = mixplane(
        home, "add-property", "n_chars", "props_mod:n_chars", cwd=tmp_path, check=False
    )
    assert_user_error(again, "already has values")


def assert_user_error(proc: subprocess.CompletedProcess[str], says: str) -> None:
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert says in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["explain", "--by", "source,lang"], "unknown property 'lang'"),
        (["explain", "--where", "language =="], "column"),
        (["register", "web", "{root}/web.jsonl"], "'web' is already registered"),
        (["register", "x", "{root}/web.txt"], "cannot tell the format"),
        (["register", "x", "{root}/web.jsonl", "--constant", "oops"], "PROP=VALUE"),
        (["add-property", "p", "no_such_module:f"], "cannot import module 'no_such_module'"),
        (["add-property", "p", "json:dumps", "--datasets", "nope"], "unknown dataset 'nope'"),
    ],
)
def test_user_errors_are_one_line(
    home: tuple[Path, dict[str, Any]], args: list[str], says: str
) -> None:
    root = home[0].parent
    proc = mixplane(home[0], *(a.format(root=root) for a in args), check=False)
    assert_user_error(proc, says)


def test_debug_shows_the_traceback(home: tuple[Path, dict[str, Any]]) -> None:
    proc = mixplane(home[0], "--debug", "explain", "--by", "lang", check=False)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "QueryError" in proc.stderr


def test_usage_error(home: tuple[Path, dict[str, Any]]) -> None:
    proc = mixplane(home[0], "register", "x", "--on-error", "maybe", check=False)
    assert proc.returncode == 2
    assert "Usage:" in proc.stderr and "Traceback" not in proc.stderr


# -- plan and the job form of explain (mixing/planning issue) ---------------------------------


def _plan_home(tmp_path: Path) -> Path:
    from tests.conftest import write_corpus

    write_corpus(tmp_path / "data")
    home = tmp_path / "home"
    mixplane(
        home,
        "register",
        "corpus",
        str(tmp_path / "data"),
        "--property",
        "language=meta.language",
        "--property",
        "quality=meta.quality",
    )
    return home


def test_plan_json(tmp_path: Path) -> None:
    home = _plan_home(tmp_path)
    mixture = json.dumps({"language=en": 0.7, "language=de": 0.3})
    out = mixplane(
        home,
        "plan",
        "--mixture",
        mixture,
        "--chunks",
        "6",
        "--unit",
        "samples",
        "--chunk-size",
        "50",
        "--dp-groups",
        "2",
        "--workers",
        "2",
        "--seed",
        "1",
        "--json",
    )
    plan = json.loads(out.stdout)
    assert [c["index"] for c in plan] == list(range(6))
    assert [(c["dp_group"], c["worker"]) for c in plan] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (0, 0),
        (1, 0),
    ]
    for chunk in plan:
        assert chunk["counts"] == {"language=de": 15, "language=en": 35}
        assert sum(r["count"] for r in chunk["ranges"]) == 50
        assert {r["component"] for r in chunk["ranges"]} == {"language=en", "language=de"}
        assert all({"file", "start", "count"} <= set(r) for r in chunk["ranges"])
    again = mixplane(
        home,
        "plan",
        "--mixture",
        mixture,
        "--chunks",
        "6",
        "--unit",
        "samples",
        "--chunk-size",
        "50",
        "--dp-groups",
        "2",
        "--workers",
        "2",
        "--seed",
        "1",
        "--json",
    )
    assert again.stdout == out.stdout  # deterministic across processes


def test_plan_schedule_file_and_explain(tmp_path: Path) -> None:
    home = _plan_home(tmp_path)
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        "unit: chunks\nphases:\n"
        '  - start: 0\n    where: "quality < 0.5"\n    mixture: {language=en: 1.0}\n'
        "  - start: 2\n    mixture:\n      language=de: {weight: 0.5}\n      language=fr: {weight: 0.5}\n"
    )
    plan = json.loads(
        mixplane(
            home,
            "plan",
            "--mixture-file",
            str(schedule),
            "--chunks",
            "4",
            "--unit",
            "samples",
            "--chunk-size",
            "10",
            "--json",
        ).stdout
    )
    assert [set(c["counts"]) for c in plan] == [{"language=en"}] * 2 + [
        {"language=de", "language=fr"}
    ] * 2
    report = json.loads(
        mixplane(
            home,
            "explain",
            "--mixture",
            json.dumps({"language=en": 1.0}),
            "--chunks",
            "100",
            "--unit",
            "samples",
            "--chunk-size",
            "10",
            "--on-exhausted",
            "stop",
            "--json",
        ).stdout
    )
    en = next(r for r in report["components"] if r["component"] == "language=en")
    assert en["weight"] == 1.0 and en["epochs"] == pytest.approx(1000 / en["samples"])
    assert en["runs_out_at_chunk"] == -(-en["samples"] // 10) - 1


def test_plan_errors_are_one_line(tmp_path: Path) -> None:
    home = _plan_home(tmp_path)
    bad = mixplane(home, "plan", "--mixture", json.dumps({"language=xx": 1.0}), check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: selector 'language=xx' matches 0 samples")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_help_loads_no_heavy_package() -> None:
    """``mixplane --help`` and each command's help stay instant: the commands import what they
    run (torch, the server, Ray, transformers) only when they run."""
    import sys

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mixplane.cli import main\n"
        "for args in (['--help'], ['stream', '--help'], ['demo', '--help'], ['serve', '--help'],"
        " ['job', 'show', '--help'], ['tokenizer', 'train', '--help']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "heavy = ('torch', 'transformers', 'fastapi', 'uvicorn', 'ray', 'tokenizers')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
