"""How loud a velocity-100 note plays, and how the engine measures it (torch-free).

One definition for export (the [mix] gain, each snapshot's level trim and level per key:
``export.onnx``) and for the timbres a user makes (a capture's level per key,
:func:`measure_key_level`; a random draw's, :class:`LevelEstimate`): every sound the synth plays
should put a velocity-100 note near ``TARGET_PEAK_DBFS``, whatever its origin, so that switching
from a snapshot to a capture or a random timbre does not jump by 10 dB.

Building an engine costs about twice a 1.7 s note's render, so every measurement plays its notes
on one timbre in one engine, one after another, each faded out (All Sound Off, 5 ms) before the
next begins (:func:`play_in_turn`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from synth.contract import DECODER_INPUTS, DECODER_OUTPUT, HELD_TIME_OFF, MAX_KEY_LEVEL_DB
from synth.events import CC_ALL_SOUND_OFF
from synth.key_track import OWN_KEY_SPAN, key_gain_table, key_row, latent_for_key, valid_track_keys
from synth.model_file import cpu_session, read_model
from synth.tone import tone_ln

TARGET_PEAK_DBFS = -9.0
"""A velocity-100 note's peak after the [mix] gain and master gain 1: export sets the [mix] gain so
the median snapshot's C4 peaks here."""
MIX_NOTE_SECONDS = (1.0, 0.6)
"""The measured note: held, then released (its peak is the note's, attack and release included)."""
MIX_RENDER_RATE = 48000
"""Measurements render at the rate a live synth usually runs at (a peak between two samples at a
lower rate reads up to 1 dB low)."""
MEASURE_HEADROOM = 0.1
"""Notes are measured 20 dB down and scaled back: the limiter (from -1 dBFS) stays out of them."""
KEY_LEVEL_BAND_DBFS = (-9.5, -8.5)
"""A v100 note measured outside this band (after the [mix] gain and the timbre's trim) is brought
to its nearer edge by the level at that key; one inside is left alone, so an instrument keeps the
louder and softer registers it has within the band. The loudness goal is -12..-6 dBFS: the
2.5 dB to spare cover the keys between, which are never measured (a plucked note's peak moves by
up to 2 dB from one key to the next: the harp, F2 -5.3 dBFS, F#2 -5.2, G2 -6.7; with 1.5 dB to
spare, two of the 896 notes ``benchmarks.loudness`` plays fell outside once the tone curves came,
and with 2 dB two at -12.1 dBFS once the snapshots were fitted again after the encoder refit)."""
CAPTURE_LEVEL_KEYS = (36, 48, 60, 72, 84)
"""C2 .. C6 by octaves: where a capture's level per key is measured. Five 1.6 s notes take about
0.2 s once an engine has run in the process; a capture's loudness changes by up to 10 dB across
the keyboard (measured: the jazz guitar's, F#2 -14.3 dBFS to F#5 -4.4), so one trim is not enough."""


@dataclass(frozen=True)
class KeyLevel:
    """A timbre's level per key: ``db`` at ``keys`` (strictly increasing MIDI keys), interpolated in
    dB between them and held beyond (``synth.key_track.key_gain_table``)."""

    keys: tuple[int, ...]
    db: tuple[float, ...]

    def __post_init__(self) -> None:
        if not valid_key_level(list(self.keys), list(self.db)):
            raise ValueError(f"a level per key needs {KEY_LEVEL_RULE}")

    def gains(self) -> NDArray[np.float32]:
        """``(128,)`` the linear gain of every MIDI key's notes."""
        return key_gain_table(self.keys, self.db)


KEY_LEVEL_RULE = f"increasing MIDI keys and one level within ±{MAX_KEY_LEVEL_DB:g} dB per key"


def valid_key_level(keys: object, db: object) -> bool:
    """``keys`` increasing MIDI keys (``valid_track_keys``) and ``db`` one finite level per key within
    ±MAX_KEY_LEVEL_DB (the limits a preset's snapshot levels have)."""
    return (valid_track_keys(keys) and isinstance(db, list) and len(db) == len(keys)  # type: ignore[arg-type]
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and abs(v) <= MAX_KEY_LEVEL_DB for v in db))


KEY_GAIN_RULE = f"128 finite linear gains within ±{MAX_KEY_LEVEL_DB:g} dB"


def valid_key_gains(gains: NDArray) -> bool:
    """``gains`` is a ``(128,)`` table of finite linear gains within ±MAX_KEY_LEVEL_DB."""
    gains = np.asarray(gains, np.float64)
    bound = 10.0 ** (MAX_KEY_LEVEL_DB / 20.0) * (1.0 + 1e-5)
    return gains.shape == (128,) and bool(np.all(np.isfinite(gains)) and np.all(gains >= 1.0 / bound)
                                         and np.all(gains <= bound))


