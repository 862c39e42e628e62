"""The remote client: the ``Client`` interface over a mixplane server (``mixplane serve``).

``Client.remote(url, token=...)`` submits jobs to the server, which owns the catalog and plans;
the client fetches chunk descriptors in batches (the rest of an aligned block of a consumer's
chunks per request: ``FETCH_AHEAD`` chunks, or the job's read group for an adaptive job, while
reporting where each local rank is consuming; blocks start at fixed positions of the
consumer's sequence, so a client that re-attaches mid-block makes the server plan exactly as
far as the uninterrupted one did), reads the files the chunks name
itself (only pointers cross the network: the server's file paths must be readable here, e.g. a
shared filesystem), and tokenizes and packs locally, exactly as in-process. ``RemoteJob`` is a
job handle for ``Stream``, ``WindowStream``, ``RankWindows`` and the PyTorch dataset.

Connection errors and 503s are retried with exponential backoff for ``retry_for`` seconds, so a
client continues after a server restart (the server reloads its jobs from its checkpoints and
plans the same chunks again). An ``https://`` server's certificate is verified (the system's
certificates, or ``ServerAddress.ca_file``); a certificate that does not verify, or a server
that does not speak TLS, fails at once rather than being retried. Bodies are msgpack; no pickle.
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import time
import urllib.parse
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import msgpack
import numpy as np
import pyarrow as pa
from pyarrow import ipc

from mixplane.adapt.base import check_feedback
from mixplane.catalog.catalog import pointer_arrays
from mixplane.catalog.token_counts import OnChanged, TokenCountReport
from mixplane.chunking.assign import Assignment, Topology
from mixplane.chunking.spec import ChunkSpec
from mixplane.client.reader import Reader
from mixplane.client.stream import ConsumerState, Sample, Stream
from mixplane.errors import MixplaneError, SizingWarning, StateError
from mixplane.job import JobSpec, JobState, make_spec, warn_once
from mixplane.protocol import ARROW_STREAM, MSGPACK, PROTOCOL_HEADER, PROTOCOL_VERSION
from mixplane.tokens.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from mixplane.tokens.wire import MAX_TOKENIZER_CHARS, tokenizer_to_wire

FETCH_AHEAD = 8  # chunk descriptors of a consumer fetched per request
RETRY_FOR = 60.0  # seconds a request is retried on connection errors
REMOTE_STATE = "mixplane remote job"


class RemoteError(MixplaneError):
    """The server refused a request (4xx) or could not be reached; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_REMOTE_KINDS: dict[str, type[RemoteError]] = {}


def remote_error(kind: Any, message: str, status: int | None) -> RemoteError:
    """The error a server's answer names (``type``: a ``MixplaneError`` class), raised here as
    that class and ``RemoteError`` both: ``except PlanError`` catches it as in-process. Names
    are looked up among mixplane's error classes, never imported or evaluated."""
    if not isinstance(kind, str):
        return RemoteError(message, status)
    cls = _REMOTE_KINDS.get(kind)
    if cls is None:
        known = {c.__name__: c for c in _error_classes(MixplaneError)}
        base = known.get(kind)
        if (
            base is None
            or issubclass(base, RemoteError)
            or any(
                "__init__" in vars(c) for c in base.__mro__ if c.__module__.startswith("mixplane")
            )
        ):
            return RemoteError(message, status)  # unknown, or one that takes other arguments
        cls = _REMOTE_KINDS.setdefault(kind, type(f"Remote{kind}", (RemoteError, base), {}))
    return cls(message, status)


