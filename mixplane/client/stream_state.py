"""One rank's window stream saved to a file and continued from it (the file that
``mixplane stream --state-out`` writes and ``--resume-from`` reads).

A state file (JSON, ``StreamState``) holds what identifies the stream (the rank's coordinates,
the window shape, the topology, the tokenizer's fingerprint and the job's options:
``StreamOptions``), how many windows all runs wrote, and the job's and the window stream's
states right after the last window written. Resuming checks the file's shape
(``read_stream_state``), refuses a file saved with other options, naming each difference
(``check_resume``), then loads the job's state and the window stream's, in that order
(``open_window_stream``). Cost: O(components x seq_len) to save or load, plus re-reading the
one chunk the window stream stood in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, TypedDict

import orjson

from mixplane.atomic import write_atomic
from mixplane.chunking.assign import Topology
from mixplane.client.stream import JobHandle
from mixplane.client.windows import WindowStream, WindowStreamState
from mixplane.errors import MixplaneError, StateError
from mixplane.job.spec import job_options
from mixplane.job.state import JobState
from mixplane.tokens.tokenizer import Tokenizer

STREAM_STATE_FORMAT = "mixplane stream state"
STREAM_STATE_VERSION = 1
NUMPY = orjson.OPT_SERIALIZE_NUMPY
FIX = "pass a file written by 'mixplane stream --state-out'"


class SavedJob(JobHandle, Protocol):
    """What saving and resuming need of a job: an in-process ``Job`` or a ``RemoteJob``."""

    @property
    def topology(self) -> Topology: ...

    def state_dict(self) -> JobState: ...

    def load_state_dict(self, state: JobState) -> None: ...


class StreamOptions(TypedDict):
    """What identifies one rank's window stream: a state resumes only under the same."""

    dp_group: int
    rank: int
    worker: int
    seq_len: int
    bos: bool
    topology: dict[str, int]
    tokenizer: str  # --tokenizer as given (for messages)
    tokenizer_fingerprint: str
    job: dict[str, Any]  # JobSpec.to_json(): the job options (for messages)


class StreamState(StreamOptions):
    """The file ``stream --state-out`` writes (JSON): where one rank's window stream stands."""

    format: str  # STREAM_STATE_FORMAT
    version: int
    windows: int  # windows of this rank's stream written so far, by all runs
    job_state: JobState
    window_state: WindowStreamState


_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "dp_group": int,
    "rank": int,
    "worker": int,
    "seq_len": int,
    "bos": bool,
    "topology": dict,
    "tokenizer": str,
    "tokenizer_fingerprint": str,
    "job": dict,
    "windows": int,
    "job_state": dict,
    "window_state": dict,
}

# command-line option of each JobSpec field that a user sets (for messages)
JOB_OPTION_NAMES = {
    "where": "--where",
    "mixture": "--mixture",
    "schedule": "--mixture-file phases",
    "schedule_unit": "--mixture-file unit",
    **{n: f.metadata["cli"] for n, f in job_options().items() if f.metadata.get("cli")},
}


def check_coordinates(topology: Topology, *, dp_group: int, rank: int, worker: int) -> None:
    """Refuse coordinates outside the job's topology, naming the option and its bound."""
    for option, value, count, limit in (
        ("--dp-group", dp_group, "--dp-groups", topology.dp_groups),
        ("--rank", rank, "--ranks-per-group", topology.ranks_per_group),
        ("--worker", worker, "--workers", topology.workers),
    ):
        if value >= limit:
            msg = (
                f"{option} {value} is outside the topology ({count} {limit}: 0..{limit - 1}); "
                f"pass a smaller {option} or a larger {count}"
            )
            raise MixplaneError(msg)


def stream_options(
    job: SavedJob,
    tokenizer: Tokenizer,
    tokenizer_spec: str,
    *,
    dp_group: int,
    rank: int,
    worker: int,
    seq_len: int,
    bos: bool,
) -> StreamOptions:
    """The options that identify this rank's stream of ``job`` (``tokenizer_spec``: the
    tokenizer as the user named it)."""
    return {
        "dp_group": dp_group,
        "rank": rank,
        "worker": worker,
        "seq_len": seq_len,
        "bos": bos,
        "topology": job.topology.to_json(),
        "tokenizer": tokenizer_spec,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "job": orjson.loads(orjson.dumps(job.spec.to_json(), option=NUMPY)),
    }


