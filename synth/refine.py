"""Capture's refinement: the latent whose decoder output reproduces a recorded note and plays the
rest of the keyboard like a real instrument (analysis by synthesis, torch-free).

First, :meth:`Refiner.read` reads the whole note: from the encoder's point, the latent whose decoder
frames reproduce the note's own frames (its pitch, velocity and key-up time known), L1 on
log-magnitude plus spectral convergence. The encoder is trained on ~100 instruments and reads
others only roughly; the decoder draws them much better from a fitted latent (measured by
``benchmarks.timbre_space`` on GM programs never trained: spectral convergence −5.9 dB from the
encoder's point, about −9 dB read, −11.4 dB fitted by PyTorch's Adam in 100 steps). The reading is
what the preset's decoder can draw of a note: capture starts its keyboard fit from it.

One note says nothing about how its instrument changes across the keyboard, and a latent fitted to
that note alone plays the other keys as the decoder extrapolates it (measured on held-out GM
programs: bright, thin low notes). So the fit (:class:`Refiner`) has two terms:

1. **the note**: the decoder at the note's pitch against the note's frames over its first second,
   L1 on log-magnitude over the note's top ``RANGE_DB``, one gain per candidate (the level is the
   microphone's, not the timbre's), the valleys between partials weighed less (``VALLEY_WEIGHT``);
2. **the keyboard prior**: at the octaves around the note (``KEYBOARD_OFFSETS``), the decoder against
   how the training instruments that sound most like the note sound there: the preset's latent
   map's notes of those instruments near each key, decoded at that key, averaged with weights by
   how well each instrument reproduces the note: as its snapshot or as its map notes near the
   note's pitch, decoded there, whichever is closer (a snapshot is fitted across the keyboard
   and at one key can sound unlike its instrument there, so a real recording is often judged
   better by the instrument's notes at its pitch; a note the synth itself played from a snapshot,
   by that snapshot. Measured, ``benchmarks.capture_fidelity`` on the held-out GM programs of three
   soundfonts: 27 wins of 30 against the snapshot alone's 24). A preset without a latent map or without
   snapshots fits the note alone.

The optimiser takes finite-difference gradients in the latent's per-dim std units, all ``L + 1``
candidates of a step in one decoder batch (the preset's parts decoder plus ``synth.partials``' placement
where it ships one, as the engine decodes on the CPU; else the full decoder), momentum, and steps of
fixed, shrinking length, so directions nothing constrains barely move; the best point seen wins, so it
never ends worse than its start.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from synth.contract import DECODER_INPUTS, DECODER_OUTPUT, HELD_TIME_OFF
from synth.key_track import key_row
from synth.model_file import cpu_session, read_model
from synth.partials import PARTS_OUTPUTS, place_partials, place_partials_batch
from synth.preset import Preset
from synth.stft import frame_times, log_magnitude
from synth.tone import fit_tone_db, note_energy

NOTE_SECONDS = 1.0  # the note's first second is matched (its key may be up after that)
NOTE_FRAMES = 12  # frames of it, spread evenly over where it sounds
SOUNDING_DB = 30.0  # a note "sounds" while within this of its peak (capture's note finding too)
VELOCITY = 100.0  # capture levels the note to a velocity-100 training note's peak (synth.capture)
RANGE_DB = 60.0  # both sides clipped this far below the target's peak: below lie noise and the decoder's floor
MIN_BINS = 8  # fewer bins above that floor: nothing to match (a capture of near-silence keeps its start)
KEYBOARD_OFFSETS = (-24.0, -12.0, 12.0, 24.0)  # semitones from the note where the keyboard prior speaks
KEYBOARD_TIMES = (0.1, 0.37, 0.63, 0.9)  # s after the onset: the prior's frames, past the attack, key held
KEYBOARD_WEIGHT = 1.0  # of the prior's mean term, against the note's term
NEIGHBOURS = 10  # training instruments (snapshots) the prior listens to
NEIGHBOUR_TEMPERATURE = 0.1  # softmin over their loss on the note (mean |ln magnitude| difference)
NEIGHBOUR_SPAN = 4.0  # semitones: the map's notes this near a key stand for their instrument there
JUDGE_FRAME_STEP = 2  # neighbours are judged on every 2nd frame of the note: two candidates per instrument
# (its snapshot, its notes at the pitch) for the decoder time one took (capture's 1 s budget)
STEPS = 24
DELTA = 0.05  # finite-difference step, in latent std
RATE = 0.4  # first step's length, in latent std (shrinks linearly to 0)
MOMENTUM = 0.7
PRIOR = 1e-3  # pull toward the latent mean, per std^2: an unheard direction does not drift
READ_FRAMES = 12  # the reading's frames, spread evenly over where the whole note sounds
READ_STEPS = 16  # ... and its steps: about 0.15 s a note (held-out programs: -9.2 dB; 20 steps x 24 frames -9.6, twice the time)
READ_SC_WEIGHT = 3.0  # the spectral-convergence term beside the L1 (training's default weight): SC weighs the loud bins


def _ln_db(db: float) -> float:
    """``db`` decibels (of magnitude) in natural-log units, as the log-magnitude frames count."""
    return db / 20.0 * math.log(10.0)


@dataclass(frozen=True)
class ValleyWeight:
    """How the note term weighs its bins: by how far each lies under the recording's strongest bin
    within ``radius`` bins, 1 at that peak down to ``floor`` at ``depth_db`` below it, so the valleys
    between partials (where an engine render and the decoder's frames differ most) count less than
    the partials (``VALLEY_WEIGHT``; README: key-tracked snapshots)."""

    radius: int
    depth_db: float
    floor: float

    def weights(self, target: NDArray) -> NDArray[np.float32]:
        """``target (T, F)`` log-magnitudes -> ``(T, F)`` weights."""
        pad = np.pad(target, ((0, 0), (self.radius, self.radius)), mode="edge")
        local = np.max(np.stack([pad[:, i:i + target.shape[1]] for i in range(2 * self.radius + 1)]), axis=0)
        return np.clip(1.0 + (target - local) / _ln_db(self.depth_db), self.floor, 1.0).astype(np.float32)


VALLEY_WEIGHT = ValleyWeight(radius=5, depth_db=40.0, floor=0.1)
"""Measured with ``benchmarks.capture_fidelity`` on the 12 000-step key-tracked default preset: capture
closer than the program-change snapshot on 10 of 10 held-out FluidR3 programs, median +2.08 dB (every
bin alike: 8 of 10, +2.15); TimGM6mb and sf_GMbank notes 9 of 10 each, +2.00 and +2.47 dB. On the
32 000-step preset that replaced it: 8 of 10, +1.54 dB (every bin alike: +1.69; 5 bins, 30 dB, 0.2: +1.65)."""


def _logsumexp(x: NDArray) -> NDArray[np.float64]:
    """``log(sum(exp(x)))`` over the last axis, without overflow -> ``x.shape[:-1]``."""
    top = x.max(axis=-1)
    return top + np.log(np.sum(np.exp(x - top[..., None]), axis=-1))


def _descend(loss: Callable[[NDArray[np.float64]], NDArray[np.float64]], u0: NDArray[np.float64],
             steps: int) -> NDArray[np.float64]:
    """Finite-difference descent on ``loss`` (candidates ``(C, L)`` -> ``(C,)``) from ``u0 (L,)`` (std
    units): each step decodes ``L + 1`` candidates in one batch, moves a length shrinking linearly from
    ``RATE`` along the momentum of the gradient (so directions nothing constrains barely move) -> the
    best point seen ``(L,)``: never worse than ``u0``."""
    size = len(u0)
    u = np.asarray(u0, np.float64)[None].copy()
    probes = np.vstack([np.zeros((1, size)), DELTA * np.eye(size)])
    m = np.zeros(size)
    best_u, best = u[0].copy(), np.inf
    for step in range(steps):
        losses = loss(u + probes)
        if losses[0] < best:
            best, best_u = float(losses[0]), u[0].copy()
        m = MOMENTUM * m + (losses[1:] - losses[0]) / DELTA
        u = u - RATE * (1.0 - step / steps) * m / max(float(np.linalg.norm(m)), 1e-12)
    return u[0] if float(loss(u)[0]) < best else best_u


class _Term:
    """Frames to match: ``target (T, F)`` log-magnitudes at ``pitch, time_on (T,)``, clipped
    ``RANGE_DB`` below their peak; ``weight`` of its mean L1 in the loss."""

    def __init__(self, target: NDArray, pitch: NDArray, time_on: NDArray, weight: float,
                 offset: NDArray | None = None) -> None:
        self.offset = offset  # (L,) what the capture's key tracking adds at this term's key; None: nothing
        self.clip = float(target.max()) - _ln_db(RANGE_DB)
        self.target = np.maximum(target, self.clip).astype(np.float32)
        self.energy = 0.5 * float(_logsumexp(2.0 * np.asarray(target, np.float64).reshape(1, -1))[0])
        self.pitch, self.time_on, self.weight = pitch.astype(np.float32), time_on.astype(np.float32), weight
        self.bin_weight: NDArray[np.float32] | None = None  # (T, F), ValleyWeight's; None: every bin alike

    def every(self, step: int) -> _Term:
        """Every ``step``-th of its frames, clipped where these are (a cheaper judge of many candidates)."""
        part = object.__new__(_Term)
        part.clip, part.weight, part.offset = self.clip, self.weight, self.offset
        part.target, part.pitch, part.time_on = self.target[::step], self.pitch[::step], self.time_on[::step]
        part.bin_weight = None if self.bin_weight is None else self.bin_weight[::step]
        part.energy = 0.5 * float(_logsumexp(2.0 * part.target.astype(np.float64).reshape(1, -1))[0])
        return part

    def matched(self, out: NDArray[np.float32]) -> NDArray[np.float32]:
        """Each candidate's frames ``out (C, T, F)`` moved by the one log-gain that matches its energy to
        the target's (the level is the microphone's, not the timbre's)."""
        gain = self.energy - 0.5 * _logsumexp(2.0 * out.reshape(out.shape[0], -1).astype(np.float64))
        return out + gain[:, None, None].astype(np.float32)

    def loss(self, out: NDArray[np.float32]) -> NDArray[np.float64]:
        """Mean L1 of each candidate's frames ``out (C, T, F)`` -> ``(C,)``, after :meth:`matched`."""
        aligned = np.maximum(self.matched(out), np.float32(self.clip))
        if self.bin_weight is None:
            return np.mean(np.abs(aligned - self.target), axis=(1, 2), dtype=np.float64)
        return (np.sum(np.abs(aligned - self.target) * self.bin_weight, axis=(1, 2), dtype=np.float64)
                / float(self.bin_weight.sum()))


class Refiner:
    """Fits a captured note's latent (see the module doc). Holds the decoder and its batch buffers:
    keep one for many captures."""

    def __init__(self, preset: Preset, valley_weight: ValleyWeight | None = VALLEY_WEIGHT) -> None:
        self.preset = preset
        self.valley_weight = valley_weight
        self._frames = NOTE_FRAMES + len(KEYBOARD_OFFSETS) * len(KEYBOARD_TIMES)
        self._rows = (preset.latent_size + 1) * self._frames  # one optimiser step's batch
        parts = preset.decoder_parts_path
        self._session = cpu_session(read_model(parts if parts is not None else preset.decoder_path))
        self._parts = parts is not None
        self._velocity = np.full(self._rows, VELOCITY, np.float32)
        self._time_off = np.full(self._rows, HELD_TIME_OFF, np.float32)
        self._out = np.zeros((self._rows, preset.params.n_bins), np.float32)
        self._terms: list[_Term] = []
        self.track: NDArray[np.float32] | None = None  # the last capture's key tracking (``_borrowed_track``)

    def _decode_rows(self, z: NDArray, pitch: NDArray, time_on: NDArray, velocity: NDArray | None = None,
                     time_off: NDArray | None = None) -> NDArray[np.float32]:
        """One decoder call: ``(R,)`` rows (velocity 100, key held unless given) -> ``(R, F)`` log-magnitudes."""
        n = len(pitch)
        velocity = self._velocity[:n] if velocity is None else velocity
        time_off = self._time_off[:n] if time_off is None else time_off
        feeds = dict(zip(DECODER_INPUTS, (z, pitch, velocity, time_on, time_off)))
        if not self._parts:
            return self._session.run([DECODER_OUTPUT], feeds)[0]
        amp, inharm, noise = self._session.run(list(PARTS_OUTPUTS), feeds)
        params = self.preset.params
        geometry = (params.n_fft / params.sample_rate, params.sample_rate / 2.0, params.log_floor)
        if not place_partials.signatures:
            # numba's first call in a process takes about 0.5 s, more than the whole fit: a process
            # that has not made it (a --capture run) places the partials in numpy, an engine's in numba
            return place_partials_batch(amp, inharm, noise, pitch, *geometry)
        place_partials(amp, inharm, noise, pitch, n, *geometry, self._out)
        return self._out[:n]

    def _decode(self, z: NDArray[np.floating], pitch: NDArray, time_on: NDArray,
                offset: NDArray | None = None, velocity: NDArray | None = None,
                time_off: NDArray | None = None) -> NDArray[np.float32]:
        """Log-magnitude frames of each latent ``z (C, L)`` at ``pitch, time_on (T,)``, each frame's latent
        moved by ``offset (T, L)`` when given, at ``velocity, time_off (T,)`` when given (else 100, held)
        -> ``(C, T, F)``."""
        t = len(pitch)
        per_call = max(1, self._rows // t)
        out = np.empty((len(z), t, self._out.shape[1]), np.float32)
        for a in range(0, len(z), per_call):
            c = min(per_call, len(z) - a)
            rows = np.repeat(np.asarray(z[a:a + c], np.float32), t, axis=0)
            if offset is not None:
                rows += np.tile(np.asarray(offset, np.float32), (c, 1))
            frames = self._decode_rows(rows,
                                       np.tile(pitch, c).astype(np.float32),
                                       np.tile(np.minimum(time_on, self.preset.time_on_max), c).astype(np.float32),
                                       None if velocity is None else np.tile(velocity, c).astype(np.float32),
                                       None if time_off is None else np.tile(time_off, c).astype(np.float32))
            out[a:a + c] = frames.reshape(c, t, -1)
        return out

    def _loss(self, u: NDArray[np.float64], terms: list[_Term] | None = None) -> NDArray[np.float64]:
        """Loss of each candidate ``u (C, L)`` (std units from the latent mean) -> ``(C,)``."""
        p = self.preset
        terms = self._terms if terms is None else terms
        offset = None
        if any(t.offset is not None for t in terms):
            offset = np.concatenate([np.broadcast_to(np.zeros(p.latent_size) if t.offset is None else t.offset,
                                                     (len(t.pitch), p.latent_size)) for t in terms])
        out = self._decode(p.latent_mean + u * p.latent_std, np.concatenate([t.pitch for t in terms]),
                           np.concatenate([t.time_on for t in terms]), offset)
        total = PRIOR * np.mean(u * u, axis=1)
        a = 0
        for term in terms:
            b = a + len(term.pitch)
            total += term.weight * term.loss(out[:, a:b])
            a = b
        return total

    def _note_term(self, note: NDArray[np.float32], pitch: float) -> _Term | None:
        """The note's frames to match; None when too little of it lies above its floor to match."""
        params = self.preset.params
        frames = log_magnitude(note[: int(NOTE_SECONDS * params.sample_rate)], params)
        loud = frames.max(axis=1)
        sounding = np.nonzero(loud > loud.max() - _ln_db(SOUNDING_DB))[0]
        last = max(int(sounding[-1]) if sounding.size else 1, NOTE_FRAMES)
        pick = np.unique(np.linspace(1, min(last, len(frames) - 1), NOTE_FRAMES).astype(np.int64))
        term = _Term(frames[pick], np.full(len(pick), pitch), pick * params.hop / params.sample_rate, 1.0)
        if self.valley_weight is not None:
            term.bin_weight = self.valley_weight.weights(term.target)
        return term if int((frames[pick] > term.clip).sum()) >= MIN_BINS else None

    def _keyboard_terms(self, note: _Term, pitch: float) -> list[_Term]:
        """The keyboard prior's terms (see the module doc); none without a latent map or snapshots."""
        p = self.preset
        m = p.latent_map
        keys = [pitch + o for o in KEYBOARD_OFFSETS if p.pitch_min <= pitch + o <= p.pitch_max]
        if m is None or not p.snapshots or not keys:
            return []
        snap_z = np.array([s.z_at(pitch) for s in p.snapshots], np.float64)
        here = np.array([self._instrument_at(s.program, pitch, s.z_at(pitch)) for s in p.snapshots])
        fit = self._loss((np.vstack([snap_z, here]) - p.latent_mean) / p.latent_std, [note.every(JUDGE_FRAME_STEP)])
        fit = np.minimum(fit[:len(snap_z)], fit[len(snap_z):])  # as its snapshot or its notes here, the closer
        near = np.argsort(fit)[:NEIGHBOURS]
        weight = np.exp(-(fit[near] - fit[near[0]]) / NEIGHBOUR_TEMPERATURE)
        weight /= weight.sum()
        self.track = self._borrowed_track(near, weight, pitch)
        times = np.asarray(KEYBOARD_TIMES)
        terms = []
        for key in keys:
            zs = np.array([self._instrument_at(p.snapshots[i].program, key, p.snapshots[i].z_at(key)) for i in near])
            sound = np.tensordot(weight, self._decode(zs, np.full(len(times), key), times), axes=1)
            offset = None if self.track is None else self.track[key_row(key)]
            terms.append(_Term(sound, np.full(len(times), key), times, KEYBOARD_WEIGHT / len(keys), offset))
        return terms

    def _borrowed_track(self, near: NDArray, weight: NDArray, pitch: float) -> NDArray[np.float32] | None:
        """``(128, L)``: the key tracking of the instruments the note sounds like (``near``, weighted), made
        relative to the note's own key; None when none of them has any (synth.key_track)."""
        tracks = [self.preset.snapshots[i].track for i in near]
        if all(t is None for t in tracks):
            return None
        size = self.preset.latent_size
        mean = sum(w * (np.zeros((128, size)) if t is None else t.astype(np.float64)) for w, t in zip(weight, tracks))
        return (mean - mean[key_row(pitch)]).astype(np.float32)

    def _instrument_at(self, program: int, key: float, snapshot_z: NDArray) -> NDArray[np.float64]:
        """``(L,)``: the training instrument ``program`` near ``key``: the mean of its latent map notes
        within ``NEIGHBOUR_SPAN``, else its snapshot's ``snapshot_z``."""
        m = self.preset.latent_map
        there = (m.program == program) & (np.abs(m.pitch - key) <= NEIGHBOUR_SPAN)
        return (m.mu[there].mean(axis=0) if there.any() else np.asarray(snapshot_z)).astype(np.float64)

    def tone_for(self, z: NDArray[np.floating]) -> NDArray[np.float64] | None:
        """``(P,)`` the tone curve (``synth.tone``) that gives ``z (L,)``'s frames the band balance of the
        note of the last call; None when that note had too little above its floor to match."""
        if not self._terms:
            return None
        note = self._terms[0]
        decoded = self._decode(np.asarray(z, np.float32)[None], note.pitch, note.time_on)[0]
        floor = self.preset.params.log_floor
        return fit_tone_db(note_energy(note.target, floor), note_energy(decoded, floor), self.preset.params)

    def loss_of(self, z: NDArray[np.floating]) -> float:
        """The loss of ``z (L,)`` against the note of the last call."""
        p = self.preset
        return float(self._loss(((np.asarray(z, np.float64) - p.latent_mean) / p.latent_std)[None])[0])

    def __call__(self, z0: NDArray[np.float32], note: NDArray[np.float32], pitch: float) -> NDArray[np.float32]:
        """``z0 (L,)`` refined on ``note`` (mono, the preset's rate, starting at its attack, levelled
        as capture levels it) played at MIDI ``pitch``."""
        p = self.preset
        note_term = self._note_term(note, pitch)
        self.track = None
        if note_term is None:
            self._terms = []
            return z0
        self._terms = [note_term, *self._keyboard_terms(note_term, pitch)]
        best_u = _descend(self._loss, (np.asarray(z0, np.float64) - p.latent_mean) / p.latent_std, STEPS)
        return (p.latent_mean + best_u * p.latent_std).astype(np.float32)

    def read(self, z0: NDArray[np.float32], frames: NDArray[np.float32], pitch: float, velocity: float = VELOCITY,
             hold_seconds: float = math.inf, level_known: bool = False) -> NDArray[np.float32]:
        """``z0 (L,)`` (the encoder's point) moved so the decoder reproduces a whole note (see the module
        doc): ``frames (T, F)`` its log-magnitudes as the encoder reads them (``synth.stft.encoder_frames``),
        played at MIDI ``pitch`` and ``velocity``, its key up after ``hold_seconds`` (``inf``: held
        throughout, as a recording's key is taken to be) -> ``(L,)``, never further from the note than
        ``z0``. A recording's level is its microphone's: each candidate gets the one gain that matches
        its energy to the note's, unless ``level_known`` (a training note at its velocity's level)."""
        p = self.preset
        params = p.params
        frames = np.asarray(frames, np.float32)
        loud = frames.max(axis=1)
        sounding = np.nonzero(loud > loud.max() - _ln_db(SOUNDING_DB))[0]
        if len(sounding) == 0 or not np.isfinite(frames).all():
            return z0
        pick = np.unique(np.linspace(sounding[0], sounding[-1], READ_FRAMES).astype(np.int64))
        time_on, time_off = frame_times(params, len(frames), p.encoder_frame_stride, p.time_on_max, hold_seconds)
        term = _Term(frames[pick], np.full(len(pick), pitch), time_on[pick], 1.0)
        time_off, velocities = time_off[pick], np.full(len(pick), velocity, np.float32)
        target_mag = np.maximum(np.exp(frames[pick].astype(np.float64)) - params.log_floor, 0.0)
        target_norm = max(float(np.linalg.norm(target_mag)), 1e-12)

        def loss(u: NDArray[np.float64]) -> NDArray[np.float64]:
            out = self._decode(p.latent_mean + u * p.latent_std, term.pitch, term.time_on, None, velocities,
                               time_off)
            if not level_known:
                out = term.matched(out)
            l1 = np.mean(np.abs(np.maximum(out, np.float32(term.clip)) - term.target), axis=(1, 2), dtype=np.float64)
            mag = np.maximum(np.exp(out.astype(np.float64)) - params.log_floor, 0.0)
            sc = np.linalg.norm((mag - target_mag).reshape(len(u), -1), axis=1) / target_norm
            return l1 + READ_SC_WEIGHT * sc + PRIOR * np.mean(u * u, axis=1)

        best_u = _descend(loss, (np.asarray(z0, np.float64) - p.latent_mean) / p.latent_std, READ_STEPS)
        return (p.latent_mean + best_u * p.latent_std).astype(np.float32)
