"""Which consumer gets which chunk: a function of the chunk index and the topology only.

A topology is (DP groups G, ranks per group R, dataloader workers per rank W). A *consumer* is
(group g, worker w); every rank of a group receives byte-identical chunks. Chunk k belongs to
group ``k mod G`` and, inside it, to worker ``(k div G) mod W``: consumer (g, w) reads chunks
``g + G * (w + W * j)`` for j = 0, 1, ...

Elastic restore: a saved run knows, per consumer, which chunk it was in and how far. Restoring
under another topology starts an *assignment segment* at the frontier F (the first chunk no
consumer had reached): the unfinished chunks below F (``carried``: partly read ones with their
offsets, and unread ones) are dealt round-robin to the new consumers first, then chunk
``F + i`` goes to new group ``i mod G'``, worker ``(i div G') mod W'``. No chunk is read twice,
none is skipped, and the state is O(consumers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mixplane.errors import PlanError


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    dp_groups: int = 1
    ranks_per_group: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("dp_groups", "ranks_per_group", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                msg = f"topology {name} must be a positive integer, got {value!r}"
                raise PlanError(msg)

    @property
    def consumers(self) -> int:
        return self.dp_groups * self.workers

    def consumer(self, dp_group: int, worker: int, rank: int = 0) -> int:
        """The consumer number of (group, worker), checking the coordinates."""
        for name, value, limit in (
            ("dp_group", dp_group, self.dp_groups),
            ("worker", worker, self.workers),
            ("rank", rank, self.ranks_per_group),
        ):
            if not 0 <= value < limit:
                msg = f"{name} {value} is outside the topology (0..{limit - 1})"
                raise PlanError(msg)
        return worker * self.dp_groups + dp_group

    def to_json(self) -> dict[str, int]:
        return {
            "dp_groups": self.dp_groups,
            "ranks_per_group": self.ranks_per_group,
            "workers": self.workers,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """The chunk sequence of each consumer under one topology (one assignment segment)."""

    topology: Topology
    frontier: int = 0  # first chunk index handed out by the regular rule
    carried: tuple[tuple[int, int], ...] = field(default=())  # (chunk, sample offset) dealt first
    # (index into carried, handover): what an old consumer's window stream still owed of that
    # chunk rest (``client.handover``; opaque here)
    handovers: tuple[tuple[int, Any], ...] = field(default=())

    @classmethod
    def from_json(cls, topology: Topology, data: Mapping[str, Any]) -> Assignment:
        """The segment from its JSON form (``to_json``; a job state or the server's answer)."""
        return cls(
            topology=topology,
            frontier=int(data.get("frontier", 0)),
            carried=tuple((int(k), int(o)) for k, o in data.get("carried", ())),
            handovers=tuple((int(i), h) for i, h in data.get("handovers", ())),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "frontier": self.frontier,
            "carried": [[k, o] for k, o in self.carried],
        }
        if self.handovers:
            out["handovers"] = [[i, h] for i, h in self.handovers]
        return out

    def handover(self, consumer: int, j: int) -> Any:
        """The handover of the consumer's j-th chunk, or None (``client.handover``)."""
        index = consumer + j * self.topology.consumers
        if index >= len(self.carried):
            return None
        for i, handover in self.handovers:
            if i == index:
                return handover
        return None

    def chunk(self, consumer: int, j: int) -> tuple[int, int]:
        """(chunk index, starting sample offset) of the consumer's j-th chunk."""
        n = self.topology.consumers
        carried = len(self.carried)
        if consumer + j * n < carried:  # carried chunks are dealt round-robin, first
            return self.carried[consumer + j * n]
        j -= len(range(consumer, carried, n))
        g, w = consumer % self.topology.dp_groups, consumer // self.topology.dp_groups
        i = g + self.topology.dp_groups * (w + self.topology.workers * j)
        return self.frontier + i, 0

    def locate(self, chunk: int) -> tuple[int, int] | None:
        """(consumer, j): who reads a chunk, as its j-th, under this segment (the inverse of
        ``chunk``); None for a chunk below the frontier that no consumer still reads."""
        n = self.topology.consumers
        groups = self.topology.dp_groups
        if chunk < self.frontier:
            for index, (k, _offset) in enumerate(self.carried):
                if k == chunk:
                    return index % n, index // n
            return None
        i = chunk - self.frontier
        consumer = ((i // groups) % self.topology.workers) * groups + i % groups
        return consumer, len(range(consumer, len(self.carried), n)) + i // n

    def owner(self, chunk: int) -> tuple[int, int]:
        """(dp_group, worker) that reads a chunk at or after the frontier."""
        if chunk < self.frontier:
            msg = f"chunk {chunk} is below the assignment frontier {self.frontier}"
            raise PlanError(msg)
        i = chunk - self.frontier
        g = i % self.topology.dp_groups
        w = (i // self.topology.dp_groups) % self.topology.workers
        return g, w
