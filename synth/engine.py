"""The synthesis engine: MIDI events in, stereo float32 out, the same code offline and live.

Per block (``process``):
1. Events with ``sample_time`` before the block's end are taken from the queue and applied
   at once; every voice change keeps the event's exact sample time (see ``synth.voices``),
   so notes start and fades begin on the exact sample without splitting the block.
   Continuous controls (bend, knobs) are sampled at each frame's decode, i.e. per 5.3 ms.
2. Planning: a voice adds frame n to its OLA ring at sample ``onset + n*hop_out`` (its window
   starts there); frame n needs log-magnitude frame n+1 (one frame of phase look-ahead). Every
   frame whose window starts in this block is made now (so a note-on's first frames are made in
   its own block: no added latency), and some frames whose windows start in the NEXT block are
   made early, about half the difference between the next block's due frames and this block's:
   voices that start together (chords) would otherwise load every second block (hop 256 = two
   128-sample blocks) with all their frames. An early frame uses the bend, knobs and note state
   known now: a change arriving in between is heard one frame (5.3 ms) later. All frames of the
   block are decoded in ONE batched decoder call.
3. ``StreamingPhase`` turns frame n+1's log-magnitude into frame n's spectrum, with each voice's
   f0 (bend included) as a pitch hint; the inverse FFT
   is zero-padded by k = ceil(output_rate / model_rate) (48 kHz from 24 kHz: irfft of 2048,
   bins above 512 zero, hop 256), windowed and overlap-added into the voice's ring.
4. The numba mixer sums the rings (fades, start-up normalisation), the limiter writes ``out``.

Grid: frame n of a voice is the model's centred frame j = n + n_fft/(2 hop), decoded at
``time_on = (n*hop + n_fft/2) / model_rate``, so the note's audio begins at the note-on
sample itself. Output rates that are not k * model_rate (44.1 kHz) are rendered at k *
model_rate and converted by ``synth.resample.StreamResampler`` (polyphase, allocation-free).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit
from numpy.typing import NDArray

from synth import events as ev
from synth.contract import HELD_TIME_OFF, TONE_HZ
from synth.decoder import FrameDecoder
from synth.key_track import checked_track
from synth.knobs import TimbreKnobs
from synth.limiter import Limiter
from synth.loudness import KEY_GAIN_RULE, valid_key_gains
from synth.overload import SPIKE_LOAD, LoadGovernor
from synth.preset import Preset
from synth.resample import StreamResampler
from synth.stft import hann, magnitude_scale
from synth.tone import TONE_RULE, tone_weights, valid_tone
from synth.voices import (
    FADING,
    FREE,
    RELEASE_END_FADE_S,
    RELEASED,
    VoiceBank,
    mix_voices,
)
from synth.timbre import MORPH, NO_SLOT, SELECT_SLOT, TimbreBank, TimbreInfo

KNOB_SMOOTH_S = 0.008
# A note's first frame is a true STFT frame whose window starts at the note-on (the phase step
# gives it the note's own history, so its energy sits where the window does), and the start-up
# normalisation divides by the window's overlap sum to restore the attack. Relative to the
# steady overlap sum, the floor caps that boost (100x) where the window is near zero and the
# frame holds more decoder and phase error than note. The head of the first window that the
# capped boost still leaves more than START_SKIP_DB under the note is skipped: a voice's grid
# starts that long before its note-on (under a hop, so only the first frame is skipped into), so
# the note is near its level from its first sample. Measured on 19 plucked and struck programs at
# keys 36-84 (benchmarks/attack): see the README's attack figures.
START_NORM_FLOOR = 0.01
START_SKIP_DB = -22.0
QUIET_LOG_MAG = math.log(1e-4)  # a frame whose loudest bin is below -80 dB of a full-scale sine is silence
QUIET_FRAMES = 4  # ~21 ms of such frames ends a release early


@dataclass
class EngineStats:
    nan_voices: int = 0
    dropped_events: int = 0
    stolen_voices: int = 0
    shed_voices: int = 0  # taken away under overload (live mode)
    voice_cap: int = 0  # sounding voices allowed now (the polyphony, or less while shedding)
    load: float = 0.0  # smoothed block render time / block duration (live mode)
    active_voices: int = 0
    blocks: int = 0

    @property
    def nan_count(self) -> int:
        return self.nan_voices


# Decoder batch layout: row r of the batch is one log-mag frame of one voice.
# ``bcol (5, B)`` float32 columns (the decoder binds to the first four as its inputs):
COL_PITCH, COL_VELOCITY, COL_TIME_ON, COL_TIME_OFF, COL_F0 = range(5)
# ``bidx (2, B)`` int32: which voice, which of its log-mag frames. A voice's rows follow each
# other in frame order, so the phase reconstruction takes the whole batch in one push, row by row.
IDX_VOICE, IDX_FRAME = range(2)

FRAME_GRID = np.dtype([
    ("hop_out", np.int64),  # output samples between frames
    ("half_out", np.int64),  # half a synthesis window in output samples (a frame's centre)
    ("rate", np.float64),  # internal sample rate
    ("hop_s", np.float64),  # seconds between frames (model)
    ("half_s", np.float64),  # half a window in seconds: time_on of frame 0's centre
    ("time_on_max", np.float64),  # the decoder's time_on clamp (sustain)
])
"""Where a voice's frames sit in time; one record, fixed at ``prepare``."""

PITCH_CONTROL = np.dtype([
    ("bend", np.float64),  # semitones added to every key (pitch bend)
    ("lowest", np.float64),  # the preset's pitch range: keys are clamped into it
    ("highest", np.float64),
])
"""The pitch inputs shared by every voice; one record, updated per block."""