def into_band(heard_dbfs: NDArray, band: tuple[float, float] = KEY_LEVEL_BAND_DBFS) -> NDArray[np.float64]:
    """The level in dB that brings each peak ``heard_dbfs`` into ``band`` (0 inside it), within
    ±MAX_KEY_LEVEL_DB."""
    heard = np.asarray(heard_dbfs, np.float64)
    return np.clip(np.clip(heard, *band) - heard, -MAX_KEY_LEVEL_DB, MAX_KEY_LEVEL_DB)


def trained_keys(preset: Any, keys: Sequence[int]) -> tuple[int, ...]:
    """Those of ``keys`` inside the preset's trained pitch range; none: the middle of that range."""
    return tuple(k for k in keys if preset.pitch_min <= k <= preset.pitch_max) \
        or (int(round((preset.pitch_min + preset.pitch_max) / 2)),)


ESTIMATE_FRAME_STEP = 4
""":class:`LevelEstimate` decodes every 4th frame of a note's first second (24 frames a key): the
peak frame's energy moves by well under a dB between neighbouring frames."""
CALIBRATION_SNAPSHOTS = 16  # a spread of the preset's snapshots calibrates the estimate


class LevelEstimate:
    """A timbre's level per key from the decoder alone, where playing it through the engine costs too
    much: a random draw (drawn while the synth plays; an engine measurement costs 0.2 s of CPU and
    the interpreter with it).

    Each key's note is decoded over its first second (held, velocity 100) and its loudest frame's
    energy taken; an offset turns that into the peak the engine plays, calibrated on the preset's
    snapshots, whose peaks export measured into KEY_LEVEL_BAND_DBFS. The offset is the waveform's
    crest and the engine's synthesis, which differ per timbre: measured on the shipped preset, the
    estimate misses the engine's peak by 1.5 dB (std), so it is a fallback, not a measurement.
    About 5 ms a timbre (five keys, 24 frames each); opening it 15 ms, calibrating it 0.15 s."""

    def __init__(self, preset: Any, keys: Sequence[int] = CAPTURE_LEVEL_KEYS,
                 frame_step: int = ESTIMATE_FRAME_STEP, session: Any = None) -> None:
        """``keys``: where the level is estimated (those inside the preset's trained keys); ``frame_step``:
        every how many frames of the note's first second are decoded; ``session``: another estimate's
        decoder session to share (onnxruntime runs it from several threads), else a new one."""
        self.preset = preset
        self.session = session if session is not None else cpu_session(read_model(preset.decoder_path))
        self.keys = trained_keys(preset, keys)
        p = preset.params
        self._times = np.arange(0.0, 1.0, p.hop / p.sample_rate, dtype=np.float32)[::frame_step]
        self._offset_db: float | None = None

    @property
    def offset_db(self) -> float:
        """dB from the loudest frame's energy to the engine's peak, calibrated on the first use (about
        0.15 s): the median over a spread of the preset's snapshots, whose peaks are known."""
        if self._offset_db is None:
            snaps = self.preset.snapshots
            pick = np.unique(np.linspace(0, len(snaps) - 1, min(len(snaps), CALIBRATION_SNAPSHOTS)).round().astype(int)) \
                if snaps else []
            offsets = [TARGET_PEAK_DBFS - self.frame_db(s.z, s.track, s.tone_db) - 20.0 * np.log10(s.key_gain()[list(self.keys)])
                       for s in (snaps[i] for i in pick)]
            self._offset_db = float(np.median(offsets)) if offsets else 0.0
        return self._offset_db

    def frame_db(self, z: NDArray, track: NDArray | None = None, tone_db: NDArray | None = None) -> NDArray[np.float64]:
        """``(K,)`` the loudest decoded frame's energy (dB) of a v100 note at each of ``self.keys``, for the
        latent ``z (L,)`` with its key tracking ``track (128, L)`` and tone curve ``tone_db (P,)``."""
        n, keys = len(self._times), self.keys
        zs = np.concatenate([np.repeat(latent_for_key(np.asarray(z, np.float32), track, k)[None], n, axis=0)
                             for k in keys]).astype(np.float32)
        rows = len(zs)
        feeds = dict(zip(DECODER_INPUTS, (zs, np.repeat(np.asarray(keys, np.float32), n), np.full(rows, 100.0, np.float32),
                                          np.tile(self._times, len(keys)), np.full(rows, HELD_TIME_OFF, np.float32))))
        log_mag = self.session.run([DECODER_OUTPUT], feeds)[0].astype(np.float64)
        if tone_db is not None:
            log_mag += tone_ln(np.asarray(tone_db), self.preset.params)[None]
        energy = np.exp(2.0 * log_mag).sum(axis=1).reshape(len(keys), n)
        return 10.0 * np.log10(np.maximum(energy.max(axis=1), 1e-30))

    def key_level(self, z: NDArray, track: NDArray | None = None, tone_db: NDArray | None = None) -> KeyLevel:
        """The level per key that brings ``z``'s estimated v100 peaks into KEY_LEVEL_BAND_DBFS."""
        heard = self.frame_db(z, track, tone_db) + self.offset_db
        if not np.all(np.isfinite(heard)):  # a NaN decode: no trim (the engine silences NaN frames itself)
            return KeyLevel(self.keys, (0.0,) * len(self.keys))
        return KeyLevel(self.keys, tuple(round(float(v), 2) for v in into_band(heard)))


