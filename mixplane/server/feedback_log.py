"""Durable feedback: an append-only log per server job, written before the answer.

Every feedback message the server applies is appended to ``{home}/server/jobs/{job_id}.feedback``
before its answer leaves: a header line, then one frame per message, ``[u32 length][u32 CRC-32
of the body][body]`` (little-endian; the body a msgpack map: ``step``, ``loss_sum`` and
``token_count`` per component, ``version`` (the latest mixture version when it arrived),
``applies_from`` and ``weights`` when it changed the weights, ``consumed`` (the sender's rank
positions) and ``time``). A frame goes to the file in one ``write`` call, so a ``kill -9`` of the
server loses nothing it answered: what was written is in the operating system's page cache. The
fsync policy decides what survives a machine crash: ``always`` (each message, ~1-2 ms here),
``group`` (the default: a background thread fsyncs every ``GROUP_COMMIT_MS`` while frames are
pending, so a power loss can lose the last few milliseconds of answers; the answer does not wait
for it) or ``off``.

A job's checkpoint records the log offset it includes; at start-up the server loads the
checkpoint and applies the frames after that offset again (``Job.apply_feedback(at=Replay(...))``:
the algorithm sees the same messages in the same order and a change lands at the chunk it did),
so a restarted server holds exactly the algorithm state it had when it last answered. The log is
never truncated by a checkpoint: it is also the run's per-step data manifest (``mixplane job
show``, ``mixplane job trace``), at about 0.4 kB a step for 22 components. A torn last frame (a
crash in the middle of a write) is detected at start-up (too short, or its CRC differs) and cut
off, never half-applied; a bad frame with more frames after it is corruption, reported with the
file and the byte offset.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np

from mixplane.errors import StateError

log = logging.getLogger(__name__)

HEADER = b"mixplane feedback log 1\n"
FRAME = struct.Struct("<II")  # body length, CRC-32 of the body
GROUP_COMMIT_MS = 5.0
MAX_FRAME = 64 * 1024 * 1024
FsyncPolicy = Literal["always", "group", "off"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("always", "group", "off")


class FeedbackLogError(StateError):
    """A feedback log that is corrupt (not just torn at its end) or not a feedback log."""


def read_records(path: Path, start: int = len(HEADER)) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset after, record) of each whole frame from byte ``start`` on; stops before a torn
    last frame. Raises ``FeedbackLogError`` for a bad frame that is not the last."""
    with path.open("rb") as f:
        head = f.read(len(HEADER))
        if head != HEADER:
            msg = f"{path} is not a mixplane feedback log (header {head[:32]!r}); move it away"
            raise FeedbackLogError(msg)
        size = os.fstat(f.fileno()).st_size
        offset = max(start, len(HEADER))
        f.seek(offset)
        while offset < size:
            frame = f.read(FRAME.size)
            if len(frame) < FRAME.size:
                return  # torn: the frame header itself was cut
            length, crc = FRAME.unpack(frame)
            end = offset + FRAME.size + length
            body = f.read(length) if length <= MAX_FRAME else b""
            if end > size or len(body) < length:
                return  # torn: the body was cut
            if zlib.crc32(body) != crc:
                if end == size:
                    return  # torn: the last frame's bytes did not all reach the disk
                msg = (
                    f"{path}: the feedback record at byte {offset} is corrupt (CRC mismatch) and "
                    "more follow; restore the file from a backup or move it away to drop the "
                    "job's unlogged feedback"
                )
                raise FeedbackLogError(msg)
            try:
                record = msgpack.unpackb(body, raw=False, strict_map_key=True)
            except (ValueError, msgpack.UnpackException) as exc:
                msg = f"{path}: the feedback record at byte {offset} does not decode ({exc})"
                raise FeedbackLogError(msg) from None
            if not isinstance(record, dict):
                msg = f"{path}: the feedback record at byte {offset} is not a map"
                raise FeedbackLogError(msg)
            offset = end
            yield offset, record


def valid_end(path: Path) -> int:
    """The offset after the last whole frame (the header's end for an empty log)."""
    end = len(HEADER)
    for end, _record in read_records(path):  # noqa: B007
        pass
    return end


