"""A job's plan: its planner, the chunks planned and not yet released, and the mixture log.

Chunks are planned sequentially: chunk k from the planner state after chunk k-1 and the mixture
changes due at k. Planned chunks are kept (with the planner state before each) until no served
consumer can still need them; a planner state is also kept every ``MILESTONE_EVERY`` chunks, so
a released chunk can be planned again by replaying the mixture log from the nearest milestone
(a consumer restored from an older state). The mixture log records every change of weights with
the chunk it applies from: a phase start, ``set_weights``, adaptive feedback, an extension; a
change for a chunk not reached yet waits (``pending``), so a restored job applies it where the
live run did. Planning costs about 0.1-0.4 ms a chunk (``benchmarks/plan.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mixplane.adapt.base import MixingAlgorithm
from mixplane.chunking.order import ComponentOrder
from mixplane.chunking.planner import Planner, PlannerState
from mixplane.chunking.spec import ChunkSpec
from mixplane.errors import PlanError
from mixplane.job.adaptation import Adaptation
from mixplane.job.components import Components
from mixplane.job.spec import JobSpec

MILESTONE_EVERY = 256  # planner states kept every this many chunks, to re-plan released chunks
REPLANNED_CACHE = 64  # re-planned chunks kept


class Plan:
    """The planner and mixture log of one job (see the module). The job's lock is held."""

    def __init__(self, spec: JobSpec, components: Components) -> None:
        self.spec = spec
        self.components = components
        self.phases = spec.phases
        self.phase_starts = spec.phase_chunks()
        weights = self.reset()
        self.mixture_log: list[dict[str, Any]] = [
            {"chunk": 0, "version": 0, "cause": "phase", "phase": 0, "weights": weights.tolist()}
        ]
        self.chunks: dict[int, ChunkSpec] = {}
        self.before: dict[int, PlannerState] = {}
        self.milestones: dict[int, PlannerState] = {}  # every MILESTONE_EVERY chunks
        self.replanned: dict[int, ChunkSpec | None] = {}
        self.applied_through = 0  # mixture changes for chunks <= this are in the planner
        self.planned = 0  # how far chunks have been planned (mixture changes apply after)
        self.last: int | None = None
        self.pending: dict[int, dict[str, Any]] = {}

    def reset(self, extension_orders: Sequence[list[ComponentOrder]] = ()) -> np.ndarray:
        """A fresh planner over the job's own components, then each extension's (as they were
        added); returns the first phase's weights."""
        added = sum(len(orders) for orders in extension_orders)
        own = self.components.orders[: len(self.components.orders) - added]
        weights = self.components.weights(0)[: len(own)]
        self.planner = self._planner(weights, own)
        for orders in extension_orders:
            self.add_components(orders)
        return weights

    def _planner(self, weights: np.ndarray, orders: list[ComponentOrder] | None = None) -> Planner:
        return Planner(
            self.components.orders if orders is None else orders,
            weights,
            unit=self.spec.unit,
            chunk_size=self.spec.chunk_size,
            on_exhausted=self.phases[0].on_exhausted,
        )

    @property
    def next_chunk(self) -> int:
        return self.planner.next_chunk

    @property
    def frontier(self) -> int:
        """The first chunk a change made now may apply to: not planned yet, live or before a
        restore."""
        return max(self.planned, self.planner.next_chunk)

    def latest_weights(self) -> np.ndarray:
        """The newest weights of the mixture log (the planner's for components added since)."""
        latest = self.mixture_log[-1]["weights"]
        if len(latest) < len(self.components.orders):  # components added since (an extension)
            return self.planner.weights
        return np.asarray(latest, dtype=np.float64)

    # -- changes -----------------------------------------------------------------------------
    def change(self, weights: np.ndarray, *, cause: str, at: int, phase: int | None = None) -> int:
        """Log a mixture change applying from chunk ``at`` (``frontier`` or later; a phase at
        the chunk being planned); returns ``at``. Weights that cannot be a mixture raise
        ``PlanError`` here, before anything is logged (a change may wait to apply)."""
        self.planner.check_weights(weights)
        version = len(self.mixture_log)
        entry: dict[str, Any] = {
            "chunk": at,
            "version": version,
            "cause": cause,
            "weights": np.asarray(weights, dtype=float).tolist(),
        }
        if phase is not None:
            entry["phase"] = phase
        self.mixture_log.append(entry)
        if at > self.planner.next_chunk:
            self.pending[at] = entry
        elif phase is not None:
            self.planner.start_phase(
                weights, version=version, on_exhausted=self.phases[phase].on_exhausted
            )
        else:
            self.planner.set_weights(weights, version=version)
        return at

    def adapt(self, weights: np.ndarray, step: int, at: int) -> int:
        """An algorithm's new weights for feedback of ``step``, from chunk ``at``."""
        self.change(weights, cause="adapt", at=at)
        self.mixture_log[-1]["step"] = step
        return at

    def check_at(self, at: int, own: int) -> None:
        """A change may apply from ``at``: not below ``own`` (the job's change point: chunks
        there may be planned already) nor the latest change's chunk (changes apply in order)."""
        latest = int(self.mixture_log[-1]["chunk"])
        if at < own:
            msg = (
                f"a mixture change cannot apply from chunk {at}: this job may have planned "
                f"chunks up to {own - 1} already (its change point is {own}); pass at >= "
                f"{own}, the greatest change point of all ranks (Job.change_point())"
            )
            raise PlanError(msg)
        if at < latest:
            msg = (
                f"a mixture change cannot apply from chunk {at}: the latest change applies "
                f"from chunk {latest} and changes apply in order; pass at >= {latest}"
            )
            raise PlanError(msg)

    def apply_changes(self, k: int) -> None:
        """Mixture changes due at chunk k: a phase start (once), then a replayed update that
        was made after it (an update made before a phase start at the same chunk is replaced
        by the phase, live and in replay alike)."""
        if k > self.applied_through and k in self.phase_starts:
            phase = self.phase_starts.index(k)
            logged = [e for e in self.mixture_log if e.get("phase") == phase and e["chunk"] == k]
            if logged:  # replaying after a restore: same version as before
                self.planner.start_phase(
                    np.asarray(logged[0]["weights"]),
                    version=logged[0]["version"],
                    on_exhausted=self.phases[phase].on_exhausted,
                )
            else:
                self.change(
                    self.components.weights(phase), cause="phase", phase=phase, at=self.frontier
                )
        self.applied_through = max(self.applied_through, k)
        pending = self.pending.pop(k, None)
        if pending is not None and pending["version"] > self.planner.mixture_version:
            self.planner.set_weights(np.asarray(pending["weights"]), version=pending["version"])

    def add_components(self, orders: list[ComponentOrder]) -> None:
        """An extension's components: in the planner (weight 0 until a change) and in every
        planner state kept."""
        self.planner.add_components(orders)
        n = len(orders)
        for snapshot in [*self.before.values(), *self.milestones.values()]:
            snapshot["epochs"] = [*snapshot["epochs"], *([0] * n)]
            snapshot["positions"] = [*snapshot["positions"], *([0] * n)]
            snapshot["given"] = [*snapshot["given"], *([0] * n)]
            snapshot["weights"] = [*snapshot["weights"], *([0.0] * n)]
            snapshot["exhausted"] = [*snapshot["exhausted"], *([False] * n)]

    # -- chunks ------------------------------------------------------------------------------
    def plan_next(self) -> ChunkSpec | None:
        """Plan the next chunk (None at the end of the stream)."""
        planner = self.planner
        if planner.ended:
            return None
        k = planner.next_chunk
        self.apply_changes(k)
        self.before[k] = planner.state_dict()
        if k % MILESTONE_EVERY == 0:
            self.milestones[k] = self.before[k]
        spec = planner.plan()
        if spec is None:
            return None
        self.chunks[k] = spec
        self.planned = max(self.planned, k + 1)
        if spec.last:
            self.last = k
        return spec

    def chunk(self, index: int) -> ChunkSpec | None:
        """Chunk ``index`` (planning up to it), or None past the end of the stream."""
        while self.planner.next_chunk <= index:
            if self.plan_next() is None:
                return None
        if self.last is not None and index > self.last:
            return None
        spec = self.chunks.get(index)
        if spec is None:
            return self.replan(index)
        return spec

    def replay_to(self, index: int) -> Planner:
        """A planner about to plan chunk ``index`` (its mixture changes applied), replayed
        from the nearest milestone before it and the mixture log."""
        bases = [k for k in self.milestones if k <= index]
        if not bases:
            msg = (
                f"chunk {index} was released and precedes this job's restored state; restore "
                "the job from a state at or before the consumer's"
            )
            raise PlanError(msg)
        base = max(bases)
        planner = self._planner(self.planner.weights)
        planner.load_state_dict(self.milestones[base])
        for k in range(base, index + 1):
            at_k = [e for e in self.mixture_log if e["chunk"] == k]
            for e in at_k:  # a phase start first, then the latest update (as apply_changes)
                if e["cause"] == "phase" and e["version"] > planner.mixture_version:
                    planner.start_phase(
                        np.asarray(e["weights"]),
                        version=e["version"],
                        on_exhausted=self.phases[e["phase"]].on_exhausted,
                    )
            updates = [e for e in at_k if e["cause"] != "phase"]
            if updates and updates[-1]["version"] > planner.mixture_version:
                last = updates[-1]
                planner.set_weights(np.asarray(last["weights"]), version=last["version"])
            if k < index and planner.plan() is None:
                break
        return planner

    def replan(self, index: int) -> ChunkSpec | None:
        """A chunk released since it was planned (a consumer restored from an older state):
        planned again from the nearest milestone before it, replaying the mixture log, so it
        is the chunk it was."""
        if index in self.replanned:
            return self.replanned[index]
        spec = self.replay_to(index).plan()
        while len(self.replanned) >= REPLANNED_CACHE:
            del self.replanned[next(iter(self.replanned))]
        self.replanned[index] = spec
        return spec

    def release(self, low: int) -> None:
        """Drop planned chunks and planner states below ``low`` (no consumer needs them)."""
        for k in [k for k in self.chunks if k < low]:
            del self.chunks[k]
        for k in [k for k in self.before if k < low]:
            del self.before[k]

    # -- state -------------------------------------------------------------------------------
    def state_at(self, low: int) -> PlannerState:
        """The planner state before chunk ``low`` (the lowest some consumer has not
        finished): taken now if it is the next chunk, replayed if it was released."""
        if low == self.planner.next_chunk:  # not planned yet: the planner as it is now
            self.apply_changes(low)
            self.before[low] = self.planner.state_dict()
        if low not in self.before:  # a consumer moved back (restored from an older state)
            self.before[low] = self.replay_to(low).state_dict()
        return self.before[low]

    def load(self, planner: PlannerState, mixture_log: list[dict[str, Any]], planned: int) -> None:
        """Continue from a saved planner state and mixture log; changes made after the planner
        state apply again when re-planning reaches them."""
        self.planner.load_state_dict(planner)
        self.mixture_log = list(mixture_log)
        self.pending = {
            e["chunk"]: e
            for e in self.mixture_log
            if e["version"] > self.planner.mixture_version and e["cause"] != "phase"
        }
        start = self.planner.next_chunk
        self.chunks.clear()
        self.before = {start: self.planner.state_dict()}
        self.milestones = {start: self.before[start]}
        self.replanned = {}
        self.applied_through = start
        self.planned = int(planned)
        self.last = None


