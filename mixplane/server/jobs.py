"""The server's jobs: held by id, answered from memory, checkpointed to the server's home.

``JobStore`` owns the open catalog and the jobs built over it. Catalog work (registration,
queries, building a job) runs under one lock, because a DuckDB connection serves one thread at a
time; answering chunks never touches the catalog, so it never waits behind a registration.

A job's chunks are planned sequentially, one chunk per hold of the job's lock, so a request for
a far chunk does not hold up requests for chunks already planned. Jobs without an adaptive
algorithm also plan ahead in a background thread, up to ``plan_ahead`` chunks past the furthest
chunk asked for (min(2 x consumers x read group, ``PLAN_AHEAD_MAX``)): planning costs about
0.2 ms a chunk, so one thread keeps thousands of ranks supplied. Adaptive jobs plan only what is
asked, so where a new mixture applies depends on what consumers asked, not on timing.

Durability: each job is a file ``{home}/server/jobs/{job_id}.json`` holding its spec, topology
and state (``Job.state_dict()``), replaced atomically (write a temporary file, fsync, rename,
fsync the folder). It is written when the job is submitted or restored, after every feedback
that changed the weights (the mixture log is never lost), on request, every few seconds while
the job changes, and on shutdown. ``load`` rebuilds every job from its file at start; a file
that cannot be loaded is logged and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import msgpack
import orjson

from mixplane.adapt.base import FeedbackError
from mixplane.atomic import write_atomic
from mixplane.catalog.catalog import Catalog
from mixplane.chunking.assign import Topology
from mixplane.chunking.spec import ChunkSpec
from mixplane.client.client import Client
from mixplane.errors import MixplaneError, PlanError, StateError
from mixplane.job import Job, JobSpec, JobState
from mixplane.server.metrics import Metrics

log = logging.getLogger(__name__)

JOB_FILE_FORMAT = "mixplane server job"
JOB_FILE_VERSION = 1
JOB_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"
PLAN_AHEAD_MAX = 4096  # chunks a background thread plans past the furthest chunk asked for
REACH_MIN = 4096  # a request may ask this many chunks past those planned (more for big topologies)
REACH_MAX = 1 << 18  # ... but never more than this
IDLE_POLL_S = 0.1  # planning ahead re-checks its stop flag this often while requests run
RELEASE_EVERY_S = 0.2  # how often a job drops chunks every consumer has finished
WIRE_CACHE = 4096  # chunks whose wire maps are kept (every rank of a group asks for each)
SERVED_SAMPLE_S = 1.0  # throughput: at most one (time, chunks served) sample a second
SERVED_SAMPLES = 300  # ... of which the last 300 are kept (5 minutes while serving)
_JOB_ID = re.compile(JOB_ID_PATTERN)
#: one answer to a chunk request: (consumer, j, starting sample offset, chunk or None)
Answer = tuple[int, int, int, "ChunkSpec | None"]
_PACKER = msgpack.Packer(use_bin_type=True)
_CHUNKS_KEY = b"\x81" + _PACKER.pack("chunks")  # a map of one key
_ITEM_CONSUMER = b"\x84" + _PACKER.pack("consumer")  # each answer: a map of four keys
_ITEM_J, _ITEM_START, _ITEM_CHUNK = (_PACKER.pack(k) for k in ("j", "start", "chunk"))
_NIL = _PACKER.pack(None)
# what malformed input may raise inside code that expects well-formed values
_INPUT_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError)


class JobNotFoundError(MixplaneError, KeyError):
    """A job id the server does not hold."""


class JobConflictError(MixplaneError, ValueError):
    """Another job definition under a job id that is taken."""


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        msg = (
            f"invalid job id {job_id!r}; use 1-128 letters, digits, '_', '-' or '.', not "
            "starting with '.'"
        )
        raise PlanError(msg)
    return job_id


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

    def __init__(self, job: Job, metrics: Metrics, in_flight: InFlight | None = None) -> None:
        self.job = job
        self.in_flight = in_flight or InFlight()
        self.job_id = job.spec.job_id
        self.metrics = metrics
        self.checkpoint_lock = threading.Lock()  # one checkpoint of this job at a time
        self.dirty = True  # changed since the last checkpoint
        self.removed = False  # deleted or replaced: never written again
        self.served = ServedLog()  # chunks served, for the dashboard's throughput
        self._counted = job._planner.next_chunk  # chunks below this are in the metrics
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
            self._ask(job._planner.next_chunk)

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
        with job._lock:
            k = job._planner.next_chunk
            if k >= below or job._planner.ended:
                return False
            job.chunk(k)
            self._count_planned(job)
            return True

    def _plan_to(self, job: Job, index: int) -> None:
        """Plan up to chunk ``index``, one chunk per hold of the job's lock."""
        while self._plan_one(job, index + 1):
            pass

    def _count_planned(self, job: Job) -> None:
        k = job._planner.next_chunk
        if k <= self._counted:
            return
        selectors = job.selectors
        for index in range(self._counted, k):
            spec = job._chunks.get(index)
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
        consumers, per_group = topology.consumers, topology.ranks_per_group
        for consumer, rank, _ in consumed:
            if not 0 <= consumer < consumers or not 0 <= rank < per_group:
                self._coordinates(topology, consumer)
                topology.consumer(consumer % topology.dp_groups, 0, rank)  # names the rank
        for consumer, _ in requests:
            if not 0 <= consumer < consumers:
                self._coordinates(topology, consumer)
        assignment = job.assignment
        wanted = [(consumer, j, *assignment.chunk(consumer, j)) for consumer, j in requests]
        if wanted:
            furthest = max(w[2] for w in wanted)
            reach = min(max(REACH_MIN, 16 * consumers * job.read_group), REACH_MAX)
            planned = job._planner.next_chunk
            if furthest >= planned + reach and not job._planner.ended:
                consumer, j, index, _ = next(w for w in wanted if w[2] == furthest)
                msg = (
                    f"chunk {j} of consumer {consumer} is chunk {index}, more than {reach} "
                    f"chunks past those the job has planned ({planned}); ask for each "
                    "consumer's chunks in order"
                )
                raise PlanError(msg)
            self._plan_to(job, furthest)
        with job._lock:
            if consumed:
                # a rank behind the job (restored from an older checkpoint) is fine: released
                # chunks and planner states are planned again from the job's milestones
                job.set_positions(consumed)
                self.dirty = True
            out = [(consumer, j, start, job.chunk(index)) for consumer, j, index, start in wanted]
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
            job._release()
        return out

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
        self._counted = job._planner.next_chunk
        self._target = 0
        self.dirty = True
        old.close()
        self._ask(job._planner.next_chunk)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.job.close()


