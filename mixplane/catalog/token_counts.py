"""Exact token counts: per sample and tokenizer fingerprint, counted in parallel, stored once.

``count_tokens`` (``Catalog.count_tokens``, ``mixplane count-tokens``) stores how many tokens
a tokenizer makes of every sample of the chosen datasets, in ``token_counts`` (one row per
sample) and ``token_count_files`` (one row per counted file), where job sizing finds them
(``counted_files``; ``Catalog.sample_tokens``). The algorithm:

1. Cache. A file with a ``token_count_files`` row for the tokenizer's fingerprint is cached:
   nothing is read. A file id stands for the file's identity at registration (size, mtime,
   fingerprint; ``files.check_unchanged``): re-registering a dataset gives its files new ids
   and drops their counts, so stored counts never outlive the bytes they were made from.
2. Changed files. Every file to count is checked against its registered identity first. A
   changed or removed file is an error naming it, before anything is counted
   (``on_changed="error"``, the default), or is left out and listed in the report
   (``"skip"``). Re-registering its dataset is the fix; the next run counts the new file ids.
   Workers check each file again before reading it, so a change during the run is caught too.
3. Tasks. Files are cut into tasks of about ``TASK_BYTES`` of text (at most ``batch_size``
   samples): JSONL and WebDataset anywhere, Parquet at row-group boundaries (a row group is
   decoded whole), compressed JSONL not at all (it is decompressed whole). A task is plain
   values: the file's catalog row (path, format, text field, identity) and its slice of
   the pointer table.
4. Workers (``engines.py``: local processes, one per core, or Ray tasks) rebuild the tokenizer
   from plain values (``tokens/wire.py``: a name, or its ``tokenizer.json`` / rank file as
   text; never code) and check its fingerprint, read the texts by pointer with the reader
   window streams use (``client/reader.py``: exactly the texts a stream tokenizes) and return
   an Arrow table (file_id, ordinal, tokens). Workers never open the catalog: only its owner
   may.
5. The owner collects the tables as they complete. A file whose tasks are all back is
   complete; complete files are written in one transaction per ``FLUSH_ROWS`` counts (counts
   and the file's cache row together), so an interrupted run keeps whole files and the next
   run counts only the rest. ``lock`` (the server's catalog lock) is held only around these
   catalog uses, never while workers count, so a long count does not hold up other requests.

Cost: the tokenizer's own (deepseek ~1.4 MB/s of text a core; reading and JSON parsing take a
few percent of that), spread over the workers; starting a worker process costs ~1 s (loading
deepseek 0.3 s of it), so work under ``SPAWN_MIN_BYTES`` is counted in this process unless
``workers`` is given. Storing costs ~20 bytes a sample. ``benchmarks/count_tokens.py`` measures
the ratio to the bare tokenizer times the cores.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from mixplane.catalog.files import FileIdentity, check_unchanged
from mixplane.catalog.remote_fs import location
from mixplane.client.reader import Reader
from mixplane.errors import FileChangedError, MixplaneError
from mixplane.tokens.tokenizer import Tokenizer, TokenizerError
from mixplane.tokens.wire import tokenizer_from_wire, tokenizer_to_wire

if TYPE_CHECKING:
    from mixplane.catalog.engines import Counts, Engine

OnChanged = Literal["error", "skip"]

TASK_BYTES = 2 << 20  # text bytes a task aims at (deepseek: ~1.5 s on one core)
BATCH_SAMPLES = 32_768  # most samples in a task
FLUSH_ROWS = 1 << 20  # counts written per transaction (at least one whole file)
SPAWN_MIN_BYTES = 8 << 20  # less text than this is counted in this process (workers=None)
POINTER_COLUMNS = ("offset", "length", "row_group", "row")
COUNTS_SCHEMA = pa.schema(
    [("file_id", pa.int32()), ("ordinal", pa.int64()), ("tokens", pa.int64())]
)


# -- the tokenizer as plain values -------------------------------------------------------------

#: A tokenizer as plain values (``tokens/wire.py``): a name, or its file's text and options.
TokenizerWire = dict[str, Any]


def tokenizer_source(tokenizer: Tokenizer) -> TokenizerWire | None:
    """What rebuilds ``tokenizer`` in a worker (``tokenizer_to_wire``: its name, or its
    ``tokenizer.json`` / rank file as text; never code); None for a tokenizer that is neither a
    Hugging Face nor a tiktoken one (it can only count in this process)."""
    try:
        return tokenizer_to_wire(tokenizer)
    except TokenizerError:
        return None


_WORKER_TOKENIZERS: dict[str, Tokenizer] = {}


def worker_tokenizer(source: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer of ``source`` (``tokenizer_source``) in a worker process, rebuilt once per
    process and fingerprint, and refused when its fingerprint is not the owner's (another
    version of a named tokenizer installed there). Tokenization there runs on one thread: the
    workers are the parallelism."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    fp = str(source["fingerprint"])
    tokenizer = _WORKER_TOKENIZERS.get(fp)
    if tokenizer is None:
        tokenizer = tokenizer_from_wire(source)
        _WORKER_TOKENIZERS[fp] = tokenizer
    return tokenizer


# -- one task: read texts by pointer, count them -----------------------------------------------


class _OneFile:
    """A reader's pointer source holding one file row and one slice of its pointers."""

    def __init__(self, file: Mapping[str, Any], pointers: Mapping[str, np.ndarray]) -> None:
        self._file = dict(file)
        self._pointers = dict(pointers)

    def files(self) -> pa.Table:
        return pa.Table.from_pylist([self._file])

    def pointers(self, file_id: int) -> dict[str, np.ndarray]:
        return self._pointers


