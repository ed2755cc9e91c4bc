"""Phase reconstruction from log-magnitude frames: streaming RTPGHI and an offline PGHI reference.

Written from the papers (Průša, Balazs & Søndergaard, "A noniterative method for reconstruction
of phase from STFT magnitude", 2017; Průša & Søndergaard, "Real-time spectrogram inversion using
phase gradient heap integration", 2016). No code from phaseret/ltfat.

Theory, for a Gaussian window exp(-pi t^2 / lam) and the window-centred phase convention, with
s = ln|V| (x in samples, w in cycles/sample):
    d phi / dx = (1/lam) ds/dw + 2 pi w        (instantaneous frequency)
    d phi / dw = -lam ds/dx                    (local group delay)
Hann of length n behaves like lam = 0.25645 n^2. ``synth.stft`` puts the phase reference at the
frame start, i.e. it equals the window-centred STFT times (-1)^m, which is added at the end.

Heap integration: starting from the largest coefficient, phase is carried along time (trapezoid
of d phi/dx between frames n-1 and n) and frequency (trapezoid of d phi/dw between bins) in
order of decreasing magnitude, so errors are made where they matter least. Bins below the
tolerance get the plain phase-vocoder advance: deterministic, no random numbers anywhere.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from synth.params import DEFAULT_PARAMS, SpectrogramParams
from synth.stft import istft

HANN_LAMBDA = 0.25645
"""Gaussian-equivalent time-frequency ratio of a Hann window: lam = HANN_LAMBDA * n_fft**2."""

_TWO_PI = 2.0 * np.pi


class PhaseError(ValueError):
    """Bad arguments to the phase reconstruction (shapes, voice indices)."""


# ---------------------------------------------------------------- preallocated binary max-heap
@njit(nogil=True, cache=True)
def _heap_push(keys: NDArray, vals: NDArray, size: int, key: float, val: int) -> int:
    """Insert into the max-heap stored in ``keys/vals[:size]``; returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] >= key:
            break
        keys[i] = keys[parent]
        vals[i] = vals[parent]
        i = parent
    keys[i] = key
    vals[i] = val
    return size + 1


@njit(nogil=True, cache=True)
def _heap_pop(keys: NDArray, vals: NDArray, size: int) -> int:
    """Remove the top of the heap (read ``vals[0]`` before calling); returns the new size."""
    size -= 1
    key = keys[size]
    val = vals[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] > keys[child]:
            child += 1
        if keys[child] <= key:
            break
        keys[i] = keys[child]
        vals[i] = vals[child]
        i = child
    if size > 0:
        keys[i] = key
        vals[i] = val
    return size


# ---------------------------------------------------------------- phase derivatives
@njit(nogil=True, cache=True)
def _time_derivative(s: NDArray, coef_t: float, bin_adv: float, dt: NDArray) -> None:
    """Phase advance per hop for every bin of one frame ``s (F,)`` into ``dt (F,)``.

    ``coef_t = hop * n_fft / lam``, ``bin_adv = 2 pi hop / n_fft``.
    """
    f = s.shape[0]
    dt[0] = 0.0  # the spectrum is symmetric about DC and Nyquist: zero derivative there
    dt[f - 1] = bin_adv * (f - 1)
    for m in range(1, f - 1):
        dt[m] = coef_t * 0.5 * (s[m + 1] - s[m - 1]) + bin_adv * m


@njit(nogil=True, cache=True)
def _freq_derivative(s_before: NDArray, s_after: NDArray, steps: float, coef_f: float, df: NDArray) -> None:
    """Phase change per bin, ``df (F,)``, from the time difference ``(s_after - s_before) / steps``.

    ``coef_f = lam / (n_fft * hop)``; ``steps`` is 2 for the centred difference, 1 for backward.
    """
    scale = -coef_f / steps
    for m in range(s_before.shape[0]):
        df[m] = scale * (s_after[m] - s_before[m])


@njit(nogil=True, cache=True)
def _snap_real(ph: float) -> float:
    """DC and Nyquist of a real signal are real: round their phase to 0 or pi. Left free, a DC
    offset (some soundfont pads have one) would keep an arbitrary phase and lose its energy."""
    return np.pi * np.round(ph / np.pi)


