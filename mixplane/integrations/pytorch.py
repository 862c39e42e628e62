"""PyTorch: a rank's token windows as an ``IterableDataset``, resumable through torchdata.

``TokenWindowDataset(job, tokenizer, seq_len)`` finds the rank's place in the job's topology
from ``torch.distributed`` (or ``rank`` / ``world_size``, ``dp_size`` / ``ranks_per_group``, a
``device_mesh`` with a ``"dp"`` dimension, or explicit ``dp_group`` / ``group_rank``) and the
DataLoader worker from ``get_worker_info()``. Each item is a dict of tensors for one window:
``input_ids``, ``labels``, ``domain_ids``, ``position_ids`` (int64, ``seq_len`` each),
``cu_seqlens`` (int32, document starts and ``seq_len``) and ``component``. ``collate_windows``
stacks them into a batch (``cu_seqlens`` of the whole batch, flash-attention style). The items of
a block of ``batch_size`` windows are rows of one buffer (in shared memory in a DataLoader
worker), so a batch is views of it, not a copy, and a worker's batch reaches the main process as
one shared-memory segment (``SharedBatch``) instead of one per tensor (issue 16: 1.4-2.2x with 2
workers, docs/benchmarks.md).

Workers: declare them in the job's topology (``Topology(workers=W)``) and give the DataLoader
``num_workers=W``; every worker process runs the job from a snapshot taken when the dataset is
made (worker processes cannot open the catalog). With ``num_workers=0`` this process serves the
W worker streams itself, in blocks of ``batch_size`` windows: the same batches a DataLoader with W
workers and that batch size delivers, in the same order. Only this in-process form sends
feedback to an adaptive mixture (workers plan on their own copies; the server serves adaptive
jobs to worker processes).

``state_dict`` / ``load_state_dict`` make torchdata's ``StatefulDataLoader`` resume exactly, also
with workers; the state is plain JSON-able data (no pickle needed to checkpoint it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixplane.chunking.assign import Topology
from mixplane.client.rank import Layout, RankWindows, resolve_layout
from mixplane.client.remote import RemoteJob, ServerAddress
from mixplane.client.snapshot import JobSnapshot
from mixplane.client.windows import PREFETCH_CHUNKS
from mixplane.errors import DependencyError, PlanError, StateError, shown
from mixplane.job import Job
from mixplane.tokens.packing import Window
from mixplane.tokens.tokenizer import Tokenizer, load_tokenizer

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - the torch extra is installed in development
    msg = "mixplane.integrations.pytorch needs PyTorch: pip install 'mixplane[torch]'"
    raise DependencyError(msg) from exc

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

STATE_VERSION = 1
FIELDS = ("input_ids", "labels", "domain_ids", "position_ids")


BLOCK_WINDOWS = 64  # windows per item buffer when the dataset has no batch_size
INLINE_BYTES = 65_536  # a batch's tensors up to this size travel inside the pickle


def window_tensors(window: Window) -> dict[str, torch.Tensor]:
    """One window as tensors (token fields int64, as embeddings and losses take them)."""
    return next(window_items([window], 1))


def window_items(
    windows: Iterable[Window], block: int, *, shared: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """The windows as items whose token fields and ``component`` are rows of one int64 buffer
    per ``block`` windows (``[4, block, seq_len]`` then ``[block]``; in shared memory when
    ``shared``): one copy per field, and ``collate_windows`` takes consecutive rows of one
    buffer as views instead of copying them again. ``cu_seqlens`` shares the window's array."""
    fields = len(FIELDS)
    row = block
    for window in windows:
        if row == block:
            length = len(window.input_ids)
            flat = _buffer(8 * block * (fields * length + 1), shared=shared).view(torch.int64)
            tokens = flat[: fields * block * length].view(fields, block, length)
            components = flat[fields * block * length :]
            array, of_rows, row = tokens.numpy(), components.numpy(), 0
        for f, name in enumerate(FIELDS):
            array[f, row] = getattr(window, name)
        of_rows[row] = window.component
        out = dict(zip(FIELDS, tokens[:, row].unbind(0), strict=True))
        out["cu_seqlens"] = torch.from_numpy(
            np.ascontiguousarray(window.cu_seqlens, dtype=np.int32)
        )
        out["component"] = components[row]
        row += 1
        yield out


