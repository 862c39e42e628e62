"""The one resume harness: ``items[k:] == list(restored_after(k))`` for several k.

``check_resume(full, restored_after, ks)`` takes the uninterrupted sequence and a function that
runs a fresh pipeline for k items, saves its state, restores it into another fresh pipeline and
returns what that one yields. It is applied to the planner, consumer streams and whole
topologies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any


def check_resume(
    full: Sequence[Any], restored_after: Callable[[int], Iterable[Any]], ks: Iterable[int]
) -> None:
    for k in ks:
        rest = list(restored_after(k))
        assert rest == list(full[k:]), f"resume after {k} items diverged"