def count_task(task: Mapping[str, Any], tokenizer: Tokenizer) -> pa.Table:
    """Counts of one task: ``file`` (a ``Catalog.files()`` row), ``ordinals`` and
    ``pointers`` (their pointer arrays). The file is checked against its registration first."""
    file = task["file"]
    ordinals = np.asarray(task["ordinals"], dtype=np.int64)
    reader = Reader(_OneFile(file, task["pointers"]))
    try:
        _, texts = reader.read_with_text(int(file["file_id"]), np.arange(len(ordinals)))
    finally:
        reader.close()
    try:
        tokens = np.asarray(tokenizer.count_batch(texts), dtype=np.int64)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a tokenizer's own failure (Rust panics are BaseExceptions)
        msg = (
            f"the tokenizer failed on samples {ordinals[0]}..{ordinals[-1]} of "
            f"{file['path']} ({type(exc).__name__}: {str(exc)[:200]}); is it a complete "
            "tokenizer?"
        )
        raise TokenizerError(msg) from None
    if len(tokens) != len(texts):
        msg = f"the tokenizer gave {len(tokens)} counts for {len(texts)} texts of {file['path']}"
        raise TokenizerError(msg)
    return pa.table(
        {
            "file_id": pa.array(np.full(len(ordinals), file["file_id"], np.int32)),
            "ordinal": pa.array(ordinals),
            "tokens": pa.array(tokens),
        },
        schema=COUNTS_SCHEMA,
    )


# -- the owner ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetTokens:
    """One dataset's totals for the tokenizer: files with counts, their samples and tokens."""

    name: str
    files: int
    counted_files: int
    samples: int
    tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenCountReport:
    """What a count did: samples and files ``counted`` now and ``cached`` before; ``changed``
    files left out (``on_changed="skip"``), with the reason; totals per dataset."""

    tokenizer: str  # the fingerprint
    counted: int
    cached: int
    files_counted: int
    files_cached: int
    tokens: int  # of every counted sample of the datasets, now and before
    datasets: tuple[DatasetTokens, ...]
    changed: tuple[str, ...] = ()
    engine: str = "local"
    workers: int = 0  # processes or Ray tasks at once; 0: counted in this process
    seconds: float = 0.0
    counted_bytes: int = 0  # text bytes read and counted now

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "counted": self.counted,
            "cached": self.cached,
            "files_counted": self.files_counted,
            "files_cached": self.files_cached,
            "tokens": self.tokens,
            "datasets": [
                {
                    "name": d.name,
                    "files": d.files,
                    "counted_files": d.counted_files,
                    "samples": d.samples,
                    "tokens": d.tokens,
                }
                for d in self.datasets
            ],
            "changed": list(self.changed),
            "engine": self.engine,
            "workers": self.workers,
            "seconds": self.seconds,
            "counted_bytes": self.counted_bytes,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> TokenCountReport:
        """The report of ``to_dict`` (a server's answer)."""
        return cls(
            tokenizer=str(value["tokenizer"]),
            counted=int(value["counted"]),
            cached=int(value["cached"]),
            files_counted=int(value["files_counted"]),
            files_cached=int(value["files_cached"]),
            tokens=int(value["tokens"]),
            datasets=tuple(
                DatasetTokens(
                    name=str(d["name"]),
                    files=int(d["files"]),
                    counted_files=int(d["counted_files"]),
                    samples=int(d["samples"]),
                    tokens=int(d["tokens"]),
                )
                for d in value["datasets"]
            ),
            changed=tuple(str(c) for c in value["changed"]),
            engine=str(value["engine"]),
            workers=int(value["workers"]),
            seconds=float(value["seconds"]),
            counted_bytes=int(value["counted_bytes"]),
        )


