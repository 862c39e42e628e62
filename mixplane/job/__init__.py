"""Jobs: the job definition, its parts (components, plan, consumers, adaptation) and the facade.

``Job`` (``job.py``) is what users, streams and the server see; ``JobSpec`` (``spec.py``) is the
definition, ``JobState`` (``state.py``) the saved state.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mixplane.job.adaptation import FEEDBACK_LOG_MAX, FeedbackResult, Replay
    from mixplane.job.job import Job, Progress
    from mixplane.job.spec import (
        DEFAULT_ADAPTIVE_TOKEN_CHUNK,
        DEFAULT_BYTES_PER_TOKEN,
        DEFAULT_SAMPLE_CHUNK,
        DEFAULT_TOKEN_CHUNK,
        JobSpec,
        default_chunk_size,
        default_read_ahead,
        legacy_read_ahead,
        make_spec,
    )
    from mixplane.job.state import (
        JOB_STATE_VERSION,
        ComponentSizing,
        JobState,
        merge_states,
        place_windows,
    )
    from mixplane.job.warn import warn_once
    from mixplane.mixture.schedule import OnExhausted, Phase, ScheduleUnit

#: where each name lives: imported on first use, so that ``mixplane --help`` (which reads the
#: job options of ``spec.py``) does not load the catalog and DuckDB
_WHERE = {
    "ComponentSizing": "mixplane.job.state",
    "DEFAULT_ADAPTIVE_TOKEN_CHUNK": "mixplane.job.spec",
    "DEFAULT_BYTES_PER_TOKEN": "mixplane.job.spec",
    "DEFAULT_SAMPLE_CHUNK": "mixplane.job.spec",
    "DEFAULT_TOKEN_CHUNK": "mixplane.job.spec",
    "FEEDBACK_LOG_MAX": "mixplane.job.adaptation",
    "FeedbackResult": "mixplane.job.adaptation",
    "JOB_STATE_VERSION": "mixplane.job.state",
    "Job": "mixplane.job.job",
    "JobSpec": "mixplane.job.spec",
    "JobState": "mixplane.job.state",
    "OnExhausted": "mixplane.mixture.schedule",
    "Phase": "mixplane.mixture.schedule",
    "Progress": "mixplane.job.job",
    "Replay": "mixplane.job.adaptation",
    "ScheduleUnit": "mixplane.mixture.schedule",
    "default_chunk_size": "mixplane.job.spec",
    "default_read_ahead": "mixplane.job.spec",
    "legacy_read_ahead": "mixplane.job.spec",
    "make_spec": "mixplane.job.spec",
    "merge_states": "mixplane.job.state",
    "place_windows": "mixplane.job.state",
    "warn_once": "mixplane.job.warn",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "DEFAULT_ADAPTIVE_TOKEN_CHUNK",
    "DEFAULT_BYTES_PER_TOKEN",
    "DEFAULT_SAMPLE_CHUNK",
    "DEFAULT_TOKEN_CHUNK",
    "FEEDBACK_LOG_MAX",
    "JOB_STATE_VERSION",
    "ComponentSizing",
    "FeedbackResult",
    "Job",
    "JobSpec",
    "JobState",
    "OnExhausted",
    "Phase",
    "Progress",
    "Replay",
    "ScheduleUnit",
    "default_chunk_size",
    "default_read_ahead",
    "legacy_read_ahead",
    "make_spec",
    "merge_states",
    "place_windows",
    "warn_once",
]
