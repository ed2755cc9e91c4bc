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
tolerance get the plain phase-vocoder advance: deterministic, no random numbers anywhere. The
streaming step finds the same visiting order within a frame with two sweeps instead of a heap
(``_integrate_frame``): a frame's bins form a chain.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from synth.contract import DEFAULT_PARAMS, SpectrogramParams
from synth.stft import istft

HANN_LAMBDA = 0.25645
"""Gaussian-equivalent time-frequency ratio of a Hann window: lam = HANN_LAMBDA * n_fft**2."""

_TWO_PI = 2.0 * np.pi

PHASE_COEFS = np.dtype([
    ("coef_t", np.float64),  # hop * n_fft / lambda: log-mag frequency gradient -> phase advance per hop
    ("bin_advance", np.float64),  # 2 pi hop / n_fft: the advance of bin 1 per hop
    ("coef_f", np.float64),  # lambda / (n_fft hop): log-mag time gradient -> phase change per bin
    ("tolerance_ln", np.float64),  # heap threshold below the frame's peak, in nats
    ("log_floor", np.float64),
    ("bins_per_hz", np.float64),
    ("lobe_width", np.float64),  # half-width of a harmonic's main lobe, bins (pitch hint)
    ("hint_gate", np.float64),  # how far (in bin advances) a gradient may stray from k f0 and still snap
])
"""Constants of the streaming phase step for one STFT geometry; one record, fixed at construction."""


class PhaseError(ValueError):
    """Bad arguments to the phase reconstruction (shapes, voice indices)."""


# ---------------------------------------------------------------- preallocated binary max-heap (offline PGHI)
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
def _sift_down(keys: NDArray, vals: NDArray, size: int, i: int, key: float, val: int) -> None:
    """Place (key, val) at slot ``i`` of the heap ``keys/vals[:size]`` and move it down into order."""
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
    keys[i] = key
    vals[i] = val


@njit(nogil=True, cache=True)
def _heap_pop(keys: NDArray, vals: NDArray, size: int) -> int:
    """Remove the top of the heap (read ``vals[0]`` before calling); returns the new size."""
    size -= 1
    if size > 0:
        _sift_down(keys, vals, size, 0, keys[size], vals[size])
    return size


# ---------------------------------------------------------------- phase derivatives
@njit(nogil=True, cache=True)
def _derivatives(s_before: NDArray, s_cur: NDArray, s_after: NDArray, steps: float, f0_hz: float,
                 coefs: NDArray, dt: NDArray, df: NDArray, harm: NDArray) -> float:
    """Phase advance per hop ``dt (F,)`` and phase change per bin ``df (F,)`` of frame ``s_cur``.

    ``df`` comes from the time difference ``(s_after - s_before) / steps`` (2: centred, 1:
    backward). ``dt`` is the log-magnitude gradient estimate, except inside the main lobe of
    harmonic k of a known ``f0_hz > 0`` (nearest harmonic, below Nyquist), where it is exactly
    2 pi k f0 hop / sr: below ~key 45 neighbouring lobes overlap and the gradient is biased by up
    to a semitone. ``harm (F,)`` gets k for those bins, 0 elsewhere. Returns max(s_before, s_cur) (the heap threshold's reference); one pass.
    """
    c = coefs[0]
    coef_t, bin_adv, scale = c.coef_t, c.bin_advance, -c.coef_f / steps
    f = s_cur.shape[0]
    f0_bins = f0_hz * c.bins_per_hz  # harmonic spacing in bins
    inv_f0 = 1.0 / f0_bins if f0_bins > 0.0 else 0.0
    width = c.lobe_width
    top = max(s_before[0], s_cur[0], s_before[f - 1], s_cur[f - 1])
    gate = c.hint_gate * bin_adv
    dt[0] = 0.0  # the spectrum is symmetric about DC and Nyquist: zero derivative there
    dt[f - 1] = bin_adv * (f - 1)
    harm[0] = 0
    harm[f - 1] = 0
    df[0] = scale * (s_after[0] - s_before[0])
    df[f - 1] = scale * (s_after[f - 1] - s_before[f - 1])
    for m in range(1, f - 1):
        top = max(top, s_before[m], s_cur[m])
        df[m] = scale * (s_after[m] - s_before[m])
        grad = coef_t * 0.5 * (s_cur[m + 1] - s_cur[m - 1]) + bin_adv * m
        dt[m] = grad
        harm[m] = 0
        if inv_f0 > 0.0:
            k = max(np.floor(m * inv_f0 + 0.5), 1.0)
            centre = k * f0_bins
            # the gate keeps non-harmonic content (a chirp crossing a lobe, inharmonic partials)
            # on its own gradient estimate
            if centre < f - 1 and abs(m - centre) <= width and abs(grad - bin_adv * centre) <= gate:
                dt[m] = bin_adv * centre
                harm[m] = int(k)
    return top


