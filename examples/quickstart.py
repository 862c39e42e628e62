"""Quick start: register a tiny corpus, query it, plan a mixed job and stream it; ends in asserts.

Run: ``.venv/bin/python examples/quickstart.py``
"""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from pathlib import Path

import orjson

from mixplane import col
from mixplane.chunking import Topology
from mixplane.client import Client

JOB = {
    "where": "quality >= 0.5",
    "mixture": {"language=en": 0.5, "language=de": 0.3, "language=fr": 0.2},
    "topology": Topology(dp_groups=2),
    "unit": "samples",
    "chunk_size": 100,
    "seed": 0,
}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="mixplane-quickstart-") as tmp:
        run(Path(tmp))
    print("quickstart ok")


def run(root: Path) -> None:
    data = root / "data.jsonl"
    with data.open("wb") as f:
        for i in range(600):
            language = ("en", "de", "fr")[i % 3]
            record = {
                "text": f"document {i} in {language}",
                "meta": {"language": language, "quality": (i % 10) / 10},
            }
            f.write(orjson.dumps(record) + b"\n")

    with Client.local(root / "home") as client:
        info = client.catalog.register(
            "tiny",
            data,
            properties={"language": "meta.language", "quality": "meta.quality"},
            constants={"source": "example"},
            progress=False,
        )
        assert info.samples == 600

        result = client.catalog.explain(col("quality") >= 0.5, by=["language"])
        assert [c.samples for c in result.components] == [100, 100, 100]

        job = client.submit("demo", **JOB)  # type: ignore[arg-type]
        samples = list(itertools.islice(job.stream(dp_group=0), 300))
        shares = Counter(s.record["meta"]["language"] for s in samples)
        assert shares == {"en": 150, "de": 90, "fr": 60}, shares
        assert all(s.record["meta"]["quality"] >= 0.5 for s in samples)

        state = job.state_dict()  # O(components + consumers)
        rest = [s.ordinal for s in itertools.islice(job.stream(dp_group=0), 50)]
        again = client.submit("demo", **JOB)  # type: ignore[arg-type]
        again.load_state_dict(state)
        assert [s.ordinal for s in itertools.islice(again.stream(dp_group=0), 50)] == rest


if __name__ == "__main__":
    main()