@dataclass(slots=True)
class _Pending:
    """A file being counted: its tasks still out and the tables back."""

    file: Mapping[str, Any]
    tasks: int
    tables: list[pa.Table] = field(default_factory=list)


def counted_files(con: duckdb.DuckDBPyConnection, fingerprint: str) -> set[int]:
    """Ids of the files with stored counts for the tokenizer ``fingerprint``."""
    rows = con.execute(
        "SELECT file_id FROM token_count_files WHERE tokenizer = ?", [fingerprint]
    ).fetchall()
    return {int(r[0]) for r in rows}


def count_tokens(
    con: duckdb.DuckDBPyConnection,
    tokenizer: Tokenizer,
    files: Sequence[Mapping[str, Any]],
    *,
    source: TokenizerWire | None,
    engine: Engine,
    workers: int | None = None,
    batch_size: int = BATCH_SAMPLES,
    on_changed: OnChanged = "error",
    progress: bool | None = None,
    lock: contextlib.AbstractContextManager[Any] | None = None,
) -> TokenCountReport:
    """Count and store the tokens of ``files`` (rows of ``Catalog.files()``) not counted
    before for ``tokenizer`` (see the module); ``engine`` an ``engines.Engine``."""
    _check_options(on_changed, workers, batch_size)
    started = time.perf_counter()
    held = lock if lock is not None else contextlib.nullcontext()
    fp = tokenizer.fingerprint
    with held:
        done = counted_files(con, fp)
    todo = [f for f in files if int(f["file_id"]) not in done]
    cached = [f for f in files if int(f["file_id"]) in done]
    todo, changed = _unchanged(todo, on_changed)
    with held:
        sizes = _sizes(con, [int(f["file_id"]) for f in todo])
    total_bytes = sum(b for _, b in sizes.values())
    estimate = sum(
        _estimate(f, *sizes.get(int(f["file_id"]), (0, 0)), batch_size=batch_size) for f in todo
    )
    processes = engine.count_workers(workers, estimate, total_bytes)
    if source is None and engine.name == "local":  # it cannot be rebuilt in another process
        processes = 0
    run = _Collector(con=con, fp=fp, held=held, on_changed=on_changed, changed=changed)
    with tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc="count-tokens",
        disable=not progress if progress is not None else None,
        leave=False,
    ) as bar:
        results = engine.counts(run.tasks(todo, batch_size), tokenizer, source, workers=processes)
        run.collect(results, bar.update)
    names = list(dict.fromkeys(f["dataset"] for f in files))
    with held:
        totals = _totals(con, fp, [int(f["file_id"]) for f in files], names)
    return TokenCountReport(
        tokenizer=fp,
        counted=run.written,
        cached=sum(int(f["samples"]) for f in cached),
        files_counted=len(run.written_files),
        files_cached=len(cached),
        tokens=sum(d.tokens for d in totals),
        datasets=tuple(totals),
        changed=tuple(run.changed),
        engine=engine.name,
        workers=processes,
        seconds=time.perf_counter() - started,
        counted_bytes=run.counted_bytes,
    )


def _check_options(on_changed: OnChanged, workers: int | None, batch_size: int) -> None:
    if on_changed not in ("error", "skip"):
        msg = f"on_changed must be 'error' or 'skip', got {on_changed!r}"
        raise MixplaneError(msg)
    if workers is not None and workers < 1:
        msg = f"workers must be at least 1, got {workers}"
        raise MixplaneError(msg)
    if batch_size < 1:
        msg = f"batch_size must be at least 1, got {batch_size}"
        raise MixplaneError(msg)


