"""The planner: chunk k from the mixture in force and each component's cursor.

Planning is sequential and pure: chunk k depends only on the planner's state after chunk k-1
(cursors, what each component was given in the current mixture segment, the weights in force)
and the seed. Per chunk:

1. the budget (samples or tokens) is apportioned with carry (``apportion_with_carry``): realized
   cumulative amounts stay within one sample (one sample's tokens) of the exact shares;
2. each component draws that many samples (or samples until its token quota is reached) from
   its seeded order, crossing into a new epoch when it runs out (``repeat``), ending the stream
   after this chunk (``stop``), or leaving the mix so the others share its budget in proportion
   to their weights (``redistribute``);
3. the draws become read ranges (runs of consecutive ordinals).

A weight change starts a new mixture segment. Each component's deviation from its exact share
of the segment that ends (in token mode: the part of a sample it overshot, or what it is owed)
carries into the new one and is paid back there, so a run's cumulative amounts stay within a
bounded distance of the sum over segments of weight x segment amount, however often the weights
change (adaptive mixing changes them every few chunks).

State is O(components): epoch, position and amount given (with its carry) per component, the
amount handed out in the segment, the weights in force, the exhausted set and the next chunk
index. Restoring it continues the exact sequence with no
replay. Cost: O(K log K + samples in the chunk) numpy work per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from mixplane.chunking.order import ComponentOrder
from mixplane.chunking.spec import ChunkSpec, Unit
from mixplane.errors import PlanError, StateError
from mixplane.mixture.apportion import apportion_with_carry, largest_remainder
from mixplane.mixture.schedule import OnExhausted

STATE_VERSION = 2  # 2: given carries deviations across segments (float) and the segment total


class PlannerState(TypedDict):
    version: int
    next_chunk: int
    epochs: list[int]
    positions: list[int]
    given: list[float]
    handed: int
    weights: list[float]
    exhausted: list[bool]
    mixture_version: int
    ended: bool
    on_exhausted: str


@dataclass(slots=True, kw_only=True)
class _Draw:
    component: int
    epoch: int
    first: int
    count: int


class Planner:
    """Plans chunks one after another over a fixed set of component orders."""

    def __init__(
        self,
        components: Sequence[ComponentOrder],
        weights: np.ndarray,
        *,
        unit: Unit = "samples",
        chunk_size: int = 1000,
        on_exhausted: OnExhausted = "repeat",
    ) -> None:
        if chunk_size <= 0:
            msg = f"chunk_size must be positive, got {chunk_size}"
            raise PlanError(msg)
        if unit == "tokens" and any(c.sizes is None for c in components):
            msg = "token budgets need per-sample token sizes for every component"
            raise PlanError(msg)
        if on_exhausted not in ("repeat", "stop", "redistribute"):
            msg = f"on_exhausted must be 'repeat', 'stop' or 'redistribute', got {on_exhausted!r}"
            raise PlanError(msg)
        self.components = list(components)
        self.unit: Unit = unit
        self.chunk_size = chunk_size
        self.on_exhausted: OnExhausted = on_exhausted
        k = len(self.components)
        self._epochs = np.zeros(k, dtype=np.int64)
        self._positions = np.zeros(k, dtype=np.int64)
        self._given = np.zeros(k, dtype=np.float64)
        self._handed = 0
        self._exhausted = np.zeros(k, dtype=bool)
        self._weights = np.zeros(k)
        self.next_chunk = 0
        self.mixture_version = 0
        self.ended = False
        self.set_weights(weights, version=0)

    # -- mixture -----------------------------------------------------------------------------
    def set_weights(self, weights: np.ndarray, *, version: int) -> None:
        """Weights in force from the next planned chunk on; starts a new mixture segment.

        Each component's deviation from its exact share of the ending segment (under the
        weights in force) carries over; a component without weight in the ending segment
        keeps the carry it had (paid back when its weight returns), an exhausted one carries
        nothing. Setting weights twice with no chunk planned in between keeps the first carry
        (a replay applying only the latter matches)."""
        weights = self.check_weights(weights)
        self._end_segment()
        self._weights = weights / weights.sum()
        self.mixture_version = version

    def check_weights(self, weights: np.ndarray) -> np.ndarray:
        """``weights`` as an array, or ``PlanError`` saying why they cannot be the mixture."""
        weights = np.asarray(weights, dtype=np.float64)
        if (
            weights.shape != (len(self.components),)
            or not np.isfinite(weights).all()
            or (weights < 0).any()
            or weights.sum() <= 0
        ):
            msg = (
                f"weights must be {len(self.components)} finite non-negative numbers with a "
                "positive sum"
            )
            raise PlanError(msg)
        sizes = np.array([c.total for c in self.components])
        if ((weights > 0) & (sizes == 0)).any():
            empty = [self.components[i].key for i in np.flatnonzero((weights > 0) & (sizes == 0))]
            msg = f"components {empty} have weight but no samples"
            raise PlanError(msg)
        return weights

    def _end_segment(self) -> None:
        """Turn what each component was given in the segment into its deviation from its
        exact share (nothing if no chunk was planned in it). The carries of the components
        kept sum to zero: the share is what all of them hold."""
        if self._handed > 0:
            active = self._active()
            kept = ~self._exhausted
            share = float(self._given[kept].sum())
            carried = np.where(kept, self._given, 0.0)
            self._given = np.where(active > 0, self._given - active * share, carried)
            self._handed = 0

    def start_phase(self, weights: np.ndarray, *, version: int, on_exhausted: OnExhausted) -> None:
        """A new phase from the next chunk: its weights and policy; exhausted marks are cleared
        (a component still at its end is marked again when it is next drawn). Carries are
        taken under the ending phase's marks: a component exhausted there is owed nothing."""
        weights = self.check_weights(weights)
        self._end_segment()
        self.on_exhausted = on_exhausted
        self._exhausted[:] = False
        self._weights = weights / weights.sum()
        self.mixture_version = version

    def add_components(self, components: Sequence[ComponentOrder]) -> None:
        """Append components (weight 0 until the next ``set_weights``); cursors are untouched."""
        n = len(components)
        self.components.extend(components)
        self._epochs = np.concatenate((self._epochs, np.zeros(n, dtype=np.int64)))
        self._positions = np.concatenate((self._positions, np.zeros(n, dtype=np.int64)))
        self._given = np.concatenate((self._given, np.zeros(n, dtype=np.float64)))
        self._exhausted = np.concatenate((self._exhausted, np.zeros(n, dtype=bool)))
        self._weights = np.concatenate((self._weights, np.zeros(n)))

    @property
    def weights(self) -> np.ndarray:
        return self._weights.copy()

    def _active(self) -> np.ndarray:
        w = np.where(self._exhausted, 0.0, self._weights)
        return w / w.sum() if w.sum() > 0 else w

    # -- planning ----------------------------------------------------------------------------
    def plan(self) -> ChunkSpec | None:
        """The next chunk, or None when the stream has ended."""
        if self.ended:
            return None
        k = len(self.components)
        counts = np.zeros(k, dtype=np.int64)
        tokens = np.zeros(k, dtype=np.int64)
        draws: list[_Draw] = []
        budget = self.chunk_size
        weights = self._active()
        if weights.sum() <= 0:  # redistribute: every component with weight has run out
            self.ended = True
            return None
        amounts = apportion_with_carry(budget, weights, self._given, self._handed)
        last = False
        for _round in range(k + 1):
            shortfall = 0
            for c in np.flatnonzero(amounts > 0).tolist():
                drawn, got_samples, got_tokens, ran_out = self._draw(c, int(amounts[c]), draws)
                counts[c] += got_samples
                tokens[c] += got_tokens
                self._given[c] += drawn
                self._handed += drawn
                shortfall += max(int(amounts[c]) - drawn, 0)
                if ran_out:
                    if self.on_exhausted == "stop":
                        last = True
                    elif self.on_exhausted == "redistribute":
                        self._exhausted[c] = True
            if last or shortfall == 0 or self.on_exhausted != "redistribute":
                break
            weights = self._active()
            if weights.sum() <= 0:
                last = True
                break
            amounts = largest_remainder(shortfall, weights)
        if self.on_exhausted == "redistribute" and self._active().sum() <= 0:
            last = True
        spec = self._spec(counts, tokens, draws, last)
        self.next_chunk += 1
        self.ended = last
        return spec

    def _draw(self, c: int, amount: int, draws: list[_Draw]) -> tuple[int, int, int, bool]:
        """Draw ``amount`` (samples or tokens) from component c; returns (amount drawn,
        samples, tokens, whether the component ran out under a non-repeat policy)."""
        comp = self.components[c]
        drawn = samples = toks = 0
        while drawn < amount:
            epoch, pos = int(self._epochs[c]), int(self._positions[c])
            left = comp.total - pos
            if left <= 0:
                if self.on_exhausted == "repeat":
                    self._epochs[c] += 1
                    self._positions[c] = 0
                    continue
                return drawn, samples, toks, True
            need = amount - drawn
            if self.unit == "samples":
                n = min(need, left)
                t = int(comp.token_sizes(epoch, pos, n).sum()) if comp.sizes is not None else 0
                got = n
            else:
                n, t = _take_tokens(comp, epoch, pos, left, need)
                got = t
            draws.append(_Draw(component=c, epoch=epoch, first=pos, count=n))
            self._positions[c] += n
            drawn += got
            samples += n
            toks += t
        ran_out = self.on_exhausted != "repeat" and self._positions[c] >= comp.total
        return drawn, samples, toks, bool(ran_out)

    def _spec(
        self, counts: np.ndarray, tokens: np.ndarray, draws: list[_Draw], last: bool
    ) -> ChunkSpec:
        comp_ids: list[int] = []
        file_ids: list[int] = []
        firsts: list[int] = []
        counts_: list[int] = []
        for d in draws:
            f, s, n = self.components[d.component].spans(d.epoch, d.first, d.count)
            comp_ids += [d.component] * len(f)
            file_ids += f
            firsts += s
            counts_ += n
        comps = np.array(comp_ids, dtype=np.int32)
        files = np.array(file_ids, dtype=np.int32)
        starts = np.array(firsts, dtype=np.int64)
        lengths = np.array(counts_, dtype=np.int64)
        return ChunkSpec(
            index=self.next_chunk,
            unit=self.unit,
            budget=self.chunk_size,
            counts=counts,
            tokens=tokens,
            components=comps,
            files=files,
            starts=starts,
            lengths=lengths,
            mixture_version=self.mixture_version,
            last=last,
        )

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> PlannerState:
        return PlannerState(
            version=STATE_VERSION,
            next_chunk=self.next_chunk,
            epochs=self._epochs.tolist(),
            positions=self._positions.tolist(),
            given=self._given.tolist(),
            handed=self._handed,
            weights=self._weights.tolist(),
            exhausted=self._exhausted.tolist(),
            mixture_version=self.mixture_version,
            ended=self.ended,
            on_exhausted=self.on_exhausted,
        )

    def load_state_dict(self, state: PlannerState) -> None:
        if state.get("version") not in (1, STATE_VERSION):
            msg = f"planner state version {state.get('version')!r}, expected {STATE_VERSION}"
            raise StateError(msg)
        k = len(self.components)
        if isinstance(state.get("positions"), list) and len(state["positions"]) != k:
            msg = f"planner state has {len(state['positions'])} components, the job has {k}"
            raise StateError(msg)
        sizes = np.array([c.total for c in self.components], dtype=np.int64)
        epochs = _vector(state, "epochs", k, np.int64)
        positions = _vector(state, "positions", k, np.int64)
        given = _vector(state, "given", k, np.float64)
        weights = _vector(state, "weights", k, np.float64)
        exhausted = _vector(state, "exhausted", k, np.bool_)
        # version 1 had no carry: the segment total was the sum of what was given
        handed = state.get("handed", round(float(given.sum())))
        policy = state["on_exhausted"]
        if (
            (epochs < 0).any()
            or (positions < 0).any()
            or (positions > sizes).any()
            or (weights < 0).any()
            or weights.sum() <= 0
            or not all(_whole(state[key]) for key in ("next_chunk", "mixture_version"))
            or not _whole(handed)
            or not isinstance(state["ended"], bool)
        ):
            msg = (
                "planner state holds values out of range (a negative or too large cursor, "
                "weights without a positive sum); pass a state saved by this job"
            )
            raise StateError(msg)
        if policy not in ("repeat", "stop", "redistribute"):
            msg = f"planner state has an unknown exhaustion policy {policy!r:.40}"
            raise StateError(msg)
        self.next_chunk = int(state["next_chunk"])
        self._epochs, self._positions, self._given = epochs, positions, given
        self._handed = int(handed)
        self._weights, self._exhausted = weights, exhausted
        self.mixture_version = int(state["mixture_version"])
        self.ended = state["ended"]
        self.on_exhausted = policy  # type: ignore[assignment]