# ---------------------------------------------------------------- one frame of heap integration
@njit(nogil=True, cache=True)
def _integrate_frame(s_prev: NDArray, s_cur: NDArray, ph_prev: NDArray, dt_prev: NDArray,
                     dt_cur: NDArray, df_cur: NDArray, tol_ln: float, ph_cur: NDArray,
                     done: NDArray, hkeys: NDArray, hvals: NDArray) -> None:
    """RTPGHI for frame n given frame n-1's phase: writes ``ph_cur (F,)``.

    Heap entries: value ``m`` = "carry bin m from frame n-1 along time", value ``m + F`` =
    "spread from bin m of frame n along frequency". Bins of frame n that are significant but whose
    frame n-1 bin was not start new islands; they are queued with a key far below every real
    magnitude, ordered by their own magnitude, so each island grows fully before the next starts.
    """
    f = s_cur.shape[0]
    top = -1e300
    for m in range(f):
        top = max(top, s_cur[m], s_prev[m])
    thresh = top + tol_ln
    size = 0
    for m in range(f):
        adv = ph_prev[m] + 0.5 * (dt_prev[m] + dt_cur[m])
        if s_cur[m] < thresh:
            ph_cur[m] = adv  # phase-vocoder advance: deterministic filler for negligible bins
            done[m] = True
            continue
        done[m] = False
        key = s_prev[m] if s_prev[m] >= thresh else s_cur[m] - 1e6
        size = _heap_push(hkeys, hvals, size, key, m)
    while size > 0:
        v = hvals[0]
        size = _heap_pop(hkeys, hvals, size)
        if v < f:
            if not done[v]:
                ph_cur[v] = ph_prev[v] + 0.5 * (dt_prev[v] + dt_cur[v])
                if v == 0 or v == f - 1:
                    ph_cur[v] = _snap_real(ph_cur[v])
                done[v] = True
                size = _heap_push(hkeys, hvals, size, s_cur[v], v + f)
            continue
        m = v - f
        for nb in (m - 1, m + 1):
            if 0 <= nb < f and not done[nb]:
                ph_cur[nb] = ph_cur[m] + (nb - m) * 0.5 * (df_cur[m] + df_cur[nb])
                if nb == 0 or nb == f - 1:
                    ph_cur[nb] = _snap_real(ph_cur[nb])
                done[nb] = True
                size = _heap_push(hkeys, hvals, size, s_cur[nb], nb + f)
    for m in range(f):  # keep the state small so float precision never degrades
        ph_cur[m] -= _TWO_PI * np.floor(ph_cur[m] / _TWO_PI)


@njit(nogil=True, cache=True)
def _write_spectrum(s: NDArray, ph: NDArray, log_floor: float, out: NDArray) -> None:
    """``out (F,) = mag * exp(i (phase + pi m))``: the (-1)^m moves the reference to frame start."""
    for m in range(s.shape[0]):
        mag = max(np.exp(s[m]) - log_floor, 0.0)
        p = ph[m] + np.pi * (m & 1)
        out[m] = complex(mag * np.cos(p), mag * np.sin(p))


# ---------------------------------------------------------------- the batched streaming step
@njit(nogil=True, cache=True)
def _push_batch(voices: NDArray, x_all: NDArray, out: NDArray, state: NDArray, count: NDArray,
                work: NDArray, done: NDArray, hkeys: NDArray, hvals: NDArray, coefs: NDArray,
                lookahead: bool) -> None:
    """One streaming step for every listed voice; all memory comes from the caller.

    ``state (4, V, F)`` = s of frame n-1, s of frame n (look-ahead only), phase of n-1, advance of
    n-1; ``work (3, F)`` = advance, group delay and phase of the frame being written;
    ``coefs`` = coef_t, bin_adv, coef_f, tol_ln, ln(log_floor), log_floor.
    """
    coef_t, bin_adv, coef_f, tol_ln, ln_floor, log_floor = (coefs[0], coefs[1], coefs[2],
                                                            coefs[3], coefs[4], coefs[5])
    dt_cur, df_cur, ph_cur = work[0], work[1], work[2]
    for i in range(voices.shape[0]):
        v = voices[i]
        x = x_all[i]
        s_prev, s_cur, ph_prev, dt_prev = state[0, v], state[1, v], state[2, v], state[3, v]
        if count[v] == 0:  # fresh note: silence before it, no phase history
            s_prev[:] = ln_floor
            ph_prev[:] = 0.0
            if lookahead:
                s_cur[:] = x
                out[i, :] = 0.0
                count[v] = 1
                continue
        if lookahead:  # frame n is stored; x is n+1: centred time difference
            _freq_derivative(s_prev, x, 2.0, coef_f, df_cur)
        else:  # x is frame n itself: backward time difference
            s_cur[:] = x
            _freq_derivative(s_prev, s_cur, 1.0, coef_f, df_cur)
        _time_derivative(s_cur, coef_t, bin_adv, dt_cur)
        if count[v] == (1 if lookahead else 0):
            dt_prev[:] = dt_cur
        _integrate_frame(s_prev, s_cur, ph_prev, dt_prev, dt_cur, df_cur, tol_ln, ph_cur,
                         done, hkeys, hvals)
        _write_spectrum(s_cur, ph_cur, log_floor, out[i])
        s_prev[:] = s_cur
        s_cur[:] = x
        ph_prev[:] = ph_cur
        dt_prev[:] = dt_cur
        count[v] += 1


