"""The client API: submit jobs, explain them, stream them.

``Client.local(home)`` runs everything in this process over the catalog at ``home`` (no
server). The remote client (a later issue) has exactly this interface.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from mixplane.catalog.catalog import Catalog
from mixplane.chunking.assign import Topology
from mixplane.client.stream import Sample
from mixplane.errors import JobNotFoundError, PlanError
from mixplane.job import Job, JobState, make_spec
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

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
        ca_file: str | os.PathLike[str] | None = None,
        retry_for: float = 60.0,
    ) -> RemoteClient:
        """A client of the mixplane server at ``url`` (default: ``MIXPLANE_SERVER``), with the
        same interface as ``Client.local``. The bearer token comes from ``token``,
        ``token_file`` or ``MIXPLANE_TOKEN_FILE``. An ``https://`` server's certificate is
        verified with the system's certificates, or those in ``ca_file`` or
        ``MIXPLANE_CA_FILE``."""
        from mixplane.client.remote import RemoteClient, ServerAddress

        url = url or os.environ.get("MIXPLANE_SERVER")
        if not url:
            msg = "no server URL: pass Client.remote(url) or set MIXPLANE_SERVER"
            raise PlanError(msg)
        token_file = token_file or os.environ.get("MIXPLANE_TOKEN_FILE")
        if token is None and token_file:
            token = Path(token_file).read_text().strip()
        ca_file = ca_file or os.environ.get("MIXPLANE_CA_FILE") or None
        ca = os.fspath(ca_file) if ca_file is not None else None
        return RemoteClient(ServerAddress(url, token, retry_for, ca_file=ca))

    is_remote = False  # JobClient: this process runs the jobs

    def datasets(self) -> list[dict[str, Any]]:
        """The registered datasets (``DatasetInfo.to_dict``), as a server answers them."""
        return [d.to_dict() for d in self.catalog.datasets()]

    def explain_query(
        self, where: str | None = None, by: Sequence[str] = (), *, runs: bool = False
    ) -> dict[str, Any]:
        """A filter's SQL and components (``QueryResult.to_dict``), as a server answers it."""
        return self.catalog.explain(where, by=by).to_dict(runs=runs)

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
        topology: Topology | None = None,
        tokenizer: Tokenizer | str | None = None,
        local: Collection[tuple[int, int]] | None = None,
        **options: Any,
    ) -> Job:
        """Create a job (replacing one with the same id in this client). ``options`` are the
        job's definition, ``JobSpec``'s fields by name (``mixture`` is required; ``where``,
        ``seed``, ``unit``, ``chunk_size``, ``on_exhausted``, ``order``, ``schedule``,
        ``algorithm``, ``read_ahead``, ...). ``local`` limits the consumers (dp_group,
        worker) this process serves (``Job.limit_consumers``).

        Defaults are the recommended settings: a token budget (``unit="tokens"``) in chunks
        of ``DEFAULT_TOKEN_CHUNK`` tokens (``DEFAULT_ADAPTIVE_TOKEN_CHUNK`` for adaptive jobs),
        sized with ``tokenizer`` (a ``Tokenizer``, a name such as ``"deepseek"`` or a path),
        which window streams of the job then use by default."""
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        spec = make_spec(job_id, tokenizer=tokenizer, **options)
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
            raise JobNotFoundError(msg) from None

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
        """Per component: samples, tokens and how they were sized, share, what the job draws,
        epochs implied (``Job.explain``)."""
        return self.job(job_id).explain(chunks=chunks)
