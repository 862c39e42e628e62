"""What one rank of a training job receives: its layout, and the windows of its consumers.

A rank sits in a data-parallel group (``dp_group``) at a position inside it (``rank``: the
tensor/pipeline-parallel peers of one group get identical data). ``resolve_layout`` finds both
from explicit coordinates, or from the global rank and world size with ``dp_size`` /
``ranks_per_group`` (ranks of a group contiguous: rank = dp_group * ranks_per_group + rank),
and checks them against the job's topology.

``RankWindows`` yields the token windows of one rank for some of its dataloader workers (the
consumers ``(dp_group, worker)``): all of them in one process (``num_workers=0``), taking turns
in blocks of ``block`` windows, the order in which a DataLoader with that many workers and
``batch_size=block`` delivers batches; or the one worker a DataLoader worker process runs. Its
job is the live job (in the process that submitted it: feedback reaches the planner) or one run
from a ``JobSnapshot`` (any other process), limited to these consumers. The state (JSON-able) is
the job's part state and each worker's window stream state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from mixplane.chunking.assign import Topology
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.windows import PREFETCH_CHUNKS, WindowStream, WindowStreamState
from mixplane.errors import MALFORMED, PlanError, StateError, shown
from mixplane.job import Job, JobSpec, JobState
from mixplane.tokens.packing import Window
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from mixplane.client.remote import RemoteJob

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a rank reads: its data-parallel group and its position inside the group."""

    dp_group: int
    rank: int


