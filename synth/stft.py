"""Offline STFT analysis and synthesis in numpy (training features, benchmarks, tests).

The engine's streaming synthesis lives in ``synth.engine``/``synth.phase``; this
module is the reference both are measured against.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from synth.contract import SpectrogramParams


def hann(n: int) -> NDArray[np.float64]:
    """Periodic Hann window of length ``n`` (the STFT convention)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def magnitude_scale(params: SpectrogramParams) -> float:
    """Factor that makes a full-scale sine peak at magnitude 1.0."""
    return 2.0 / float(hann(params.n_fft).sum())


def stft(audio: NDArray, params: SpectrogramParams) -> NDArray[np.complex128]:
    """Centred STFT (zero padding of n_fft/2 each side) -> ``(T, F)`` complex, normalised.

    Frame ``j`` is centred on sample ``j * hop``; ``T = 1 + len(audio) // hop``.
    """
    x = np.asarray(audio, dtype=np.float64)
    n, h = params.n_fft, params.hop
    pad = np.pad(x, (n // 2, n // 2 + h))
    t = 1 + len(x) // h
    idx = np.arange(n)[None, :] + h * np.arange(t)[:, None]
    frames = pad[idx] * hann(n)[None, :]
    return np.fft.rfft(frames, axis=1) * magnitude_scale(params)


def log_magnitude(audio: NDArray, params: SpectrogramParams) -> NDArray[np.float32]:
    """``ln(|STFT| + log_floor)`` as ``(T, F)`` float32."""
    return np.log(np.abs(stft(audio, params)) + params.log_floor).astype(np.float32)


def magnitude_from_log(log_mag: NDArray, params: SpectrogramParams) -> NDArray[np.float64]:
    """Inverse of :func:`log_magnitude`: ``ln(mag + floor)`` -> magnitude (clipped at 0)."""
    return np.maximum(np.exp(np.asarray(log_mag, np.float64)) - params.log_floor, 0.0)


def encoder_frames(audio: NDArray, params: SpectrogramParams, frame_stride: int) -> NDArray[np.float32]:
    """A whole note as the encoder reads it: ``audio`` padded/truncated to ``params.note_seconds``,
    every ``frame_stride``-th frame of :func:`log_magnitude` -> ``(T, F)`` float32
    (T = ceil(frames_per_note / frame_stride), 376 for the defaults). Training's feature cache and
    capture both call this, so the encoder sees the same frames from either."""
    n = params.note_samples
    x = np.asarray(audio, dtype=np.float32)
    x = x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))
    return log_magnitude(x, params)[::frame_stride]


def frame_times(params: SpectrogramParams, n_frames: int, frame_stride: int, time_on_max: float,
                hold_seconds: float | None = None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The decoder's times of frames ``0, s, 2s, ...`` of a note (``encoder_frames``' frames for ``s =
    frame_stride``) whose key goes up after ``hold_seconds`` (default ``params.hold_seconds``; ``inf``:
    held) -> ``time_on, time_off (n_frames,)``.

    As training's ``training.model.frame_times``: time_on is the frame time clamped to time_on_max
    (what the engine feeds a held note), time_off = t - hold once the key is up, else -1 (held).
    """
    hold = params.hold_seconds if hold_seconds is None else hold_seconds
    t = np.arange(n_frames, dtype=np.float64) * frame_stride * params.hop / params.sample_rate
    time_off = np.where(t >= hold, t - hold, -1.0)
    return np.minimum(t, time_on_max).astype(np.float32), time_off.astype(np.float32)


def istft(spec: NDArray[np.complex128], params: SpectrogramParams, length: int | None = None) -> NDArray[np.float64]:
    """Inverse of :func:`stft` (windowed overlap-add, least-squares) -> mono audio."""
    n, h = params.n_fft, params.hop
    t = spec.shape[0]
    frames = np.fft.irfft(spec / magnitude_scale(params), n=n, axis=1)
    w = hann(n)
    out = np.zeros(n + h * (t - 1) + h)
    norm = np.zeros_like(out)
    for j in range(t):
        out[j * h: j * h + n] += frames[j] * w
        norm[j * h: j * h + n] += w * w
    out = out[n // 2:]
    norm = norm[n // 2:]
    out = np.where(norm > 1e-8, out / np.maximum(norm, 1e-8), 0.0)
    if length is None:
        length = (t - 1) * h
    return out[:length]


def spectral_convergence_db(reference_mag: NDArray, audio: NDArray, params: SpectrogramParams) -> float:
    """SC = 20 log10(||S - |STFT(x)||| / ||S||) over the frames both share (lower is better)."""
    est = np.abs(stft(audio, params))
    t = min(len(est), len(reference_mag))
    s = reference_mag[:t]
    err = max(float(np.linalg.norm(s - est[:t])), 1e-30)  # a perfect match is -600 dB, not -inf
    return float(20 * np.log10(err / max(float(np.linalg.norm(s)), 1e-12)))


def log_spectral_distance_db(reference_mag: NDArray, estimate_mag: NDArray, floor: float = 1e-5) -> float:
    """Mean over frames of the RMS (over bins) difference of 20 log10 magnitudes, in dB."""
    t = min(len(reference_mag), len(estimate_mag))
    a = 20 * np.log10(np.abs(reference_mag[:t]) + floor)
    b = 20 * np.log10(np.abs(estimate_mag[:t]) + floor)
    return float(np.mean(np.sqrt(np.mean((a - b) ** 2, axis=1))))
