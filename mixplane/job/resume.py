"""A job's state and snapshot made from its parts, and a saved state loaded back into them.

``state_of`` reads the parts (the caller holds the algorithm's lock, then the job's: ``Job``
does), ``load_state`` checks a state against the job (version, job definition, query result)
and loads each part's share, and ``snapshot_of`` adds the catalog data another process needs.
Loading is not atomic by itself: ``Job.load_state_dict`` takes the state first and loads it
back when a part refuses, so a refused state leaves the job as it was.
"""

from __future__ import annotations

from collections.abc import Callable

from mixplane.chunking.assign import Topology
from mixplane.client.snapshot import JobSnapshot
from mixplane.errors import StateError
from mixplane.job.adaptation import Adaptation
from mixplane.job.components import Components
from mixplane.job.consumers import Consumers
from mixplane.job.plan import Plan, Planning
from mixplane.job.spec import JobSpec
from mixplane.job.state import JOB_STATE_VERSION, JobState


def state_of(
    spec: JobSpec, components: Components, plan: Plan, adaptation: Adaptation, consumers: Consumers
) -> JobState:
    """The job's state: the planner at the lowest chunk a served consumer has not finished,
    the mixture log, the algorithm, the consumers and how components were sized."""
    low = min(consumers.lowest_unfinished(), plan.next_chunk)
    served = consumers.state()
    return JobState(
        version=JOB_STATE_VERSION,
        spec=spec.fingerprint(),
        query=components.result.fingerprint,
        planner=plan.state_at(low),
        planned=plan.frontier,
        algorithm=adaptation.state_dict(),
        extensions=list(components.extensions),
        mixture_log=list(plan.mixture_log),
        topology=served["topology"],
        frontier=served["frontier"],
        carried=served["carried"],
        consumers=served["consumers"],
        scope=served["scope"],
        sizing=dict(components.sizing),
        **({"handovers": served["handovers"]} if "handovers" in served else {}),  # type: ignore[typeddict-item]
    )


def presize(state: JobState, spec: JobSpec, components: Components) -> None:
    """Before a job not planned yet loads ``state``: size its components as the state
    records (``Components.take_sizing``), if it is a state of this job (version and job
    definition; ``load_state`` checks the rest and refuses what does not fit)."""
    sizing = state.get("sizing")
    if (
        state.get("version") == JOB_STATE_VERSION
        and state.get("spec") == spec.fingerprint()
        and isinstance(sizing, dict)
    ):
        components.take_sizing(sizing)


def undo_of(
    state: Callable[[], JobState],
    load: Callable[[JobState], None],
    components: Components,
    planning: Planning,
    consumers: Consumers,
) -> Callable[[], None]:
    """What puts a job back as it is now when a state it loads is refused: its state (now)
    loaded back; for a job not planned yet, unplanned again, sized as it was given and its
    consumers where they are."""
    if planning.made is not None:
        before = state()
        return lambda: load(before)
    given, positions = components.given_sizing, consumers.state()

    def unplan() -> None:
        planning.made = None
        components.given_sizing = given
        components.extensions = []
        components.build()
        consumers.load(positions, components.count)

    return unplan


def load_state(
    state: JobState,
    spec: JobSpec,
    components: Components,
    plan: Plan,
    adaptation: Adaptation,
    consumers: Consumers,
    *,
    resize: bool,
) -> None:
    """Load ``state`` into the parts; ``StateError`` says what does not fit. ``resize``: the
    components may be sized again (a job over a catalog, not a snapshot)."""
    if state.get("version") != JOB_STATE_VERSION:
        msg = f"job state version {state.get('version')!r}, expected {JOB_STATE_VERSION}"
        raise StateError(msg)
    if state["spec"] != spec.fingerprint():
        msg = (
            "job state was saved for a different job definition (filter, mixture, seed, "
            "budget or policy differ); submit the same job to restore it"
        )
        raise StateError(msg)
    added = components.restore(state, resize=resize)
    if added is not None:  # rebuilt: a fresh planner with the extensions' components
        plan.reset(added)
    if state["query"] != components.result.fingerprint:
        msg = (
            "the query result changed since the state was saved (catalog files or "
            "registrations differ); restore against the same catalog"
        )
        raise StateError(msg)
    plan.load(state["planner"], state["mixture_log"], state["planned"])
    adaptation.load_state_dict(state["algorithm"])
    consumers.load(state, components.count)


def snapshot_of(
    spec: JobSpec, topology: Topology, components: Components, state: JobState
) -> JobSnapshot:
    """The job's definition, ``state`` and the catalog data it reads (query results, token
    sizes, file rows and sample pointers): a job without a catalog (``Job.from_snapshot``)."""
    results, sizes, rows, pointers = components.snapshot_data()
    return JobSnapshot(
        spec=spec.to_json(),
        topology=topology.to_json(),
        state=dict(state),
        results=results,
        sizes=sizes,
        token_source=dict(components.token_source),
        file_rows=rows,
        file_pointers=pointers,
    )