def _unchanged(
    todo: Sequence[Mapping[str, Any]], on_changed: OnChanged
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The files of ``todo`` unchanged since registration, and the problems of the others
    (``on_changed="error"``: the first of them raised, naming how many more)."""
    problems: list[FileChangedError] = []
    unchanged = []
    for f in todo:
        try:
            check_unchanged(location(f["path"]), _identity(f), f["dataset"])
            unchanged.append(f)
        except FileChangedError as exc:
            problems.append(exc)
    if problems and on_changed == "error":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        msg = (
            f"{problems[0]}{more}; nothing was counted (or pass on_changed='skip', "
            "--on-changed skip, to count the other files)"
        )
        raise FileChangedError(msg)
    return unchanged, [str(p) for p in problems]


@dataclass(slots=True, kw_only=True)
class _Collector:
    """The owner's side of a count: hands out each file's tasks, collects their tables as
    they complete, and writes complete files (``FLUSH_ROWS`` counts a transaction)."""

    con: duckdb.DuckDBPyConnection
    fp: str
    held: contextlib.AbstractContextManager[Any]
    on_changed: OnChanged
    changed: list[str]
    pending: dict[int, _Pending] = field(default_factory=dict)
    complete: list[_Pending] = field(default_factory=list)
    written_files: list[int] = field(default_factory=list)
    written: int = 0
    counted_bytes: int = 0

    def tasks(self, todo: Sequence[Mapping[str, Any]], batch_size: int) -> Iterator[dict[str, Any]]:
        """Each file's tasks, its pointers read when the engine reaches it."""
        for f in todo:
            with self.held:
                ones = _file_tasks(self.con, f, batch_size)
            state = _Pending(file=f, tasks=len(ones))
            if ones:
                self.pending[int(f["file_id"])] = state
            else:  # no samples: counted as it is
                self.complete.append(state)
            yield from ones

    def collect(self, results: Counts, advance: Callable[[int], object]) -> None:
        """Take every task's result; on an error, keep the whole files counted so far."""
        try:
            with contextlib.closing(results):
                for task, table, error in results:
                    self._take(task, table, error, advance)
        except BaseException:
            with contextlib.suppress(Exception):  # keep the whole files counted so far
                self.flush()
            raise
        self.flush()

    def _take(
        self,
        task: Mapping[str, Any],
        table: pa.Table | None,
        error: MixplaneError | None,
        advance: Callable[[int], object],
    ) -> None:
        file_id = int(task["file"]["file_id"])
        if error is not None:
            if isinstance(error, FileChangedError) and self.on_changed == "skip":
                if self.pending.pop(file_id, None) is not None:
                    self.changed.append(str(error))
                return
            raise error
        advance(task["bytes"])
        state = self.pending.get(file_id)
        if state is None:  # left out: another of its tasks found it changed
            return
        assert table is not None
        self.counted_bytes += task["bytes"]
        state.tables.append(table)
        state.tasks -= 1
        if state.tasks == 0:
            self.complete.append(self.pending.pop(file_id))
            if sum(t.num_rows for p in self.complete for t in p.tables) >= FLUSH_ROWS:
                self.flush()

    def flush(self) -> None:
        """Write the complete files (one transaction)."""
        if not self.complete:
            return
        with self.held:
            ids = set(_write(self.con, self.fp, self.complete))
        self.written_files.extend(sorted(ids))
        self.written += sum(
            t.num_rows for p in self.complete if int(p.file["file_id"]) in ids for t in p.tables
        )
        self.complete.clear()


def _identity(f: Mapping[str, Any]) -> FileIdentity:
    return FileIdentity(size=f["size"], mtime_ns=f["mtime_ns"], fingerprint=f["fingerprint"])


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _sizes(con: duckdb.DuckDBPyConnection, file_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(samples, text bytes) of each file."""
    if not file_ids:
        return {}
    rows = con.execute(
        "SELECT file_id, count(*), coalesce(sum(bytes), 0) FROM samples "
        "WHERE list_contains(?, file_id) GROUP BY file_id",
        [list(file_ids)],
    ).fetchall()
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def _estimate(f: Mapping[str, Any], samples: int, text_bytes: int, *, batch_size: int) -> int:
    """About how many tasks a file makes (the engine's choice of workers needs no more)."""
    if samples == 0:
        return 0
    if f["format"] == "jsonl" and f.get("compression"):
        return 1
    return max(1, -(-text_bytes // TASK_BYTES), -(-samples // batch_size))


def _file_tasks(
    con: duckdb.DuckDBPyConnection, f: Mapping[str, Any], batch_size: int
) -> list[dict[str, Any]]:
    """One file's tasks: consecutive slices of its samples (see the module for the cuts)."""
    table = con.sql(
        'SELECT ordinal, "offset", length, row_group, "row", bytes FROM samples '
        "WHERE file_id = ? ORDER BY ordinal",
        params=[int(f["file_id"])],
    ).to_arrow_table()
    n = table.num_rows
    if n == 0:
        return []
    ends = np.cumsum(table.column("bytes").to_numpy())
    if f["format"] == "jsonl" and f.get("compression"):
        cuts = [0, n]
    else:
        allowed = None
        if f["format"] == "parquet":  # only where a row group starts
            groups = table.column("row_group").to_numpy()
            allowed = np.flatnonzero(np.diff(groups)) + 1
        cuts = _cuts(ends, batch_size, allowed)
    ordinals = table.column("ordinal").to_numpy()
    columns = {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in POINTER_COLUMNS
        if table.column(name).null_count < n
    }
    return [
        {
            "file": dict(f),
            "ordinals": ordinals[a:b],
            "pointers": {name: values[a:b] for name, values in columns.items()},
            "bytes": int(ends[b - 1] - (ends[a - 1] if a else 0)),
        }
        for a, b in itertools.pairwise(cuts)
    ]


def _cuts(ends: np.ndarray, batch_size: int, allowed: np.ndarray | None) -> list[int]:
    """Cut positions 0 = c0 < c1 < ... = n: each slice ends where its text passes TASK_BYTES or
    it holds ``batch_size`` samples, at the next allowed position (all, when None)."""
    n = len(ends)
    cuts = [0]
    while cuts[-1] < n:
        a = cuts[-1]
        base = ends[a - 1] if a else 0
        by_bytes = int(np.searchsorted(ends, base + TASK_BYTES, side="left")) + 1
        b = min(n, a + batch_size, max(by_bytes, a + 1))
        if allowed is not None and b < n:
            later = allowed[allowed >= b]
            b = int(later[0]) if len(later) else n
        cuts.append(b)
    return cuts


def _write(con: duckdb.DuckDBPyConnection, fp: str, complete: Sequence[_Pending]) -> list[int]:
    """Store the counts of complete files and their cache rows in one transaction; files that
    left the catalog or were counted meanwhile (another run) are dropped. Returns the ids written."""
    ids = [int(p.file["file_id"]) for p in complete]
    con.execute("BEGIN TRANSACTION")
    try:
        present = {
            int(r[0])
            for r in con.execute(
                "SELECT file_id FROM files WHERE list_contains(?, file_id)", [ids]
            ).fetchall()
        }
        keep = sorted(present - counted_files(con, fp))
        tables = [t for p in complete if int(p.file["file_id"]) in keep for t in p.tables]
        if tables:
            con.register("_mixplane_tokens", pa.concat_tables(tables))
            try:
                con.execute(
                    "INSERT INTO token_counts SELECT ?, file_id, ordinal, tokens "
                    "FROM _mixplane_tokens",
                    [fp],
                )
            finally:
                con.unregister("_mixplane_tokens")
        if keep:
            con.execute("INSERT INTO token_count_files SELECT ?, unnest(?)", [fp, keep])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return keep


def _totals(
    con: duckdb.DuckDBPyConnection, fp: str, file_ids: Sequence[int], names: Sequence[str]
) -> list[DatasetTokens]:
    rows = con.execute(
        """SELECT d.name, count(*) AS files, count(c.file_id) AS counted,
                  coalesce(sum(CASE WHEN c.file_id IS NULL THEN 0 ELSE f.samples END), 0),
                  coalesce(sum(t.tokens), 0)
           FROM files f JOIN datasets d USING (dataset_id)
           LEFT JOIN token_count_files c ON c.file_id = f.file_id AND c.tokenizer = ?
           LEFT JOIN (SELECT file_id, sum(tokens) AS tokens FROM token_counts
                      WHERE tokenizer = ? AND list_contains(?, file_id) GROUP BY file_id) t
             ON t.file_id = c.file_id
           WHERE list_contains(?, f.file_id)
           GROUP BY d.name""",
        [fp, fp, list(file_ids), list(file_ids)],
    ).fetchall()
    found = {r[0]: r for r in rows}
    return [
        DatasetTokens(
            name=n,
            files=int(found[n][1]),
            counted_files=int(found[n][2]),
            samples=int(found[n][3]),
            tokens=int(found[n][4]),
        )
        for n in names
        if n in found
    ]
