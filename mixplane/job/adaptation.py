"""A job's adaptation: its mixing algorithm, the feedback it received, and retries.

Feedback is per-component loss sums and token counts of a training step; an adaptive job's
algorithm (``mixplane/adapt``) may answer new weights. The algorithm runs under its own lock,
not the job's: planning and chunk serving go on while it works (an ADO refit takes up to a
second or two). The last ``FEEDBACK_LOG_MAX`` messages are kept for the dashboard and
``trace()`` (a server keeps every one in its feedback log); a message equal to the one just
applied is a client's retry whose answer was lost: it gets the same answer, not applied twice.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from mixplane.adapt.base import MixingAlgorithm, check_feedback
from mixplane.adapt.registry import make_algorithm
from mixplane.errors import PlanError, StateError, shown

FEEDBACK_LOG_MAX = 100_000  # feedback messages a job keeps in memory (~0.7 kB each, 22 components)


class FeedbackResult(NamedTuple):
    """What a feedback message did (``Job.apply_feedback``)."""

    applies_from: int | None  # the chunk new weights apply from; None: unchanged
    applied: bool  # False: a retry of the message just applied, answered again
    version: int  # the latest mixture version when the message arrived
    weights: np.ndarray | None  # the new weights, if any
    loss_sum: np.ndarray  # the message's numbers, checked (float64, one per component)
    token_count: np.ndarray


class Replay(NamedTuple):
    """A logged feedback message applied again: where its change applied (None: no change)."""

    applies_from: int | None


#: what the job does with new weights: log the change (weights, step, chunk it applies from)
#: under the job's lock, and return that chunk
Change = Callable[[np.ndarray, int, int], int]


def chunk_index(at: object) -> int:
    """``at`` as a chunk index (``Job.feedback(..., at=)``), or ``PlanError``."""
    if isinstance(at, bool) or not isinstance(at, int | np.integer):
        msg = f"at must be a chunk index (an int) or a Replay, got {shown(at)}"
        raise PlanError(msg)
    return int(at)


class Adaptation:
    """The algorithm and feedback of one job (see the module)."""

    def __init__(self, algorithm: str | None, options: dict[str, Any], weights: np.ndarray) -> None:
        self.lock = threading.Lock()  # held while the algorithm updates
        self.name, self.options = algorithm, options
        self.algorithm: MixingAlgorithm | None = None
        self.reset(weights)
        #: the last FEEDBACK_LOG_MAX feedback messages (not in the state; ADO keeps its own
        #: series), for the dashboard and ``trace()``; ``received`` counts them all
        self.log: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=FEEDBACK_LOG_MAX)
        self.received = 0
        #: the last feedback applied and its answer (a retry gets it again)
        self._last: tuple[int, np.ndarray, np.ndarray, int | None, int] | None = None

    def reset(self, weights: np.ndarray) -> None:
        """The algorithm afresh, from these initial weights."""
        if self.name is not None:
            self.algorithm = make_algorithm(self.name, weights, **self.options)

    def state_dict(self) -> dict[str, Any] | None:
        return self.algorithm.state_dict() if self.algorithm is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.algorithm is not None and state is not None:
            self.algorithm.load_state_dict(state)

    def apply(
        self,
        k: int,
        step: int,
        loss_sum: Any,
        token_count: Any,
        *,
        job_lock: threading.RLock,
        version: Callable[[], int],
        change: Change,
        point: Callable[[], int],
        check: Callable[[int, int], None],
        at: int | Replay | None = None,
    ) -> FeedbackResult:
        """One feedback message over ``k`` components (``Job.apply_feedback``): checked,
        recorded, given to the algorithm; new weights go to ``change`` under ``job_lock``,
        from the job's change point (``point()``) unless ``at`` says where.

        ``at`` a chunk: a change applies from there. ``check(at, point())`` (under
        ``job_lock``) refuses it with ``PlanError`` below the change point or the latest
        change's chunk, before anything is recorded, and again before the change is logged
        (chunks planned past ``at`` meanwhile). The chunks below ``at`` are planned with the
        weights in force. Ranks that each run the job in-process pass the same numbers with
        the same ``at`` (the greatest of their change points), so their plans, mixture logs
        and algorithms stay identical. ``at`` a ``Replay``: the message was answered before
        (a server's feedback log); a change applies where it did then."""
        replay = at if isinstance(at, Replay) else None
        chunk = None if at is None or replay is not None else chunk_index(at)
        loss, count = check_feedback(k, loss_sum, token_count)
        step = int(step)
        with self.lock:
            last = self._last
            if (
                replay is None
                and last is not None
                and last[0] == step
                and np.array_equal(last[1], loss)
                and np.array_equal(last[2], count)
            ):
                return FeedbackResult(last[3], False, last[4], None, loss, count)
            with job_lock:
                if chunk is not None:
                    check(chunk, point())
                self.log.append((step, loss, count))
                self.received += 1
                current = version()
            applies_from = None
            weights = None
            if self.algorithm is not None:
                weights = self.algorithm.update(step, loss, count)
            if replay is not None and (weights is None) != (replay.applies_from is None):
                msg = (
                    f"replaying the feedback of step {step}: the algorithm "
                    f"{'changed' if weights is not None else 'kept'} the weights, which it did "
                    "not do when the message was answered; the log does not belong to this state"
                )
                raise StateError(msg)
            if weights is not None:
                weights = np.asarray(weights, dtype=np.float64)
                with job_lock:
                    if replay is not None and replay.applies_from is not None:
                        applies_from = replay.applies_from
                    elif chunk is not None:
                        check(chunk, point())  # chunks planned past it while the algorithm ran
                        applies_from = chunk
                    else:
                        applies_from = point()
                    applies_from = change(weights, step, applies_from)
            self._last = (step, loss, count, applies_from, current)
        return FeedbackResult(applies_from, True, current, weights, loss, count)

    def trace(self, selectors: Sequence[str]) -> list[dict[str, Any]]:
        """The feedback kept, in the long format replay reads: one row per (step, component)
        with ``step``, ``domain`` (the selector), ``loss_sum`` and ``tokens``."""
        return [
            {
                "step": step,
                "domain": selectors[k],
                "loss_sum": float(loss[k]),
                "tokens": float(count[k]),
            }
            for step, loss, count in list(self.log)
            for k in range(len(selectors))
        ]