@njit(nogil=True, cache=True)
def _snap_real(ph: float) -> float:
    """DC and Nyquist of a real signal are real: round their phase to 0 or pi. Left free, a DC
    offset (some soundfont pads have one) would keep an arbitrary phase and lose its energy."""
    return np.pi * np.round(ph / np.pi)


# ---------------------------------------------------------------- one frame of heap integration
# Where a bin of the frame being written takes its phase from (``_integrate_frame``).
FROM_TIME, FROM_LEFT, FROM_RIGHT = range(3)
_ISLAND_OFFSET = 1e6  # an island seed's level sits this far below its magnitude: after every real level


@njit(nogil=True, cache=True, inline="always")
def _may_spread(harm: NDArray, a: int, b: int) -> bool:
    """Phase spreads between neighbouring bins unless they belong to two different harmonics."""
    return not (harm[a] and harm[b] and harm[a] != harm[b])


@njit(nogil=True, cache=True)
def _integrate_frame(s_prev: NDArray, s_cur: NDArray, ph_prev: NDArray, dt_prev: NDArray,
                     dt_cur: NDArray, df_cur: NDArray, harm: NDArray, thresh: float,
                     ph_cur: NDArray, from_left: NDArray, from_right: NDArray, parent: NDArray) -> None:
    """RTPGHI for frame n given frame n-1's phase: writes ``ph_cur (F,)`` (not wrapped).

    Heap integration visits the significant bins (``s_cur >= thresh``) in order of decreasing
    magnitude: a bin takes its phase either along time from frame n-1 (an entry of level
    ``s_prev``) or along frequency from a neighbour already done (an entry of level
    ``s_cur[neighbour]``, popped no earlier than that neighbour was). Bins whose frame n-1 bin was
    not significant seed new islands, ordered by their own magnitude after every real level
    (``_ISLAND_OFFSET``), so each island grows fully before the next starts. The priority queue
    therefore gives each bin the source of highest *bottleneck* level: on a chain of bins the
    widest path comes from the left or from the right, so two sweeps find it in O(F) with no
    heap. ``from_left``/``from_right (F,)`` hold the arrival levels, ``parent (F,)`` the source
    (``FROM_*``), all work arrays. The phases are then those of the heap, bit for bit (the heap
    might break exact ties between equal levels the other way). Bins below ``thresh`` get the
    phase-vocoder advance directly. Phase never spreads along frequency between bins of
    different harmonics (``harm``): each harmonic's lobe keeps advancing at its own k*f0 even
    where lobes overlap.
    """
    f = s_cur.shape[0]
    no_path = -np.inf
    # forward sweep: the best level arriving from the left (through significant bins only)
    carried = no_path  # level of the left neighbour's best path, capped by its magnitude
    for m in range(f):
        if s_cur[m] < thresh:
            ph_cur[m] = ph_prev[m] + 0.5 * (dt_prev[m] + dt_cur[m])
            carried = no_path
            continue
        own = s_prev[m] if s_prev[m] >= thresh else s_cur[m] - _ISLAND_OFFSET
        arrive = carried if m > 0 and _may_spread(harm, m - 1, m) else no_path
        from_left[m] = arrive
        carried = min(max(own, arrive), s_cur[m])
    # backward sweep: the best level from the right; decide each bin's source, place the phases
    # of bins seeded along time or reached from the right (their right neighbour is done first)
    carried = no_path
    for m in range(f - 1, -1, -1):
        if s_cur[m] < thresh:
            carried = no_path
            continue
        own = s_prev[m] if s_prev[m] >= thresh else s_cur[m] - _ISLAND_OFFSET
        arrive = carried if m < f - 1 and _may_spread(harm, m, m + 1) else no_path
        from_right[m] = arrive
        carried = min(max(own, arrive), s_cur[m])
        left = from_left[m]
        if own >= left and own >= arrive:
            parent[m] = FROM_TIME
            ph_cur[m] = ph_prev[m] + 0.5 * (dt_prev[m] + dt_cur[m])
        elif arrive > left:
            parent[m] = FROM_RIGHT
            ph_cur[m] = ph_cur[m + 1] - 0.5 * (df_cur[m + 1] + df_cur[m])
        else:
            parent[m] = FROM_LEFT
            continue
        if m == 0 or m == f - 1:
            ph_cur[m] = _snap_real(ph_cur[m])
    # bins reached from the left, in order (their left neighbour is a seed or reached from the left)
    for m in range(1, f):
        if s_cur[m] >= thresh and parent[m] == FROM_LEFT:
            ph_cur[m] = ph_cur[m - 1] + 0.5 * (df_cur[m - 1] + df_cur[m])
            if m == f - 1:
                ph_cur[m] = _snap_real(ph_cur[m])


