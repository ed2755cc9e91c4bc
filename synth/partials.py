"""Spectra from a decoder's parts: the harmonic lobes placed in numba, not in the ONNX graph.

A framewise-v1 decoder ends with geometry: K partials at k * f0 * sqrt(1 + B k^2), each a Hann
main lobe of four bins scattered into the spectrum, plus a smooth noise floor, then a log. In
onnxruntime that tail is some 80 small float64 nodes and costs two thirds of a decoder call;
written as one loop it is a few microseconds a frame. A preset may therefore ship
``decoder_parts.onnx`` (same inputs; outputs ``harm_amp (B, K)``, ``inharm (B,)``,
``noise_mag (B, F)``: the network before its geometry) and the engine finishes each frame here.
The arithmetic follows ``training.model.FrameDecoder.place_harmonics`` (float64 geometry,
float32 magnitudes), so both paths give the same log-magnitudes to float32 rounding.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

PARTS_OUTPUTS = ("harm_amp", "inharm", "noise_mag")
"""Output names of a parts decoder (see the module docstring)."""

_LOBE_EDGE = 1e-5  # the fractional bin position is kept this far from 0 and 1 (as in training)


@njit(nogil=True, cache=True, inline="always")
def _lobe_peak(frac: float) -> float:
    """The numerator of every bin of one partial's lobe (``_lobe``): one sine per partial, not per bin."""
    f = min(max(frac, _LOBE_EDGE), 1.0 - _LOBE_EDGE)
    return math.sin(math.pi * min(f, 1.0 - f))


@njit(nogil=True, cache=True, inline="always")
def _lobe(frac: float, m: int, peak: float) -> float:
    """Normalised Hann main-lobe magnitude at integer offset ``m`` from a partial ``frac`` bins
    past bin ``floor(centre)``: |sin(pi d) / (pi d (1 - d^2))| with d = m - frac, written with
    integer +- frac factors so it stays exact near the removable singularities; ``peak`` is
    ``_lobe_peak(frac)``, |sin(pi d)| for every integer m."""
    f = min(max(frac, _LOBE_EDGE), 1.0 - _LOBE_EDGE)
    d = m - f
    den = math.pi * abs(d * (1.0 - m + f) * (1.0 + m - f))
    return peak / den


@njit(nogil=True, cache=True)
def place_partials(amp: NDArray, inharm: NDArray, noise: NDArray, pitch: NDArray, rows: int,
                   bins_per_hz: float, nyquist_hz: float, log_floor: float, out: NDArray) -> None:
    """``out[:rows] (B, F) = ln(partials + noise + log_floor)``.

    ``amp (B, K)`` harmonic amplitudes, ``inharm (B,)`` stretching B (0: exact harmonics),
    ``noise (B, F)`` the noise floor's magnitudes, ``pitch (B,)`` MIDI numbers; float32 in and out.
    """
    n_bins = out.shape[1]
    n_harm = amp.shape[1]
    for b in range(rows):
        row = out[b]
        for i in range(n_bins):
            row[i] = 0.0
        f0 = 440.0 * 2.0 ** ((np.float64(pitch[b]) - 69.0) / 12.0)
        stretch = np.float64(inharm[b])
        for j in range(n_harm):
            k = j + 1.0
            freq = f0 * k
            if stretch != 0.0:
                freq *= math.sqrt(1.0 + stretch * k * k)
            if freq >= nyquist_hz:
                continue  # training masks these partials to zero
            a = amp[b, j]
            centre = freq * bins_per_hz
            base = math.floor(centre)
            frac = centre - base
            peak = _lobe_peak(frac)
            for m in range(-1, 3):
                idx = int(base) + m
                if 0 <= idx < n_bins:
                    row[idx] += a * np.float32(_lobe(frac, m, peak))
        for i in range(n_bins):
            row[i] = np.log(row[i] + noise[b, i] + np.float32(log_floor))


def load_compiled(n_bins: int) -> None:
    """Load :func:`place_partials`' compiled code now (numba's cache; a first run compiles it). A process
    about to run the engine anyway (a capture measuring its level) pays numba's first load once, here,
    and capture's refinement then places its partials in numba, not numpy: a fresh ``--capture`` of a
    4 s recording measured 0.89-0.92 s instead of 1.15-1.17 s, level included."""
    out = np.zeros((1, n_bins), np.float32)
    place_partials(np.zeros((1, 1), np.float32), np.zeros(1, np.float32), np.zeros((1, n_bins), np.float32),
                   np.full(1, 69.0, np.float32), 1, 0.0, 1.0, 1.0, out)


def place_partials_batch(amp: NDArray, inharm: NDArray, noise: NDArray, pitch: NDArray, bins_per_hz: float,
                         nyquist_hz: float, log_floor: float) -> NDArray[np.float32]:
    """:func:`place_partials` of a whole batch in numpy -> ``(B, F)`` float32, equal to float32 rounding.

    For one-off batch jobs outside the audio path (capture's refinement): numba's first call in a
    process costs about 0.5 s, more than the whole refinement; this allocates, which the engine's
    loop must not."""
    amp = np.asarray(amp, np.float32)
    n_rows, n_bins = noise.shape
    k = np.arange(1, amp.shape[1] + 1, dtype=np.float64)
    f0 = 440.0 * 2.0 ** ((np.asarray(pitch, np.float64) - 69.0) / 12.0)
    stretch = np.asarray(inharm, np.float64)[:, None]
    freq = f0[:, None] * k * np.sqrt(1.0 + stretch * k * k)
    centre = freq * bins_per_hz
    base = np.floor(centre)
    f = np.clip(centre - base, _LOBE_EDGE, 1.0 - _LOBE_EDGE)
    top = (np.sin(np.pi * np.minimum(f, 1.0 - f)) / np.pi)[..., None]
    f = f[..., None]
    m = np.arange(-1, 3, dtype=np.float64)
    lobe = (top / np.abs((m - f) * (1.0 - m + f) * (1.0 + m - f))).astype(np.float32)
    idx = base.astype(np.int64)[..., None] + np.arange(-1, 3)
    # partials at or above Nyquist (training masks them) and lobe bins off the spectrum weigh nothing
    weight = amp[..., None] * lobe * ((freq < nyquist_hz)[..., None] & (idx >= 0) & (idx < n_bins))
    flat = np.arange(n_rows)[:, None, None] * n_bins + np.clip(idx, 0, n_bins - 1)
    mag = np.bincount(flat.ravel(), weights=weight.ravel(), minlength=n_rows * n_bins)
    mag = mag.reshape(n_rows, n_bins).astype(np.float32)
    return np.log(mag + np.asarray(noise, np.float32) + np.float32(log_floor))