@njit(nogil=True, cache=True)
def _add_frame(v, n, b, onset, release_t, key, velocity, vf0, grid, pitch, z_cur, track, bz, bcol, bidx) -> int:
    """Decoder rows for frame ``n`` of voice ``v``: log-mag n+1 (and log-mag 0 when n == 0).

    The row's latent is ``z_cur (L,)`` plus the timbre's key tracking for the voice's key
    (``track (128 * L,)``, flat: row k is what key k adds; zeros for a timbre without it).

    ``grid`` (FRAME_GRID) and ``pitch`` (PITCH_CONTROL) are one-record arrays. Column COL_F0
    holds the f0 (Hz) of the frame that row's phase push writes (frame m-1: the voice's previous
    row, kept in ``vf0``). Returns the rows now in the batch.
    """
    g, pc = grid[0], pitch[0]
    p = min(max(key[v] + pc.bend, pc.lowest), pc.highest)
    f0 = 440.0 * 2.0 ** ((p - 69.0) / 12.0)
    first = 0 if n == 0 else n + 1
    size = bz.shape[1]
    row = key[v] * size
    for m in range(first, n + 2):
        for d in range(size):
            bz[b, d] = z_cur[d] + track[row + d]
        bcol[COL_PITCH, b] = p
        bcol[COL_VELOCITY, b] = velocity[v]
        bcol[COL_TIME_ON, b] = min(m * g.hop_s + g.half_s, g.time_on_max)
        centre = onset[v] + m * g.hop_out + g.half_out
        if release_t[v] >= 0 and centre >= release_t[v]:
            bcol[COL_TIME_OFF, b] = (centre - release_t[v]) / g.rate
        else:
            bcol[COL_TIME_OFF, b] = HELD_TIME_OFF
        bcol[COL_F0, b] = vf0[v]
        vf0[v] = f0
        bidx[IDX_VOICE, b] = v
        bidx[IDX_FRAME, b] = m
        b += 1
    return b


@njit(nogil=True, cache=True)
def _plan_frames(state, onset, release_t, next_frame, key, velocity, muted, vf0, t_end, horizon, grid,
                 pitch, z_cur, track, bz, bcol, bidx) -> int:
    """Fill the decoder batch: every frame due before ``t_end``, plus early frames to balance blocks.

    A frame is due when its window starts before ``t_end`` (so a note-on's first frames are made
    in its own block: no added latency). Frames whose windows start in the next block
    (``t_end .. horizon``) may be made now, with the inputs known now: about half of the
    difference between the next block's due frames and this block's, so all voices starting
    together no longer load every second block with all their frames. A voice's rows are added
    in frame order, due frames first. Returns the number of rows.
    """
    hop_out = grid[0].hop_out
    cap = bz.shape[0]
    b, frames, due = 0, 0, 0
    for v in range(state.shape[0]):
        if state[v] == FREE or muted[v]:
            continue
        n = next_frame[v]
        while onset[v] + n * hop_out < t_end and b + 2 <= cap:
            b = _add_frame(v, n, b, onset, release_t, key, velocity, vf0, grid, pitch, z_cur, track, bz, bcol, bidx)
            n += 1
            frames += 1
        next_frame[v] = n
        while onset[v] + n * hop_out < horizon:
            due += 1
            n += 1
    take = (due - frames + 1) // 2
    for v in range(state.shape[0]):
        if take <= 0:
            break
        if state[v] == FREE or muted[v]:
            continue
        n = next_frame[v]
        while take > 0 and onset[v] + n * hop_out < horizon and b + 2 <= cap:
            b = _add_frame(v, n, b, onset, release_t, key, velocity, vf0, grid, pitch, z_cur, track, bz, bcol, bidx)
            n += 1
            take -= 1
        next_frame[v] = n
    return b


@njit(nogil=True, cache=True)
def _start_fade(v, t0, step, muted, state, fade_start, fade_step) -> None:
    """Voice ``v`` decodes no more frames and fades out from sample ``t0`` at ``step`` per sample."""
    muted[v] = True
    if fade_start[v] > t0:
        fade_start[v] = t0
    fade_step[v] = max(fade_step[v], step)
    state[v] = FADING


@njit(nogil=True, cache=True)
def _check_rows(blog, rows, bidx, muted, state, quiet, fade_start, fade_step, t0, step, release_step,
                ln_floor) -> int:
    """Mute (fast fade, no more frames) every voice whose decoded row holds NaN/Inf, and end the
    releases that have gone silent.

    A released voice whose frames all stay below ``QUIET_LOG_MAG`` for ``QUIET_FRAMES`` frames in
    a row starts its end-of-release fade at once instead of decoding silence until
    ``release_seconds``: most of a dense passage's voices are release tails. Returns the number
    of voices muted for NaN/Inf.
    """
    bad = 0
    for b in range(rows):
        ok = True
        loudest = -np.inf
        for f in range(blog.shape[1]):
            x = blog[b, f]
            if not np.isfinite(x):
                ok = False
                break
            loudest = max(loudest, x)
        v = bidx[IDX_VOICE, b]
        if ok:
            if state[v] == RELEASED:
                quiet[v] = quiet[v] + 1 if loudest < QUIET_LOG_MAG else 0
                if quiet[v] >= QUIET_FRAMES and not muted[v]:
                    _start_fade(v, t0, release_step, muted, state, fade_start, fade_step)
            continue
        blog[b, :] = ln_floor
        if not muted[v]:
            bad += 1
            _start_fade(v, t0, step, muted, state, fade_start, fade_step)
    return bad