# The per-bin exp, cos and sin of the finishing pass were half the cost of a streaming step as
# libm calls. These polynomials (Taylor on a reduced range) run inline, at about half the cost,
# with relative errors below 1e-7: far under the complex64 output's own precision.
_HALF_PI = 0.5 * np.pi
_INV_HALF_PI = 2.0 / np.pi
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_POW2 = np.array([2.0 ** k for k in range(-64, 64)])  # 2**n for n = -64..63


@njit(nogil=True, cache=True, inline="always")
def _sincos(p: float) -> tuple:
    """(sin p, cos p): quadrant reduction to |r| <= pi/4, then degree 9/10 Taylor polynomials."""
    q = np.floor(p * _INV_HALF_PI + 0.5)
    r = p - q * _HALF_PI
    r2 = r * r
    sn = r * (1.0 + r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0)))))
    cs = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0)))))
    # the quadrant by selects, not returns from four branches (phases are random: those branches
    # were mispredicted and kept the finishing loop scalar)
    quadrant = int(q) & 3
    odd = cs if quadrant & 1 else sn  # quadrants 1 and 3: sine and cosine trade places
    even = sn if quadrant & 1 else cs
    return -odd if quadrant & 2 else odd, -even if quadrant == 1 or quadrant == 2 else even


@njit(nogil=True, cache=True, inline="always")
def _exp(x: float) -> float:
    """e**x for the log-magnitude range (|x| < 44): 2**n from a table times a degree-9 polynomial."""
    t = x * _LOG2E
    n = np.floor(t)
    y = (t - n) * _LN2
    e = 1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (
        1.0 / 720.0 + y * (1.0 / 5040.0 + y * (1.0 / 40320.0 + y * (1.0 / 362880.0)))))))))
    return e * _POW2[min(max(int(n), -64), 63) + 64]


@njit(nogil=True, cache=True)
def _finish_frame(s_prev: NDArray, s_cur: NDArray, x: NDArray, ph_prev: NDArray, ph_cur: NDArray,
                  dt_prev: NDArray, dt_cur: NDArray, log_floor: float, lookahead: bool,
                  out: NDArray) -> None:
    """``out (F,) = mag * exp(i (phase + pi m))`` (the (-1)^m moves the reference to the frame
    start) and the state shift to the next frame, phase wrapped so precision never degrades.
    Separate passes, each simple enough for the compiler to keep in registers and pipeline."""
    f = s_cur.shape[0]
    for m in range(f):
        p = ph_cur[m]
        ph_prev[m] = p - _TWO_PI * np.floor(p / _TWO_PI)
    for m in range(f):
        mag = max(_exp(s_cur[m]) - log_floor, 0.0)
        if m & 1:
            mag = -mag
        sn, cs = _sincos(ph_prev[m])
        out[m] = complex(mag * cs, mag * sn)
    for m in range(f):
        dt_prev[m] = dt_cur[m]
        s_prev[m] = s_cur[m]
    if lookahead:
        for m in range(f):
            s_cur[m] = x[m]


_GOLDEN = 0.6180339887498949


@njit(nogil=True, cache=True)
def _first_phases(harm: NDArray, ph: NDArray) -> None:
    """A note's phases before its first frame ``ph (F,)``, from the harmonic of each bin
    ``harm (F,)`` (``_derivatives``; 0: none).

    The first frame takes its phases along time from these. Each harmonic's bins share one phase,
    so its lobe stays where the window is. Harmonic k starts k² golden-ratio turns round
    (deterministic; quadratic in k, since a phase linear in k only delays a pulse train), so the
    harmonics do not all peak together: started in phase, a held string became a pulse train, its
    crest factor 2-3x. Other bins follow a gentle quadratic, smooth across a lobe (it moves their
    energy by at most a sixteenth of the window)."""
    f = ph.shape[0]
    bend = np.pi / (16.0 * f)
    for m in range(f):
        if harm[m] > 0:
            ph[m] = _TWO_PI * ((harm[m] * harm[m] * _GOLDEN) % 1.0)
        else:
            ph[m] = bend * m * m