class Planning:
    """A job's plan, and its adaptation's algorithm started from the plan's weights, made
    when first needed when the job's sizing waits for ratios measured with the tokenizer
    (``Components.pending``): a restore brings the ratios its state recorded instead (issue
    16: measuring took 1.6 s of a 3.7 s resume, plus parsing the tokenizer). The mixture and
    the algorithm's options are checked at once all the same (with the sample counts for the
    sizes: the same components are empty). Other jobs are planned at once, as before."""

    def __init__(self, components: Components, lock: threading.RLock) -> None:
        self.components = components
        self.lock = lock  # the job's
        self.made: Plan | None = None
        spec = components.spec
        if components.pending:
            counts = [c.samples for c in components.result.components]
            weights = components.weights(0, natural=np.array(counts, dtype=np.float64))
        else:
            self.made = Plan(spec, components)
            weights = self.made.latest_weights()
        self.adaptation = Adaptation(spec.algorithm, dict(spec.algorithm_options), weights)

    def plan(self) -> Plan:
        """The plan (made now, with the algorithm started afresh from its weights, if not)."""
        plan = self.made
        if plan is None:
            with self.lock:
                plan = self.made
                if plan is None:
                    plan = Plan(self.components.spec, self.components)
                    self.adaptation.reset(plan.latest_weights())
                    self.made = plan
        return plan

    def untouched(self) -> bool:
        """Nothing planned or changed yet (the plan not made, or made and not used)."""
        plan = self.made
        return plan is None or (plan.next_chunk == 0 and len(plan.mixture_log) == 1)

    def resized(self) -> None:
        """The components were sized again (``Job.use_tokenizer``): a plan made starts over
        from them, and the algorithm from its weights (one not made is made from them)."""
        plan = self.made
        if plan is not None:
            plan.spec = self.components.spec
            weights = plan.reset()
            plan.mixture_log[0]["weights"] = weights.tolist()
            self.adaptation.reset(weights)


class Planned:
    """A job's access to its plan and algorithm, made when first needed (``Planning``)."""

    _planning: Planning

    @property
    def _algorithm(self) -> Adaptation:
        """The adaptation as it is (its lock, its log), without making the plan."""
        return self._planning.adaptation

    @property
    def _plan(self) -> Plan:
        return self._planning.plan()

    @property
    def _adaptation(self) -> Adaptation:
        self._planning.plan()  # the algorithm starts from the plan's weights
        return self._planning.adaptation

    @property
    def algorithm(self) -> MixingAlgorithm | None:
        return self._adaptation.algorithm

    def prepare(self) -> Self:
        """Size and plan now, not when first needed (``Planning``; a server's submit does)."""
        self._planning.plan()
        return self
