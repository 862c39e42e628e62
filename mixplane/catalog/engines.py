"""Engines: where registration scans files and where a property function reads its records.

``local`` (the default) works in this process, streaming each file's batches into the catalog.
``ray`` runs one task per file on a Ray cluster. A registration task scans its file
(``scan.scan_file``: the format's scan and the property function) and returns the batches as
Arrow tables; an ``add_property`` task reads its file's records by the pointers the owner sends
and returns the function's values. The catalog's owner stores everything in file order in its
one transaction: workers never open the catalog, and task arguments are plain values (paths,
option lists, pointer tables) plus the user's function, which Ray ships to the workers (the
user's code on the user's cluster).

Same results as ``local``. A file's scan depends on the property types the dataset's earlier files
showed (records are checked against them, ``ScanRequest.fields``), so a task starts with a guess
of those types; when the owner reaches the file it compares the guess with the exact types and,
on a miss, drops the tasks started with that guess and starts them again with the exact types.
The first file runs alone (no type is known before it); later files start with the types known
after it and miss only when a file shows a field's type for the first time or widens an
integer to a float. Errors travel as values (type, message, file and line) and are raised when
the owner reaches their file, after the batches before them, so the first error in file order
wins and its message is the local one.

Token counts (``token_counts.py``) run on the same engines: ``local`` starts worker processes
(spawned, one per core by default; a small count stays in this process), ``ray`` one Ray task
per slice of a file. Both get plain task values (a file row and its pointer slice) and the
tokenizer as plain values (``tokens/wire.py``), and give back Arrow tables of (file_id,
ordinal, tokens) as they complete, at most ``2 x workers`` tasks ahead; errors travel as values.

Cost: starting a local Ray instance takes ~5 s (none when ``ray.init`` already ran); each task
costs a few ms plus moving its Arrow batches (~40 bytes a sample without function values)
through the object store, where at most ``2 x CPUs`` files wait ahead of the owner. Tasks whose
results are no longer wanted (a missed guess, an error, a stop) are dropped, not cancelled: they
run to their end and their results are discarded (``ray.cancel`` racing a task that just
finished aborts the driver process in Ray 2.x: "Tried to complete task that was not pending"). Storing stays
on the owner's DuckDB connection. Files are not split: one task per file, so a dataset of a few
large files uses few cores.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from mixplane.catalog.files import FileIdentity, Location, check_unchanged
from mixplane.catalog.formats import RESTART, FormatName, ScanBatch, get_format
from mixplane.catalog.formats.tokenized import TokenSpec, asks_for_text
from mixplane.catalog.pretokenized import read_records
from mixplane.catalog.properties import ConstantSource, FieldSource, PropertyType, as_column
from mixplane.catalog.scan import FileEnd, ScanJob, Scanned, scan_file
from mixplane.catalog.token_counts import (
    SPAWN_MIN_BYTES,
    TokenizerWire,
    count_task,
    cpu_count,
    worker_tokenizer,
)
from mixplane.errors import (
    DependencyError,
    MalformedRecordError,
    MixplaneError,
    RegistrationError,
)
from mixplane.tokens.tokenizer import Tokenizer

log = logging.getLogger(__name__)

EngineName = Literal["local", "ray"]

#: A property function of ``Catalog.add_property``: records in, one value per record out.
PropertyFunction = Callable[[pa.Table], Sequence[Any] | pa.Array | np.ndarray]
#: The owner's record reader (``Catalog.read``) and pointer table of a file (by file id).
Reader = Callable[[int, np.ndarray], pa.Table]
Pointers = Callable[[int], pa.Table]
FileScans = Generator[tuple[Location, FormatName, Iterator[Scanned | FileEnd]], None, None]
Values = Generator[tuple[Mapping[str, Any], np.ndarray, pa.Array], None, None]
#: (task, its counts or None, its error or None) for each token-count task, as they complete.
Counts = Generator[tuple[Mapping[str, Any], pa.Table | None, MixplaneError | None], None, None]


class Engine(Protocol):
    name: str

    def scan(
        self,
        job: ScanJob,
        files: Sequence[tuple[Location, FormatName]],
        found: Callable[[], Mapping[str, PropertyType | None]],
    ) -> FileScans:
        """Each file's scan events, in file order; ``found()`` gives the dataset's property
        types when the owner starts the file (after it stored the previous one)."""
        ...

    def values(
        self,
        name: str,
        function: PropertyFunction,
        files: Sequence[Mapping[str, Any]],
        *,
        batch_size: int,
        read: Reader,
        pointers: Pointers,
    ) -> Values:
        """(file, ordinals, values) for each batch of ``batch_size`` records of each file
        (rows of ``Catalog.files()``), in file and ordinal order."""
        ...

    def count_workers(self, requested: int | None, tasks: int, text_bytes: int) -> int:
        """How many token-count tasks run at once (0: in this process), for ``tasks`` tasks
        holding ``text_bytes`` of text and ``requested`` workers (None: the engine's choice)."""
        ...

    def counts(
        self,
        tasks: Iterable[Mapping[str, Any]],
        tokenizer: Tokenizer,
        source: TokenizerWire | None,
        *,
        workers: int,
    ) -> Counts:
        """Each token-count task's counts (``token_counts.count_task``), as they complete, with
        ``workers`` from ``count_workers``; ``source`` rebuilds ``tokenizer`` in a worker."""
        ...


def get_engine(name: EngineName | Engine, *, address: str | None = None) -> Engine:
    """The engine called ``name`` (an Engine is returned as is); ``address``: a Ray cluster's."""
    if not isinstance(name, str):
        return name
    if address is not None and name != "ray":
        msg = f"a Ray address ({address!r}) needs engine='ray', got engine={name!r}"
        raise RegistrationError(msg)
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine(address=address)
    msg = f"unknown engine {name!r}; use 'local' or 'ray'"
    raise RegistrationError(msg)


def function_values(
    name: str, function: PropertyFunction, records: pa.Table, path: str
) -> pa.Array:
    """A property function's values for a batch of records, checked (one per record)."""
    try:
        values = function(records)
    except Exception as exc:
        msg = f"the function for {name!r} failed on a batch of {path}: {type(exc).__name__}: {exc}"
        raise RegistrationError(msg) from exc
    return as_column(name, values, records.num_rows, path)


class LocalEngine:
    """Everything in this process, one file after the other (token counts: in worker
    processes)."""

    name: str = "local"

    def scan(
        self,
        job: ScanJob,
        files: Sequence[tuple[Location, FormatName]],
        found: Callable[[], Mapping[str, PropertyType | None]],
    ) -> FileScans:
        for path, fmt in files:
            yield path, fmt, scan_file(job, path, fmt, dict(found()))

    def values(
        self,
        name: str,
        function: PropertyFunction,
        files: Sequence[Mapping[str, Any]],
        *,
        batch_size: int,
        read: Reader,
        pointers: Pointers,
    ) -> Values:
        for f in files:
            for start in range(0, f["samples"], batch_size):
                ordinals = np.arange(start, min(start + batch_size, f["samples"]), dtype=np.int64)
                records = read(f["file_id"], ordinals)
                yield f, ordinals, function_values(name, function, records, f["path"])

    def count_workers(self, requested: int | None, tasks: int, text_bytes: int) -> int:
        if requested is None and text_bytes < SPAWN_MIN_BYTES:
            return 0
        workers = min(requested or cpu_count(), tasks)
        return workers if workers > 1 else 0  # one worker: this process

    def counts(
        self,
        tasks: Iterable[Mapping[str, Any]],
        tokenizer: Tokenizer,
        source: TokenizerWire | None,
        *,
        workers: int,
    ) -> Counts:
        if workers == 0 or source is None:
            for task in tasks:
                yield task, *_counted(_count_value(task, tokenizer))
            return
        # spawned, not forked: the owner holds DuckDB and the tokenizer's thread pool
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_count_init,
            initargs=(source,),
        )
        waiting = iter(tasks)
        out: dict[Future[dict[str, Any]], Mapping[str, Any]] = {}

        def submit(count: int) -> None:
            for task in itertools.islice(waiting, count):
                out[pool.submit(_count_in_process, task)] = task

        finished = False
        try:
            submit(2 * workers)
            while out:
                done, _ = wait(out, return_when=FIRST_COMPLETED)
                for future in done:
                    task = out.pop(future)
                    try:
                        value = future.result()
                    except BrokenProcessPool as exc:
                        msg = (
                            f"a token-count worker process died ({exc}); out of memory? "
                            "run again with fewer workers (--workers)"
                        )
                        raise MixplaneError(msg) from None
                    submit(1)
                    yield task, *_counted(value)
            finished = True
        finally:
            if not finished:  # stopped (an error, Ctrl-C): tasks running are not waited for
                # (ProcessPoolExecutor has no public way to stop its processes before 3.14)
                processes = getattr(pool, "_processes", None) or {}
                for process in list(processes.values()):
                    if process.is_alive():
                        process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)