def _whole(value: object) -> bool:
    """An integer in 0..2**62 (a chunk index, a version, a count): JSON has no other kind."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _vector(state: PlannerState, key: str, k: int, dtype: type[np.generic]) -> np.ndarray:
    """One value per component, of one kind (integers, finite numbers or booleans)."""
    values = state[key]  # type: ignore[literal-required]
    kind = {np.int64: _whole, np.float64: _finite, np.bool_: _boolean}[dtype]
    if not isinstance(values, list) or len(values) != k or not all(kind(v) for v in values):
        msg = f"planner state {key!r} must hold {k} values of the job's components"
        raise StateError(msg)
    return np.asarray(values, dtype=dtype)


def _finite(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -(2.0**62) < value < 2.0**62
    )


def _boolean(value: object) -> bool:
    return isinstance(value, bool)


def _take_tokens(
    comp: ComponentOrder, epoch: int, pos: int, left: int, need: int
) -> tuple[int, int]:
    """Samples from ``pos`` until their tokens reach ``need`` (or the epoch ends): (n, tokens)."""
    assert comp.sizes is not None
    mean = max(float(comp.sizes.mean()) if len(comp.sizes) else 1.0, 1.0)
    guess = min(left, int(need / mean * 1.5) + 8)
    while True:
        sizes = comp.token_sizes(epoch, pos, guess)
        cum = np.cumsum(sizes)
        if cum[-1] >= need or guess == left:
            n = int(np.searchsorted(cum, need, side="left")) + 1 if cum[-1] >= need else guess
            return n, int(cum[n - 1])
        guess = min(left, guess * 2)
