"""Master soft limiter: smooth gain reduction, then a ceiling that can never be crossed.

Stage 1 follows the peak level with a fast attack and a slow release and turns the gain
down so the signal sits at ``threshold`` (no look-ahead: it adds no latency). Stage 2 is a
tanh knee above ``threshold`` that maps any finite value to strictly below 1.0, so
``|out| <= 1.0`` (0 dBFS) holds whatever comes in; NaN/Inf become 0.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray


@njit(nogil=True, cache=True)
def _limit(x: NDArray, gain_state: NDArray, master: float, threshold: float, att: float, rel: float, out: NDArray) -> None:
    g = gain_state[0]
    knee = 1.0 - threshold
    for i in range(x.shape[0]):
        v = x[i] * master
        if not np.isfinite(v):
            v = 0.0
        a = abs(v)
        target = threshold / a if a > threshold else 1.0
        if target < g:
            g += att * (target - g)
        else:
            g += rel * (target - g)
        y = v * g
        ay = abs(y)
        if ay > threshold:  # soft ceiling: threshold + knee * tanh(...) < 1 for any finite input
            y = np.sign(y) * (threshold + knee * np.tanh((ay - threshold) / knee))
        if y > 1.0:
            y = 1.0
        elif y < -1.0:
            y = -1.0
        for c in range(out.shape[1]):
            out[i, c] = y
    gain_state[0] = g


class Limiter:
    """Stereo-linked limiter for a mono mix written to ``(n, channels)``."""

    def __init__(self, sample_rate: int, threshold: float = 0.89, attack_ms: float = 0.5, release_ms: float = 120.0) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError("limiter threshold must be in (0, 1)")
        self.threshold = float(threshold)
        self.attack = 1.0 - math.exp(-1.0 / max(1e-9, attack_ms * 1e-3 * sample_rate))
        self.release = 1.0 - math.exp(-1.0 / max(1e-9, release_ms * 1e-3 * sample_rate))
        self._gain = np.ones(1, np.float64)

    @property
    def gain(self) -> float:
        """Current gain reduction factor (1.0 = none)."""
        return float(self._gain[0])

    def reset(self) -> None:
        self._gain[0] = 1.0

    def process(self, mono: NDArray, out: NDArray, master_gain: float = 1.0) -> None:
        """``mono (n,)`` times ``master_gain`` -> limited copies in every column of ``out (n, C)``."""
        _limit(mono, self._gain, master_gain, self.threshold, self.attack, self.release, out)
