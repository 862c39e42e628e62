"""What every client offers: ``Client.local`` (in-process) and ``Client.remote`` (a server).

``JobClient`` is the one protocol both implement, so code that runs a job (the CLI, the
integrations, a training script) takes either without asking which: the same arguments, the
same answers, and the same error classes (a server's error names its class and the remote
client raises it; ``client.is_remote`` says which it is, for the few things only one can do).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self

from mixplane.chunking.assign import Topology
from mixplane.job.state import JobState
from mixplane.tokens.tokenizer import Tokenizer

if TYPE_CHECKING:
    from mixplane.client.client import Client
    from mixplane.client.remote import RemoteClient


class JobClient(Protocol):
    """A client of the catalog and its jobs (see the module)."""

    @property
    def is_remote(self) -> bool: ...

    def datasets(self) -> list[dict[str, Any]]: ...

    def explain_query(
        self, where: str | None = None, by: Sequence[str] = (), *, runs: bool = False
    ) -> dict[str, Any]: ...

    def submit(
        self,
        job_id: str,
        *,
        topology: Topology | None = None,
        tokenizer: Tokenizer | str | None = None,
        local: Collection[tuple[int, int]] | None = None,
        **options: Any,
    ) -> Any: ...

    def job(self, job_id: str) -> Any: ...

    def stream(
        self, job_id: str, dp_group: int = 0, rank: int = 0, worker: int = 0
    ) -> Iterator[Any]: ...

    def feedback(self, job_id: str, step: int, loss_sum: Any, token_count: Any) -> int | None: ...

    def state_dict(self, job_id: str) -> JobState: ...

    def load_state_dict(self, job_id: str, state: JobState) -> None: ...

    def explain(self, job_id: str, *, chunks: int | None = None) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


if TYPE_CHECKING:  # both clients implement the protocol (mypy checks this)

    def _both(local: Client, server: RemoteClient) -> tuple[JobClient, JobClient]:
        return local, server