@njit(nogil=True, cache=True)
def _queue_frames(rows, bidx, spec, hop_out, pad, fvoice, fpos, tone_weights, tone_db, tone_gain) -> int:
    """Queue the frames the phase step wrote (the push of log-mag frame m yields frame m-1; the
    push of a note's frame 0 yields nothing) for the inverse FFT, each shaped by the timbre's tone
    curve; returns how many.

    The curve ``tone_db (P,)`` reaches the bins through ``tone_weights (F, P)`` (``synth.tone``) as
    linear gains in ``tone_gain (F,)`` (scratch), once per call. It scales the magnitudes after the
    phase step, not the log-magnitudes before it: a boost then lifts what the decoder drew and not
    its log floor, and the phase step's gradients are the decoder's own."""
    nb = spec.shape[1]
    for f in range(nb):
        g = 0.0
        for p in range(tone_db.shape[0]):
            g += tone_weights[f, p] * tone_db[p]
        tone_gain[f] = np.exp(g)
    nf = 0
    for b in range(rows):
        m = bidx[IDX_FRAME, b]
        if m >= 1:
            for f in range(nb):
                pad[nf, f] = spec[b, f] * tone_gain[f]
            fvoice[nf] = bidx[IDX_VOICE, b]
            fpos[nf] = (m - 1) * hop_out
            nf += 1
    return nf


@njit(nogil=True, cache=True)
def _overlap_add(frames, nf, fvoice, fpos, window, ring) -> None:
    """Window each frame into its voice's ring; the wrap is split off so the inner loops vectorise."""
    r = ring.shape[1]
    n = window.shape[0]
    for j in range(nf):
        v = fvoice[j]
        p = fpos[j] % r
        a = min(n, r - p)
        for i in range(a):
            ring[v, p + i] += frames[j, i] * window[i]
        for i in range(a, n):
            ring[v, i - a] += frames[j, i] * window[i]


@njit(nogil=True, cache=True)
def _glide(z_target, z_current, alpha) -> None:
    for i in range(z_current.shape[0]):
        z_current[i] += alpha * (z_target[i] - z_current[i])