class FeedbackLog:
    """The append side of one job's log (see the module). Thread-safe."""

    def __init__(self, path: Path, *, fsync: FsyncPolicy = "group") -> None:
        if fsync not in FSYNC_POLICIES:
            msg = f"feedback fsync policy must be one of {FSYNC_POLICIES}, got {fsync!r}"
            raise ValueError(msg)
        self.path = path
        self.fsync = fsync
        self._lock = threading.Lock()
        self._pending = False  # frames written since the last fsync
        self._stop = threading.Event()
        if path.exists() and path.stat().st_size > 0:
            end = valid_end(path)
            if end < path.stat().st_size:
                log.warning(
                    "%s: dropping a torn last feedback record (%d bytes after byte %d)",
                    path,
                    path.stat().st_size - end,
                    end,
                )
                with path.open("r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
        else:
            with path.open("wb") as f:
                f.write(HEADER)
                f.flush()
                os.fsync(f.fileno())
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.offset = os.fstat(self._fd).st_size
        self._flusher: threading.Thread | None = None
        if fsync == "group":
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"mixplane-fsync-{path.stem}", daemon=True
            )
            self._flusher.start()

    def append(self, record: Mapping[str, Any]) -> int:
        """Write one record (one ``write`` call) and return the offset after it."""
        body = msgpack.packb(record, use_bin_type=True)
        frame = FRAME.pack(len(body), zlib.crc32(body)) + body
        with self._lock:
            written = os.write(self._fd, frame)
            if written != len(frame):  # a short write to a regular file: the disk is full
                msg = f"{self.path}: short write ({written} of {len(frame)} bytes); disk full?"
                raise OSError(msg)
            self.offset += len(frame)
            if self.fsync == "always":
                os.fsync(self._fd)
            else:
                self._pending = True
            return self.offset

    def sync(self) -> None:
        """fsync what was written (before a checkpoint that names the offset)."""
        with self._lock:
            if self._pending and self._fd >= 0:
                os.fsync(self._fd)
                self._pending = False

    def _flush_loop(self) -> None:
        while not self._stop.wait(GROUP_COMMIT_MS / 1000):
            if self._pending:
                with contextlib.suppress(OSError):
                    self.sync()

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5)
        with self._lock:
            if self._fd >= 0:
                if self._pending:
                    with contextlib.suppress(OSError):
                        os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def record_of(
    step: int,
    loss: np.ndarray,
    count: np.ndarray,
    *,
    version: int,
    applies_from: int | None,
    weights: np.ndarray | None,
    consumed: Sequence[tuple[int, int, int]],
) -> dict[str, Any]:
    """The log record of one applied feedback message."""
    return {
        "step": int(step),
        "loss_sum": loss.tolist(),
        "token_count": count.tolist(),
        "version": int(version),
        "applies_from": applies_from,
        "weights": weights.tolist() if weights is not None else None,
        "consumed": [list(p) for p in consumed],
        "time": time.time(),
    }


def summary(
    records: Sequence[Mapping[str, Any]],
    selectors: Sequence[str],
    mixture_log: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """What ``mixplane job show`` prints: per component the requested token share (each
    step's tokens at the weights of the mixture version in force when its feedback arrived)
    and the delivered one (the tokens the trainer reported), and the mixture versions."""
    k = len(selectors)
    weights = {int(e["version"]): np.asarray(e["weights"], dtype=np.float64) for e in mixture_log}
    delivered = np.zeros(k)
    requested = np.zeros(k)
    for r in records:
        count = np.asarray(r["token_count"], dtype=np.float64)
        if len(count) != k:  # components added by an extension after the message
            count = np.pad(count, (0, k - len(count)))
        delivered += count
        w = weights.get(int(r["version"]))
        if w is not None:
            w = np.pad(w, (0, k - len(w))) if len(w) < k else w
            requested += count.sum() * w / max(w.sum(), 1e-300)
    total = delivered.sum()
    return {
        "steps": len(records),
        "first_step": int(records[0]["step"]) if records else None,
        "last_step": int(records[-1]["step"]) if records else None,
        "tokens": float(total),
        "components": [
            {
                "component": sel,
                "requested_share": float(requested[i] / total) if total else None,
                "delivered_share": float(delivered[i] / total) if total else None,
                "delivered_tokens": float(delivered[i]),
            }
            for i, sel in enumerate(selectors)
        ],
        "mixture_versions": [
            {
                "version": int(e["version"]),
                "chunk": int(e["chunk"]),
                "step": e.get("step"),
                "cause": e["cause"],
                "weights": list(e["weights"]),
            }
            for e in mixture_log
        ],
    }


def padded(records: Sequence[Mapping[str, Any]], k: int) -> Iterator[tuple[int, Any, Any]]:
    """(step, loss_sum, token_count) of each record over ``k`` components (records made
    before an extension added components get zeros for them)."""
    for r in records:
        loss, count = list(r["loss_sum"]), list(r["token_count"])
        yield int(r["step"]), loss + [0.0] * (k - len(loss)), count + [0.0] * (k - len(count))


def read_job_files(directory: Path, job_id: str) -> dict[str, Any]:
    """A job's checkpoint file and feedback log as a server left them in its home (read only,
    while it runs or not): ``{"checkpoint": {...}, "records": [...]}``."""
    import orjson

    path = directory / f"{job_id}.json"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        msg = f"no server job {job_id!r} under {directory}; jobs there: {known}"
        raise StateError(msg)
    checkpoint = orjson.loads(path.read_bytes())
    log_path = directory / f"{job_id}.feedback"
    records = [r for _end, r in read_records(log_path)] if log_path.is_file() else []
    return {"checkpoint": checkpoint, "records": records}