class StreamingPhase:
    """Per-voice RTPGHI with one frame of look-ahead, all state preallocated for max_voices.

    ``lookahead=False`` gives plain RTPGHI (backward time difference, no extra hop of latency):
    each push then writes the frame it was given.
    """

    def __init__(self, params: SpectrogramParams, max_voices: int, tolerance_db: float = -60.0,
                 lookahead: bool = True) -> None:
        params.validate()
        if max_voices < 1:
            raise PhaseError(f"max_voices must be at least 1, got {max_voices}")
        if not tolerance_db < 0:
            raise PhaseError(f"tolerance_db must be negative, got {tolerance_db}")
        n, h, f = params.n_fft, params.hop, params.n_bins
        lam = HANN_LAMBDA * n * n
        self.params = params
        self.max_voices = int(max_voices)
        self.n_bins = f
        self.lookahead = bool(lookahead)
        self._coefs = np.array([h * n / lam, _TWO_PI * h / n, lam / (n * h),
                                tolerance_db / 20.0 * np.log(10.0), np.log(params.log_floor),
                                params.log_floor], dtype=np.float64)
        self._state = np.zeros((4, self.max_voices, f), dtype=np.float64)
        self._count = np.zeros(self.max_voices, dtype=np.int64)
        self._work = np.zeros((3, f), dtype=np.float64)
        self._done = np.zeros(f, dtype=np.bool_)
        self._hkeys = np.zeros(2 * f + 2, dtype=np.float64)  # each bin enters at most twice
        self._hvals = np.zeros(2 * f + 2, dtype=np.int64)

    def reset(self, voice: int) -> None:
        """New note on this voice slot: forget its history."""
        if not 0 <= voice < self.max_voices:
            raise PhaseError(f"voice {voice} out of range 0..{self.max_voices - 1}")
        self._count[voice] = 0

    def push(self, voices: NDArray[np.int32], log_mag_next: NDArray[np.float32],
             out: NDArray[np.complex64]) -> None:
        """Row i of ``log_mag_next (V, F)`` is frame n+1 of voice ``voices[i]``; row i of
        ``out (V, F)`` receives that voice's frame n as ``mag * exp(i phase)`` (scale of
        ``synth.stft``). The first push after ``reset`` writes zeros (no frame n yet). List each voice
        at most once per push (a repeated voice would advance twice)."""
        k = voices.shape[0]
        if log_mag_next.shape != (k, self.n_bins) or out.shape != (k, self.n_bins):
            raise PhaseError(f"need log_mag_next and out of shape ({k}, {self.n_bins}), got "
                             f"{log_mag_next.shape} and {out.shape}")
        if voices.dtype != np.int32 or log_mag_next.dtype != np.float32 or out.dtype != np.complex64:
            raise PhaseError("need voices int32, log_mag_next float32, out complex64")
        if k and (voices.min() < 0 or voices.max() >= self.max_voices):
            raise PhaseError(f"voice index out of range 0..{self.max_voices - 1}")
        _push_batch(voices, log_mag_next, out, self._state, self._count, self._work, self._done,
                    self._hkeys, self._hvals, self._coefs, self.lookahead)