def _error_classes(root: type[MixplaneError]) -> list[type[MixplaneError]]:
    out, todo = [], [root]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return out


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where a server is and how to authenticate: what worker processes need to reconnect."""

    url: str
    token: str | None = None
    retry_for: float = RETRY_FOR
    ca_file: str | None = None  # PEM certificates that sign an https:// server's certificate


class Connection:
    """HTTP/1.1 keep-alive connections to one server, one per thread, with retries."""

    def __init__(self, address: ServerAddress, *, timeout: float | None = 60.0) -> None:
        parts = urllib.parse.urlsplit(address.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"server URL {address.url!r} must look like http://HOST:PORT"
            raise RemoteError(msg)
        self.address = address
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._local = threading.local()
        self._tls = tls_context(address.ca_file) if parts.scheme == "https" else None

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._tls is not None:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._tls
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        self._drop()

    def request(
        self, method: str, path: str, body: Any = None, *, accept: str = MSGPACK
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of a request, retried on connection errors and 503."""
        headers = {PROTOCOL_HEADER: str(PROTOCOL_VERSION), "Accept": accept}
        if self.address.token:
            headers["Authorization"] = f"Bearer {self.address.token}"
        payload = None
        if body is not None:
            payload = msgpack.packb(body, use_bin_type=True)
            headers["Content-Type"] = MSGPACK
        deadline = time.monotonic() + self.address.retry_for
        delay = 0.05
        while True:
            try:
                conn = self._conn()
                conn.request(method, self._prefix + path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 503:
                    return response.status, response.getheader("Content-Type") or "", data
                problem = f"503 {data[:200]!r}"
            except ssl.SSLError as exc:
                self._drop()
                fatal = tls_failure(self.address, exc)
                if fatal is not None:
                    raise RemoteError(fatal) from None
                problem = f"{type(exc).__name__}: {exc}"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self._drop()
            if time.monotonic() > deadline:
                hint = (
                    " (if it serves HTTPS, use an https:// URL)" if self._scheme == "http" else ""
                )
                msg = (
                    f"mixplane server {self.address.url} did not answer for "
                    f"{self.address.retry_for:.0f} s ({problem}); is it running?{hint}"
                )
                raise RemoteError(msg)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A msgpack request and its decoded answer; 4xx/5xx raise ``RemoteError``."""
        status, ctype, data = self.request(method, path, body)
        decoded = _decode(ctype, data)
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            kind = decoded.get("type") if isinstance(decoded, dict) else None
            msg = f"server: {message or data[:300]!r} (HTTP {status} on {method} {path})"
            raise remote_error(kind, msg, status)
        return decoded


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context verifying the server's certificate and name: the system's
    certificates, or those of ``ca_file`` (PEM)."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        msg = (
            f"cannot load CA file {ca_file} ({getattr(exc, 'strerror', None) or exc}); give the "
            "PEM certificate that signed the server's (--ca-file or MIXPLANE_CA_FILE)"
        )
        raise RemoteError(msg) from None


def tls_failure(address: ServerAddress, exc: ssl.SSLError) -> str | None:
    """The message for a TLS error that retrying cannot mend (a certificate that does not
    verify, a server that does not speak TLS), or None for one that may pass (a connection
    closed during the handshake by a server that is restarting)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        where = f"the CA file {address.ca_file}" if address.ca_file else "the system's certificates"
        return (
            f"cannot verify the TLS certificate of {address.url} against {where} "
            f"({exc.verify_message or exc.reason}); pass --ca-file (or MIXPLANE_CA_FILE) with "
            "the certificate of the authority that signed the server's"
        )
    if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL"):
        return (
            f"{address.url} does not speak TLS ({exc.reason}); use an http:// URL, or serve "
            "HTTPS with mixplane serve --tls-cert F --tls-key F"
        )
    return None


def _decode(ctype: str, data: bytes) -> Any:
    if not data:
        return None
    if ctype.startswith(MSGPACK):
        return msgpack.unpackb(data, raw=False)
    if ctype.startswith("application/json"):
        import json

        return json.loads(data)
    return data


class RemoteSource:
    """File rows and sample pointers fetched from the server (what a Reader asks)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def files(self) -> pa.Table:
        rows = self._connection.call("GET", "/v1/files")
        return pa.Table.from_pylist(rows)

    def pointers(self, file_id: int) -> dict[str, np.ndarray]:
        status, ctype, data = self._connection.request(
            "GET", f"/v1/files/{int(file_id)}/pointers", accept=ARROW_STREAM
        )
        if status >= 400:
            decoded = _decode(ctype, data)
            message = decoded.get("error") if isinstance(decoded, dict) else repr(data[:300])
            msg = f"server: {message} (HTTP {status} fetching pointers of file {file_id})"
            raise RemoteError(msg, status)
        return pointer_arrays(ipc.open_stream(pa.py_buffer(data)).read_all())


class RemoteJob:
    """A job planned by the server, streamed here (a job handle, see the module)."""

    def __init__(self, connection: Connection, info: Mapping[str, Any]) -> None:
        self.connection = connection
        self.job_id: str = info["job_id"]
        self.spec = JobSpec.from_json(info["spec"])
        self.topology = Topology(**info["topology"])
        self.selectors: list[str] = list(info["selectors"])
        self._num_components = int(info["num_components"])
        self._read_group = int(info["read_group"])
        self.assignment = Assignment.from_json(self.topology, info.get("assignment") or {})
        #: how the server sized each component (token jobs), and why shares may be approximate
        self.sizing: dict[str, Any] = dict(info.get("sizing") or {})
        self.note: str | None = info.get("note")
        #: the tokenizer the job was submitted with here (window streams use it by default)
        self.tokenizer: Tokenizer | None = None
        self._lock = threading.RLock()
        self._ranks: dict[tuple[int, int], ConsumerState] = {}
        self._cache: dict[tuple[int, int], tuple[ChunkSpec | None, int]] = {}
        self._reader: Reader | None = None
        self.local: frozenset[int] | None = None

    @property
    def address(self) -> ServerAddress:
        return self.connection.address

    @classmethod
    def attach(cls, address: ServerAddress, job_id: str) -> RemoteJob:
        """The job ``job_id`` of a server (a DataLoader worker reconnecting)."""
        connection = Connection(address)
        return cls(connection, connection.call("GET", f"/v1/jobs/{_quote(job_id)}"))

    # -- the job handle ---------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self._num_components

    @property
    def read_group(self) -> int:
        return self._read_group

    def fetch(self, pairs: Sequence[tuple[int, int]]) -> list[tuple[ChunkSpec | None, int]]:
        """(chunk, start) of each (consumer, j), in one request (inspection: nothing is
        reported consumed)."""
        answer = self.connection.call(
            "POST",
            f"/v1/jobs/{_quote(self.job_id)}/chunks",
            {"requests": [{"consumer": c, "j": j} for c, j in pairs], "consumed": []},
        )
        return [
            (
                ChunkSpec.from_wire(item["chunk"]) if item["chunk"] is not None else None,
                int(item["start"]),
            )
            for item in answer["chunks"]
        ]

    def consumer_chunk(self, consumer: int, j: int) -> tuple[ChunkSpec | None, int]:
        with self._lock:
            hit = self._cache.pop((consumer, j), None)
            if hit is not None:
                return hit
            block = self._read_group if self.spec.algorithm is not None else FETCH_AHEAD
            end = (j // block + 1) * block  # the rest of j's block: where it is fixed
            requests = [{"consumer": consumer, "j": i} for i in range(j, end)]
            consumed = self._consumed()
        answer = self.connection.call(
            "POST",
            f"/v1/jobs/{_quote(self.job_id)}/chunks",
            {"requests": requests, "consumed": consumed},
        )
        first: tuple[ChunkSpec | None, int] | None = None
        with self._lock:
            for item in answer["chunks"]:
                raw = item["chunk"]
                entry = (ChunkSpec.from_wire(raw) if raw is not None else None, int(item["start"]))
                if int(item["j"]) == j and int(item["consumer"]) == consumer:
                    first = entry
                else:
                    self._cache[(int(item["consumer"]), int(item["j"]))] = entry
            stale = [k for k in self._cache if k[0] == consumer and k[1] < j]
            for k in stale:
                del self._cache[k]
        if first is None:
            msg = f"the server did not answer chunk {j} of consumer {consumer}"
            raise RemoteError(msg)
        return first

    def _consumed(self) -> list[dict[str, int]]:
        """Where each local rank is consuming (the chunk its stream is in)."""
        with self._lock:
            return [{"consumer": c, "rank": r, "j": s["j"]} for (c, r), s in self._ranks.items()]

    def reader(self) -> Reader:
        with self._lock:
            if self._reader is None:
                self._reader = Reader(RemoteSource(self.connection))
            return self._reader

    def stream(self, dp_group: int = 0, rank: int = 0, worker: int = 0) -> Stream:
        consumer = self.topology.consumer(dp_group, worker, rank)
        with self._lock:
            state = self._ranks.setdefault((consumer, rank), ConsumerState(j=0, offset=0))
        return Stream(self, consumer, state)

    def use_tokenizer(self, tokenizer: Tokenizer) -> bool:
        """Whether the server sized this job with ``tokenizer`` (a server's job is sized when
        it is submitted: if not, say so once, with the fix)."""
        if self.spec.unit == "tokens" and self.spec.tokenizer == tokenizer.fingerprint:
            return True
        if self.spec.unit != "tokens":
            msg = (
                f"job {self.job_id!r} is budgeted in samples and streamed as tokens: its token "
                "shares are not controlled; submit it with unit='tokens' and the tokenizer"
            )
        else:
            msg = (
                f"the server sized job {self.job_id!r} "
                f"{'at a fixed ratio' if self.spec.tokenizer is None else 'with another tokenizer'}"
                f" and it is streamed with tokenizer {tokenizer.fingerprint}: submit it with "
                "tokenizer=... (the stream's) so its token shares are exact"
            )
        warn_once(msg)
        return False

    def release(self) -> None:
        """The server releases chunks as consumers report their positions."""

    def limit_consumers(self, local: Collection[tuple[int, int]]) -> None:
        self.local = frozenset(self.topology.consumer(g, w) for g, w in local)

    # -- control -----------------------------------------------------------------------------
    def feedback(self, step: int, loss_sum: Any, token_count: Any) -> int | None:
        loss, count = check_feedback(self.num_components, loss_sum, token_count)
        answer = self.connection.call(
            "POST",
            f"/v1/jobs/{_quote(self.job_id)}/feedback",
            {
                "step": int(step),
                "loss_sum": loss.tolist(),
                "token_count": count.tolist(),
                "consumed": self._consumed(),
            },
        )
        at = answer.get("applies_from")
        return None if at is None else int(at)

    def set_weights(self, weights: np.ndarray | Mapping[str, float]) -> int:
        """New weights (one per component, or by selector) in force from the chunk returned
        (``Job.set_weights`` on the server; checkpointed there before the answer)."""
        sent: list[float] | dict[str, float] = (
            {str(k): float(v) for k, v in weights.items()}
            if isinstance(weights, Mapping)
            else np.asarray(weights, dtype=np.float64).tolist()
        )
        answer = self.connection.call(
            "POST", f"/v1/jobs/{_quote(self.job_id)}/weights", {"weights": sent}
        )
        return int(answer["applies_from"])

    @property
    def weights(self) -> np.ndarray:
        answer = self.connection.call("GET", f"/v1/jobs/{_quote(self.job_id)}/weights")
        return np.asarray(answer["weights"], dtype=np.float64)

    @property
    def mixture_log(self) -> list[dict[str, Any]]:
        answer = self.connection.call("GET", f"/v1/jobs/{_quote(self.job_id)}/weights")
        return list(answer["mixture_log"])

    def manifest(self) -> dict[str, Any]:
        """Requested vs delivered token shares per component and the mixture versions, from
        the server's feedback log (``mixplane job show``)."""
        return self.connection.call("GET", f"/v1/jobs/{_quote(self.job_id)}/manifest")  # type: ignore[no-any-return]

    def feedback_records(self) -> Iterator[dict[str, Any]]:
        """Every feedback message the server logged for this job, in order, fetched in pages
        (``mixplane job trace``)."""
        start: int | None = 0
        while start is not None:
            page = self.connection.call(
                "GET", f"/v1/jobs/{_quote(self.job_id)}/trace?start={int(start)}"
            )
            yield from page["records"]
            start = page["next"]

    def checkpoint(self) -> JobState:
        """A consistent state of the whole job (all consumers), from the server."""
        return self.connection.call("GET", f"/v1/jobs/{_quote(self.job_id)}/state")  # type: ignore[no-any-return]

    def restore(self, state: JobState) -> None:
        """Restore the server's job to ``state`` (every consumer of the run)."""
        self.connection.call(
            "POST", f"/v1/jobs/{_quote(self.job_id)}/state", {"state": dict(state)}
        )
        info = self.connection.call("GET", f"/v1/jobs/{_quote(self.job_id)}")
        with self._lock:
            self._cache.clear()
            self.assignment = Assignment.from_json(self.topology, info.get("assignment") or {})

    def state_dict(self) -> dict[str, Any]:
        """A marker: the server holds the job's state (``checkpoint()`` fetches it); a rank's
        position lives in its stream states."""
        return {
            "version": 1,
            "format": REMOTE_STATE,
            "job_id": self.job_id,
            "spec": self.spec.fingerprint(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """A marker from ``state_dict`` (checked, nothing to load), or a full job state, which
        restores the server's job."""
        if state.get("format") == REMOTE_STATE:
            if state.get("spec") != self.spec.fingerprint():
                msg = "this state was saved for another job definition; submit the same job"
                raise StateError(msg)
            return
        self.restore(state)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class RemoteClient:
    """``Client.local``'s interface, served by a mixplane server."""

    def __init__(self, address: ServerAddress) -> None:
        self.address = address
        self.connection = Connection(address)
        self._jobs: dict[str, RemoteJob] = {}
        health = self.connection.call("GET", "/healthz")
        if not isinstance(health, dict) or health.get("protocol") != PROTOCOL_VERSION:
            msg = (
                f"the server at {address.url} speaks protocol "
                f"{health.get('protocol') if isinstance(health, dict) else '?'}; this client "
                f"speaks {PROTOCOL_VERSION}: run the same mixplane version on both sides"
            )
            raise RemoteError(msg)

    def close(self) -> None:
        for job in self._jobs.values():
            job.close()
        self.connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- catalog -----------------------------------------------------------------------------
    is_remote = True  # JobClient: a server runs the jobs

    def datasets(self) -> list[dict[str, Any]]:
        return self.connection.call("GET", "/v1/datasets")  # type: ignore[no-any-return]

    def register(
        self,
        name: str,
        paths: str | Path | Sequence[str | Path],
        *,
        format: str | None = None,
        properties: Mapping[str, str] | None = None,
        constants: Mapping[str, Any] | None = None,
        preset: str | None = None,
        text_field: str | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        replace: bool = False,
    ) -> dict[str, Any]:
        """Register files the server can read (paths on the server's machine)."""
        listed = [paths] if isinstance(paths, str | Path) else list(paths)
        body = {
            "name": name,
            "paths": [str(p) for p in listed],
            "format": format,
            "properties": dict(properties or {}),
            "constants": dict(constants or {}),
            "preset": preset,
            "text_field": text_field,
            "on_error": on_error,
            "replace": replace,
        }
        return self.connection.call("POST", "/v1/datasets", body)  # type: ignore[no-any-return]

    def count_tokens(
        self,
        tokenizer: Tokenizer | str | os.PathLike[str],
        *,
        datasets: Sequence[str] | None = None,
        workers: int | None = None,
        on_changed: OnChanged = "error",
    ) -> TokenCountReport:
        """``Catalog.count_tokens`` on the server's catalog, with the server's worker processes.
        ``tokenizer``: a tokenizer, or a name or path for ``load_tokenizer`` (loaded here, so a
        bad one fails here); it travels as data (``tokens/wire.py``: its name, or its
        ``tokenizer.json`` / rank file text), never as a path. Waits for the count, however
        long."""
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(os.fspath(tokenizer))
        wire = tokenizer_to_wire(tokenizer)
        if len(wire.get("data") or "") > MAX_TOKENIZER_CHARS:
            msg = (
                f"tokenizer {getattr(tokenizer, 'source', tokenizer.fingerprint)} is over "
                f"{MAX_TOKENIZER_CHARS} characters, more than a server takes; count in-process "
                "(--home) instead"
            )
            raise TokenizerError(msg)
        body: dict[str, Any] = {
            "tokenizer": wire,
            "datasets": list(datasets) if datasets is not None else None,
            "workers": workers,
            "on_changed": on_changed,
        }
        connection = Connection(self.address, timeout=None)  # a count may run for hours
        try:
            answer = connection.call("POST", "/v1/token-counts", body)
        finally:
            connection.close()
        return TokenCountReport.from_dict(answer)

    def explain_query(
        self, where: str | None = None, by: Sequence[str] = (), *, runs: bool = False
    ) -> dict[str, Any]:
        body = {"where": where, "by": list(by), "runs": runs}
        return self.connection.call("POST", "/v1/explain", body)  # type: ignore[no-any-return]

    # -- jobs --------------------------------------------------------------------------------
    def submit(
        self,
        job_id: str,
        *,
        topology: Topology | None = None,
        tokenizer: Tokenizer | str | None = None,
        local: Collection[tuple[int, int]] | None = None,
        replace: bool = False,
        **options: Any,
    ) -> RemoteJob:
        """Submit a job to the server (the same definition again attaches to it: every process
        of a run submits), with ``Client.submit``'s arguments. The tokenizer travels as data
        (by name where it has one), so the server sizes the job exactly as in-process."""
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        spec = make_spec(job_id, tokenizer=tokenizer, **options)
        body = {
            "spec": spec.to_json(),
            "topology": (topology or Topology()).to_json(),
            "replace": replace,
            "tokenizer": tokenizer_to_wire(tokenizer) if tokenizer is not None else None,
        }
        job = RemoteJob(self.connection, self.connection.call("POST", "/v1/jobs", body))
        job.tokenizer = tokenizer
        if job.note is not None:
            warnings.warn(job.note, SizingWarning, stacklevel=2)
        if local is not None:
            job.limit_consumers(local)
        self._jobs[job_id] = job
        return job

    def job(self, job_id: str) -> RemoteJob:
        if job_id not in self._jobs:
            info = self.connection.call("GET", f"/v1/jobs/{_quote(job_id)}")
            self._jobs[job_id] = RemoteJob(self.connection, info)
        return self._jobs[job_id]

    def stream(
        self, job_id: str, dp_group: int = 0, rank: int = 0, worker: int = 0
    ) -> Iterator[Sample]:
        return iter(self.job(job_id).stream(dp_group, rank, worker))

    def feedback(self, job_id: str, step: int, loss_sum: Any, token_count: Any) -> int | None:
        return self.job(job_id).feedback(step, loss_sum, token_count)

    def state_dict(self, job_id: str) -> JobState:
        return self.job(job_id).checkpoint()

    def load_state_dict(self, job_id: str, state: JobState) -> None:
        self.job(job_id).restore(state)

    def explain(self, job_id: str, *, chunks: int | None = None) -> dict[str, Any]:
        query = f"?chunks={int(chunks)}" if chunks is not None else ""
        return self.connection.call("GET", f"/v1/jobs/{_quote(job_id)}/explain{query}")  # type: ignore[no-any-return]


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")
