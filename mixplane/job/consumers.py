"""A job's consumers: who reads which chunk (the assignment) and where each one is.

A consumer is (DP group, worker); every rank of its group reads the same chunks, each rank at its
own position (j: the consumer's j-th chunk, and a sample offset in it). ``Consumers`` keeps the
assignment segment, the positions restored from a state, each live rank's position, and which
consumers this process serves (all, or a part: ``limit``). Everything here is O(consumers);
the job calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from mixplane.chunking.assign import Assignment, Topology
from mixplane.client.handover import (
    Handover,
    Placed,
    check_handover,
    check_position,
    handed_over,
)
from mixplane.client.stream import ConsumerState
from mixplane.errors import PlanError, StateError


class Consumers:
    """The assignment and the positions of one job's consumers (see the module)."""

    def __init__(
        self, topology: Topology, local: Collection[tuple[int, int]] | None = None
    ) -> None:
        self.topology = topology
        self.assignment = Assignment(topology=topology)
        self.local: frozenset[int] | None = None
        self.restored: dict[int, ConsumerState] = {}  # positions from a state
        self.ranks: dict[tuple[int, int], ConsumerState] = {}  # live positions per rank
        if local is not None:
            self.limit(local)

    def limit(self, local: Collection[tuple[int, int]]) -> None:
        """Serve only these consumers (dp_group, worker) in this process."""
        consumers = frozenset(self.topology.consumer(g, w) for g, w in local)
        if not consumers:
            msg = "limit_consumers needs at least one (dp_group, worker)"
            raise PlanError(msg)
        self.local = consumers

    @property
    def served(self) -> Iterable[int]:
        return self.local if self.local is not None else range(self.topology.consumers)

    def open(self, dp_group: int, rank: int, worker: int) -> tuple[int, ConsumerState]:
        """The consumer of (dp_group, worker) and the live position of this rank of it (its
        restored position the first time): a stream moves it as it consumes."""
        consumer = self.topology.consumer(dp_group, worker, rank)
        saved = self.restored.get(consumer, ConsumerState(j=0, offset=0))
        state = self.ranks.setdefault(
            (consumer, rank), ConsumerState(j=saved["j"], offset=saved["offset"])
        )
        return consumer, state

    def set_positions(self, positions: Iterable[tuple[int, int, int]]) -> None:
        """Each (consumer, rank, j): that rank is at the start of its j-th chunk."""
        ranks = self.ranks
        for consumer, rank, j in positions:
            state = ranks.get((consumer, rank))
            if state is None:
                ranks[(consumer, rank)] = ConsumerState(j=j, offset=0)
            else:
                state["j"], state["offset"] = j, 0

    def positions(self) -> dict[int, ConsumerState]:
        """Each consumer's position: the least advanced of its live ranks (ranks move in
        lockstep), or the restored position of a consumer no rank has opened yet. A window
        stream's place comes with it (``window``: what its stream still owes of the chunk)."""
        out = dict(self.restored)
        live: dict[int, list[ConsumerState]] = {}
        for (consumer, _rank), s in self.ranks.items():
            live.setdefault(consumer, []).append(_with_window(s))
        for consumer, states in live.items():
            if self.local is None and len(states) < self.topology.ranks_per_group:
                # a rank has not started yet (a limited job serves only the ranks it opens)
                states = [*states, out.get(consumer, ConsumerState(j=0, offset=0))]
            out[consumer] = min(states, key=_progress)
        if self.local is not None:
            out = {c: s for c, s in out.items() if c in self.local}
        return out

    def lowest_unfinished(self) -> int:
        """The lowest chunk some served consumer has not finished: each consumer's sequence
        ascends, so it is the least of their current chunks (a consumer never opened counts at
        its restored position, or its first chunk)."""
        positions = self.positions()
        chunk = self.assignment.chunk
        return min(chunk(c, positions[c]["j"] if c in positions else 0)[0] for c in self.served)

    def frontier(self, group: int) -> int:
        """The first chunk past the read group (of ``group`` chunks) after the one each served
        consumer is in (``Job.consumed_frontier``)."""
        positions = self.positions()
        chunk = self.assignment.chunk
        furthest = -1
        for c in self.served:
            j = positions[c]["j"] if c in positions else 0
            furthest = max(furthest, chunk(c, (j // group + 2) * group - 1)[0])
        return furthest + 1

    def state(self) -> dict[str, Any]:
        """The consumers' part of a job state."""
        return {
            "topology": self.topology.to_json(),
            **self.assignment.to_json(),  # frontier, carried (and handovers)
            "consumers": {str(c): s for c, s in sorted(self.positions().items())},
            "scope": sorted(self.local) if self.local is not None else None,
        }

    def load(self, state: Mapping[str, Any], num_components: int) -> None:
        """Continue from a state's consumers part; the topology may differ (elastic restore:
        the unfinished chunks are dealt to the new consumers first)."""
        saved_topology = Topology(**state["topology"])
        saved = Assignment.from_json(saved_topology, state)
        for _index, handover in saved.handovers:
            check_handover(handover, num_components)
        consumers = {int(c): _checked(s, num_components) for c, s in state["consumers"].items()}
        scope = state.get("scope")
        if scope is not None:
            if saved_topology != self.topology:
                msg = (
                    f"this state holds only consumers {scope} of the job (saved by one worker or "
                    "rank); to restore under another topology, merge the states of all parts "
                    "first (mixplane.job.merge_states)"
                )
                raise StateError(msg)
            if self.local is None or not self.local <= set(scope):
                msg = (
                    f"this state holds only consumers {scope} of the job (saved by one worker or "
                    "rank); restore it in a job limited to them (job.limit_consumers), or merge "
                    "the states of all parts first (mixplane.job.merge_states)"
                )
                raise StateError(msg)
        if saved_topology == self.topology:
            self.assignment, self.restored = saved, consumers
        else:
            self.assignment, self.restored = redeal(saved, consumers, self.topology)
        for (consumer, _rank), live in self.ranks.items():  # streams opened before: moved
            moved = self.restored.get(consumer, ConsumerState(j=0, offset=0))
            live["j"], live["offset"] = moved["j"], moved["offset"]
            if "window" in moved:  # until the window stream loads its own state and reports
                live["window"] = moved["window"]
            else:
                live.pop("window", None)


def _with_window(state: ConsumerState) -> ConsumerState:
    """A copy of a live position, its window stream's place as a ``WindowPosition``."""
    out = ConsumerState(j=state["j"], offset=state["offset"])
    place = state.get("window")
    position = place.position() if isinstance(place, Placed) else place
    if position is not None:
        out["window"] = position
    return out


def _progress(state: ConsumerState) -> tuple[int, int, int]:
    window = state.get("window")
    return state["j"], state["offset"], sum(window["taken"]) if window is not None else 0


def _checked(state: Any, num_components: int) -> ConsumerState:
    """A consumer's position from a saved state (its window position checked for shape)."""
    out = ConsumerState(j=state["j"], offset=state["offset"])
    if state.get("window") is not None:
        out["window"] = check_position(state["window"], num_components)
    return out


def redeal(
    saved: Assignment, consumers: dict[int, ConsumerState], topology: Topology
) -> tuple[Assignment, dict[int, ConsumerState]]:
    """A new assignment segment for another topology: unfinished chunks are dealt first, the
    chunk each window stream stood in with what that stream still owed (``client.handover``)."""
    current = {c: saved.chunk(c, s["j"]) for c, s in consumers.items()}
    for c in range(saved.topology.consumers):  # consumers that never started
        current.setdefault(c, saved.chunk(c, 0))
    frontier = max(saved.frontier, max(k for k, _ in current.values()) + 1)
    unfinished: list[tuple[int, int, Handover | None]] = []
    for c in range(saved.topology.consumers):
        state = consumers.get(c, ConsumerState(j=0, offset=0))
        j, offset, window = state["j"], state["offset"], state.get("window")
        k, start = saved.chunk(c, j)
        while k < frontier:
            handover = saved.handover(c, j)
            if window is not None:  # the chunk its window stream stands in
                handover = handed_over(window, handover)
            unfinished.append((k, start + offset, handover))
            offset, window = 0, None
            j += 1
            k, start = saved.chunk(c, j)
    unfinished.sort(key=lambda entry: entry[:2])
    assignment = Assignment(
        topology=topology,
        frontier=frontier,
        carried=tuple((k, o) for k, o, _ in unfinished),
        handovers=tuple((i, h) for i, (_, _, h) in enumerate(unfinished) if h is not None),
    )
    return assignment, {}
