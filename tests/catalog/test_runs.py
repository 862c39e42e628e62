"""The streaming runs pass equals the SQL gaps-and-islands form, across batch boundaries."""

from __future__ import annotations

from typing import Any

import pytest

import mixplane.catalog.queries as queries_module
import mixplane.catalog.runs as runs_module
from mixplane.client import Client

CASES = [
    (None, [], []),
    (None, ["language"], []),
    ("quality > 0.3", ["language", "source"], []),
    ("language != 'fr'", ["source"], ["quality < 0.5", None]),
    ("quality between 0.2 and 0.9", ["language", "source"], ["source == 'web'"]),
    ("language == 'none'", ["language"], []),
]


def _result(client: Client, where: Any, by: list[str], members: list[Any]) -> Any:
    return client.catalog.components(where, by=by, members=members)


@pytest.mark.parametrize(("where", "by", "members"), CASES)
@pytest.mark.parametrize("batch", [1, 7, 1 << 20])
def test_streaming_runs_equal_sql(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    where: Any,
    by: list[str],
    members: list[Any],
    batch: int,
) -> None:
    # runs broken by a property added later with gaps (nulls) too
    client.catalog.add_property(
        "parity", lambda t: [i % 3 or None for i in t.column("id").to_pylist()]
    )
    by = [*by, "parity"] if by else by
    monkeypatch.setattr(runs_module, "BATCH_ROWS", batch)
    fast = _result(client, where, by, members)
    monkeypatch.setattr(queries_module, "scan_runs", lambda *a, **k: None)
    slow = _result(client, where, by, members)
    assert fast.runs.equals(slow.runs)
    assert [c.properties for c in fast.components] == [c.properties for c in slow.components]
    assert [c.memberships for c in fast.components] == [c.memberships for c in slow.components]
    assert fast.fingerprint == slow.fingerprint
