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
FINE_PARTIALS = 8  # harmonics that place a pitch precisely (a piano's stretch moves the higher ones)
FINE_SPAN = 0.3  # semitones either side of a coarse estimate that :func:`harmonic_pitch` searches
FINE_STEP = 0.005  # semitones
FINE_PADDING = 4  # times zero padding of the spectrum, so a partial's peak is read between bins


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


def harmonic_pitch(segment: NDArray, sample_rate: int, midi: float, max_hz: float) -> float:
    """``midi`` refined to the pitch (within ``FINE_SPAN`` semitones) whose first ``FINE_PARTIALS``
    harmonics below ``max_hz`` carry the most log-magnitude in the spectrum of ``segment (n,)``
    (Hann window, zero-padded). YIN's lag interpolation misses steady notes by up to 0.16 semitone
    (FluidR3 C4s); 0.05 semitone already moves the 20th partial a bin at 24 kHz / 1024."""
    seg = np.asarray(segment, dtype=np.float64)
    seg = (seg - seg.mean()) * np.hanning(len(seg))
    size = FINE_PADDING << math.ceil(math.log2(max(len(seg), 2)))
    mag = np.abs(np.fft.rfft(seg, size))
    grid = midi + np.arange(-FINE_SPAN, FINE_SPAN + FINE_STEP / 2, FINE_STEP)
    freqs = 440.0 * 2.0 ** ((grid[:, None] - 69.0) / 12.0) * np.arange(1, FINE_PARTIALS + 1)[None, :]
    pos = np.minimum(freqs * size / sample_rate, len(mag) - 2)
    lo = pos.astype(np.int64)
    frac = pos - lo
    at = (1.0 - frac) * mag[lo] + frac * mag[lo + 1]
    score = np.sum(np.where(freqs < max_hz, np.log(at + 1e-12), 0.0), axis=1)
    return float(grid[int(np.argmax(score))])