def streaming_spectrum(log_mag: NDArray, params: SpectrogramParams = DEFAULT_PARAMS,
                       **options: object) -> NDArray[np.complex64]:
    """Run :class:`StreamingPhase` (one voice) over a whole note ``(T, F)`` -> ``(T, F)`` complex."""
    x = np.ascontiguousarray(log_mag, dtype=np.float32)
    t, f = x.shape
    ph = StreamingPhase(params, 1, **options)  # type: ignore[arg-type]
    voices = np.zeros(1, dtype=np.int32)
    spec = np.zeros((t, f), dtype=np.complex64)
    silence = np.full((1, f), np.log(params.log_floor), dtype=np.float32)
    delay = 1 if ph.lookahead else 0
    for j in range(t + delay):
        src = x[j:j + 1] if j < t else silence
        if j - delay >= 0:
            ph.push(voices, src, spec[j - delay:j - delay + 1])
        else:
            ph.push(voices, src, np.zeros((1, f), dtype=np.complex64))
    return spec


def reconstruct(log_mag: NDArray, params: SpectrogramParams = DEFAULT_PARAMS,
                **options: object) -> NDArray[np.float64]:
    """Reference helper: streaming phase over a whole note ``(T, F)`` then ``synth.stft.istft``
    -> audio ``((T - 1) * hop,)``. ``options`` go to :class:`StreamingPhase`."""
    return istft(streaming_spectrum(log_mag, params, **options), params)


# ---------------------------------------------------------------- offline PGHI (reference)
@njit(nogil=True, cache=True)
def _pghi_offline(s: NDArray, dt: NDArray, df: NDArray, tol_ln: float) -> NDArray:
    """Whole-signal heap integration over ``(T, F)``; returns the window-centred phase."""
    t, f = s.shape
    ph = np.zeros((t, f))
    done = s < s.max() + tol_ln  # negligible bins keep phase 0
    order = np.argsort(-s.ravel())
    keys = np.zeros(t * f + 1)
    vals = np.zeros(t * f + 1, dtype=np.int64)
    size = 0
    for start in order:
        n0, m0 = start // f, start % f
        if done[n0, m0]:
            continue
        done[n0, m0] = True  # a new island: its seed keeps phase 0
        size = _heap_push(keys, vals, size, s[n0, m0], start)
        while size > 0:
            idx = vals[0]
            size = _heap_pop(keys, vals, size)
            n, m = idx // f, idx % f
            for dn, dm in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nn, mm = n + dn, m + dm
                if nn < 0 or nn >= t or mm < 0 or mm >= f or done[nn, mm]:
                    continue
                if dn != 0:
                    ph[nn, mm] = ph[n, m] + dn * 0.5 * (dt[n, m] + dt[nn, mm])
                else:
                    ph[nn, mm] = ph[n, m] + dm * 0.5 * (df[n, m] + df[nn, mm])
                if mm == 0 or mm == f - 1:
                    ph[nn, mm] = _snap_real(ph[nn, mm])
                done[nn, mm] = True
                size = _heap_push(keys, vals, size, s[nn, mm], nn * f + mm)
    return ph


def pghi_spectrum(log_mag: NDArray, params: SpectrogramParams = DEFAULT_PARAMS,
                  tolerance_db: float = -60.0) -> NDArray[np.complex128]:
    """Offline PGHI over a whole note: ``log_mag (T, F)`` -> ``(T, F)`` complex (scale of stft)."""
    s = np.asarray(log_mag, dtype=np.float64)
    n, h = params.n_fft, params.hop
    lam = HANN_LAMBDA * n * n
    m = np.arange(s.shape[1])
    ds_dm = np.gradient(s, axis=1)
    ds_dm[:, [0, -1]] = 0.0
    dt = h * n / lam * ds_dm + _TWO_PI * h / n * m  # advance per hop
    df = -lam / (n * h) * np.gradient(s, axis=0)  # phase change per bin
    ph = _pghi_offline(s, dt, df, tolerance_db / 20.0 * np.log(10.0))
    mag = np.maximum(np.exp(s) - params.log_floor, 0.0)
    return mag * np.exp(1j * (ph + np.pi * (m & 1)))