class RayEngine:
    """One task per file on a Ray cluster: ``address`` (``ray.init``'s), the running one, or a
    local instance started on 127.0.0.1."""

    name: str = "ray"

    def __init__(self, *, address: str | None = None) -> None:
        self._ray = _connect(address)
        #: Files scanned again because the types they started with were not the exact ones.
        self.misses = 0

    def _ahead(self) -> int:
        return max(2, 2 * int(self._ray.cluster_resources().get("CPU", 1)))

    def scan(
        self,
        job: ScanJob,
        files: Sequence[tuple[Location, FormatName]],
        found: Callable[[], Mapping[str, PropertyType | None]],
    ) -> FileScans:
        ray = self._ray
        task = ray.remote(num_cpus=1)(_scan_task)
        options = _job_options(job)
        function = ray.put(job.function) if job.function is not None else None
        names = [f.name for f in job.fields]
        ahead = self._ahead()
        started: dict[int, tuple[dict[str, str | None], Any]] = {}  # file -> (guess, task)

        def start(index: int, guess: dict[str, str | None]) -> None:
            path, fmt = files[index]
            started[index] = (guess, task.remote(options, path, fmt, guess, function))

        try:
            for k, (path, fmt) in enumerate(files):
                now = found()
                exact = {n: _type_value(now.get(n)) for n in names}
                for j, (guess, _) in list(started.items()):
                    if guess != exact:  # types only grow, so this guess cannot come true later
                        del started[j]  # dropped, not cancelled (module docstring)
                        self.misses += 1
                # before the first file no type is known: scan it alone, then guess from it
                last = k + 1 if k == 0 and names else min(len(files), k + ahead)
                for j in range(k, last):
                    if j not in started:
                        start(j, exact)
                _, ref = started.pop(k)
                yield path, fmt, _scan_events(ray.get(ref))
        finally:
            started.clear()  # dropped, not cancelled (module docstring)

    def values(
        self,
        name: str,
        function: PropertyFunction,
        files: Sequence[Mapping[str, Any]],
        *,
        batch_size: int,
        read: Reader,
        pointers: Pointers,
    ) -> Values:
        ray = self._ray
        task = ray.remote(num_cpus=1)(_values_task)
        shipped = ray.put(function)
        ahead = self._ahead()
        started: dict[int, Any] = {}
        try:
            for k, f in enumerate(files):
                for j in range(k, min(len(files), k + ahead)):
                    if j not in started:
                        g = files[j]
                        started[j] = task.remote(
                            name, dict(g), pointers(g["file_id"]), batch_size, shipped
                        )
                result = ray.get(started.pop(k))
                starts = range(0, f["samples"], batch_size)
                assert result["error"] is not None or len(result["values"]) == len(starts)
                for start, values in zip(starts, result["values"], strict=False):
                    stop = min(start + batch_size, f["samples"])
                    yield f, np.arange(start, stop, dtype=np.int64), values
                if result["error"] is not None:
                    raise _error(result["error"])
        finally:
            started.clear()  # dropped, not cancelled (module docstring)

    def count_workers(self, requested: int | None, tasks: int, text_bytes: int) -> int:
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        return max(1, min(requested or cpus, tasks)) if tasks else 0

    def counts(
        self,
        tasks: Iterable[Mapping[str, Any]],
        tokenizer: Tokenizer,
        source: TokenizerWire | None,
        *,
        workers: int,
    ) -> Counts:
        if source is None:
            msg = (
                "engine='ray' rebuilds the tokenizer on each worker: pass one loaded by name or "
                "from a tokenizer.json or .tiktoken file (load_tokenizer)"
            )
            raise MixplaneError(msg)
        ray = self._ray
        task_fn = ray.remote(num_cpus=1)(_count_ray_task)
        shipped = ray.put(source)
        waiting = iter(tasks)
        out: dict[Any, Mapping[str, Any]] = {}

        def submit(count: int) -> None:
            for task in itertools.islice(waiting, count):
                out[task_fn.remote(shipped, task)] = task

        try:
            submit(2 * max(workers, 1))
            while out:
                ready, _ = ray.wait(list(out), num_returns=1)
                task = out.pop(ready[0])
                value = ray.get(ready[0])
                submit(1)
                yield task, *_counted(value)
        finally:
            out.clear()  # dropped, not cancelled (module docstring)