def measured_peaks(engine: Any, keys: Sequence[int], velocity: int = 100) -> NDArray[np.float64]:
    """The peak of one note per key (MIX_NOTE_SECONDS held, then released) on ``engine`` (prepared,
    its timbre set, its master gain MEASURE_HEADROOM times the gain wanted), scaled back by
    MEASURE_HEADROOM -> ``(len(keys),)``."""
    rate = engine.sample_rate
    hold, tail = (int(s * rate) for s in MIX_NOTE_SECONDS)
    out, starts = play_in_turn(engine, keys, velocity, rate // 10, hold, hold + tail, rate // 20)
    return np.array([float(np.max(np.abs(out[s:s + hold + tail]))) for s in starts]) / MEASURE_HEADROOM


def measure_key_level(preset: Any, z: NDArray, track: NDArray | None = None,
                      tone_db: NDArray | None = None, own_key: float | None = None) -> KeyLevel:
    """The level per key that brings a timbre's v100 notes into KEY_LEVEL_BAND_DBFS, as export brings
    the snapshots': ``z (L,)`` with its key tracking ``track (128, L)`` and tone curve ``tone_db (P,)``
    (a capture's), played by the engine at CAPTURE_LEVEL_KEYS inside the preset's trained keys, at
    its [mix] gain and master gain 1. ``own_key``: a capture's key, whose fade into its keyboard fit
    (``synth.key_track.with_own_key``) is measured halfway too, where the latent bends most."""
    from synth.engine import Engine
    from synth.timbre import LATENT, TimbreInfo

    keys = CAPTURE_LEVEL_KEYS
    if own_key is not None:
        row = key_row(own_key)
        keys = tuple(sorted(set(keys) | {row - OWN_KEY_SPAN // 2, row + OWN_KEY_SPAN // 2}))
    keys = trained_keys(preset, keys)
    engine = Engine(preset, polyphony=4, device="cpu", threads=1, master_gain=MEASURE_HEADROOM, knob_pickup=False)
    engine.set_timbre_now(engine.store_timbre(z, TimbreInfo(LATENT, "measured"), track, tone_db))
    engine.prepare(MIX_RENDER_RATE, 1024, warm=False)
    heard = 20.0 * np.log10(np.maximum(measured_peaks(engine, keys), 1e-12))
    return KeyLevel(tuple(keys), tuple(round(float(v), 2) for v in into_band(heard)))


def play_in_turn(engine: object, keys: Sequence[int], velocity: int, first: int, hold: int, window: int,
                 gap: int, block: int | None = None) -> tuple[NDArray[np.float32], list[int]]:
    """Play ``keys`` on ``engine`` (prepared; its timbre already queued or set) one after another:
    key i goes down at ``first + i * (window + gap)`` samples, up ``hold`` later (never, when
    ``hold >= window``) and is faded out at the end of its ``window``. Rendered in ``block``-sample
    calls (one call when None) -> ``(out (n, 2), starts)``."""
    starts = [first + i * (window + gap) for i in range(len(keys))]
    for start, key in zip(starts, keys):
        engine.push(start, 0x90, key, velocity)
        if hold < window:
            engine.push(start + hold, 0x80, key, 0)
        engine.push(start + window, 0xB0, CC_ALL_SOUND_OFF, 0)
    out = np.zeros((starts[-1] + window + gap if starts else 0, 2), np.float32)
    step = block or max(len(out), 1)
    for a in range(0, len(out), step):
        engine.process(out[a:a + step])
    return out, starts
