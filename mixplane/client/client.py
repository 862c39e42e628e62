"""The client API: submit jobs, explain them, stream them.

``Client.local(home)`` runs everything in this process over the catalog at ``home`` (no
server). The remote client (a later issue) has exactly this interface.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from mixplane.catalog.catalog import Catalog
from mixplane.chunking.assign import Topology
from mixplane.chunking.planner import OnExhausted
from mixplane.chunking.spec import Unit
from mixplane.client.stream import Sample
from mixplane.errors import PlanError
from mixplane.job import Job, JobState, Phase, ScheduleUnit, make_spec
from mixplane.mixture.mixture import Mixture
from mixplane.query.expr import Expr
from mixplane.tokens.tokenizer import Tokenizer

if TYPE_CHECKING:
    from mixplane.client.remote import RemoteClient


class Client:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._jobs: dict[str, Job] = {}

    @classmethod
    def local(cls, home: str | os.PathLike[str] | None = None, *, read_only: bool = False) -> Self:
        """A client over the catalog at ``home``. ``read_only`` lets several processes (the
        ranks of a run) open one catalog at once while none writes to it."""
        return cls(Catalog.open(home, read_only=read_only))

    @staticmethod
    def remote(
        url: str | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        retry_for: float = 60.0,
    ) -> RemoteClient:
        """A client of the mixplane server at ``url`` (default: ``MIXPLANE_SERVER``), with the
        same interface as ``Client.local``. The bearer token comes from ``token``,
        ``token_file`` or ``MIXPLANE_TOKEN_FILE``."""
        from mixplane.client.remote import RemoteClient, ServerAddress

        url = url or os.environ.get("MIXPLANE_SERVER")
        if not url:
            msg = "no server URL: pass Client.remote(url) or set MIXPLANE_SERVER"
            raise PlanError(msg)
        token_file = token_file or os.environ.get("MIXPLANE_TOKEN_FILE")
        if token is None and token_file:
            token = Path(token_file).read_text().strip()
        return RemoteClient(ServerAddress(url, token, retry_for))

    def close(self) -> None:
        for job in self._jobs.values():
            job.close()
        self.catalog.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        job_id: str,
        *,
        where: Expr | str | None = None,
        mixture: Mixture | Mapping[str, Any],
        topology: Topology | None = None,
        seed: int = 0,
        unit: Unit = "samples",
        chunk_size: int = 1000,
        on_exhausted: OnExhausted = "repeat",
        order: Literal["shuffled", "as-stored", "sorted"] = "shuffled",
        sort_by: str | None = None,
        descending: bool = False,
        block_size: int = 256,
        bytes_per_token: float = 4.0,
        schedule: Sequence[Phase] = (),
        schedule_unit: ScheduleUnit = "chunks",
        tokenizer: Tokenizer | None = None,
        algorithm: str | None = None,
        algorithm_options: Mapping[str, Any] | None = None,
        local: Collection[tuple[int, int]] | None = None,
    ) -> Job:
        """Create a job (replacing one with the same id in this client). ``local`` limits the
        consumers (dp_group, worker) this process serves (``Job.limit_consumers``)."""
        spec = make_spec(
            job_id,
            where=where,
            mixture=mixture,
            seed=seed,
            unit=unit,
            chunk_size=chunk_size,
            on_exhausted=on_exhausted,
            order=order,
            sort_by=sort_by,
            descending=descending,
            block_size=block_size,
            bytes_per_token=bytes_per_token,
            schedule=schedule,
            schedule_unit=schedule_unit,
            tokenizer=tokenizer,
            algorithm=algorithm,
            algorithm_options=algorithm_options,
        )
        job = Job(self.catalog, spec, topology or Topology(), tokenizer, local=local)
        if job_id in self._jobs:
            self._jobs[job_id].close()
        self._jobs[job_id] = job
        return job

    def job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            msg = f"unknown job {job_id!r}; submitted jobs: {sorted(self._jobs)}"
            raise PlanError(msg) from None

    def stream(
        self, job_id: str, dp_group: int = 0, rank: int = 0, worker: int = 0
    ) -> Iterator[Sample]:
        return iter(self.job(job_id).stream(dp_group, rank, worker))

    def feedback(self, job_id: str, step: int, loss_sum: Any, token_count: Any) -> int | None:
        return self.job(job_id).feedback(step, loss_sum, token_count)

    def state_dict(self, job_id: str) -> JobState:
        return self.job(job_id).state_dict()

    def load_state_dict(self, job_id: str, state: JobState) -> None:
        self.job(job_id).load_state_dict(state)

    def explain(self, job_id: str, *, chunks: int | None = None) -> dict[str, Any]:
        """Per component: samples, estimated tokens, share, what the job draws, epochs implied."""
        job = self.job(job_id)
        weights = job.weights
        per_chunk = job.spec.chunk_size
        total_budget = per_chunk * chunks if chunks is not None else None
        rows = []
        for c, order, w in zip(job.result.components, job.orders, weights, strict=True):
            tokens = (
                int(order.sizes.sum())
                if order.sizes is not None
                else int(np.ceil(c.bytes / job.spec.bytes_per_token))
            )
            size = tokens if job.spec.unit == "tokens" else c.samples
            row: dict[str, Any] = {
                "component": c.selector,
                "properties": c.properties,
                "samples": c.samples,
                "bytes": c.bytes,
                "tokens": tokens,
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
        }
