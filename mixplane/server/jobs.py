"""The server's jobs: held by id, answered from memory, checkpointed to the server's home.

``JobStore`` owns the open catalog and the jobs built over it. Catalog work (registration,
queries, building a job) runs under one lock, because a DuckDB connection serves one thread at a
time; answering chunks never touches the catalog, so it never waits behind a registration.

Each job is served by a ``ServerJob`` (``serving.py``: chunk answers, planning ahead).

Durability: each job is a file ``{home}/server/jobs/{job_id}.json`` holding its spec, topology,
state (``Job.state_dict()``) and the offset of its feedback log that the state includes,
replaced atomically (write a temporary file, fsync, rename, fsync the folder). It is written
when the job is submitted or restored, on request, every few seconds while the job changes, and
on shutdown. Every feedback message is appended to the job's feedback log
(``{job_id}.feedback``, ``feedback_log.py``) before it is answered; ``load`` rebuilds every job
from its file at start and applies the log's messages after the checkpoint's offset again, so
acknowledged feedback survives ``kill -9``. A file that cannot be loaded is logged and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson

from mixplane.adapt.base import FeedbackError
from mixplane.atomic import write_atomic
from mixplane.catalog.catalog import Catalog
from mixplane.chunking.assign import Topology
from mixplane.errors import (
    JobConflictError,
    JobNotFoundError,
    MixplaneError,
    PlanError,
    StateError,
)
from mixplane.job import Job, JobSpec, JobState, Replay
from mixplane.job.spec import JOB_ID_PATTERN
from mixplane.server.feedback_log import (
    FeedbackLog,
    FsyncPolicy,
    read_records,
    record_of,
    summary,
)
from mixplane.server.metrics import Metrics
from mixplane.server.serving import InFlight, ServerJob
from mixplane.tokens.tokenizer import Tokenizer
from mixplane.tokens.wire import tokenizer_from_wire

log = logging.getLogger(__name__)

JOB_FILE_FORMAT = "mixplane server job"
JOB_FILE_VERSION = 1
TOKENIZER_CACHE = 8  # tokenizers sent by clients, kept loaded by fingerprint
_JOB_ID = re.compile(JOB_ID_PATTERN)
# what malformed input may raise inside code that expects well-formed values
_INPUT_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError)


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        msg = (
            f"invalid job id {job_id!r}; use 1-128 letters, digits, '_', '-' or '.', not "
            "starting with '.'"
        )
        raise PlanError(msg)
    return job_id


class JobStore:
    """The jobs of one server over its catalog (see the module)."""

    def __init__(
        self,
        catalog: Catalog,
        directory: Path,
        metrics: Metrics,
        *,
        feedback_fsync: FsyncPolicy = "group",
    ) -> None:
        self.catalog = catalog
        self.feedback_fsync: FsyncPolicy = feedback_fsync
        self.catalog_lock = threading.Lock()
        self.directory = directory
        self.metrics = metrics
        self.in_flight = InFlight()  # chunk requests being answered, all jobs
        self._jobs: dict[str, ServerJob] = {}
        self._tokenizers: dict[str, Tokenizer] = {}  # by fingerprint
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

    def log_path(self, job_id: str) -> Path:
        return self.directory / f"{check_job_id(job_id)}.feedback"

    def _fresh_log(self, job_id: str) -> FeedbackLog:
        """A new, empty feedback log for a job made now (a replaced job's log goes)."""
        path = self.log_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return FeedbackLog(path, fsync=self.feedback_fsync)

    # -- jobs --------------------------------------------------------------------------------
    def get(self, job_id: str) -> ServerJob:
        found = self._jobs.get(job_id)
        if found is None:
            msg = f"unknown job {job_id!r}; the server holds {sorted(self._jobs)}"
            raise JobNotFoundError(msg)
        return found

    def submit(
        self,
        spec: JobSpec,
        topology: Topology,
        *,
        replace: bool,
        tokenizer: Mapping[str, Any] | None = None,
    ) -> tuple[ServerJob, bool]:
        """The job for ``spec`` under ``topology``: the existing one when it is the same
        definition, else a new one (a taken id needs ``replace``). Returns (job, created).
        ``tokenizer`` (as data, ``mixplane/tokens/wire.py``) sizes a new job that names it
        and has no token counts in the catalog, exactly as in-process."""
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
            sizer = self._tokenizer(tokenizer) if tokenizer is not None else None
            job = _build(lambda: Job(catalog, spec, topology, sizer).prepare())
            if existing is not None:
                self._remove(existing)
            created = ServerJob(
                job, self.metrics, self.in_flight, feedback_log=self._fresh_log(spec.job_id)
            )
            self._jobs[spec.job_id] = created
        self.checkpoint(created)
        return created, True

    def _tokenizer(self, data: Mapping[str, Any]) -> Tokenizer:
        """A tokenizer sent as data, loaded once per fingerprint (named ones take 0.3 s)."""
        fingerprint = data.get("fingerprint")
        cached = self._tokenizers.get(fingerprint) if isinstance(fingerprint, str) else None
        if cached is not None:
            return cached
        tokenizer = tokenizer_from_wire(data)
        while len(self._tokenizers) >= TOKENIZER_CACHE:
            del self._tokenizers[next(iter(self._tokenizers))]
        self._tokenizers[tokenizer.fingerprint] = tokenizer
        return tokenizer

    def delete(self, job_id: str) -> None:
        sj = self.get(job_id)
        self._jobs.pop(job_id, None)
        self._remove(sj)
        for path in (self.path(job_id), self.log_path(job_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.metrics.forget(job_id)

    def _remove(self, sj: ServerJob) -> None:
        with sj.checkpoint_lock:
            sj.removed = True
        sj.stop()
        sj.close_log()

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
                job = Job(catalog, old.spec, old.topology, sizing=old.sizing)
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

    def feedback(
        self,
        job_id: str,
        step: int,
        loss_sum: Any,
        token_count: Any,
        *,
        consumed: Sequence[tuple[int, int, int]] = (),
    ) -> int | None:
        """Apply a feedback message; ``consumed``: where the sender's ranks are (so where a
        change lands follows what they consumed, as in-process)."""
        sj = self.get(job_id)
        job = sj.job
        if consumed:
            sj.check_positions(consumed)
        with sj.feedback_lock:
            if consumed:
                job.set_positions(consumed)
            try:
                result = job.apply_feedback(step, loss_sum, token_count)
            except MixplaneError:
                raise
            except (ArithmeticError, *_INPUT_ERRORS) as exc:
                log.warning("job %s: mixing algorithm failed", job_id, exc_info=True)
                msg = (
                    f"the job's mixing algorithm {job.spec.algorithm!r} failed on this feedback "
                    f"({type(exc).__name__}: {exc}); check its algorithm_options"
                )
                raise FeedbackError(msg) from None
            if result.applied and sj.feedback_log is not None:  # on disk before the answer
                sj.feedback_log.append(
                    record_of(
                        step,
                        result.loss_sum,
                        result.token_count,
                        version=result.version,
                        applies_from=result.applies_from,
                        weights=result.weights,
                        consumed=consumed,
                    )
                )
        at = result.applies_from
        if result.applied:
            self.metrics.feedback(job_id, changed=at is not None)
            sj.dirty = True
        return at

    def explain(self, job_id: str, chunks: int | None) -> dict[str, Any]:
        return self.get(job_id).job.explain(chunks=chunks)

    def manifest(self, job_id: str) -> dict[str, Any]:
        """The job's per-step data manifest summed up (``feedback_log.summary``)."""
        sj = self.get(job_id)
        job = sj.job
        records = self._records(sj)
        mixture_log = list(job.mixture_log)  # one list copy: consistent under the GIL
        return {
            "job_id": job_id,
            "spec": job.spec.to_json(),
            **summary(records, job.selectors, mixture_log),
        }

    def trace(self, job_id: str, start: int, limit: int) -> dict[str, Any]:
        """Up to ``limit`` logged feedback records from the ``start``-th on, in order, and the
        index to ask for next (None at the end); with the job's selectors."""
        sj = self.get(job_id)
        records = self._records(sj)
        part = records[start : start + limit]
        following = start + len(part)
        return {
            "selectors": sj.job.selectors,
            "records": part,
            "next": following if following < len(records) else None,
        }

    @staticmethod
    def _records(sj: ServerJob) -> list[dict[str, Any]]:
        if sj.feedback_log is None:
            return []
        return [r for _end, r in read_records(sj.feedback_log.path)]

    def set_weights(self, job_id: str, weights: Sequence[float] | Mapping[str, float]) -> int:
        """New mixture weights for the job (by component or by selector, ``Job.set_weights``),
        in force from the chunk returned; checkpointed before the answer, so a restart keeps
        them."""
        sj = self.get(job_id)
        with sj.feedback_lock:  # ordered with feedback, as the checkpoint reads them
            at = sj.job.set_weights(
                dict(weights) if isinstance(weights, Mapping) else np.asarray(weights, dtype=float)
            )
            sj.dirty = True
        self.checkpoint(sj)
        return at

    def weights(self, job_id: str) -> dict[str, Any]:
        progress = self.get(job_id).job.progress()
        return {"weights": progress.weights.tolist(), "mixture_log": progress.mixture_log}

    # -- durability --------------------------------------------------------------------------
    def checkpoint(self, sj: ServerJob) -> Path:
        """Write the job's file now (atomically); returns its path."""
        path = self.path(sj.job_id)
        with sj.checkpoint_lock:
            if sj.removed:
                return path
            sj.dirty = False
            job = sj.job
            with sj.feedback_lock:  # the state and the log offset it includes, together
                state = job.state_dict()
                offset = sj.feedback_log.offset if sj.feedback_log is not None else None
            if sj.feedback_log is not None:
                sj.feedback_log.sync()  # the records the checkpoint names are on disk first
            data = {
                "format": JOB_FILE_FORMAT,
                "version": JOB_FILE_VERSION,
                "job_id": sj.job_id,
                "spec": job.spec.to_json(),
                "topology": job.topology.to_json(),
                "state": state,
                "feedback_offset": offset,
                "selectors": job.selectors,  # for reading the log without the catalog
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
        state = data["state"]
        # jobs checkpointed before sizing was saved were sized at the spec's fixed ratio
        sizing = state.get("sizing") if isinstance(state, dict) else None
        with self.catalog_use() as catalog:
            job = Job(catalog, spec, topology, sizing=sizing or "fixed")
            try:
                job.load_state_dict(state)
                feedback = FeedbackLog(self.log_path(spec.job_id), fsync=self.feedback_fsync)
            except BaseException:
                job.close()
                raise
        try:
            replayed = _replay(job, feedback, data.get("feedback_offset"))
        except BaseException:
            job.close()
            feedback.close()
            raise
        if replayed:
            log.info("job %s: applied %d logged feedback messages again", spec.job_id, replayed)
        sj = ServerJob(job, self.metrics, self.in_flight, feedback_log=feedback)
        sj.dirty = replayed > 0
        return sj

    def close(self) -> None:
        """Checkpoint every job, stop the planning threads, close the catalog (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for sj in self:
            sj.stop()
        self.checkpoint_all(changed_only=False)
        for sj in self:
            sj.close_log()
        with self.catalog_lock:
            self.catalog.close()


def _replay(job: Job, feedback: FeedbackLog, offset: Any) -> int:
    """Apply the logged messages after the checkpoint's ``offset`` again; returns how many.
    A checkpoint without an offset (written before the log existed) includes all of it."""
    if not isinstance(offset, int):
        return 0
    replayed = 0
    for _end, record in read_records(feedback.path, offset):
        try:
            consumed = [tuple(int(v) for v in p) for p in record.get("consumed") or ()]
            if consumed:
                job.set_positions(consumed)  # type: ignore[arg-type]
            job.apply_feedback(
                record["step"],
                record["loss_sum"],
                record["token_count"],
                at=Replay(record.get("applies_from")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"{feedback.path}: a feedback record cannot be applied again ({exc})"
            raise StateError(msg) from None
        replayed += 1
    return replayed


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
