"""The feedback log: frames written whole, a torn last frame dropped, corruption reported."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from mixplane.server.feedback_log import (
    HEADER,
    FeedbackLog,
    FeedbackLogError,
    read_records,
    record_of,
    summary,
)


def write(path: Path, n: int, *, fsync: str = "always") -> list[int]:
    log = FeedbackLog(path, fsync=fsync)  # type: ignore[arg-type]
    ends = [
        log.append(
            record_of(
                step,
                np.array([1.0, 2.0]) * step,
                np.array([10.0, 30.0]),
                version=0,
                applies_from=None,
                weights=None,
                consumed=[(0, 0, step)],
            )
        )
        for step in range(1, n + 1)
    ]
    log.close()
    return ends


@pytest.mark.parametrize("fsync", ["always", "group", "off"])
def test_records_read_back_in_order(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "j.feedback"
    ends = write(path, 5, fsync=fsync)
    records = list(read_records(path))
    assert [end for end, _ in records] == ends
    assert [r["step"] for _, r in records] == [1, 2, 3, 4, 5]
    assert records[2][1]["loss_sum"] == [3.0, 6.0] and records[2][1]["consumed"] == [[0, 0, 3]]
    assert [r["step"] for _, r in read_records(path, ends[1])] == [3, 4, 5]  # after an offset


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 20])
def test_a_torn_last_record_is_dropped_when_the_log_is_opened(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "j.feedback"
    ends = write(path, 3)
    whole = path.read_bytes()
    path.write_bytes(whole[: ends[1] + cut])  # the third frame cut after `cut` bytes
    assert [r["step"] for _, r in read_records(path)] == [1, 2]  # readers stop before it
    log = FeedbackLog(path)
    assert log.offset == ends[1] and path.stat().st_size == ends[1]  # cut off at start-up
    log.close()


def test_a_last_record_whose_bytes_did_not_reach_the_disk_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j.feedback"
    ends = write(path, 3)
    data = bytearray(path.read_bytes())
    data[-3:] = b"\0\0\0"  # right length, wrong bytes (a crash before the data blocks landed)
    path.write_bytes(bytes(data))
    assert [r["step"] for _, r in read_records(path)] == [1, 2]
    FeedbackLog(path).close()
    assert path.stat().st_size == ends[1]


def test_a_corrupt_record_followed_by_others_is_an_error_naming_the_offset(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.feedback"
    ends = write(path, 3)
    data = bytearray(path.read_bytes())
    data[ends[0] + 10] ^= 0xFF  # inside the second frame's body
    path.write_bytes(bytes(data))
    with pytest.raises(FeedbackLogError, match=f"byte {ends[0]}"):
        list(read_records(path))
    with pytest.raises(FeedbackLogError, match="corrupt"):
        FeedbackLog(path)


def test_not_a_feedback_log(tmp_path: Path) -> None:
    path = tmp_path / "j.feedback"
    path.write_bytes(b"something else entirely\n")
    with pytest.raises(FeedbackLogError, match="not a mixplane feedback log"):
        FeedbackLog(path)


def test_a_frame_claiming_a_huge_length_at_the_end_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "j.feedback"
    ends = write(path, 1)
    with path.open("ab") as f:
        f.write(struct.pack("<II", 2**31, 0) + b"abc")
    assert [r["step"] for _, r in read_records(path)] == [1]
    FeedbackLog(path).close()
    assert path.stat().st_size == ends[0]
    assert path.read_bytes().startswith(HEADER)


def test_summary_requested_vs_delivered() -> None:
    records = [
        {"step": 1, "token_count": [30.0, 10.0], "version": 0},
        {"step": 2, "token_count": [20.0, 20.0], "version": 1},
    ]
    log = [
        {"version": 0, "chunk": 0, "cause": "phase", "weights": [0.75, 0.25]},
        {"version": 1, "chunk": 3, "step": 1, "cause": "adapt", "weights": [0.5, 0.5]},
    ]
    report = summary(records, ["a", "b"], log)
    a, b = report["components"]
    assert report["steps"] == 2 and report["tokens"] == 80.0
    assert a["requested_share"] == pytest.approx((40 * 0.75 + 40 * 0.5) / 80)
    assert a["delivered_share"] == pytest.approx(50 / 80) and b["delivered_tokens"] == 30.0
    assert [v["version"] for v in report["mixture_versions"]] == [0, 1]
