"""What a job draws: per component its samples, bytes, tokens and how they were sized.

``explain(job, chunks=N)`` adds what the job draws from each component in N chunks and the
epochs that implies (``mixplane explain --mixture``, ``GET /v1/jobs/ID/explain``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mixplane.job.job import Job


def explain(job: Job, *, chunks: int | None = None) -> dict[str, Any]:
    """Per component: samples, bytes, tokens and how they were sized (``sizing``: exact,
    sampled or bytes, with the bytes-per-token ratio), weight; with ``chunks``, what the
    job draws in that many chunks and the epochs it implies."""
    per_chunk = job.spec.chunk_size
    total_budget = per_chunk * chunks if chunks is not None else None
    rows = []
    for c, order, w in zip(job.result.components, job.orders, job.weights, strict=True):
        tokens = (
            int(order.sizes.sum())
            if order.sizes is not None
            else int(np.ceil(c.bytes / job.spec.bytes_per_token))
        )
        size = tokens if job.spec.unit == "tokens" else c.samples
        sizing = job.sizing.get(order.key)
        row: dict[str, Any] = {
            "component": c.selector,
            "properties": c.properties,
            "samples": c.samples,
            "bytes": c.bytes,
            "tokens": tokens,
            "sizing": sizing["source"] if sizing is not None else "bytes",
            "bytes_per_token": (
                sizing["bytes_per_token"] if sizing is not None else job.spec.bytes_per_token
            ),
            "weight": float(w),
        }
        if total_budget is not None and size:
            row["draws"] = float(w) * total_budget
            row["epochs"] = float(w) * total_budget / size
            if job.spec.on_exhausted == "stop" and w > 0:
                row["runs_out_at_chunk"] = int(np.ceil(size / (float(w) * per_chunk))) - 1
        rows.append(row)
    return {
        "job": job.spec.to_json(),
        "sql": job.result.sql,
        "components": rows,
        "query_fingerprint": job.result.fingerprint,
        "note": job.sizing_note,
    }