# ---------------------------------------------------------------- the batched streaming step
@njit(nogil=True, cache=True)
def _push_batch(voices: NDArray, x_all: NDArray, f0_all: NDArray, out: NDArray, state: NDArray,
                count: NDArray, work: NDArray, harm: NDArray, levels: NDArray, parent: NDArray,
                coefs: NDArray, lookahead: bool) -> None:
    """One streaming step for every listed voice; all memory comes from the caller.

    ``state (4, V, F)`` = s of frame n-1, s of frame n (look-ahead only), phase of n-1, advance of
    n-1; ``work (3, F)`` = advance, group delay and phase of the frame being written;
    ``f0_all (V,)`` = f0 in Hz of the frame being written (0: unknown);
    ``harm (F,)`` = harmonic number of each bin, ``levels (2, F)`` and ``parent (F,)`` the
    integration's sweeps (work); ``coefs``: one PHASE_COEFS record.
    """
    c = coefs[0]
    tol_ln, log_floor = c.tolerance_ln, c.log_floor
    dt_cur, df_cur, ph_cur = work[0], work[1], work[2]
    for i in range(voices.shape[0]):
        v = voices[i]
        x = x_all[i]
        s_prev, s_cur, ph_prev, dt_prev = state[0, v], state[1, v], state[2, v], state[3, v]
        if count[v] == 0:  # fresh note: no phase history
            # Frame 0 is the note's first window, which starts at the note-on: the same as a
            # window of the note already sounding, so its history is itself. A silent history
            # made the onset's time gradient so steep that its group delay shifted the first
            # frame's energy around the frame, to its edges (where the start normalisation then
            # boosts it into a burst).
            s_prev[:] = x  # its phases: _first_phases, once its harmonics are known
            if lookahead:
                s_cur[:] = x
                out[i, :] = 0.0
                count[v] = 1
                continue
        f0 = max(float(f0_all[i]), 0.0)
        if lookahead:  # frame n is stored; x is n+1: centred time difference
            top = _derivatives(s_prev, s_cur, x, 2.0, f0, coefs, dt_cur, df_cur, harm)
        else:  # x is frame n itself: backward time difference
            s_cur[:] = x
            top = _derivatives(s_prev, s_cur, s_cur, 1.0, f0, coefs, dt_cur, df_cur, harm)
        if count[v] == (1 if lookahead else 0):
            dt_prev[:] = dt_cur
            _first_phases(harm, ph_prev)
        _integrate_frame(s_prev, s_cur, ph_prev, dt_prev, dt_cur, df_cur, harm, top + tol_ln,
                         ph_cur, levels[0], levels[1], parent)
        _finish_frame(s_prev, s_cur, x, ph_prev, ph_cur, dt_prev, dt_cur, log_floor, lookahead,
                      out[i])
        count[v] += 1


