"""The job definition: what defines a job's stream (with the catalog snapshot), and its defaults.

``JobSpec`` is a frozen value with a JSON form (``to_json``/``from_json``: a server request, a
state file, a snapshot) and a fingerprint that saved states name. ``make_spec`` builds one from
``submit``'s arguments. Defaults are the recommended settings: token budgets in chunks of
``DEFAULT_TOKEN_CHUNK`` tokens (``DEFAULT_ADAPTIVE_TOKEN_CHUNK`` for an adaptive job, so a new
mixture reaches the trainer within a few steps), or ``DEFAULT_SAMPLE_CHUNK`` samples.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Literal

from mixplane.chunking.order import OrderKind
from mixplane.chunking.spec import Unit
from mixplane.errors import PlanError, shown
from mixplane.mixture.mixture import Mixture
from mixplane.mixture.schedule import OnExhausted, Phase, ScheduleUnit
from mixplane.tokens.tokenizer import Tokenizer

DEFAULT_BYTES_PER_TOKEN = 4.0
#: default chunk budgets: a token chunk holds a few hundred windows of 2,048 tokens (batch-level
#: mixing, docs/benchmarks.md "mixing"); an adaptive job's is smaller, so that a new mixture
#: reaches the consumers within a few training steps (docs/planning.md "adaptation latency")
DEFAULT_TOKEN_CHUNK = 500_000
DEFAULT_ADAPTIVE_TOKEN_CHUNK = 65_536
DEFAULT_SAMPLE_CHUNK = 1_000
LEGACY_READ_AHEAD_SAMPLES = 1_000  # read groups of jobs made before read_ahead was an option


MAX_INT = 2**63 - 1
JOB_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"


def option(
    default: Any,
    *,
    help: str = "",
    cli: str | None = None,
    **wire: Any,
) -> Any:
    """A job option: its default, what it means (``help``), its command-line flag (``cli``;
    None: not on the command line) and the limits a server checks in a request (``wire``:
    pydantic ``Field`` arguments). The one place each option is declared: ``make_spec``,
    ``Client.submit``, the remote client, the server's request body and the CLI derive from it."""
    return field(default=default, metadata={"help": help, "cli": cli, "wire": wire})


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """Everything that defines a job's stream (together with the catalog snapshot)."""

    job_id: str = option("", help="the job's id", pattern=JOB_ID_PATTERN)
    where: str | None = option(None, help="filter over properties", max_length=64 * 1024)
    mixture: Mixture = option(None, help="selectors to weights", max_length=10_000)
    seed: int = option(0, help="seed of every random choice", cli="--seed", ge=0, le=MAX_INT)
    unit: Unit = option("tokens", help="what a chunk's budget counts", cli="--unit")
    chunk_size: int = option(
        0,  # 0: the default for the unit (DEFAULT_*_CHUNK)
        help="budget per chunk [default: 500,000 tokens (65,536 for an adaptive job), or 1,000 "
        "samples]",
        cli="--chunk-size",
        ge=1,
        le=100_000_000,
    )
    on_exhausted: OnExhausted = option(
        "repeat", help="when a component runs out", cli="--on-exhausted"
    )
    order: OrderKind | Literal["sorted"] = option("shuffled", help="order inside a component")
    sort_by: str | None = option(None, help="property of a sorted order", max_length=256)
    descending: bool = option(False, help="sorted order, largest first")
    block_size: int = option(256, help="samples read together in a shuffle", ge=1, le=1 << 24)
    bytes_per_token: float = option(
        DEFAULT_BYTES_PER_TOKEN,
        help="token estimate from text bytes (token budgets without counts or a tokenizer)",
        cli="--bytes-per-token",
        gt=0,
        le=1e6,
        allow_inf_nan=False,
    )
    #: later phases; the first is (where, mixture, on_exhausted)
    schedule: tuple[Phase, ...] = option((), help="later phases", max_length=10_000)
    schedule_unit: ScheduleUnit = option("chunks", help="what phase starts count")
    #: fingerprint of the job's tokenizer (token budgets)
    tokenizer: str | None = option(None, help="the tokenizer's fingerprint", max_length=512)
    #: adaptive mixing: a name from mixplane.adapt.ALGORITHMS
    algorithm: str | None = option(None, help="adaptive mixing algorithm", max_length=128)
    algorithm_options: tuple[tuple[str, Any], ...] = option(
        (), help="the algorithm's options", max_length=64
    )
    #: chunks a consumer's stream reads (and the job plans) together, at fixed positions of the
    #: consumer's sequence; a mixture change of an adaptive job applies after the group
    #: following the one being consumed (0: the default, ``default_read_ahead``)
    read_ahead: int = option(
        0,
        help="chunks a stream reads together [default: 1 for token and adaptive jobs]",
        cli="--read-ahead",
        ge=1,
        le=1 << 20,
    )

    def __post_init__(self) -> None:
        if not self.job_id or not isinstance(self.mixture, Mixture):
            msg = "a job needs a job_id and a mixture"
            raise PlanError(msg)
        if self.unit not in ("samples", "tokens"):
            msg = f"unit must be 'samples' or 'tokens', got {self.unit!r}"
            raise PlanError(msg)
        if self.chunk_size == 0:
            object.__setattr__(self, "chunk_size", default_chunk_size(self.unit, self.algorithm))
        if self.read_ahead == 0:
            object.__setattr__(
                self, "read_ahead", default_read_ahead(self.unit, self.chunk_size, self.algorithm)
            )
        for name in ("chunk_size", "read_ahead"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"{name} must be a positive integer, got {value!r}"
                raise PlanError(msg)

    @property
    def phases(self) -> tuple[Phase, ...]:
        first = Phase(
            start=0, mixture=self.mixture, where=self.where, on_exhausted=self.on_exhausted
        )
        return (first, *self.schedule)

    def phase_chunks(self) -> list[int]:
        """The chunk index at which each phase takes effect."""
        if self.schedule_unit not in ("chunks", self.unit):
            msg = (
                f"a schedule in {self.schedule_unit} needs a job budgeted in "
                f"{self.schedule_unit}; use schedule_unit='chunks' or '{self.unit}'"
            )
            raise PlanError(msg)
        starts = [p.start for p in self.phases]
        if any(b <= a for a, b in itertools.pairwise(starts)):
            msg = f"schedule phases must start in increasing order after 0, got {starts}"
            raise PlanError(msg)
        per = 1 if self.schedule_unit == "chunks" else self.chunk_size
        return [-(-p // per) for p in starts]

    def to_json(self) -> dict[str, Any]:
        """Plain values: the mixture and phases as their JSON forms, options as a map."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["mixture"] = self.mixture.to_json()
        data["schedule"] = [p.to_json() for p in self.schedule]
        data["algorithm_options"] = dict(self.algorithm_options)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        """The spec from ``to_json``'s form (a job snapshot, a state file, a server request);
        a field of another type is a ``PlanError`` naming it."""
        if not isinstance(data, Mapping):
            msg = (
                f"a job definition is a JSON object (JobSpec.to_json()), not {type(data).__name__}"
            )
            raise PlanError(msg)
        fields = dict(data)
        for name in ("chunk_size", "read_ahead"):  # null or absent: the default
            if fields.get(name) is None:
                fields.pop(name, None)
        _check_fields(fields)
        try:
            fields["mixture"] = Mixture.from_json(fields["mixture"])
            fields["schedule"] = tuple(Phase.from_json(p) for p in fields.get("schedule", ()))
            fields["algorithm_options"] = tuple(
                sorted(dict(fields.get("algorithm_options") or {}).items())
            )
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            msg = f"not a job definition ({exc}); expected the form JobSpec.to_json() writes"
            raise PlanError(msg) from None

    def fingerprint(self) -> str:
        """A digest of the definition. ``read_ahead`` at the value that jobs made before it was
        an option had is left out, so their saved states still load."""
        data = self.to_json()
        if self.read_ahead == legacy_read_ahead(self.unit, self.chunk_size):
            del data["read_ahead"]
        return hashlib.blake2b(
            json.dumps(data, sort_keys=True).encode(), digest_size=16
        ).hexdigest()


def _check_fields(data: Mapping[str, Any]) -> None:
    """Each field of a decoded definition against its declared type and limits (``option``'s
    ``wire``, the limits the server checks): a corrupt snapshot or state file is an error
    naming the field, not a crash in planning. The mixture and phases check themselves."""
    hints = _hints()
    for f in fields(JobSpec):
        if f.name not in data or f.name in ("mixture", "schedule", "algorithm_options"):
            continue
        value = data[f.name]
        if value != f.default and not _fits(value, hints[f.name], f.metadata["wire"]):
            msg = (
                f"job definition field {f.name!r} holds {shown(value)}; expected "
                f"{_expected(hints[f.name], f.metadata['wire'])}"
            )
            raise PlanError(msg)
    if not isinstance(data.get("schedule", ()), list | tuple):
        msg = f"job definition field 'schedule' holds {shown(data['schedule'])}; expected a list"
        raise PlanError(msg)
    if not isinstance(data.get("algorithm_options") or {}, Mapping):
        msg = f"job definition field 'algorithm_options' holds {shown(data['algorithm_options'])}"
        raise PlanError(msg + "; expected an object")


def _literals(hint: Any) -> list[Any] | None:
    """The values of a Literal, or of a union of Literals; None for any other type."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return list(typing.get_args(hint))
    if origin is typing.Union or origin is types.UnionType:
        values: list[Any] = []
        for h in typing.get_args(hint):
            part = _literals(h)
            if part is None:
                return None
            values += part
        return values
    return None


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(JobSpec)


def _fits(value: Any, hint: Any, wire: Mapping[str, Any]) -> bool:
    """Whether a JSON value is of the declared type (int, float, bool, str, a Literal, or one
    of a union) within ``wire``'s limits (ge, gt, le, max_length, pattern, allow_inf_nan)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, h, wire) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is Literal:
        return any(value == v and type(value) is type(v) for v in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and _within(value, wire)
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value) and _within(value, wire)
    if hint is str:
        pattern = wire.get("pattern")
        return (
            isinstance(value, str)
            and len(value) <= wire.get("max_length", len(value))
            and (pattern is None or re.fullmatch(pattern, value) is not None)
        )
    return True  # a type this check does not know: the constructor's own checks apply


def _within(value: float, wire: Mapping[str, Any]) -> bool:
    return (
        value >= wire.get("ge", value)
        and value > wire.get("gt", value - 1)
        and value <= wire.get("le", value)
    )


def _expected(hint: Any, wire: Mapping[str, Any]) -> str:
    args = typing.get_args(hint)
    literals = _literals(hint)
    if literals is not None:
        return " or ".join(repr(a) for a in literals)
    names = [getattr(a, "__name__", str(a)) for a in args] or [getattr(hint, "__name__", str(hint))]
    limits = ", ".join(f"{k} {v}" for k, v in wire.items() if k in ("ge", "gt", "le", "pattern"))
    return " or ".join(names).replace("NoneType", "null") + (f" ({limits})" if limits else "")


def default_chunk_size(unit: Unit, algorithm: str | None = None) -> int:
    """The chunk budget a job gets when it names none (see the constants)."""
    if unit == "samples":
        return DEFAULT_SAMPLE_CHUNK
    return DEFAULT_ADAPTIVE_TOKEN_CHUNK if algorithm is not None else DEFAULT_TOKEN_CHUNK


def legacy_read_ahead(unit: Unit, chunk_size: int) -> int:
    """The read group of jobs made before ``read_ahead`` was an option: about 1,000 samples
    of a sample budget, one chunk of a token budget."""
    return max(1, LEGACY_READ_AHEAD_SAMPLES // chunk_size) if unit == "samples" else 1


def default_read_ahead(unit: Unit, chunk_size: int, algorithm: str | None = None) -> int:
    """Chunks read together by default: one for an adaptive job (a new mixture reaches the
    consumers within about two chunks), else the legacy rule (read efficiency for small
    sample chunks; nothing lands by consumption there)."""
    return 1 if algorithm is not None else legacy_read_ahead(unit, chunk_size)


def make_spec(job_id: str, *, tokenizer: Tokenizer | None = None, **options: Any) -> JobSpec:
    """A job definition from ``Client.submit``'s arguments (in-process and remote alike): any
    ``JobSpec`` field by name (``job_options()`` lists them), a mixture or phases as values or
    their JSON forms, ``tokenizer`` as a ``Tokenizer`` (its fingerprint is kept)."""
    known = job_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        msg = f"unknown job option(s) {unknown}; known: {sorted(known)}"
        raise PlanError(msg)
    if "mixture" not in options:
        msg = "a job needs a mixture (mixture=...)"
        raise PlanError(msg)
    values = dict(options)
    if not isinstance(values["mixture"], Mixture):
        values["mixture"] = Mixture.from_json(values["mixture"])
    if values.get("where") is not None:
        values["where"] = str(values["where"])
    values["schedule"] = tuple(
        p if isinstance(p, Phase) else Phase.from_json(p) for p in values.get("schedule") or ()
    )
    values["algorithm_options"] = tuple(sorted(dict(values.get("algorithm_options") or {}).items()))
    for name in ("chunk_size", "read_ahead"):  # None: the default
        if values.get(name) is None:
            values[name] = 0
    return JobSpec(
        job_id=job_id,
        tokenizer=tokenizer.fingerprint if tokenizer is not None else None,
        **values,
    )


def job_options() -> dict[str, Field[Any]]:
    """The options a user sets when submitting a job (every field but the id and the
    tokenizer's fingerprint, which comes from the tokenizer), by name."""
    return {f.name: f for f in fields(JobSpec) if f.name not in ("job_id", "tokenizer")}