class JobStore:
    """The jobs of one server over its catalog (see the module)."""

    def __init__(self, catalog: Catalog, directory: Path, metrics: Metrics) -> None:
        self.catalog = catalog
        self.catalog_lock = threading.Lock()
        self.directory = directory
        self.metrics = metrics
        self.in_flight = InFlight()  # chunk requests being answered, all jobs
        self._jobs: dict[str, ServerJob] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[ServerJob]:
        return iter(list(self._jobs.values()))

    @contextlib.contextmanager
    def catalog_use(self) -> Iterator[Catalog]:
        """The catalog, for one thread at a time; DuckDB errors of user input become 400s."""
        with self.catalog_lock:
            try:
                yield self.catalog
            except duckdb.Error as exc:
                log.warning("catalog error", exc_info=True)
                msg = f"the catalog could not run this request ({type(exc).__name__}: {exc})"
                raise PlanError(msg) from None

    def path(self, job_id: str) -> Path:
        return self.directory / f"{check_job_id(job_id)}.json"

    # -- jobs --------------------------------------------------------------------------------
    def get(self, job_id: str) -> ServerJob:
        found = self._jobs.get(job_id)
        if found is None:
            msg = f"unknown job {job_id!r}; the server holds {sorted(self._jobs)}"
            raise JobNotFoundError(msg)
        return found

    def submit(self, spec: JobSpec, topology: Topology, *, replace: bool) -> tuple[ServerJob, bool]:
        """The job for ``spec`` under ``topology``: the existing one when it is the same
        definition, else a new one (a taken id needs ``replace``). Returns (job, created)."""
        check_job_id(spec.job_id)
        with self.catalog_use() as catalog:
            existing = self._jobs.get(spec.job_id)
            if existing is not None and not replace:
                differs = _differences(existing.job, spec, topology)
                if not differs:
                    return existing, False
                msg = (
                    f"job {spec.job_id!r} exists with another definition (differs in "
                    f"{', '.join(differs)}); submit under another id, or pass replace=true to "
                    "start it over"
                )
                raise JobConflictError(msg)
            job = _build(lambda: Job(catalog, spec, topology))
            created = ServerJob(job, self.metrics, self.in_flight)
            if existing is not None:
                self._remove(existing)
            self._jobs[spec.job_id] = created
        self.checkpoint(created)
        return created, True

    def delete(self, job_id: str) -> None:
        sj = self.get(job_id)
        self._jobs.pop(job_id, None)
        self._remove(sj)
        with contextlib.suppress(FileNotFoundError):
            self.path(job_id).unlink()
        self.metrics.forget(job_id)

    def _remove(self, sj: ServerJob) -> None:
        with sj.checkpoint_lock:
            sj.removed = True
        sj.stop()

    def restore(self, job_id: str, state: Mapping[str, Any]) -> None:
        """Continue the job from ``state`` (``state()``'s form). It is loaded into a fresh job
        first, so a state that does not fit leaves the running job as it was."""
        sj = self.get(job_id)
        try:  # what the job holds is what its checkpoint file will hold (JSON)
            state = orjson.loads(orjson.dumps(state))
        except TypeError as exc:
            msg = f"not a job state ({exc}); send what GET /v1/jobs/ID/state returned"
            raise StateError(msg) from None
        with self.catalog_use() as catalog:
            old = sj.job

            def build() -> Job:
                job = Job(catalog, old.spec, old.topology)
                try:
                    job.load_state_dict(state)  # type: ignore[arg-type]
                except BaseException:
                    job.close()
                    raise
                return job

            job = _build(build, what="job state", hint="send what GET /v1/jobs/ID/state returned")
        sj.swap(job)
        self.checkpoint(sj)

    def state(self, job_id: str) -> JobState:
        return self.get(job_id).job.state_dict()

    def feedback(self, job_id: str, step: int, loss_sum: Any, token_count: Any) -> int | None:
        sj = self.get(job_id)
        job = sj.job
        try:
            at = job.feedback(step, loss_sum, token_count)
        except MixplaneError:
            raise
        except (ArithmeticError, *_INPUT_ERRORS) as exc:
            log.warning("job %s: mixing algorithm failed", job_id, exc_info=True)
            msg = (
                f"the job's mixing algorithm {job.spec.algorithm!r} failed on this feedback "
                f"({type(exc).__name__}: {exc}); check its algorithm_options"
            )
            raise FeedbackError(msg) from None
        self.metrics.feedback(job_id, changed=at is not None)
        sj.dirty = True
        if at is not None:
            self.checkpoint(sj)  # the mixture log is on disk before the answer
        return at

    def explain(self, job_id: str, chunks: int | None) -> dict[str, Any]:
        job = self.get(job_id).job
        client = Client(self.catalog)  # only its explain, which reads the job, not the catalog
        client._jobs[job_id] = job
        with job._lock:
            return client.explain(job_id, chunks=chunks)

    def weights(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id).job
        with job._lock:
            return {"weights": job.weights.tolist(), "mixture_log": list(job.mixture_log)}

    # -- durability --------------------------------------------------------------------------
    def checkpoint(self, sj: ServerJob) -> Path:
        """Write the job's file now (atomically); returns its path."""
        path = self.path(sj.job_id)
        with sj.checkpoint_lock:
            if sj.removed:
                return path
            sj.dirty = False
            job = sj.job
            data = {
                "format": JOB_FILE_FORMAT,
                "version": JOB_FILE_VERSION,
                "job_id": sj.job_id,
                "spec": job.spec.to_json(),
                "topology": job.topology.to_json(),
                "state": job.state_dict(),
            }
            try:
                raw = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
                write_atomic(path, raw, mode=0o600, durable=True)
            except BaseException:
                sj.dirty = True
                raise
        return path

    def checkpoint_all(self, *, changed_only: bool = True) -> int:
        """Checkpoint every job (that changed since its last checkpoint); returns how many.
        A job whose checkpoint fails is logged and kept for the next round."""
        written = 0
        for sj in self:
            if changed_only and not sj.dirty:
                continue
            try:
                self.checkpoint(sj)
                written += 1
            except (MixplaneError, OSError) as exc:
                log.error("job %s: checkpoint failed: %s", sj.job_id, exc)
        return written

    def load(self) -> list[str]:
        """Rebuild the jobs of the job files (at start); returns the ids loaded. A file that
        cannot be loaded is logged and skipped, never fatal."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".*.tmp"):  # a write cut short by a crash
            with contextlib.suppress(OSError):
                stale.unlink()
        loaded = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                sj = self._load(path)
            except Exception as exc:  # one bad file must not keep the others from loading
                log.error("skipping job file %s: %s", path, exc)
                continue
            self._jobs[sj.job_id] = sj
            loaded.append(sj.job_id)
            log.info("loaded job %s from %s", sj.job_id, path)
        return loaded

    def _load(self, path: Path) -> ServerJob:
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, dict) or data.get("format") != JOB_FILE_FORMAT:
            msg = f"not a {JOB_FILE_FORMAT} file"
            raise StateError(msg)
        if data.get("version") != JOB_FILE_VERSION:
            msg = f"job file version {data.get('version')!r}, expected {JOB_FILE_VERSION}"
            raise StateError(msg)
        spec = JobSpec.from_json(data["spec"])
        if f"{spec.job_id}.json" != path.name:
            msg = f"the file holds job {spec.job_id!r}; its name must be {spec.job_id}.json"
            raise StateError(msg)
        topology = Topology(**data["topology"])
        with self.catalog_use() as catalog:
            job = Job(catalog, spec, topology)
            try:
                job.load_state_dict(data["state"])
            except BaseException:
                job.close()
                raise
        return ServerJob(job, self.metrics, self.in_flight)

    def close(self) -> None:
        """Checkpoint every job, stop the planning threads, close the catalog (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for sj in self:
            sj.stop()
        self.checkpoint_all(changed_only=False)
        with self.catalog_lock:
            self.catalog.close()


def _differences(job: Job, spec: JobSpec, topology: Topology) -> list[str]:
    old, new = job.spec.to_json(), spec.to_json()
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if job.topology != topology:
        keys.append("topology")
    return keys


def _build(
    build: Any, *, what: str = "job", hint: str = "expected the form JobSpec.to_json() writes"
) -> Job:
    """``build()``, with errors of malformed input reported as a ``PlanError`` (and logged,
    in case one is a bug rather than bad input)."""
    try:
        job: Job = build()
    except MixplaneError:
        raise
    except _INPUT_ERRORS as exc:
        log.warning("could not build a %s from a request: %s: %s", what, type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        msg = f"not a valid {what} ({type(exc).__name__}: {exc}); {hint}"
        if what == "job state":
            raise StateError(msg) from None
        raise PlanError(msg) from None
    return job