# -- Ray: connecting ---------------------------------------------------------------------------


def _connect(address: str | None) -> Any:
    try:
        ray: Any = importlib.import_module("ray")
    except ImportError:
        msg = "engine='ray' needs Ray, which is not installed; pip install 'mixplane[ray]'"
        raise DependencyError(msg) from None
    if ray.is_initialized():
        return ray
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # a local instance for this process only: bound to loopback, no dashboard
        ray.init(
            include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    log.info("ray: %s", ray.cluster_resources())
    return ray


# -- Ray: the tasks (plain values in, Arrow tables and plain values out) -----------------------


def _scan_task(
    options: dict[str, Any],
    path: Location,
    fmt: FormatName,
    found: dict[str, str | None],
    function: Any,
) -> dict[str, Any]:
    """Scan one file on a worker: its batches as Arrow tables, then its end or its error."""
    job = ScanJob(
        fields=tuple(FieldSource(name=n, path=p) for n, p in options["fields"]),
        constants=tuple(ConstantSource(name=n, value=v) for n, v in options["constants"]),
        function=function,
        text_field=options["text_field"],
        on_error=options["on_error"],
        text_lengths=options["text_lengths"],
        tokens=TokenSpec(**options["tokens"]) if options.get("tokens") else None,
    )
    types = {n: PropertyType(t) if t is not None else None for n, t in found.items()}
    batches: list[pa.Table] = []
    end: dict[str, Any] | None = None
    try:
        for event in scan_file(job, path, fmt, types):
            if isinstance(event, FileEnd):
                end = {
                    "size": event.identity.size,
                    "mtime_ns": event.identity.mtime_ns,
                    "fingerprint": event.identity.fingerprint,
                    "skipped": event.skipped,
                    "messages": list(event.messages),
                }
            else:
                batches.append(_encode(event))
    except MixplaneError as exc:
        return {"batches": batches, "end": None, "error": _error_value(exc)}
    return {"batches": batches, "end": end, "error": None}


def _values_task(
    name: str, file: dict[str, Any], pointers: pa.Table, batch_size: int, function: Any
) -> dict[str, Any]:
    """A property function's values for one file on a worker, batch by batch, or its error."""
    path = Path(file["path"])
    identity = FileIdentity(
        size=file["size"], mtime_ns=file["mtime_ns"], fingerprint=file["fingerprint"]
    )
    fmt = get_format(file["format"])
    values: list[pa.Array] = []
    try:
        for start in range(0, file["samples"], batch_size):
            stop = min(start + batch_size, file["samples"])
            check_unchanged(path, identity, file["dataset"])
            part = pointers.slice(start, stop - start)
            if file.get("token_dtype") is not None:  # token ids (text decoded when asked)
                records = read_records(file, part, text=asks_for_text(function))
            else:
                records = fmt.read(path, part, file["text_field"] or "text")
            values.append(function_values(name, function, records, file["path"]))
    except MixplaneError as exc:
        return {"values": values, "error": _error_value(exc)}
    return {"values": values, "error": None}


def _job_options(job: ScanJob) -> dict[str, Any]:
    return {
        "fields": [[f.name, f.path] for f in job.fields],
        "constants": [[c.name, c.value] for c in job.constants],
        "text_field": job.text_field,
        "on_error": job.on_error,
        "text_lengths": job.text_lengths,
        "tokens": dataclasses.asdict(job.tokens) if job.tokens is not None else None,
    }


def _type_value(ptype: PropertyType | None) -> str | None:
    return ptype.value if ptype is not None else None


# -- Ray: batches and errors as values ---------------------------------------------------------

_POINTERS = ("offset", "length", "row_group", "row")
_FIELD, _OUTPUT = "field:", "output:"


def _encode(scanned: Scanned) -> pa.Table:
    """One scanned batch as one Arrow table: pointers, ``bytes``, ``field:<path>`` and
    ``output:<property>`` columns; the scanned byte count and RESTART in the schema metadata."""
    batch = scanned.batch
    columns: dict[str, Any] = {"bytes": pa.array(batch.text_bytes, pa.int64())}
    for name in _POINTERS:
        values = getattr(batch, name)
        if values is not None:
            columns[name] = pa.array(values)
    if batch.tokens is not None:
        columns["tokens"] = pa.array(batch.tokens, pa.int64())
    columns.update({_FIELD + k: v for k, v in batch.fields.items()})
    columns.update({_OUTPUT + k: v for k, v in scanned.outputs.items()})
    meta = {"scanned_bytes": str(batch.scanned_bytes), "restart": str(int(batch is RESTART))}
    if batch.token_dtype is not None:
        meta["token_dtype"] = batch.token_dtype
    return pa.table(columns).replace_schema_metadata(meta)


def _decode(table: pa.Table) -> Scanned:
    meta = table.schema.metadata
    if meta[b"restart"] == b"1":
        return Scanned(batch=RESTART, outputs={})
    names = table.column_names

    def column(name: str) -> np.ndarray | None:
        return table.column(name).to_numpy() if name in names else None

    def arrays(prefix: str) -> dict[str, pa.Array]:
        return {
            n[len(prefix) :]: table.column(n).combine_chunks()
            for n in names
            if n.startswith(prefix)
        }

    batch = ScanBatch(
        fields=arrays(_FIELD),
        text_bytes=table.column("bytes").to_numpy(),
        offset=column("offset"),
        length=column("length"),
        row_group=column("row_group"),
        row=column("row"),
        scanned_bytes=int(meta[b"scanned_bytes"]),
        tokens=column("tokens"),
        token_dtype=meta[b"token_dtype"].decode() if b"token_dtype" in meta else None,
    )
    return Scanned(batch=batch, outputs=arrays(_OUTPUT))


def _scan_events(result: dict[str, Any]) -> Iterator[Scanned | FileEnd]:
    for table in result["batches"]:
        yield _decode(table)
    if result["error"] is not None:
        raise _error(result["error"])
    end = result["end"]
    yield FileEnd(
        identity=FileIdentity(
            size=end["size"], mtime_ns=end["mtime_ns"], fingerprint=end["fingerprint"]
        ),
        skipped=end["skipped"],
        messages=tuple(end["messages"]),
    )


def _error_value(exc: MixplaneError) -> dict[str, Any]:
    value: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, MalformedRecordError):
        value |= {"path": exc.path, "location": exc.location}
    return value