class StreamingPhase:
    """Per-voice RTPGHI with one frame of look-ahead, all state preallocated for max_voices.

    ``lookahead=False`` gives plain RTPGHI (backward time difference, no extra hop of latency):
    each push then writes the frame it was given.
    """

    def __init__(self, params: SpectrogramParams, max_voices: int, tolerance_db: float = -60.0,
                 lookahead: bool = True, harmonic_width: float = 2.0, hint_gate: float = 1.0) -> None:
        params.validate()
        if max_voices < 1:
            raise PhaseError(f"max_voices must be at least 1, got {max_voices}")
        if not tolerance_db < 0:
            raise PhaseError(f"tolerance_db must be negative, got {tolerance_db}")
        if not 0.0 <= harmonic_width <= 4.0:
            raise PhaseError(f"harmonic_width must be in 0..4 bins, got {harmonic_width}")
        n, h, f = params.n_fft, params.hop, params.n_bins
        lam = HANN_LAMBDA * n * n
        self.params = params
        self.max_voices = int(max_voices)
        self.n_bins = f
        self.lookahead = bool(lookahead)
        self._coefs = np.zeros(1, PHASE_COEFS)
        c = self._coefs
        c["coef_t"], c["bin_advance"], c["coef_f"] = h * n / lam, _TWO_PI * h / n, lam / (n * h)
        c["tolerance_ln"], c["log_floor"] = tolerance_db / 20.0 * np.log(10.0), params.log_floor
        c["bins_per_hz"], c["lobe_width"], c["hint_gate"] = n / params.sample_rate, harmonic_width, hint_gate
        self._state = np.zeros((4, self.max_voices, f), dtype=np.float64)
        self._count = np.zeros(self.max_voices, dtype=np.int64)
        self._work = np.zeros((3, f), dtype=np.float64)
        self._harm = np.zeros(f, dtype=np.int32)
        self._levels = np.zeros((2, f), dtype=np.float64)  # arrival levels from the left / right
        self._parent = np.zeros(f, dtype=np.int8)  # FROM_* of each bin
        self._no_f0 = np.zeros(self.max_voices, dtype=np.float32)  # "no hint" without allocating

    def reset(self, voice: int) -> None:
        """New note on this voice slot: forget its history."""
        if not 0 <= voice < self.max_voices:
            raise PhaseError(f"voice {voice} out of range 0..{self.max_voices - 1}")
        self._count[voice] = 0

    def push(self, voices: NDArray[np.int32], log_mag_next: NDArray[np.float32],
             out: NDArray[np.complex64], f0_hz: NDArray[np.float32] | None = None) -> None:
        """Row i of ``log_mag_next (V, F)`` is frame n+1 of voice ``voices[i]``; row i of
        ``out (V, F)`` receives that voice's frame n as ``mag * exp(i phase)`` (scale of
        ``synth.stft``). The first push after ``reset`` writes zeros (no frame n yet). Rows are taken
        in order: a voice listed again advances again, so row j of a repeated voice is its next
        frame (a batch may hold several consecutive frames of one voice).

        ``f0_hz (V,)`` float32, optional: fundamental in Hz of each voice for frame n (the frame
        written, pitch bend included); 0 or None means unknown. Where given, bins in the main lobe
        of a harmonic k*f0 below Nyquist advance at exactly k*f0 (harmonic magnitudes give biased
        gradients for low notes)."""
        k = voices.shape[0]
        if log_mag_next.shape != (k, self.n_bins) or out.shape != (k, self.n_bins):
            raise PhaseError(f"need log_mag_next and out of shape ({k}, {self.n_bins}), got "
                             f"{log_mag_next.shape} and {out.shape}")
        if voices.dtype != np.int32 or log_mag_next.dtype != np.float32 or out.dtype != np.complex64:
            raise PhaseError("need voices int32, log_mag_next float32, out complex64")
        if f0_hz is None:
            f0_hz = self._no_f0[:k]
        elif f0_hz.shape != (k,) or f0_hz.dtype != np.float32:
            raise PhaseError(f"need f0_hz float32 of shape ({k},), got {f0_hz.dtype} {f0_hz.shape}")
        if k and (voices.min() < 0 or voices.max() >= self.max_voices):
            raise PhaseError(f"voice index out of range 0..{self.max_voices - 1}")
        _push_batch(voices, log_mag_next, f0_hz, out, self._state, self._count, self._work,
                    self._harm, self._levels, self._parent, self._coefs, self.lookahead)


def streaming_spectrum(log_mag: NDArray, params: SpectrogramParams = DEFAULT_PARAMS,
                       f0_hz: float | NDArray | None = None, **options: object) -> NDArray[np.complex64]:
    """Run :class:`StreamingPhase` (one voice) over a whole note ``(T, F)`` -> ``(T, F)`` complex.

    ``f0_hz``: the pitch hint, one value for the note or one per frame ``(T,)``; None: no hint."""
    x = np.ascontiguousarray(log_mag, dtype=np.float32)
    t, f = x.shape
    hint = None if f0_hz is None else np.broadcast_to(np.asarray(f0_hz, np.float32), (t,))
    ph = StreamingPhase(params, 1, **options)  # type: ignore[arg-type]
    voices = np.zeros(1, dtype=np.int32)
    spec = np.zeros((t, f), dtype=np.complex64)
    silence = np.full((1, f), np.log(params.log_floor), dtype=np.float32)
    delay = 1 if ph.lookahead else 0
    for j in range(t + delay):
        src = x[j:j + 1] if j < t else silence
        n = j - delay  # the frame this push writes
        f0 = None if hint is None else np.ascontiguousarray(hint[max(n, 0):max(n, 0) + 1])
        if n >= 0:
            ph.push(voices, src, spec[n:n + 1], f0)
        else:
            ph.push(voices, src, np.zeros((1, f), dtype=np.complex64), f0)
    return spec


def reconstruct(log_mag: NDArray, params: SpectrogramParams = DEFAULT_PARAMS,
                f0_hz: float | NDArray | None = None, **options: object) -> NDArray[np.float64]:
    """Reference helper: streaming phase over a whole note ``(T, F)`` then ``synth.stft.istft``
    -> audio ``((T - 1) * hop,)``. ``f0_hz`` as in :func:`streaming_spectrum`; ``options`` go to
    :class:`StreamingPhase`."""
    return istft(streaming_spectrum(log_mag, params, f0_hz, **options), params)


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