def resolve_layout(
    topology: Topology,
    *,
    dp_group: int | None = None,
    group_rank: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    dp_size: int | None = None,
    ranks_per_group: int | None = None,
) -> Layout:
    """The rank's layout from explicit ``dp_group`` / ``group_rank``, or from the global
    ``rank`` and ``world_size`` (see the module), checked against the job's topology."""
    if dp_group is not None or group_rank is not None:
        layout = Layout(dp_group or 0, group_rank or 0)
        topology.consumer(layout.dp_group, 0, layout.rank)  # checks the coordinates
        return layout
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if dp_size is None and ranks_per_group is None:
        dp_size, ranks_per_group = topology.dp_groups, topology.ranks_per_group
    elif dp_size is None:
        assert ranks_per_group is not None
        dp_size = world_size // max(ranks_per_group, 1)
    elif ranks_per_group is None:
        ranks_per_group = world_size // max(dp_size, 1)
    if dp_size * ranks_per_group != world_size or not 0 <= rank < world_size:
        msg = (
            f"rank {rank} of world size {world_size} does not fit dp_size={dp_size} x "
            f"ranks_per_group={ranks_per_group}; pass dp_size (or ranks_per_group) so that "
            "dp_size * ranks_per_group == world_size"
        )
        raise PlanError(msg)
    if (dp_size, ranks_per_group) != (topology.dp_groups, topology.ranks_per_group):
        msg = (
            f"this run has dp_size={dp_size}, ranks_per_group={ranks_per_group} but the job was "
            f"submitted with topology dp_groups={topology.dp_groups}, ranks_per_group="
            f"{topology.ranks_per_group}; submit it with topology=Topology(dp_groups={dp_size}, "
            f"ranks_per_group={ranks_per_group}, workers=<DataLoader num_workers or 1>)"
        )
        raise PlanError(msg)
    return Layout(rank // ranks_per_group, rank % ranks_per_group)


class RankWindowsState(TypedDict):
    version: int
    dp_group: int
    rank: int
    workers: list[int]
    seq_len: int
    job: JobState | dict[str, Any]  # a remote job's is a marker: the server holds the state
    windows: dict[str, WindowStreamState]
    turn: int  # index into workers of the stream whose block is current
    in_block: int  # windows of the current block already yielded


class RankWindows:
    """A rank's windows for some of its workers (see the module)."""

    def __init__(
        self,
        source: Job | JobSnapshot | RemoteJob,
        tokenizer: Tokenizer | str,
        seq_len: int,
        *,
        dp_group: int = 0,
        rank: int = 0,
        workers: Sequence[int] | None = None,
        bos: bool = False,
        prefetch: int = PREFETCH_CHUNKS,
        block: int = 1,
    ) -> None:
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if not isinstance(source, JobSnapshot):
            source.use_tokenizer(self.tokenizer)  # sized with the stream's tokenizer if it can
        self.source = source
        self.topology = (
            Topology(**source.topology) if isinstance(source, JobSnapshot) else source.topology
        )
        self.workers = list(range(self.topology.workers)) if workers is None else list(workers)
        for w in self.workers:
            self.topology.consumer(dp_group, w, rank)  # checks the coordinates
        if not self.workers or len(set(self.workers)) != len(self.workers):
            msg = f"workers must be distinct worker numbers, got {self.workers}"
            raise PlanError(msg)
        if block < 1:
            msg = f"block must be at least 1 window, got {block}"
            raise PlanError(msg)
        self.dp_group, self.rank, self.seq_len = dp_group, rank, seq_len
        self.bos, self.prefetch, self.block = bos, prefetch, block
        self.job: Job | RemoteJob | None = None
        self._streams: list[WindowStream] = []
        self._turn = 0
        self._in_block = 0
        self._iterating = False

    def _build(self, state: RankWindowsState | dict[str, Any] | None = None) -> None:
        """The job (restored to ``state``'s part, if given) and one window stream per worker;
        the job's state is loaded before the streams open (a restore resets its consumers)."""
        if self.job is not None and state is None:
            return
        local = [(self.dp_group, w) for w in self.workers]
        job: Job | RemoteJob
        if isinstance(self.source, JobSnapshot):
            spec = JobSpec.from_json(self.source.spec)
            tokenizer = self.tokenizer if spec.tokenizer is not None else None
            job = Job.from_snapshot(self.source, tokenizer, local=local)
        else:  # a live job: in-process, or the server's
            job = self.source
            job.limit_consumers(local)
        if state is not None:
            job.load_state_dict(state["job"])  # type: ignore[arg-type]
        self.job = job
        self._streams = []
        for w in self.workers:
            stream = WindowStream(
                job,
                self.tokenizer,
                self.seq_len,
                dp_group=self.dp_group,
                rank=self.rank,
                worker=w,
                bos=self.bos,
                prefetch=self.prefetch,
            )
            if state is not None:
                stream.load_state_dict(state["windows"][str(w)])
            self._streams.append(stream)
        if state is not None:
            self._turn, self._in_block = int(state["turn"]), int(state["in_block"])

    def state_dict(self) -> RankWindowsState:
        self._build()
        assert self.job is not None
        return RankWindowsState(
            version=STATE_VERSION,
            dp_group=self.dp_group,
            rank=self.rank,
            workers=list(self.workers),
            seq_len=self.seq_len,
            job=self.job.state_dict(),
            windows={
                str(w): s.state_dict() for w, s in zip(self.workers, self._streams, strict=True)
            },
            turn=self._turn,
            in_block=self._in_block,
        )

    def load_state_dict(self, state: RankWindowsState | dict[str, Any]) -> None:
        """Continue from a state of a ``RankWindows`` with the same coordinates (before
        iterating)."""
        if self._iterating:
            msg = "load the state before iterating (make a new RankWindows to restore)"
            raise StateError(msg)
        live = self.source if isinstance(self.source, Job) else None
        before = live.state_dict() if live is not None else None
        try:
            self._load(state)
        except (StateError, *MALFORMED) as exc:
            if live is not None and before is not None:  # the job as it was
                live.load_state_dict(before)
            self.job, self._streams = None, []
            if isinstance(exc, StateError):
                raise
            msg = (
                f"the rank's window state is corrupt ({type(exc).__name__}: {shown(str(exc))}); "
                "pass a state saved by state_dict()"
            )
            raise StateError(msg) from None

    def _load(self, state: RankWindowsState | dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            msg = f"rank windows state version {state.get('version')!r}, expected {STATE_VERSION}"
            raise StateError(msg)
        saved = (state["dp_group"], state["rank"], list(state["workers"]), state["seq_len"])
        mine = (self.dp_group, self.rank, self.workers, self.seq_len)
        if saved != mine:
            msg = (
                f"this state was saved by dp_group={saved[0]}, rank={saved[1]}, workers="
                f"{saved[2]}, seq_len={saved[3]}; this one is dp_group={mine[0]}, rank="
                f"{mine[1]}, workers={mine[2]}, seq_len={mine[3]}: restore each rank and "
                "worker from its own state, with the same seq_len and DataLoader num_workers"
            )
            raise StateError(msg)
        self._build(state)

    def __iter__(self) -> Iterator[Window]:
        self._build()
        self._iterating = True
        iterators = [iter(s) for s in self._streams]
        alive = [True] * len(iterators)
        try:
            while any(alive):
                i = self._turn
                window = next(iterators[i], None) if alive[i] else None
                if window is None:
                    alive[i] = False
                    self._turn, self._in_block = (i + 1) % len(iterators), 0
                    continue
                self._in_block += 1
                if self._in_block == self.block:
                    self._turn, self._in_block = (i + 1) % len(iterators), 0
                yield window
        finally:
            for it in iterators:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