def _error(value: dict[str, Any]) -> MixplaneError:
    """The error a worker raised, rebuilt on the owner with its class and message."""
    kinds = _subclasses(MixplaneError)
    kind = kinds.get(value["type"], RegistrationError)
    if issubclass(kind, MalformedRecordError):
        path, location = value["path"], value["location"]
        where = f"{path}:{location}" if location else path
        return kind(value["message"].removeprefix(f"{where}: "), path=path, location=location)
    return kind(value["message"])


def _subclasses(base: type[MixplaneError]) -> dict[str, type[MixplaneError]]:
    out = {base.__name__: base}
    for sub in base.__subclasses__():
        out |= _subclasses(sub)
    return out


# -- token counts: the worker side -------------------------------------------------------------

_COUNT_SOURCE: dict[str, Any] = {}


def _count_init(source: dict[str, Any]) -> None:
    """A local count worker's start: keep the tokenizer's source (built at the first task, so
    an error comes back as a value); Ctrl-C is the owner's to handle (it stops the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _COUNT_SOURCE.clear()
    _COUNT_SOURCE.update(source)


def _count_in_process(task: Mapping[str, Any]) -> dict[str, Any]:
    try:
        tokenizer = worker_tokenizer(_COUNT_SOURCE)
    except MixplaneError as exc:
        return {"table": None, "error": _error_value(exc)}
    return _count_value(task, tokenizer)


def _count_ray_task(source: dict[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    try:
        tokenizer = worker_tokenizer(source)
    except MixplaneError as exc:
        return {"table": None, "error": _error_value(exc)}
    return _count_value(task, tokenizer)


def _count_value(task: Mapping[str, Any], tokenizer: Tokenizer) -> dict[str, Any]:
    """One task's counts, or its error as a value."""
    try:
        return {"table": count_task(task, tokenizer), "error": None}
    except MixplaneError as exc:
        return {"table": None, "error": _error_value(exc)}
    except (OSError, ValueError) as exc:  # a file that no longer reads as registered
        message = (
            f"cannot read {task['file']['path']} of dataset {task['file']['dataset']!r} "
            f"({type(exc).__name__}: {exc}); re-register it"
        )
        return {"table": None, "error": {"type": "CatalogError", "message": message}}


def _counted(value: Mapping[str, Any]) -> tuple[pa.Table | None, MixplaneError | None]:
    error = value["error"]
    return value["table"], _error(error) if error is not None else None
