"""Serving one job: chunk answers from memory, planning ahead, the chunks' wire bytes.

A job's chunks are planned sequentially, one chunk per hold of the job's lock, so a request for
a far chunk does not hold up requests for chunks already planned. Jobs without an adaptive
algorithm also plan ahead in a background thread, up to ``plan_ahead`` chunks past the furthest
chunk asked for (min(2 x consumers x read group, ``PLAN_AHEAD_MAX``)): planning costs about
0.2 ms a chunk, so one thread keeps thousands of ranks supplied. Adaptive jobs plan only what is
asked, so where a new mixture applies depends on what consumers consumed, not on timing. Each
chunk's msgpack bytes are made once for all the ranks of its group and spliced into answers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack

from mixplane.chunking.assign import Topology
from mixplane.chunking.spec import ChunkSpec
from mixplane.errors import MixplaneError, PlanError
from mixplane.job import Job
from mixplane.server.feedback_log import FeedbackLog
from mixplane.server.metrics import Metrics

log = logging.getLogger(__name__)

PLAN_AHEAD_MAX = 4096  # chunks a background thread plans past the furthest chunk asked for
REACH_MIN = 4096  # a request may ask this many chunks past those planned (more for big topologies)
REACH_MAX = 1 << 18  # ... but never more than this
IDLE_POLL_S = 0.1  # planning ahead re-checks its stop flag this often while requests run
RELEASE_EVERY_S = 0.2  # how often a job drops chunks every consumer has finished
WIRE_CACHE = 4096  # chunks whose wire maps are kept (every rank of a group asks for each)
SERVED_SAMPLE_S = 1.0  # throughput: at most one (time, chunks served) sample a second
SERVED_SAMPLES = 300  # ... of which the last 300 are kept (5 minutes while serving)
#: one answer to a chunk request: (consumer, j, starting sample offset, chunk or None)
Answer = tuple[int, int, int, "ChunkSpec | None"]
_PACKER = msgpack.Packer(use_bin_type=True)
_CHUNKS_KEY = b"\x81" + _PACKER.pack("chunks")  # a map of one key
_ITEM_CONSUMER = b"\x84" + _PACKER.pack("consumer")  # each answer: a map of four keys
_ITEM_J, _ITEM_START, _ITEM_CHUNK = (_PACKER.pack(k) for k in ("j", "start", "chunk"))
_NIL = _PACKER.pack(None)


class ServedLog:
    """Chunks served by a job: the running total and a ring of (monotonic time, total)
    samples, at most one per ``SERVED_SAMPLE_S`` while chunks are served (the dashboard's
    throughput). ``add`` is a lock and an integer add (well under a microsecond)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.samples: deque[tuple[float, int]] = deque(maxlen=SERVED_SAMPLES)
        self.samples.append((time.monotonic(), 0))

    def add(self, chunks: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += chunks
            if now - self.samples[-1][0] >= SERVED_SAMPLE_S:
                self.samples.append((now, self.total))

    def read(self) -> tuple[float, int, list[tuple[float, int]]]:
        """(monotonic now, total, samples): the samples end with (now, total)."""
        now = time.monotonic()
        with self._lock:
            return now, self.total, [*self.samples, (now, self.total)]


class InFlight:
    """Chunk requests being answered, server-wide. Planning ahead waits while any is: it
    shares one interpreter lock with them, and a request plans what it needs itself, so
    planning ahead is done in the gaps between requests (measured in benchmarks/serve.py:
    requests arriving together waited behind the planning their own arrival woke)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                if self._count == 0:
                    self._idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """Whether no request was being answered within ``timeout`` seconds."""
        return self._idle.wait(timeout)


class ServerJob:
    """One job of the server: the ``Job``, its planning thread and its checkpoint bookkeeping."""

    def __init__(
        self,
        job: Job,
        metrics: Metrics,
        in_flight: InFlight | None = None,
        *,
        feedback_log: FeedbackLog | None = None,
    ) -> None:
        self.job = job
        #: every applied feedback message, on disk before its answer (None: not durable)
        self.feedback_log = feedback_log
        #: held while a message is applied and logged, and while a checkpoint reads the state
        #: and the log offset together
        self.feedback_lock = threading.Lock()
        self.in_flight = in_flight or InFlight()
        self.job_id = job.spec.job_id
        self.metrics = metrics
        self.checkpoint_lock = threading.Lock()  # one checkpoint of this job at a time
        self.dirty = True  # changed since the last checkpoint
        self.removed = False  # deleted or replaced: never written again
        self.served = ServedLog()  # chunks served, for the dashboard's throughput
        self._counted = job.next_chunk  # chunks below this are in the metrics
        self._wires: OrderedDict[int, bytes] = OrderedDict()  # encoded once per chunk
        self._released_at = 0.0
        self._target = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if job.algorithm is None:
            self._thread = threading.Thread(
                target=self._plan_ahead, name=f"mixplane-plan-{self.job_id}", daemon=True
            )
            self._thread.start()
            self._ask(job.next_chunk)

    @property
    def plan_ahead(self) -> int:
        job = self.job
        return min(2 * job.topology.consumers * job.read_group, PLAN_AHEAD_MAX)

    def info(self) -> dict[str, Any]:
        job = self.job
        return {
            "job_id": self.job_id,
            "spec": job.spec.to_json(),
            "topology": job.topology.to_json(),
            "selectors": job.selectors,
            "num_components": job.num_components,
            "read_group": job.read_group,
            "assignment": job.assignment.to_json(),
            "sizing": job.sizing,
            "note": job.sizing_note,
        }

    # -- planning ----------------------------------------------------------------------------
    def _ask(self, index: int) -> None:
        """Chunk ``index`` was asked for: plan ahead of it in the background."""
        if self._thread is not None and index + self.plan_ahead > self._target:
            self._target = index + self.plan_ahead
            self._wake.set()

    def _plan_ahead(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                if not self.in_flight.wait_idle(IDLE_POLL_S):
                    continue  # requests plan what they need meanwhile
                time.sleep(0)  # lets a thread waiting for the interpreter lock take it now
                try:
                    if not self._plan_one(self.job, self._target):
                        break
                except MixplaneError as exc:  # the request that needs the chunk reports it
                    log.warning("job %s: planning ahead stopped: %s", self.job_id, exc)
                    break
                except Exception:  # a bug: log it; requests still plan what they need
                    log.exception("job %s: planning ahead failed", self.job_id)
                    break

    def _plan_one(self, job: Job, below: int) -> bool:
        """Plan the job's next chunk if it is below ``below``; whether one was planned."""
        if not job.plan_next(below):
            return False
        self._count_planned(job)
        return True

    def _plan_to(self, job: Job, index: int) -> None:
        """Plan up to chunk ``index``, one chunk per hold of the job's lock."""
        while self._plan_one(job, index + 1):
            pass

    def _count_planned(self, job: Job) -> None:
        k = job.next_chunk
        if k <= self._counted:
            return
        selectors = job.selectors
        for index in range(self._counted, k):
            spec = job.planned_chunk(index)
            if spec is not None:
                self.metrics.planned(self.job_id, selectors, spec)
        self._counted = k

    def chunks(
        self, requests: Sequence[tuple[int, int]], consumed: Sequence[tuple[int, int, int]]
    ) -> list[Answer]:
        """Record each (consumer, rank, j) of ``consumed``, then answer each (consumer, j) of
        ``requests``: (consumer, j, the sample offset it starts at, the consumer's j-th chunk
        or None past the end). Coordinates are all checked before anything is recorded; the
        answers are looked up under one hold of the job's lock (chunks not planned yet are
        planned first, one per hold, so other requests are not held up)."""
        job = self.job
        topology = job.topology
        consumers = topology.consumers
        self.check_positions(consumed)
        for consumer, _ in requests:
            if not 0 <= consumer < consumers:
                self._coordinates(topology, consumer)
        assignment = job.assignment
        wanted = [(consumer, j, *assignment.chunk(consumer, j)) for consumer, j in requests]
        if wanted:
            furthest = max(w[2] for w in wanted)
            reach = min(max(REACH_MIN, 16 * consumers * job.read_group), REACH_MAX)
            planned = job.next_chunk
            if furthest >= planned + reach and not job.ended:
                consumer, j, index, _ = next(w for w in wanted if w[2] == furthest)
                msg = (
                    f"chunk {j} of consumer {consumer} is chunk {index}, more than {reach} "
                    f"chunks past those the job has planned ({planned}); ask for each "
                    "consumer's chunks in order"
                )
                raise PlanError(msg)
            self._plan_to(job, furthest)
        # a rank behind the job (restored from an older checkpoint) is fine: released chunks
        # and planner states are planned again from the job's milestones
        specs = job.serve(consumed, [index for _consumer, _j, index, _start in wanted])
        if consumed:
            self.dirty = True
        out = [
            (consumer, j, start, spec)
            for (consumer, j, _index, start), spec in zip(wanted, specs, strict=True)
        ]
        self._count_planned(job)
        served = sum(1 for answer in out if answer[3] is not None)
        if served:
            self.metrics.served(self.job_id, served)
            self.served.add(served)
        if wanted:
            self._ask(furthest)
        now = time.monotonic()
        if now - self._released_at >= RELEASE_EVERY_S:
            self._released_at = now
            job.release()
        return out

    def check_positions(self, consumed: Sequence[tuple[int, int, int]]) -> None:
        """Each (consumer, rank, j) names a consumer and a rank of the job's topology."""
        topology = self.job.topology
        consumers, per_group = topology.consumers, topology.ranks_per_group
        for consumer, rank, _ in consumed:
            if not 0 <= consumer < consumers or not 0 <= rank < per_group:
                self._coordinates(topology, consumer)
                topology.consumer(consumer % topology.dp_groups, 0, rank)  # names the rank

    def encode_msgpack(self, answers: Sequence[Answer]) -> bytes:
        """``{"chunks": [{consumer, j, start, chunk}, ...]}`` as msgpack, each chunk's bytes
        made once for all the ranks of its group (an LRU) and spliced in."""
        pack = _PACKER.pack
        parts = [_CHUNKS_KEY, _PACKER.pack_array_header(len(answers))]
        for consumer, j, start, spec in answers:
            parts += (_ITEM_CONSUMER, pack(consumer), _ITEM_J, pack(j), _ITEM_START, pack(start))
            parts += (_ITEM_CHUNK, self._wire(spec) if spec is not None else _NIL)
        return b"".join(parts)

    @staticmethod
    def to_json(answers: Sequence[Answer]) -> dict[str, Any]:
        """The same answer as a JSON-able map."""
        return {
            "chunks": [
                {
                    "consumer": consumer,
                    "j": j,
                    "start": start,
                    "chunk": spec.to_wire() if spec is not None else None,
                }
                for consumer, j, start, spec in answers
            ]
        }

    def _wire(self, spec: ChunkSpec) -> bytes:
        """A chunk's msgpack bytes, made once for all the ranks of its group (an LRU)."""
        wire = self._wires.get(spec.index)
        if wire is None:
            wire = spec.to_bytes()
            self._wires[spec.index] = wire
            while len(self._wires) > WIRE_CACHE:
                self._wires.popitem(last=False)
        return wire

    @staticmethod
    def _coordinates(topology: Topology, consumer: int) -> tuple[int, int]:
        if not 0 <= consumer < topology.consumers:
            msg = (
                f"consumer {consumer} is outside the job's topology (0..{topology.consumers - 1}: "
                "worker x dp_groups + dp_group)"
            )
            raise PlanError(msg)
        return consumer % topology.dp_groups, consumer // topology.dp_groups

    # -- lifecycle ---------------------------------------------------------------------------
    def swap(self, job: Job) -> None:
        """Serve ``job`` (the same definition at another state) from now on."""
        old, self.job = self.job, job
        self._wires.clear()  # the restored job may plan a chunk index differently
        self._counted = job.next_chunk
        self._target = 0
        self.dirty = True
        old.close()
        self._ask(job.next_chunk)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.job.close()

    def close_log(self) -> None:
        if self.feedback_log is not None:
            self.feedback_log.close()
