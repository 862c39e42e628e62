"""Schedules: a job's mixture (and filter, and exhaustion policy) changing at given points.

A ``Phase`` holds what is in force from its ``start`` on (in the schedule's unit: chunks, or the
job's samples or tokens); a job's first phase is its own filter, mixture and policy. Pure
values; ``JobSpec.phase_chunks`` turns starts into chunk indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mixplane.errors import PlanError, shown
from mixplane.mixture.mixture import Mixture

#: what a job does when a component runs out: a new epoch, end the stream, or share its part
OnExhausted = Literal["repeat", "stop", "redistribute"]
#: what a schedule's phase starts are counted in
ScheduleUnit = Literal["chunks", "samples", "tokens"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """From ``start`` (in the schedule's unit) on: this filter, mixture and exhaustion policy."""

    start: int
    mixture: Mixture
    where: str | None = None
    on_exhausted: OnExhausted = "repeat"

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "where": self.where,
            "mixture": self.mixture.to_json(),
            "on_exhausted": self.on_exhausted,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Phase:
        """A phase from ``to_json``'s form; a malformed one is a ``PlanError`` naming it."""
        fine = (
            isinstance(data, Mapping)
            and isinstance(data.get("start"), int)
            and not isinstance(data["start"], bool)
            and data["start"] >= 0
            and "mixture" in data
            and isinstance(data.get("where"), str | None)
            and data.get("on_exhausted", "repeat") in ("repeat", "stop", "redistribute")
        )
        if not fine:
            msg = (
                "a schedule phase is {start: integer >= 0, mixture: {...}, where?: filter, "
                f"on_exhausted?: repeat|stop|redistribute}}, got {shown(data)}"
            )
            raise PlanError(msg)
        return cls(
            start=int(data["start"]),
            mixture=Mixture.from_json(data["mixture"]),
            where=data.get("where"),
            on_exhausted=data.get("on_exhausted", "repeat"),
        )
