"""Pitch of a monophonic recording: YIN (de Cheveigné & Kawahara 2002), torch-free.

Training uses it to name plain WAV notes (``training.data``); capture uses it to find the pitch of
a recorded note and to judge whether the note is pitched at all (``synth.capture``).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

YIN_THRESHOLD = 0.15
"""A lag whose cumulative-mean-normalised difference falls below this is a period (the paper's 0.1-0.15)."""
WINDOW_S = 0.2  # the analysis window: long enough for 25 Hz (two periods), short enough to be steady


def yin(segment: NDArray, sample_rate: int, fmin: float, fmax: float) -> tuple[float | None, float]:
    """``(midi, aperiodicity)`` of ``segment (n,)``: the MIDI pitch (None when no lag dips below
    ``YIN_THRESHOLD``) and the smallest normalised difference over the lags searched (0 for a
    perfectly periodic signal, about 1 for noise)."""
    seg = np.asarray(segment, dtype=np.float64)
    n = len(seg)
    seg = seg - seg.mean()
    max_lag = min(int(sample_rate / fmin), n // 2)
    min_lag = max(2, int(sample_rate / fmax))
    if max_lag <= min_lag + 2:
        return None, 1.0
    w = n - max_lag
    # difference function d(t) = sum_{j<w} (x_j - x_{j+t})^2 = E0 + Et - 2 r(t), r by FFT
    size = 1 << int(math.ceil(math.log2(2 * n)))
    r = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(seg[:w], size)), size)[:max_lag + 1]
    cs = np.concatenate([[0.0], np.cumsum(seg * seg)])
    lags = np.arange(max_lag + 1)
    d = np.maximum(cs[w] + cs[lags + w] - cs[lags] - 2 * r, 0.0)
    cmnd = np.ones_like(d)
    cmnd[1:] = d[1:] * lags[1:] / np.maximum(np.cumsum(d[1:]), 1e-12)
    aperiodicity = float(cmnd[min_lag:].min())
    below = np.nonzero(cmnd[min_lag:] < YIN_THRESHOLD)[0]
    if below.size == 0:
        return None, aperiodicity
    lag = int(below[0]) + min_lag
    while lag < max_lag and cmnd[lag + 1] < cmnd[lag]:  # walk down to the dip's minimum
        lag += 1
    a, b, c = cmnd[lag - 1], cmnd[lag], cmnd[min(lag + 1, max_lag)]
    shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c > 0 else 0.0  # parabolic refinement
    f0 = sample_rate / (lag + shift)
    return 69.0 + 12.0 * math.log2(f0 / 440.0), aperiodicity


def estimate_pitch(audio: NDArray, sample_rate: int, fmin: float = 25.0, fmax: float = 4200.0) -> float | None:
    """YIN on the loudest 0.2 s -> MIDI pitch, or None."""
    x = np.asarray(audio, dtype=np.float64)
    n = min(len(x), int(WINDOW_S * sample_rate))
    if n < 2 * int(sample_rate / fmax) + 8:
        return None
    energy = np.convolve(x * x, np.ones(n), mode="valid")
    start = int(np.argmax(energy))
    return yin(x[start:start + n], sample_rate, fmin, fmax)[0]