def read_stream_state(path: str) -> StreamState:
    """A state file written by ``stream --state-out``, checked for shape (not yet for fit)."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        msg = f"--resume-from {path}: no such file; {FIX}, or start without --resume-from"
        raise StateError(msg) from None
    except orjson.JSONDecodeError as exc:
        msg = f"--resume-from {path} is not JSON ({exc}); {FIX}"
        raise StateError(msg) from exc
    if not isinstance(data, dict) or data.get("format") != STREAM_STATE_FORMAT:
        msg = f"--resume-from {path} is not a stream state file; {FIX}"
        raise StateError(msg)
    if data.get("version") != STREAM_STATE_VERSION:
        msg = (
            f"--resume-from {path} has stream state version {data.get('version')!r}, this "
            f"mixplane reads version {STREAM_STATE_VERSION}; {FIX} of this version"
        )
        raise StateError(msg)
    bad = [k for k, t in _STATE_TYPES.items() if not isinstance(data.get(k), t)]
    if bad:
        msg = f"--resume-from {path} is corrupt (missing or mistyped: {', '.join(bad)}); {FIX}"
        raise StateError(msg)
    return data  # type: ignore[return-value]


def check_resume(saved: StreamState, here: StreamOptions, path: str) -> None:
    """Refuse a state saved for another rank, window shape, tokenizer or job, naming each."""
    diffs = []
    for key, option in (
        ("dp_group", "--dp-group"),
        ("rank", "--rank"),
        ("worker", "--worker"),
        ("seq_len", "--seq-len"),
    ):
        if saved[key] != here[key]:  # type: ignore[literal-required]
            diffs.append(f"{option} {saved[key]} (saved) vs {here[key]}")  # type: ignore[literal-required]
    if saved["bos"] != here["bos"]:
        diffs.append("--bos " + ("given (saved) vs not" if saved["bos"] else "not given (saved)"))
    if saved["topology"] != here["topology"]:

        def shape(t: dict[str, Any]) -> str:
            return f"{t.get('dp_groups')}/{t.get('ranks_per_group')}/{t.get('workers')}"

        diffs.append(
            f"--dp-groups/--ranks-per-group/--workers {shape(saved['topology'])} (saved) vs "
            f"{shape(here['topology'])}"
        )
    if saved["tokenizer_fingerprint"] != here["tokenizer_fingerprint"]:
        diffs.append(
            f"--tokenizer {saved['tokenizer']} (saved) vs {here['tokenizer']} (fingerprints differ)"
        )
    for key in sorted((set(saved["job"]) | set(here["job"])) - {"job_id", "tokenizer"}):
        a, b = saved["job"].get(key), here["job"].get(key)
        if a != b:
            show = orjson.dumps
            diffs.append(
                f"{JOB_OPTION_NAMES.get(key, key)} {show(a).decode()} (saved) vs {show(b).decode()}"
            )
    if diffs:
        msg = (
            f"--resume-from {path} was saved with other options: {', '.join(diffs)}; pass the "
            "options it was saved with, or start without --resume-from"
        )
        raise StateError(msg)


def open_window_stream(
    job: SavedJob,
    tokenizer: Tokenizer,
    here: StreamOptions,
    saved: StreamState | None = None,
    path: str = "",
) -> WindowStream:
    """This rank's window stream of ``job``: from the start, or where ``saved`` (read from
    ``path``) left it, after ``check_resume``; loads the job's state first, then the window
    stream's."""

    def fresh() -> WindowStream:
        return WindowStream(
            job,
            tokenizer,
            here["seq_len"],
            dp_group=here["dp_group"],
            rank=here["rank"],
            worker=here["worker"],
            bos=here["bos"],
        )

    if saved is None:
        return fresh()
    check_resume(saved, here, path)
    try:  # the job's state first, then the window stream's
        job.load_state_dict(saved["job_state"])
        windows = fresh()
        windows.load_state_dict(saved["window_state"])
    except MixplaneError as exc:
        msg = f"--resume-from {path}: {exc}"
        raise StateError(msg) from exc
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        msg = f"--resume-from {path} holds a corrupt state ({exc!r}); {FIX}"
        raise StateError(msg) from exc
    return windows


def capture_state(
    here: StreamOptions, written: int, job: SavedJob, windows: WindowStream
) -> StreamState:
    """The state right after the last window written (``written``: by all runs), taken before
    anything is closed."""
    return {  # type: ignore[typeddict-item]
        "format": STREAM_STATE_FORMAT,
        "version": STREAM_STATE_VERSION,
        **here,
        "windows": written,
        "job_state": job.state_dict(),
        "window_state": windows.state_dict(),
    }


def write_stream_state(path: str, state: StreamState) -> None:
    """Write ``state`` to ``path`` atomically (JSON)."""
    write_atomic(Path(path), orjson.dumps(state, option=NUMPY))
