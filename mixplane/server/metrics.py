"""Server metrics in the Prometheus text format (version 0.0.4), written by hand.

Counters and one histogram kept in dicts under one lock; ``render`` writes every series with
its ``# HELP`` and ``# TYPE`` lines. Cost: a dict update per event (well under a microsecond);
rendering is O(series), a few hundred lines for a handful of jobs.

- ``mixplane_chunks_served_total{job}``: chunk descriptors answered (each rank's copy counts).
- ``mixplane_samples_planned_total{job,component}``: samples of the chunks planned (each chunk
  index once, however many ranks read it).
- ``mixplane_tokens_planned_total{job,component}``: estimated tokens of the chunks planned, for
  jobs budgeted in tokens (chunks of sample-budgeted jobs carry no token estimates).
- ``mixplane_feedback_total{job}`` and ``mixplane_mixture_changes_total{job}``: feedback
  accepted, and how much of it changed the weights.
- ``mixplane_request_seconds{endpoint}``: request latency histogram, by route template.
- ``mixplane_responses_total{endpoint,code}``: responses by status code.
- ``mixplane_jobs``: jobs the server holds.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

from mixplane.chunking.spec import ChunkSpec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def escape(value: str) -> str:
    """A label value as the text format needs it (backslash, quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds


class Metrics:
    """Thread-safe counters of one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: dict[str, int] = {}
        self._samples: dict[tuple[str, str], int] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._feedback: dict[str, int] = {}
        self._changes: dict[str, int] = {}
        self._requests: dict[str, _Histogram] = {}
        self._responses: dict[tuple[str, int], int] = {}

    # -- events ------------------------------------------------------------------------------
    def planned_by_component(
        self, job: str, selectors: Sequence[str]
    ) -> tuple[list[int], list[int]]:
        """Samples and tokens planned per component of a job, read together."""
        with self._lock:
            samples = [self._samples.get((job, s), 0) for s in selectors]
            tokens = [self._tokens.get((job, s), 0) for s in selectors]
        return samples, tokens

    def served(self, job: str, chunks: int) -> None:
        with self._lock:
            self._served[job] = self._served.get(job, 0) + chunks

    def planned(self, job: str, selectors: Sequence[str], spec: ChunkSpec) -> None:
        """Count one newly planned chunk of ``job`` (components named by ``selectors``)."""
        counts = spec.counts.tolist()
        tokens = spec.tokens.tolist() if spec.unit == "tokens" else None
        with self._lock:
            for c, n in enumerate(counts):
                if n:
                    key = (job, selectors[c] if c < len(selectors) else str(c))
                    self._samples[key] = self._samples.get(key, 0) + int(n)
                    if tokens is not None:
                        self._tokens[key] = self._tokens.get(key, 0) + int(tokens[c])

    def feedback(self, job: str, *, changed: bool) -> None:
        with self._lock:
            self._feedback[job] = self._feedback.get(job, 0) + 1
            if changed:
                self._changes[job] = self._changes.get(job, 0) + 1

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            histogram = self._requests.get(endpoint)
            if histogram is None:
                histogram = self._requests[endpoint] = _Histogram()
            histogram.observe(seconds)
            key = (endpoint, status)
            self._responses[key] = self._responses.get(key, 0) + 1

    def forget(self, job: str) -> None:
        """Drop the series of a deleted job."""
        with self._lock:
            for table in (self._served, self._feedback, self._changes):
                table.pop(job, None)
            for keyed in (self._samples, self._tokens):
                for key in [k for k in keyed if k[0] == job]:
                    del keyed[key]

    # -- exposition --------------------------------------------------------------------------
    def render(self, *, jobs: int) -> str:
        lines: list[str] = []

        def family(
            name: str, kind: str, help_text: str, series: list[tuple[Labels, float]]
        ) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in series)

        with self._lock:
            family(
                "mixplane_chunks_served_total",
                "counter",
                "Chunk descriptors answered to consumers (every rank's request counts).",
                [((("job", j),), n) for j, n in sorted(self._served.items())],
            )
            family(
                "mixplane_samples_planned_total",
                "counter",
                "Samples of the chunks planned, per component (each chunk index once).",
                [
                    ((("job", j), ("component", c)), n)
                    for (j, c), n in sorted(self._samples.items())
                ],
            )
            family(
                "mixplane_tokens_planned_total",
                "counter",
                "Estimated tokens of the chunks planned, per component (token-budgeted jobs).",
                [((("job", j), ("component", c)), n) for (j, c), n in sorted(self._tokens.items())],
            )
            family(
                "mixplane_feedback_total",
                "counter",
                "Feedback messages accepted.",
                [((("job", j),), n) for j, n in sorted(self._feedback.items())],
            )
            family(
                "mixplane_mixture_changes_total",
                "counter",
                "Feedback messages that changed the mixture weights.",
                [((("job", j),), n) for j, n in sorted(self._changes.items())],
            )
            family(
                "mixplane_responses_total",
                "counter",
                "HTTP responses by endpoint and status code.",
                [
                    ((("endpoint", e), ("code", str(code))), n)
                    for (e, code), n in sorted(self._responses.items())
                ],
            )
            name = "mixplane_request_seconds"
            lines.append(f"# HELP {name} Time to answer a request, by endpoint.")
            lines.append(f"# TYPE {name} histogram")
            for endpoint, h in sorted(self._requests.items()):
                cumulative = 0
                for bound, n in zip((*BUCKETS, math.inf), h.buckets, strict=True):
                    cumulative += n
                    labels = (("endpoint", endpoint), ("le", _number(bound)))
                    lines.append(f"{name}_bucket{_labels(labels)} {cumulative}")
                lines.append(f"{name}_sum{_labels((('endpoint', endpoint),))} {_number(h.sum)}")
                lines.append(f"{name}_count{_labels((('endpoint', endpoint),))} {h.count}")
        family("mixplane_jobs", "gauge", "Jobs held by the server.", [((), jobs)])
        return "\n".join(lines) + "\n"
