"""Scanning one file for registration, without the catalog (here or on a worker).

``scan_file`` runs the file's format scan (``formats/``) and the user's property function on
each batch, and yields the batches (``Scanned``: pointers, text byte lengths, field and
function values) then a ``FileEnd`` (the file's identity before the scan, what was skipped).
It needs no catalog, so an engine (``engines.py``) runs it in this process or on Ray workers
and the catalog's owner (``ingest.register_files``) stores what comes back in file order. The
scan checks records against the property types the dataset showed so far and learns them as
it goes, as the owner does (``ingest.PropertyTypes.accept``), so the batches are the same
wherever it runs. Cost: the format's parser plus the function; the identity is taken twice
(before and after) to catch a file changed during its scan.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import pyarrow as pa

from mixplane.catalog.files import FileIdentity, Location, identify
from mixplane.catalog.formats import (
    RESTART,
    TOKEN_FORMATS,
    FormatName,
    OnError,
    ScanBatch,
    ScanRequest,
    get_format,
)
from mixplane.catalog.formats.tokenized import TokenSpec, asks_for_text
from mixplane.catalog.properties import (
    BatchFunction,
    ConstantSource,
    FieldSource,
    PropertyType,
    as_column,
    check_name,
    infer_type,
    unify,
)
from mixplane.errors import MalformedRecordError, MixplaneError, PropertyError, RegistrationError


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanJob:
    """What scanning each file of one registration needs (the same for every file)."""

    fields: tuple[FieldSource, ...]
    constants: tuple[ConstantSource, ...]
    function: BatchFunction | None
    text_field: str | None
    on_error: OnError
    text_lengths: Literal["exact", "metadata"] = "exact"
    tokens: TokenSpec | None = None  # the files hold token ids of this tokenizer


@dataclass(frozen=True, slots=True, kw_only=True)
class Scanned:
    """One batch of a file's scan (``RESTART``: start the file over) with the values the
    property function computed from its records."""

    batch: ScanBatch  # without ``table``: the function has seen the records
    outputs: dict[str, pa.Array]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEnd:
    """The end of a file's scan: its identity before the scan and what was skipped."""

    identity: FileIdentity
    skipped: int
    messages: tuple[str, ...]


def scan_file(
    job: ScanJob, path: Location, fmt: FormatName, found: Mapping[str, PropertyType | None]
) -> Iterator[Scanned | FileEnd]:
    """Scan one file without the catalog: its batches, then a ``FileEnd``; errors raise where the
    local registration raises them.

    ``found`` holds this dataset's property types before the file (``PropertyTypes.found``).
    The scan checks records against the types of field properties and learns them as it goes,
    exactly as the catalog's owner does (``PropertyTypes.accept``), so the batches are the same
    wherever this runs, given the same ``found``. A batch whose properties conflict, or whose
    property function fails, is yielded before the error is raised, so the owner stores (and
    checks) what precedes the error in the same order as a local registration.
    """
    identity = identify(path)
    where = str(path)
    seen = {f.name: found.get(f.name) for f in job.fields}
    request = ScanRequest(
        # records are checked against the types this dataset has shown so far; a clash with
        # another dataset's type is a PropertyError naming the property and file (accept)
        fields={f.path: seen[f.name] for f in job.fields},
        text_field=job.text_field
        or (
            (job.tokens.field if job.tokens else "input_ids")
            if fmt in TOKEN_FORMATS
            else ("txt" if fmt == "webdataset" else "text")
        ),
        on_error=job.on_error,
        want_table=job.function is not None,
        text_lengths=job.text_lengths,
        tokens=job.tokens,
        want_text=job.function is not None and asks_for_text(job.function),
    )
    count = 0
    for batch in get_format(fmt).scan(path, request):
        if batch is RESTART:
            count = 0
            yield Scanned(batch=batch, outputs={})
            continue
        try:
            for f in job.fields:
                _learn(seen, f.name, batch.fields[f.path], f"file {where}")
        except PropertyError:
            yield Scanned(batch=replace(batch, table=None), outputs={})
            raise
        outputs: dict[str, pa.Array] = {}
        if job.function is not None and batch.num_samples:
            assert batch.table is not None
            try:
                outputs = _call(job.function, batch.table, where)
                for prop, values in outputs.items():
                    if prop in seen:
                        _learn(seen, prop, values, f"the property function on file {where}")
            except MixplaneError:
                yield Scanned(batch=replace(batch, table=None), outputs=outputs)
                raise
        yield Scanned(batch=replace(batch, table=None), outputs=outputs)
        count += batch.num_samples
        for f in job.fields:  # the slow path checks later batches against found types
            request.fields[f.path] = seen[f.name]
    if count == 0 and request.skipped == 0:
        if job.on_error == "raise":
            msg = "file holds no samples; remove it from the paths or register with on_error='skip'"
            raise MalformedRecordError(msg, path=where)
        request.messages.append(f"{path}: file holds no samples")
    if identify(path) != identity:
        msg = f"file {path} changed while it was being registered; register again when it is stable"
        raise RegistrationError(msg)
    yield FileEnd(identity=identity, skipped=request.skipped, messages=tuple(request.messages))


def _learn(seen: dict[str, PropertyType | None], name: str, values: pa.Array, where: str) -> None:
    """Track a property's type as ``PropertyTypes.accept`` does for ``found``."""
    seen[name] = unify(name, seen[name], infer_type(values.type), where)


def _call(function: BatchFunction, table: pa.Table, where: str) -> dict[str, pa.Array]:
    """Run a user batch function and check its output: a mapping of names to one value per row."""
    try:
        result = function(table)
    except Exception as exc:
        msg = f"the property function failed on a batch of {where}: {type(exc).__name__}: {exc}"
        raise RegistrationError(msg) from exc
    if not isinstance(result, Mapping):
        msg = f"the property function returned {type(result).__name__}; return a dict of property name -> values"
        raise PropertyError(msg)
    out = {}
    for prop, values in result.items():
        check_name(prop)
        out[prop] = as_column(prop, values, table.num_rows, where)
    return out