def collate_windows(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack windows into a batch: ``[B, seq_len]`` token fields, ``component`` ``[B]``, and
    ``cu_seqlens`` over the flattened batch (each window's document starts shifted by its
    offset, then ``B * seq_len``) with ``max_seqlen``, for variable-length attention.

    The token fields and ``component`` are views of one buffer: the items' own buffer when
    they are its consecutive rows (``TokenWindowDataset``'s items, batches aligned with its
    blocks: no copy), else a new one they are copied into. In a DataLoader worker process the
    buffer is in shared memory and the batch (a ``SharedBatch``) travels to the main process as
    that one segment plus the small tensors inside the pickle (one file descriptor passed, not
    one per tensor: the per-tensor hand-over dominated the cost with workers); the main process
    receives a plain dict, as in-process."""
    if not batch:
        msg = "collate_windows got an empty batch"
        raise PlanError(msg)
    size = len(batch)
    length = int(batch[0]["input_ids"].shape[0])
    shared = get_worker_info() is not None
    found = rows_of_one_buffer(batch)
    if found is None:
        buffer, views = _copied(batch, shared=shared)
    else:
        buffer, views = found
    parts = [b["cu_seqlens"].numpy() for b in batch]
    cu = np.empty(sum(len(c) - 1 for c in parts) + 1, dtype=np.int32)
    at = 0
    for i, c in enumerate(parts):
        cu[at : at + len(c) - 1] = c[:-1] + i * length
        at += len(c) - 1
    cu[at] = size * length
    out: dict[str, Any] = {name: views[name] for name in FIELDS}
    out["cu_seqlens"] = torch.from_numpy(cu)
    out["max_seqlen"] = int(np.diff(cu).max())
    out["component"] = views["component"]
    return SharedBatch(out, buffer, views) if shared else out


def rows_of_one_buffer(
    batch: Sequence[dict[str, torch.Tensor]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
    """(the buffer, the batch's fields as views of it) when every field of the items lies in
    consecutive rows of the first item's buffer (addresses, dtypes and shapes checked), else
    None."""
    storage = batch[0]["input_ids"].untyped_storage()
    start = storage.data_ptr()
    end = start + storage.nbytes()
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage)
    views = {}
    for name in (*FIELDS, "component"):
        first = batch[0][name]
        step = first.numel() * first.element_size()
        at = first.data_ptr()
        if not start <= at <= end - step * len(batch):
            return None
        for i, item in enumerate(batch):
            t = item[name]
            same = t.dtype == first.dtype and t.shape == first.shape and t.is_contiguous()
            if not same or t.data_ptr() != at + i * step:
                return None
        rows = buffer[at - start : at - start + step * len(batch)]
        views[name] = rows.view(first.dtype).view(len(batch), *first.shape)
    return buffer, views


def _copied(
    batch: Sequence[dict[str, torch.Tensor]], *, shared: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A new buffer (in shared memory when ``shared``) with the items' fields stacked in it."""
    names = (*FIELDS, "component")
    places = []
    offset = 0
    for name in names:
        first = batch[0][name]
        places.append((offset, first.dtype, (len(batch), *first.shape)))
        offset += (len(batch) * first.numel() * first.element_size() + 7) // 8 * 8
    buffer = _buffer(offset, shared=shared)
    views = {}
    for name, (at, dtype, shape) in zip(names, places, strict=True):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        views[name] = buffer[at : at + nbytes].view(dtype).view(shape)
        torch.stack([b[name] for b in batch], out=views[name])
    return buffer, views


def _buffer(nbytes: int, *, shared: bool) -> torch.Tensor:
    """A uint8 buffer; in shared memory when ``shared`` (as ``default_collate`` allocates in a
    DataLoader worker, so sending it copies nothing)."""
    if not shared:
        return torch.empty(nbytes, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(nbytes)  # type: ignore[no-untyped-call]
    return torch.empty(0, dtype=torch.uint8).set_(storage)


class SharedBatch(dict[str, Any]):
    """A batch from ``collate_windows`` in a DataLoader worker: a dict whose big tensors are
    views of one shared-memory buffer. Pickled as the buffer, each view's place in it, small
    tensors as arrays and the other entries as usual (a key added after collating travels
    too; one holding the same tensor as a field, like ``shift_labels``, stays that tensor), so
    the DataLoader passes one shared-memory segment per batch; it unpickles to a plain dict."""

    def __init__(
        self, items: dict[str, Any], buffer: torch.Tensor, views: dict[str, torch.Tensor]
    ) -> None:
        super().__init__(items)
        self.buffer, self.views = buffer, views

    def __reduce__(self) -> tuple[Any, ...]:
        of_view = {id(t): name for name, t in self.views.items()}
        base = self.buffer.data_ptr()
        places = {
            name: (t.data_ptr() - base, t.dtype, tuple(t.shape)) for name, t in self.views.items()
        }
        keys: list[tuple[str, str, Any]] = []
        for key, value in self.items():
            if id(value) in of_view:
                keys.append((key, "view", of_view[id(value)]))
            elif isinstance(value, torch.Tensor) and _inline(value):
                keys.append((key, "inline", value.numpy()))
            else:
                keys.append((key, "value", value))
        return (_unpack_batch, (self.buffer, places, keys))


def _inline(value: torch.Tensor) -> bool:
    return value.device.type == "cpu" and not value.requires_grad and value.nbytes <= INLINE_BYTES


def _unpack_batch(
    buffer: torch.Tensor,
    places: dict[str, tuple[int, torch.dtype, tuple[int, ...]]],
    keys: list[tuple[str, str, Any]],
) -> dict[str, Any]:
    """A ``SharedBatch`` as a plain dict in the receiving process."""
    views: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {}
    for key, kind, value in keys:
        if kind == "view":
            if value not in views:
                at, dtype, shape = places[value]
                nbytes = int(np.prod(shape)) * dtype.itemsize
                views[value] = buffer[at : at + nbytes].view(dtype).view(shape)
            out[key] = views[value]
        else:
            out[key] = torch.from_numpy(value) if kind == "inline" else value
    return out


@dataclass(slots=True)
class DataWait:
    """Seconds spent in the loader's ``next()`` and wall seconds of the training loop, from
    the first of ``begin()`` (the trainer's loop starting) or the first batch asked for (a
    trainer may fetch it before its loop starts) to ``end()``. The trainer integrations fill
    it."""

    wait_s: float = 0.0
    total_s: float = 0.0
    batches: int = 0
    first_s: float = 0.0  # the first batch's wait (the stream's start: sizing, first chunks)
    started: float | None = None

    def begin(self, now: float) -> None:
        self.started = now if self.started is None else min(self.started, now)

    def end(self, now: float) -> None:
        if self.started is not None:
            self.total_s = now - self.started

    def add(self, start: float, stop: float) -> None:
        """One ``next()`` of the loader, from ``start`` to ``stop`` (perf_counter)."""
        self.begin(start)
        self.wait_s += stop - start
        if self.batches == 0:
            self.first_s = stop - start
        self.batches += 1

    @property
    def fraction(self) -> float:
        return self.wait_s / self.total_s if self.total_s > 0 else 0.0

    @property
    def after_first(self) -> float:
        """The share after the first batch (the steady state)."""
        rest = self.total_s - self.first_s
        return (self.wait_s - self.first_s) / rest if rest > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "wait_s": self.wait_s,
            "total_s": self.total_s,
            "batches": self.batches,
            "fraction": self.fraction,
            "after_first": self.after_first,
        }


def loss_feedback(feedback: Job | RemoteJob | LossFeedback) -> LossFeedback:
    """A ``LossFeedback`` for a trainer integration, made once the trainer's process group is
    up (a ``LossFeedback`` made before it would send every rank's own sums)."""
    if not isinstance(feedback, LossFeedback):
        return LossFeedback(feedback)
    live = torch.distributed.is_available() and torch.distributed.is_initialized()
    if live and not feedback.distributed:
        msg = (
            "this LossFeedback was made before torch.distributed was initialized, so every "
            "rank would send its own sums; pass the job instead (feedback=job) and the "
            "integration makes it when training starts"
        )
        raise PlanError(msg)
    return feedback


class TokenWindowDataset(IterableDataset[dict[str, torch.Tensor]]):
    """One rank's token windows (see the module)."""

    def __init__(
        self,
        job: Job | JobSnapshot | RemoteJob | str | os.PathLike[str],
        tokenizer: Tokenizer | str,
        seq_len: int,
        *,
        dp_group: int | None = None,
        group_rank: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        dp_size: int | None = None,
        ranks_per_group: int | None = None,
        device_mesh: DeviceMesh | None = None,
        dp_dim: str = "dp",
        bos: bool = False,
        prefetch: int = PREFETCH_CHUNKS,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(job, str | os.PathLike):
            job = JobSnapshot.load(Path(job))
        tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        if isinstance(job, Job | RemoteJob):  # sized with the stream's tokenizer (if it can)
            job.use_tokenizer(tokenizer)
        self._job = job if isinstance(job, Job | RemoteJob) else None
        # worker processes run the job from a snapshot taken now, while the catalog is open,
        # or reconnect to the server's job
        self._snapshot: JobSnapshot | None = None
        self._remote: tuple[ServerAddress, str] | None = None
        if isinstance(job, RemoteJob):
            self._remote = (job.address, job.job_id)
            self.topology = job.topology
        else:
            self._snapshot = job.snapshot() if isinstance(job, Job) else job
            self.topology = Topology(**self._snapshot.topology)
        self.tokenizer = tokenizer
        self.seq_len, self.bos, self.prefetch, self.batch_size = seq_len, bos, prefetch, batch_size
        if device_mesh is not None:
            dp_group, group_rank = _mesh_coordinates(device_mesh, dp_dim)
            dp_size = device_mesh.size(device_mesh.mesh_dim_names.index(dp_dim))  # type: ignore[union-attr]
        elif dp_group is None and group_rank is None and rank is None:
            rank, world_size = _distributed()
        self.layout: Layout = resolve_layout(
            self.topology,
            dp_group=dp_group,
            group_rank=group_rank,
            rank=rank,
            world_size=world_size,
            dp_size=dp_size,
            ranks_per_group=ranks_per_group,
        )
        if device_mesh is not None and dp_size != self.topology.dp_groups:
            msg = (
                f"the device mesh has {dp_size} data-parallel groups but the job's topology "
                f"has dp_groups={self.topology.dp_groups}; submit the job with "
                f"topology=Topology(dp_groups={dp_size}, ...)"
            )
            raise PlanError(msg)
        self._pending: dict[str, Any] | None = None
        self._live: RankWindows | None = None

    def _windows(self) -> RankWindows:
        info = get_worker_info()
        if info is None:
            workers = list(range(self.topology.workers))
            source: Job | JobSnapshot | RemoteJob
            if self._job is not None:
                source = self._job
            elif self._remote is not None:
                source = RemoteJob.attach(*self._remote)
            else:
                assert self._snapshot is not None
                source = self._snapshot
        else:
            if info.num_workers != self.topology.workers:
                msg = (
                    f"the DataLoader has num_workers={info.num_workers} but the job's topology "
                    f"has workers={self.topology.workers}; submit the job with "
                    f"topology=Topology(..., workers={info.num_workers}) or use num_workers="
                    f"{self.topology.workers} (or 0)"
                )
                raise PlanError(msg)
            workers = [info.id]
            if self._remote is not None:  # the server plans; workers fetch from it
                source = RemoteJob.attach(*self._remote)
            else:
                assert self._snapshot is not None
                if self._snapshot.spec.get("algorithm") is not None:
                    msg = (
                        "an adaptive mixture cannot run in DataLoader worker processes "
                        "in-process (each would plan on its own copy); use num_workers=0, or "
                        "the server (Client.remote)"
                    )
                    raise PlanError(msg)
                source = self._snapshot
        return RankWindows(
            source,
            self.tokenizer,
            self.seq_len,
            dp_group=self.layout.dp_group,
            rank=self.layout.rank,
            workers=workers,
            bos=self.bos,
            prefetch=self.prefetch,
            block=self.batch_size,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        windows = self._windows()
        if self._pending is not None:
            windows.load_state_dict(self._pending["windows"])
            self._pending = None
        self._live = windows
        block = self.batch_size if self.batch_size > 1 else BLOCK_WINDOWS
        return window_items(windows, block, shared=get_worker_info() is not None)

    @property
    def planner(self) -> Job | RemoteJob | None:
        """The job this process's windows are planned by, once iterating (the live job, one
        run from the snapshot, or the server's): where this rank's loss feedback goes."""
        return self._live.job if self._live is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Where this rank (or DataLoader worker) stands: JSON-able."""
        if self._pending is not None:
            return self._pending
        windows = self._live if self._live is not None else self._windows()
        self._live = windows
        return {"version": STATE_VERSION, "windows": windows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` at the next iteration (its parts are checked there;
        a corrupt one raises ``StateError`` from the iteration and changes nothing)."""
        if not isinstance(state, dict) or not isinstance(state.get("windows"), dict):
            msg = (
                f"a dataset state is {{version, windows: {{...}}}} from state_dict(), got "
                f"{shown(state)}"
            )
            raise StateError(msg)
        if state.get("version") != STATE_VERSION:
            msg = f"dataset state version {shown(state.get('version'))}, expected {STATE_VERSION}"
            raise StateError(msg)
        self._pending = state
        self._live = None

    def __getstate__(self) -> dict[str, Any]:
        """Worker processes get the snapshot, never the live job (it holds the catalog)."""
        state = dict(self.__dict__)
        state["_job"] = None
        state["_live"] = None
        return state


def domain_loss_sums(
    loss: torch.Tensor,
    domain_ids: torch.Tensor,
    num_components: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-component sums of per-token loss and token counts (float64, on the loss's device)
    from per-token losses (``cross_entropy(..., reduction="none")``) and the batch's
    ``domain_ids``; ``mask`` (e.g. ``labels != -100``) leaves tokens out."""
    values = loss.detach().reshape(-1).to(torch.float64)
    domains = domain_ids.reshape(-1).to(device=values.device, dtype=torch.int64)
    if values.shape != domains.shape:
        msg = f"loss has {values.numel()} tokens but domain_ids {domains.numel()}"
        raise PlanError(msg)
    if mask is not None:
        keep = mask.reshape(-1).to(device=values.device, dtype=torch.bool)
        values, domains = values[keep], domains[keep]
    if domains.numel() and (int(domains.min()) < 0 or int(domains.max()) >= num_components):
        msg = f"domain_ids must lie in 0..{num_components - 1} (the job's components)"
        raise PlanError(msg)
    sums = torch.zeros(num_components, dtype=torch.float64, device=values.device)
    sums.scatter_add_(0, domains, values)
    counts = torch.bincount(domains, minlength=num_components).to(torch.float64)
    return sums, counts


class LossFeedback:
    """Per-domain loss feedback from a training loop: ``feedback(step, loss, domain_ids)``.

    Sums the per-token loss and counts tokens per component, all-reduces both over
    ``group`` (the data-parallel process group; by default every rank, divided by the ranks
    per DP group, which hold the same data), and sends them to the job. Any backend (gloo,
    nccl). Call it on every rank.

    - A job on the server (``RemoteJob``) or one rank: one rank sends (rank 0 of the group).
    - An adaptive job in-process in several ranks (each rank runs the same job, e.g. from one
      snapshot): every rank applies the same reduced numbers to its own job, from the same
      chunk, so every rank's plan, mixture log and algorithm stay identical (the plan one
      planner makes). The chunk is the greatest of the ranks' change points
      (``Job.change_point()``, all-reduced with MAX) and goes to ``job.feedback(..., at=)``.
      The same collective checks that the ranks run the same job (spec, query, components)
      at the same mixture (log length, latest change): a rank restored from another state, or
      one that changed its mixture alone, raises ``PlanError`` on every rank. The group must
      hold every rank of the job (``group=None``; a data-parallel group does when the job has
      one rank per DP group), and the job has no schedule (a phase start is logged when a rank
      plans it, which differs between ranks); otherwise run the job on the server
      (``Client.remote``). Cost: one more all-reduce (MAX) of 2K + 5 numbers a step (the
      change point, and the mixture's log length, latest chunk and K weights with their
      negatives).
    """

    def __init__(
        self,
        job: Job | RemoteJob,
        *,
        group: Any = None,
        ranks_per_group: int | None = None,
    ) -> None:
        self.job = job
        self.group = group
        self.ranks_per_group = ranks_per_group or job.topology.ranks_per_group
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world = torch.distributed.get_world_size(group) if self.distributed else 1
        topology = job.topology
        ranks = topology.dp_groups * topology.ranks_per_group
        #: the in-process job every rank applies the feedback to (see the class), else None
        self._own = (
            job
            if isinstance(job, Job)
            and job.algorithm is not None
            and self.distributed
            and (world > 1 or ranks > 1)
            else None
        )
        self._checked = False
        if self._own is not None:
            if world != ranks:
                msg = (
                    f"an in-process adaptive job takes the feedback of all its ranks: the group "
                    f"has {world} ranks but the job's topology {topology.dp_groups} DP groups x "
                    f"{topology.ranks_per_group} ranks; pass group=None (every rank, so that "
                    "all peers of a DP group apply identical numbers) or run the job on the "
                    "server (Client.remote)"
                )
                raise PlanError(msg)
            if len(job.spec.phases) > 1:
                msg = (
                    "an in-process adaptive job with a schedule cannot run in several ranks "
                    "(each rank logs a phase start when it plans it); run the job on the "
                    "server (Client.remote)"
                )
                raise PlanError(msg)

    @property
    def in_process(self) -> bool:
        """Every rank applies the feedback to its own in-process job (see the class): the
        ranks agree inside the call, no message is in flight afterwards."""
        return self._own is not None

    def __call__(
        self,
        step: int,
        loss: torch.Tensor,
        domain_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> int | None:
        """Reduce this step's losses and send them; returns the chunk the new weights apply
        from (when they changed: on the sending rank, or on every rank of an in-process
        adaptive job), else None."""
        sums, counts = domain_loss_sums(loss, domain_ids, self.job.num_components, mask)
        sender = True
        if self.distributed:
            both = torch.stack([sums, counts])
            torch.distributed.all_reduce(both, group=self.group)
            if self.group is None and self.ranks_per_group > 1:
                both /= self.ranks_per_group
            sums, counts = both[0], both[1]
            sender = torch.distributed.get_rank(self.group) == 0
        loss_sum, token_count = sums.cpu().numpy(), counts.cpu().numpy()
        if self._own is not None:
            at = self._agree(self._own)
            return self._own.feedback(step, loss_sum, token_count, at=at)
        if not sender:
            return None
        return self.job.feedback(step, loss_sum, token_count)

    def _agree(self, job: Job) -> int:
        """The chunk every rank applies a change from (the greatest change point), after
        checking that the ranks run the same job (first call) at the same mixture."""
        if not self._checked:
            identity = [
                float(job.num_components),
                float(int(job.spec.fingerprint()[:13], 16)),  # 52 bits: exact in float64
                float(int(job.result.fingerprint[:13], 16)),
            ]
            self._same(identity, "job (its number of components, spec or query)")
            self._checked = True
        log = job.mixture_log
        latest = log[-1]
        mixture = [float(len(log)), float(latest["chunk"]), *job.weights.tolist()]
        point = torch.tensor([float(job.change_point())], dtype=torch.float64)
        return self._same(mixture, "mixture (mixture log length, latest change)", point)

    def _same(self, values: list[float], what: str, point: torch.Tensor | None = None) -> int:
        """All-reduce ``values`` and their negatives with MAX (equal on every rank iff both
        agree) and ``point`` with them; raise on every rank if they differ."""
        mine = torch.tensor(values, dtype=torch.float64)
        head = point if point is not None else torch.zeros(1, dtype=torch.float64)
        both = torch.cat([head, mine, -mine])
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX, group=self.group)
        n = len(values)
        if not torch.equal(both[1 : 1 + n], -both[1 + n :]):
            msg = (
                f"the ranks run a different {what}: every rank must open the same job (one "
                "snapshot) and restore its own state of the same step, and change the mixture "
                "only through this feedback"
            )
            raise PlanError(msg)
        return int(both[0])


def _distributed() -> tuple[int | None, int | None]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None, None


def _mesh_coordinates(mesh: DeviceMesh, dp_dim: str) -> tuple[int, int]:
    """(dp group, position among the ranks sharing it) of this process in a device mesh."""
    names = mesh.mesh_dim_names
    if names is None or dp_dim not in names:
        msg = f"the device mesh has no dimension named {dp_dim!r} (dims: {names}); pass dp_dim="
        raise PlanError(msg)
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        msg = "this process is not part of the device mesh"
        raise PlanError(msg)
    d = names.index(dp_dim)
    shape = tuple(mesh.mesh.shape)
    others = [(c, n) for i, (c, n) in enumerate(zip(coordinate, shape, strict=True)) if i != d]
    group_rank = 0
    for c, n in others:
        group_rank = group_rank * n + c
    return coordinate[d], group_rank
