"""A job's saved state: its shape, and joining the states of a run's parts.

A state is O(components + consumers): the planner state at the lowest chunk some consumer has
not finished, the mixture log, the algorithm's state, the assignment segment, each consumer's
position, and how each component's token sizes were made. JSON-able (``Job.state_dict``). A
consumer streamed by a window stream in this process also has its place in its chunk (its
packer's carry and the windows taken, O(components x seq_len): ``client.handover``), so an
elastic restore hands its unyielded tokens on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict

from mixplane.chunking.assign import Assignment, Topology
from mixplane.chunking.planner import PlannerState
from mixplane.client.stream import ConsumerState
from mixplane.errors import StateError

JOB_STATE_VERSION = 1


class ComponentSizing(TypedDict):
    """How a component's per-sample token sizes were made: ``exact`` counts of the job's
    tokenizer from the catalog, or byte lengths over ``bytes_per_token`` (a ratio ``sampled``
    with the tokenizer, or the spec's fixed ``bytes`` ratio)."""

    source: Literal["exact", "sampled", "bytes"]
    bytes_per_token: float | None  # None for exact counts


class JobState(TypedDict):
    version: int
    spec: str  # JobSpec fingerprint
    query: str  # QueryResult fingerprint
    planner: PlannerState
    planned: int  # chunks planned so far (later mixture changes apply after them)
    algorithm: dict[str, Any] | None
    extensions: list[dict[str, Any]]
    mixture_log: list[dict[str, Any]]
    topology: dict[str, int]
    frontier: int
    carried: list[list[int]]
    consumers: dict[str, ConsumerState]
    scope: list[int] | None  # the consumers this state holds, when not all (a part of the job)
    sizing: NotRequired[dict[str, ComponentSizing]]  # token jobs: how each component is sized
    # after an elastic restore of window streams: [index into carried, client.handover.Handover]
    handovers: NotRequired[list[list[Any]]]


def merge_states(states: Sequence[JobState]) -> JobState:
    """One state of the whole job from the states of its parts (the workers or ranks that each
    served some consumers, ``Job.limit_consumers``): positions of every part, the planner at the
    lowest part's snapshot. Restore it in any topology."""
    if not states:
        msg = "merge_states needs at least one state"
        raise StateError(msg)
    first = states[0]
    for other in states[1:]:
        for key in ("version", "spec", "query", "topology", "frontier", "carried", "handovers"):
            if other.get(key) != first.get(key):
                msg = f"the states to merge differ in {key!r}: they are not parts of one run"
                raise StateError(msg)
    low = min(states, key=lambda s: s["planner"]["next_chunk"])
    consumers: dict[str, ConsumerState] = {}
    for s in states:
        consumers.update(s["consumers"])
    scopes = [s.get("scope") for s in states]
    scope = None
    if all(sc is not None for sc in scopes):
        covered = sorted({c for sc in scopes for c in sc or ()})
        topology = Topology(**first["topology"])
        scope = None if covered == list(range(topology.consumers)) else covered
    longest = max(states, key=lambda s: len(s["mixture_log"]))
    return JobState(
        version=first["version"],
        spec=first["spec"],
        query=first["query"],
        planner=low["planner"],
        planned=max(s["planned"] for s in states),
        algorithm=low["algorithm"],
        extensions=longest["extensions"],
        mixture_log=longest["mixture_log"],
        topology=first["topology"],
        frontier=first["frontier"],
        carried=first["carried"],
        consumers=dict(sorted(consumers.items(), key=lambda kv: int(kv[0]))),
        scope=scope,
        **({"sizing": first["sizing"]} if "sizing" in first else {}),  # type: ignore[typeddict-item]
        **({"handovers": first["handovers"]} if "handovers" in first else {}),  # type: ignore[typeddict-item]
    )


def place_windows(
    state: JobState, windows: Mapping[tuple[int, int], Mapping[str, Any]]
) -> JobState:
    """``state`` with the place of each window stream given by (dp_group, worker): its
    ``WindowStream.state_dict()``, saved at the same step as ``state`` or later. A server's
    state (``RemoteJob.checkpoint()``) knows each consumer's chunk only, since its clients pack
    the windows; with the streams' places an elastic restore of it hands the chunks in progress
    over exactly (``client.handover``), as an in-process job's own state does."""
    topology = Topology(**state["topology"])
    assignment = Assignment.from_json(topology, state)
    consumers: dict[str, Any] = {k: dict(v) for k, v in state["consumers"].items()}
    for (group, worker), window in windows.items():
        consumer = topology.consumer(group, worker)
        stream, taken = window.get("stream"), window.get("taken")
        if not isinstance(stream, dict) or taken is None:
            msg = (
                f"the window stream state of dp_group {group}, worker {worker} has no "
                "'stream' or 'taken' (saved by an older mixplane?); pass WindowStream.state_dict()"
            )
            raise StateError(msg)
        chunk = assignment.chunk(consumer, stream["j"])[0]
        if chunk < state["planner"]["next_chunk"]:
            msg = (
                f"the window stream of dp_group {group}, worker {worker} stands in chunk {chunk}, "
                f"before the job state's planner (chunk {state['planner']['next_chunk']}): the "
                "job state was taken after the stream's; take it at the same step or earlier"
            )
            raise StateError(msg)
        consumers[str(consumer)] = {
            "j": stream["j"],
            "offset": stream["offset"],
            "window": {
                "tokenizer": window["tokenizer"],
                "packer": window["packer"],
                "taken": taken,
            },
        }
    out = dict(state)
    out["consumers"] = dict(sorted(consumers.items(), key=lambda kv: int(kv[0])))
    return out  # type: ignore[return-value]
