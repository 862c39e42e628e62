"""ADO's loss series: per-component losses smoothed (Savitzky-Golay), thinned, kept for refits.

The series keeps every ``stride``-th smoothed point after the first ``ignore`` steps (float32)
and the last ``window`` raw points, about 12 bytes per step for 22 components; its state is
base64 arrays in JSON (no pickle).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def savgol_matrix(window: int, order: int) -> Array:
    """Savitzky-Golay smoothing of one window: row q holds the weights that give the value at
    position q of the least-squares polynomial of degree ``order`` through the window's
    points (the middle row is the usual convolution kernel)."""
    pos = np.arange(window, dtype=np.float64) - window // 2
    vander = np.vander(pos / max(1, window // 2), order + 1, increasing=True)
    return vander @ np.linalg.pinv(vander)


def savgol(series: Array, window: int, order: int) -> Array:
    """Smooth the columns of ``series`` (T x K) like ``scipy.signal.savgol_filter(series,
    window, order, axis=0, mode="interp")``: the middle of each window for interior points,
    the polynomial of the first (last) window for the first (last) ``window // 2`` points."""
    t = len(series)
    if window > t:
        msg = f"savgol window {window} is longer than the series ({t} points)"
        raise ValueError(msg)
    m = savgol_matrix(window, order)
    half = window // 2
    out = np.empty_like(series, dtype=np.float64)
    out[:half] = m[:half] @ series[:window]
    out[t - half :] = m[half + 1 :] @ series[t - window :]
    if t > 2 * half:
        windows = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)
        out[half : t - half] = np.einsum("w,tkw->tk", m[half], windows)
    return out


def _encode(a: npt.NDArray[Any]) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "f4": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(d: dict[str, Any]) -> npt.NDArray[np.float32]:
    raw = base64.b64decode(d["f4"])
    return np.frombuffer(raw, dtype="<f4").reshape(d["shape"]).astype(np.float32)


class Series:
    """The per-component loss series as the fit sees it: Savitzky-Golay smoothed, the first
    ``ignore`` points dropped, every ``stride``-th kept, paired with log n.

    A smoothed point depends only on the ``window`` raw points around it once the series is
    ``window // 2`` points longer, so it is computed then and kept (float32); the raw series
    is kept for the last ``window`` points only. The newest ``window // 2`` points are
    smoothed at each refit by the polynomial of the last window, exactly what
    ``savgol_filter(series, window, order, mode="interp")`` gives them."""

    def __init__(self, k: int, *, window: int, order: int, ignore: int, stride: int) -> None:
        self.k, self.window, self.order, self.ignore, self.stride = k, window, order, ignore, stride
        self.matrix = savgol_matrix(window, order)
        self.length = 0
        self.raw = np.zeros((0, k))  # the last `window` raw losses
        self.n = np.zeros((0, k))  # and samples trained so far at each
        self.xs = np.zeros((0, k), dtype=np.float32)  # finished fit points: log n
        self.ys = np.zeros((0, k), dtype=np.float32)  # and log smoothed loss
        self._buf_x: list[npt.NDArray[np.float32]] = []
        self._buf_y: list[npt.NDArray[np.float32]] = []

    def _on_grid(self, i: int) -> bool:
        return i >= self.ignore and (i - self.ignore) % self.stride == 0

    def _keep(self, n: Array, smoothed: Array) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            self._buf_x.append(np.log(np.where(n > 0, n, np.nan)).astype(np.float32))
            self._buf_y.append(np.log(np.where(smoothed > 0, smoothed, np.nan)).astype(np.float32))

    def push(self, loss: Array, n: Array) -> None:
        self.raw = np.concatenate([self.raw[-(self.window - 1) :], loss[None]])
        self.n = np.concatenate([self.n[-(self.window - 1) :], n[None]])
        self.length += 1
        half = self.window // 2
        if self.length == self.window:  # the first window: its head comes from its polynomial
            smooth = self.matrix @ self.raw
            for i in range(half + 1):
                if self._on_grid(i):
                    self._keep(self.n[i], smooth[i])
        elif self.length > self.window:
            i = self.length - 1 - half
            if self._on_grid(i):
                self._keep(self.n[half], self.matrix[half] @ self.raw)

    def _flush(self) -> None:
        if self._buf_x:
            self.xs = np.concatenate([self.xs, np.stack(self._buf_x)])
            self.ys = np.concatenate([self.ys, np.stack(self._buf_y)])
            self._buf_x, self._buf_y = [], []

    def points(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(log n, log smoothed loss), T x K, NaN where a point cannot be used."""
        self._flush()
        length, half = self.length, self.window // 2
        if length >= self.window:
            first = length - half
            smooth = self.matrix @ self.raw
            rows = range(half + 1, self.window)
        else:
            first = 0
            w = length if length % 2 else length - 1
            smooth = savgol(self.raw, w, self.order) if w > self.order else self.raw
            rows = range(length)
        tail_x, tail_y = [], []
        for j, i in zip(rows, range(first, length), strict=True):
            if self._on_grid(i):
                with np.errstate(divide="ignore", invalid="ignore"):
                    tail_x.append(np.log(np.where(self.n[j] > 0, self.n[j], np.nan)))
                    tail_y.append(np.log(np.where(smooth[j] > 0, smooth[j], np.nan)))
        if not tail_x:
            return self.xs, self.ys
        return (
            np.concatenate([self.xs, np.asarray(tail_x, dtype=np.float32)]),
            np.concatenate([self.ys, np.asarray(tail_y, dtype=np.float32)]),
        )

    def state(self) -> dict[str, Any]:
        """The raw window (JSON numbers) and the kept points (float32, base64); log n once
        when every component shares it (``sample_count="step"``)."""
        self._flush()
        shared = self.k > 1 and bool((self.xs == self.xs[:, :1]).all())
        return {
            "length": self.length,
            "raw": self.raw.tolist(),
            "n": self.n.tolist(),
            "log_n": _encode(self.xs[:, :1] if shared else self.xs),
            "log_loss": _encode(self.ys),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.length = int(state["length"])
        self.raw = np.asarray(state["raw"], dtype=np.float64).reshape(-1, self.k)
        self.n = np.asarray(state["n"], dtype=np.float64).reshape(-1, self.k)
        self.ys = _decode(state["log_loss"])
        xs = _decode(state["log_n"])
        self.xs = np.repeat(xs, self.k, axis=1) if xs.shape[1] != self.k else xs
        self._buf_x, self._buf_y = [], []