class Engine:
    """Polyphonic renderer around one preset. Call ``prepare`` before ``process``.

    ``channel``: MIDI channel 1..16 to listen to, None for all. ``bend_range`` in semitones.
    ``latent`` values: see :meth:`set_latent`. ``master_gain``: the user's trim; the output gain
    is ``master_gain * preset.mix_gain`` (see :attr:`output_gain`). ``shed_load`` (live mode):
    time every block and shed voices while blocks run over budget (``synth.overload``).
    ``knob_pickup``: after a program change a knob CC waits until it reaches the snapshot's
    position (hardware knobs); False applies every CC at once (a MIDI file's automation).
    ``random_seed``: the first seed of the random-timbre button's draws (``synth.timbre``; None:
    a fresh one, shown by :attr:`current_timbre`).
    """

    def __init__(self, preset: Preset, polyphony: int = 32, bend_range: float = 2.0, channel: int | None = None,
                 device: str = "auto", threads: int | None = None, master_gain: float = 1.0,
                 queue_capacity: int = 4096, decoder: FrameDecoder | None = None,
                 phase_factory: Callable[..., object] | None = None, shed_load: bool = False,
                 knob_pickup: bool = True, random_seed: int | None = None) -> None:
        if channel is not None and not 1 <= channel <= 16:
            raise ValueError(f"MIDI channel must be 1..16, got {channel}")
        self.preset = preset
        self.polyphony = int(polyphony)
        self.bend_range = float(bend_range)
        self.channel = None if channel is None else channel - 1
        self.master_gain = float(master_gain)
        self.queue = ev.EventQueue(queue_capacity)
        self.stats = EngineStats()
        self._device, self._threads = device, threads
        self._decoder = decoder
        self._phase_factory = phase_factory
        self._shed_load = bool(shed_load)
        self._knob_pickup = bool(knob_pickup)
        self._governor: LoadGovernor | None = None
        self.z_target = preset.latent_mean.astype(np.float32).copy()
        self.knobs = TimbreKnobs(preset)
        self.timbre = TimbreBank(preset, self.knobs, random_seed)  # user programs, morph, random (synth.timbre)
        self.timbre.knob_pickup = self._knob_pickup
        # Each snapshot's level trim (export measured it: a v100 C4 of every snapshot at the same
        # peak); it follows program changes with the knobs' glide. Other timbres play at 1.0.
        self._snapshot_levels = np.array([s.level for s in preset.snapshots] or [1.0], np.float64)
        self.level_target = 1.0
        self.level = 1.0
        # What keeps a timbre's loudness while its knobs move (synth.level_follow): the latent the
        # last timbre change recalled, a serial that every timbre change bumps, and a gain that a
        # follower thread writes for one serial (gain first, then serial: publish after write). The
        # audio thread applies the gain only while the serials match, so a timbre change is never
        # played with the last timbre's gain.
        self._z_recalled = np.zeros(preset.latent_size, np.float32)
        self.timbre_serial = 0
        self._follow_gain = 1.0
        self._follow_serial = -1
        # Each snapshot's key tracking (synth.key_track), flat (128 * L) rows (zeros: none); slot timbres
        # bring their own (synth.timbre). It follows timbre changes with the knobs' glide, as the level does.
        # Each snapshot's level per key (format 4: export evened out its registers), ones elsewhere; a
        # note takes its key's level at note-on and keeps it (a program change never jumps a sounding note).
        size = preset.latent_size
        self._track_tables = np.zeros((len(preset.snapshots), 128 * size), np.float32)
        self._key_level_tables = np.ones((len(preset.snapshots), 128), np.float32)
        for i, snap in enumerate(preset.snapshots):
            if snap.track is not None:
                self._track_tables[i] = snap.track.reshape(-1)
            if snap.key_level is not None:
                self._key_level_tables[i] = snap.key_level
        self._track_target = np.zeros(128 * size, np.float32)
        self._key_level = np.ones(128, np.float32)
        # Each snapshot's tone curve (synth.tone; zeros: flat); slot timbres bring their own. It glides
        # with the timbre, as the key tracking does, and shapes every frame (_queue_frames).
        self._tone_tables = np.zeros((len(preset.snapshots), len(TONE_HZ)), np.float32)
        for i, snap in enumerate(preset.snapshots):
            if snap.tone_db is not None:
                self._tone_tables[i] = snap.tone_db
        self._tone_target = np.zeros(len(TONE_HZ), np.float32)
        self._tone_weights = tone_weights(preset.params)
        self._tone_gain = np.zeros(preset.params.n_bins, np.float32)
        # Like a General MIDI device, the engine starts on program 0's sound (the latent mean is
        # no instrument's timbre, and plays about 10 dB below the snapshots).
        self.program = 0  # the last program change (written by the render thread only)
        if self._program_change(0) < 0:
            self.knobs.derive(self.z_target, unpick_moved=False)
            self._timbre_recalled()  # no snapshot: the latent mean is the timbre
        self.knobs.pickup[:] = True  # before any program change the knobs follow at once
        self.z_current = self.z_target.copy()
        self._track_current = self._track_target.copy()
        self._tone_current = self._tone_target.copy()
        self._knob_of_cc = np.full(128, -1, np.int64)
        self.set_knob_ccs({cc: i for i, cc in enumerate(ev.KNOB_CCS)})
        self.sample_rate = 0
        self.sample_time = 0  # output samples rendered so far
        self._render_ahead = 0  # samples live mode renders ahead of the audio callback (set_render_ahead)
        self._prepared = False

    # ------------------------------------------------------------------ controls (not real-time)
    def set_knob_ccs(self, cc_to_knob: dict[int, int]) -> None:
        """Which CC drives which knob (knob i moves along the preset's direction i; knob 0 varies most)."""
        self._knob_of_cc[:] = -1
        for cc, knob in cc_to_knob.items():
            if 0 <= cc < 128 and 0 <= knob < self.knobs.count:
                self._knob_of_cc[cc] = knob

    def set_latent(self, dim: int, value: float, absolute: bool = False) -> None:
        """Set latent dim ``dim`` now: ``value`` in std units (z = mean + value*std), or absolute.

        The knob coordinates follow z; knobs whose coordinate moved wait for pick-up."""
        if not 0 <= dim < self.preset.latent_size:
            raise ValueError(f"latent dim {dim} outside 0..{self.preset.latent_size - 1}")
        z = value if absolute else self.preset.latent_mean[dim] + value * self.preset.latent_std[dim]
        if not math.isfinite(z):
            raise ValueError(f"latent value {value} is not finite")
        self.z_target[dim] = z
        self.z_current[dim] = z
        self.knobs.derive(self.z_target)

    # ------------------------------------------------------------------ timbres (synth.timbre)
    @property
    def timbre_slots(self) -> NDArray[np.float32]:
        """``(SLOTS, L)`` the preallocated timbre latents (see ``synth.timbre`` for the layout)."""
        return self.timbre.z

    @property
    def current_timbre(self) -> TimbreInfo:
        """What sounds now: a snapshot, a user program, a capture, ``random:SEED`` or a morph."""
        return self.timbre.describe()

    def store_timbre(self, z: NDArray[np.floating], info: TimbreInfo, track: NDArray[np.floating] | None = None,
                     tone_db: NDArray[np.floating] | None = None, key_gain: NDArray[np.floating] | None = None) -> int:
        """Write a latent (and its key tracking ``track (128, L)``, tone curve ``tone_db (P,)`` and gain per
        key ``key_gain (128,)``, synth.loudness) into a free slot (any non-audio thread); returns the slot."""
        return self.timbre.store(z, info, track, tone_db, key_gain)

    def select_timbre(self, slot: int, sample_time: int = 0) -> bool:
        """Queue a switch to ``slot`` (producer side: in live mode hold the producer lock)."""
        return self.push(sample_time, SELECT_SLOT, slot, 0)

    def morph_endpoints(self, a: int, b: int, sample_time: int = 0) -> bool:
        """Queue a morph between slots ``a`` (morph CC 0) and ``b`` (127) (producer side)."""
        return self.push(sample_time, MORPH, a, b)

    def set_timbre_now(self, slot: int) -> None:
        """Make ``slot`` the timbre at once (not real-time: before the stream starts or between renders)."""
        if not self.timbre.select(slot, self.z_target):
            raise ValueError(f"timbre slot {slot} is empty")
        self._slot_timbre()
        self._jump_to_timbre()

    def set_morph_now(self, a: int, b: int) -> None:
        """Morph between slots ``a`` and ``b`` from now on (not real-time, as :meth:`set_timbre_now`)."""
        if not self.timbre.morph(a, b, self.z_target):
            raise ValueError(f"timbre slots {a} / {b}: empty")
        self._slot_timbre()
        self._jump_to_timbre()

    def restore_timbre(self, program: int, z: NDArray[np.float32] | None = None, snapshot_level: bool = True,
                       track: NDArray[np.float32] | None = None, tone_db: NDArray[np.floating] | None = None,
                       key_gain: NDArray[np.floating] | None = None) -> None:
        """A saved session's timbre, before the stream starts (not real-time): recall ``program``'s
        snapshot, then set the latent to ``z (L,)`` exactly when given (the knob moves made on top
        of it). The hardware knobs' positions are unknown now, so every knob waits for pick-up.
        ``snapshot_level=False`` (a capture, random or morph timbre) plays as it did: with the key
        tracking ``track (128, L)`` it had (a capture's, borrowed; None: none), its tone curve
        ``tone_db (P,)`` (synth.tone; None: flat) and its gain per key ``key_gain (128,)``
        (synth.loudness; None: 1)."""
        if not 0 <= program <= 127:
            raise ValueError(f"program {program} outside 0..127")
        if z is not None:
            z = np.asarray(z, np.float32)
            if z.shape != self.z_target.shape or not np.all(np.isfinite(z)):
                raise ValueError(f"latent of shape {z.shape} (finite) expected {self.z_target.shape}")
        if track is not None:
            track = checked_track(track, self.preset.latent_size)
        if tone_db is not None and not valid_tone(tone_db):
            raise ValueError(f"tone curve must be {TONE_RULE}")
        if key_gain is not None and not valid_key_gains(key_gain):
            raise ValueError(f"gain per key must be {KEY_GAIN_RULE}")
        self._program_change(program)
        if not snapshot_level:
            self.level_target = 1.0
            self._key_level[:] = 1.0 if key_gain is None else key_gain
            self._track_target[:] = 0.0 if track is None else track.reshape(-1)
            self._tone_target[:] = 0.0 if tone_db is None else tone_db
        if z is not None:
            self.z_target[:] = z
            self.knobs.derive(self.z_target, unpick_moved=False)
        if not snapshot_level:  # the restored latent is the timbre (a snapshot's knob moves stay followed)
            self._timbre_recalled()
        self.knobs.pickup[:] = False
        self._jump_to_timbre()

    @property
    def timbre_track(self) -> NDArray[np.float32]:
        """``(128, L)`` what each key adds to the sounding timbre's latent (synth.key_track); zeros: none."""
        return self._track_target.reshape(128, -1).copy()

    @property
    def timbre_key_gain(self) -> NDArray[np.float32]:
        """``(128,)`` the linear gain of each key's notes on the sounding timbre (synth.loudness; a
        snapshot's level trim not included)."""
        return self._key_level.copy()

    @property
    def timbre_tone_db(self) -> NDArray[np.float64]:
        """``(P,)`` the sounding timbre's tone curve at ``TONE_HZ`` (synth.tone); zeros: flat."""
        return self._tone_target.astype(np.float64)

    @property
    def knob_values(self) -> NDArray[np.float32]:
        """The knob coordinates (K = min(8, latent size)): -1..1 spans a knob's travel, center ± 3 scale
        along its direction; a recalled snapshot may sit outside."""
        return self.knobs.coords.astype(np.float32)

    @property
    def knob_ccs(self) -> tuple[int, ...]:
        """Per knob: the (lowest) CC that drives it, -1 for a knob no CC reaches (``set_knob_ccs``)."""
        ccs = [-1] * self.knobs.count
        for cc in range(127, -1, -1):
            knob = int(self._knob_of_cc[cc])
            if knob >= 0:
                ccs[knob] = cc
        return tuple(ccs)

    @property
    def knob_pickup(self) -> NDArray[np.bool_]:
        """Per knob: True when its hardware control drives it, False while it waits for pick-up."""
        return self.knobs.pickup.copy()

    @property
    def output_gain(self) -> float:
        """Linear gain before the limiter: the user's ``master_gain`` times the preset's ``mix_gain``
        times the current snapshot's level trim and the loudness follower's gain (both gliding)."""
        return self.master_gain * self.preset.mix_gain * self.level

    @property
    def providers(self) -> list[str]:
        return self._decoder.providers if self._decoder is not None else []

    # ------------------------------------------------------------------ setup
    def prepare(self, sample_rate: int, max_block: int, warm: bool = True) -> None:
        """Allocate, bind and warm everything ``process`` needs for blocks up to ``max_block`` frames.

        With ``warm`` (live mode), every numba kernel is compiled (or loaded from numba's cache),
        the decoder is run once at each bucket batch size and a short performance is rendered and
        forgotten, so the first note in the audio callback meets no compilation or first-call
        set-up. Offline rendering may skip it (``warm=False``): the kernels then compile on
        first use, which only delays the render.
        """
        if sample_rate < 8000 or max_block < 1:
            raise ValueError(f"bad sample rate {sample_rate} / block {max_block}")
        p = self.preset.params
        self.sample_rate = int(sample_rate)
        self.max_block = int(max_block)
        self.k = max(1, -(-self.sample_rate // p.sample_rate))
        self.internal_rate = self.k * p.sample_rate
        self._resampling = self.internal_rate != self.sample_rate
        ratio = self.internal_rate / self.sample_rate
        self._chunk = int(math.ceil(max_block * ratio)) + (8 if self._resampling else 0)
        self.n_out, self.hop_out = p.n_fft * self.k, p.hop * self.k
        self._build_windows()  # before the voices: their grids start the skipped head early
        self.voices = VoiceBank(self.polyphony, self.internal_rate, self._start_skip)
        slots, nb, lat = self.voices.slots, p.n_bins, self.preset.latent_size
        # frames due in this block plus early ones for the next: 2 * ceil(chunk / hop) + 1 rows
        per_voice = 2 * ((self._chunk + self.hop_out - 1) // self.hop_out) + 2
        bmax = slots * per_voice
        if self._decoder is None:
            self._decoder = FrameDecoder(self.preset, self._device, self._threads, max_batch=bmax)
        self._decoder.reserve(bmax)
        factory = self._phase_factory
        if factory is None:
            from synth.phase import StreamingPhase as factory  # noqa: N813 - the real one by default
        self.phase = factory(p, slots)
        f32 = np.float32
        self._bz = np.zeros((bmax, lat), f32)
        self._bcol = np.zeros((5, bmax), f32)  # COL_*: the decoder's inputs, and f0 for the phase
        self._bidx = np.zeros((2, bmax), np.int32)  # IDX_*: voice, log-mag frame
        # fixed views: the decoder binds once to arrays that keep their identity
        self._bp, self._bv = self._bcol[COL_PITCH], self._bcol[COL_VELOCITY]
        self._bon, self._boff = self._bcol[COL_TIME_ON], self._bcol[COL_TIME_OFF]
        self._vf0 = np.zeros(slots, np.float64)  # f0 of each voice's last planned frame
        self._pitch = np.zeros(1, PITCH_CONTROL)
        self._pitch["lowest"], self._pitch["highest"] = 0.0, 127.0
        self._bend_field = self._pitch["bend"]  # (1,) float64 view: per-block writes allocate nothing
        self._blog = np.zeros((bmax, nb), f32)
        self._spec = np.zeros((bmax, nb), np.complex64)  # the phase step's frames, one per batch row
        self._pad = np.zeros((bmax, self.n_out // 2 + 1), np.complex64)
        self._frames = np.zeros((bmax, self.n_out), f32)
        self._fvoice, self._fpos = np.zeros(bmax, np.int32), np.zeros(bmax, np.int64)
        # frames are written up to one block ahead of their window start (see _plan_frames)
        self._ring = np.zeros((slots, self.n_out + 2 * self._chunk + self.hop_out), f32)
        self._mix = np.zeros(self._chunk, f32)
        self._events = np.zeros((self.queue.capacity, 4), np.int64)
        self._grid = np.zeros(1, FRAME_GRID)
        grid = self._grid[0]
        grid["hop_out"], grid["half_out"], grid["rate"] = self.hop_out, self.n_out // 2, self.internal_rate
        grid["hop_s"], grid["half_s"] = p.hop / p.sample_rate, p.n_fft / 2 / p.sample_rate
        grid["time_on_max"] = self.preset.time_on_max
        self.limiter = Limiter(self.sample_rate)
        self._release_samples = int(round(self.preset.release_seconds * self.internal_rate))
        self._release_fade_step = 1.0 / max(1.0, RELEASE_END_FADE_S * self.internal_rate)
        self._governor = LoadGovernor(self.polyphony, self.internal_rate) if self._shed_load else None
        self._set_spike_load()
        self._alpha_per_sample = 1.0 / (KNOB_SMOOTH_S * self.internal_rate)
        self._t_int = 0
        self._bend = 0.0
        self._ln_floor = float(np.log(p.log_floor))
        self._decoder.bind(self._bz, self._bp, self._bv, self._bon, self._boff, self._blog)
        self._setup_resampler()
        self._prepared = True
        if warm:
            self._warm_up()
        self._reset_performance()

    def _warm_up(self) -> None:
        """Run once everything the audio callback runs (see ``prepare``); ``_reset_performance`` forgets it."""
        self._bz[:] = self.z_current
        self._bp.fill(60.0)
        self._bv.fill(100.0)
        self._bon.fill(0.1)
        self._boff.fill(HELD_TIME_OFF)
        self._decoder.warm_up()
        out = np.zeros((self.max_block, 2), np.float32)
        frame = self.hop_out * self.sample_rate // self.internal_rate + 1  # output samples per frame
        for i in range(min(4, self.polyphony)):  # a chord: several voices, several rows per voice, stealing
            self.push(0, ev.NOTE_ON, 60 + 4 * i, 100)
        self.push(frame, ev.PITCH_BEND, 0, 80)
        self.push(2 * frame, ev.NOTE_OFF, 60, 0)
        self.push(3 * frame, ev.CONTROL_CHANGE, ev.CC_ALL_SOUND_OFF, 0)
        for _ in range(max(8, (6 * frame) // self.max_block + 2)):
            self.process(out)
            self.voices.steal_one(self._t_int)  # the voice-stealing kernel, as overload would call it
        self.process(out[:1])  # odd block lengths take the same compiled paths

    def _reset_performance(self) -> None:
        """Silence and forget every note, event and counter (not real-time safe)."""
        self.queue.clear()
        self.queue.dropped = 0
        self.voices = VoiceBank(self.polyphony, self.internal_rate, self._start_skip)
        for v in range(self.voices.slots):
            self.phase.reset(v)
        self._ring.fill(0.0)
        self._mix.fill(0.0)
        self._vf0.fill(0.0)
        self.limiter.reset()
        self._jump_to_timbre()
        self.sample_time = 0
        self._t_int = 0
        self._bend = 0.0
        self.stats = EngineStats(voice_cap=self.polyphony)
        if self._governor is not None:
            self._governor.reset()
        if self._resampler is not None:
            self._resampler.reset()

    def _build_windows(self) -> None:
        """Synthesis window with the zero-padding gain, and the OLA normalisation."""
        p = self.preset.params
        w = hann(self.n_out)
        # irfft of the k-times zero-padded spectrum gives the 24 kHz windowed frame / k at k x rate;
        # dividing by the magnitude scale undoes synth.stft's normalisation.
        self._window = (w * self.k / magnitude_scale(p)).astype(np.float32)
        w2 = w * w
        cover = np.zeros(self.n_out)
        for n in range(self.n_out // self.hop_out):
            cover[n * self.hop_out:] += w2[: self.n_out - n * self.hop_out]
        steady = float(np.mean([w2[i::self.hop_out].sum() for i in range(self.hop_out)]))
        self._steady_norm = 1.0 / steady
        startnorm = 1.0 / np.maximum(cover, START_NORM_FLOOR * steady)
        restored = cover * startnorm  # the share of the note's level the first window gives back
        self._start_skip = min(int(np.argmax(restored >= 10.0 ** (START_SKIP_DB / 20.0))), self.hop_out - 1)
        startnorm[:self._start_skip] = 0.0  # the skipped head weighs 0: mix_voices clears it unheard
        self._startnorm = startnorm.astype(np.float32)
        self._first_nonzero = int(np.argmax(self._window != 0))

    def _setup_resampler(self) -> None:
        self._resampler = None
        self._resampler_delay = 0
        if not self._resampling:
            return
        # _resampled_block pushes chunks until a block is queued: its default FIFO holds a
        # block's shortfall plus one chunk's output
        self._resampler = StreamResampler(self.internal_rate, self.sample_rate, self._chunk)
        self._resampler_delay = self._resampler.delay_samples
        self._out_mono = np.zeros(self.max_block, np.float32)

    @property
    def stage_delays(self) -> dict[str, int]:
        """Output samples each stage adds between a note-on's timestamp and its first sound.

        A voice's first window starts its skipped head (``START_SKIP_DB``) before the note-on
        sample, and the head is never heard; its frames are decoded at the start of the block
        that contains the note-on, and the phase look-ahead frame in the same call, so neither
        adds delay: sound starts at the note-on sample itself (without the skip, a sample in: the
        periodic Hann window is zero at its first sample). A resampler (output rates that are not
        k x the model rate) adds its filter's delay (exact, from its design; its pre-ringing
        starts before it).
        Live mode's render ahead adds its blocks (``set_render_ahead``).
        """
        if not self._prepared:
            raise RuntimeError("call prepare() first")
        window = max(self._first_nonzero - self._start_skip, 0)
        if not self._resampling:
            stages = {"synthesis window": window}
        else:
            stages = {"synthesis window": int(round(window * self.sample_rate / self.internal_rate)),
                      "resampler": int(self._resampler_delay)}
        if self._render_ahead:
            stages["render ahead"] = self._render_ahead
        return stages

    def set_render_ahead(self, samples: int) -> None:
        """Live mode renders ``samples`` output samples ahead of the audio callback
        (``synth.render_ahead``): events are scheduled that much later, a stage of its own, and a
        single block may take that long (the blocks ready in the ring) before it counts as a spike."""
        self._render_ahead = max(0, int(samples))
        self._set_spike_load()

    def _set_spike_load(self) -> None:
        if self._governor is not None:
            self._governor.spike_load = SPIKE_LOAD * max(1.0, self._render_ahead / self.max_block)

    @property
    def latency_samples(self) -> int:
        """Output samples from a note-on's timestamp to its first non-zero output sample: the
        sum of ``stage_delays``."""
        return sum(self.stage_delays.values())

    # ------------------------------------------------------------------ MIDI in
    def push_event(self, sample_time: int, message: bytes) -> bool:
        """Queue a raw MIDI message for output sample ``sample_time`` (producer thread)."""
        ok = self.queue.push_bytes(sample_time, message)
        self.stats.dropped_events = self.queue.dropped
        return ok

    def push(self, sample_time: int, status: int, d1: int = 0, d2: int = 0) -> bool:
        ok = self.queue.push(sample_time, status, d1, d2)
        self.stats.dropped_events = self.queue.dropped
        return ok

    def _to_internal(self, t_out: int) -> int:
        if self._resampling:
            return t_out * self.internal_rate // self.sample_rate
        return t_out

    def _apply_events(self, t0: int, t_end_out: int) -> None:
        n = self.queue.drain_until(t_end_out, self._events)
        for i in range(n):
            row = self._events[i]
            t = max(self._to_internal(int(row[0])), t0)
            status, d1, d2 = int(row[1]), int(row[2]), int(row[3])
            if status >= ev.ENGINE_EVENT:  # the engine's own timbre events: no channel
                if self.timbre.handle(status, d1, d2, self.z_target):
                    self._slot_timbre()
                continue
            ch = status & 0x0F
            if self.channel is not None and ch != self.channel:
                continue
            self._dispatch(t, status & 0xF0, ch, d1, d2)

    def _dispatch(self, t: int, kind: int, ch: int, d1: int, d2: int) -> None:
        """Route one channel message at internal sample ``t`` to its handler."""
        if kind == ev.NOTE_ON and d2 > 0:
            self._note_on(t, d1, ch, d2)
        elif kind == ev.NOTE_OFF or kind == ev.NOTE_ON:  # velocity-0 note-on is a note-off
            self.voices.note_off(t, d1, ch)
        elif kind == ev.CONTROL_CHANGE:
            self._control_change(t, d1, d2)
        elif kind == ev.PROGRAM_CHANGE:
            self._program_change(d1)
        elif kind == ev.PITCH_BEND:
            self._pitch_bend((d2 << 7) | d1)

    def _note_on(self, t: int, key: int, channel: int, velocity: int) -> None:
        v, slot_was_busy = self.voices.note_on(t, key, channel, velocity, float(self._key_level[key]))
        if slot_was_busy:
            self._ring[v].fill(0.0)
        self.phase.reset(v)
        self.stats.stolen_voices = self.voices.stolen

    def _control_change(self, t: int, cc: int, value: int) -> None:
        vb = self.voices
        if cc == ev.CC_SUSTAIN:
            vb.sustain_pedal(t, value >= 64)
        elif cc == ev.CC_ALL_SOUND_OFF:
            vb.fade_all(t)
        elif cc == ev.CC_ALL_NOTES_OFF:
            vb.release_all(t)
        elif cc == ev.CC_RESET_ALL_CONTROLLERS:
            self._bend = 0.0
            vb.sustain_pedal(t, False)
        if self.timbre.control_change(cc, value, self.z_target):  # a knob CC leaves the slot's level and tracking
            self._slot_timbre()
        knob = self._knob_of_cc[cc]
        if knob >= 0:
            self.knobs.control(knob, value, self.z_target)

    def _slot_timbre(self) -> None:
        """A slot's timbre or a morph (``synth.timbre``) plays with the slot's own gain per key (a
        capture's: measured at capture, ``synth.loudness``; a preset snapshot's: its trims), key
        tracking (a capture's: borrowed from its neighbours) and tone curve."""
        if self.timbre.current_slot != NO_SLOT or self.timbre.morph_a != NO_SLOT:
            self.level_target = 1.0
            self.timbre.key_gain_into(self._key_level)
            self.timbre.track_into(self._track_target)
            self.timbre.tone_into(self._tone_target)
            self._timbre_recalled()

    def _timbre_recalled(self) -> None:
        """A timbre change: its latent is the loudness follower's new reference (knob moves from here
        on are followed against it), and the last timbre's follow gain stops applying."""
        self._z_recalled[:] = self.z_target
        self.timbre_serial += 1

    @property
    def recalled(self) -> tuple[int, NDArray[np.float32]]:
        """``(timbre_serial, z (L,))``: the last timbre change and the latent it recalled (a copy; any
        thread: check the serial again after using it, a change may have come in between)."""
        serial = self.timbre_serial
        return serial, self._z_recalled.copy()

    def set_level_follow(self, serial: int, gain: float) -> None:
        """The loudness follower's gain for timbre change ``serial`` (synth.level_follow; any thread). It
        glides in with the knobs and stops applying at the next timbre change."""
        self._follow_gain = float(gain)
        self._follow_serial = int(serial)

    def _jump_to_timbre(self) -> None:
        """Latent, key tracking and level at their targets now (not real-time: no glide)."""
        self.z_current[:] = self.z_target
        self._track_current[:] = self._track_target
        self._tone_current[:] = self._tone_target
        self.level = self.level_target

    def _program_change(self, program: int) -> int:
        """Recall the program's snapshot (and its level), or after Bank Select 1 a user program
        (``synth.timbre``, level 1.0); returns the snapshot index, -1 when none was recalled."""
        if self.timbre.program_change(program, self.z_target):
            self._slot_timbre()
            return -1
        snapshot = self.knobs.recall_program(program, self.z_target)
        if snapshot >= 0:
            self.level_target = float(self._snapshot_levels[snapshot])
            self._track_target[:] = self._track_tables[snapshot]
            self._tone_target[:] = self._tone_tables[snapshot]
            self._key_level[:] = self._key_level_tables[snapshot]
            self._timbre_recalled()
        self.program = program
        self.timbre.snapshot_recalled(program)
        if not self._knob_pickup:
            self.knobs.pickup[:] = True
        return snapshot

    def _pitch_bend(self, value14: int) -> None:
        self._bend = (value14 - 8192) / 8192.0 * self.bend_range

    # ------------------------------------------------------------------ render
    def _smooth_knobs(self, n: int) -> None:
        """One-pole glide of the latent towards its target: no zipper noise on knob moves."""
        alpha = 1.0 - math.exp(-n * self._alpha_per_sample)
        _glide(self.z_target, self.z_current, alpha)
        _glide(self._track_target, self._track_current, alpha)
        _glide(self._tone_target, self._tone_current, alpha)
        follow = self._follow_gain if self._follow_serial == self.timbre_serial else 1.0
        self.level += (self.level_target * follow - self.level) * alpha

    def _synthesize_frames(self, t0: int, t_end: int) -> None:
        vb = self.voices
        self._bend_field[0] = self._bend
        bc = self._bcol
        rows = _plan_frames(
            vb.state, vb.onset, vb.release_t, vb.next_frame, vb.key, vb.velocity, vb.muted, self._vf0,
            t_end, t_end + (t_end - t0), self._grid, self._pitch, self.z_current, self._track_current, self._bz, bc,
            self._bidx)
        if rows == 0:
            return
        self._decoder.decode(self._bz, self._bp, self._bv, self._bon, self._boff, self._blog, rows)
        bad = _check_rows(self._blog, rows, self._bidx, vb.muted, vb.state, vb.quiet, vb.fade_start, vb.fade_step,
                          t0, float(vb.steal_step), self._release_fade_step, self._ln_floor)
        if bad:
            self.stats.nan_voices += bad
        # one push for the whole batch: a voice's rows come in frame order (see _plan_frames)
        self.phase.push(self._bidx[IDX_VOICE, :rows], self._blog[:rows], self._spec[:rows], bc[COL_F0, :rows])
        nf = _queue_frames(rows, self._bidx, self._spec, self.hop_out, self._pad, self._fvoice, self._fpos,
                           self._tone_weights, self._tone_current, self._tone_gain)
        if nf:
            np.fft.irfft(self._pad[:nf], n=self.n_out, axis=1, out=self._frames[:nf])
            _overlap_add(self._frames, nf, self._fvoice, self._fpos, self._window, self._ring)

    def _render_internal(self, n: int, t_end_out: int) -> None:
        """Render ``n`` internal-rate samples of the mono mix into ``self._mix[:n]``."""
        t0 = self._t_int
        self._apply_events(t0, t_end_out)
        self._smooth_knobs(n)
        self._synthesize_frames(t0, t0 + n)
        vb = self.voices
        self.stats.active_voices = mix_voices(
            vb.state, vb.onset, vb.release_t, vb.fade_start, vb.fade_step, vb.gain, vb.level, self._ring, self._startnorm,
            self._steady_norm, self._release_samples, self._release_fade_step, t0, self._mix[:n])
        self._t_int = t0 + n

    def process(self, out: NDArray[np.float32]) -> None:
        """Render ``out (n, C)`` float32 in place (C = 1 or 2). Real-time safe at integer rates."""
        n = out.shape[0]
        governor = self._governor
        started = time.perf_counter() if governor is not None else 0.0
        start = 0
        while start < n:
            m = min(self.max_block, n - start)
            self._process_block(out[start:start + m], m)
            start += m
        if governor is not None and n:
            load = (time.perf_counter() - started) * self.sample_rate / n
            governor.after_block(load, n, self.voices, self._t_int)
            self.stats.load = governor.load
            self.stats.shed_voices = governor.shed
            self.stats.voice_cap = self.voices.cap

    def _process_block(self, out: NDArray, n: int) -> None:
        if not self._resampling:
            self._render_internal(n, self.sample_time + n)
            self.limiter.process(self._mix[:n], out, self.output_gain)
        else:
            self._resampled_block(out, n)
        self.sample_time += n
        self.stats.blocks += 1

    def _resampled_block(self, out: NDArray, n: int) -> None:
        resampler, c = self._resampler, self._chunk
        while resampler.available < n:
            t_end_out = ((self._t_int + c) * self.sample_rate) // self.internal_rate
            self._render_internal(c, t_end_out)
            resampler.push(self._mix[:c])
        resampler.read(self._out_mono[:n])
        self.limiter.process(self._out_mono[:n], out, self.output_gain)

    @property
    def idle(self) -> bool:
        """No voice sounding and nothing queued."""
        return self.stats.active_voices == 0 and self.voices.active_count() == 0 and len(self.queue) == 0
