"""The one definition of every contract between training, export and the engine.

Torch-free, so the engine can import it. Training and export read the spectrogram
parameters from here; the engine reads them back from the preset's ``[audio]`` table,
so the two can never disagree. Everything a preset file or a dataset row has to agree
on (decoder I/O names, the decoder time contract, the preset format version, note and
hold lengths, General MIDI program groups) is named here once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class SpectrogramParams:
    """STFT settings shared by training and the engine.

    Magnitudes are normalised so that a full-scale sine (amplitude 1.0) peaks
    at 1.0: ``|rfft(frame * window)| * 2 / sum(window)``. The model works on
    ``ln(magnitude + log_floor)``.

    Why 24 kHz, 1024/128: a 1024-sample window is 42.7 ms (the 2048/256 @ 48 kHz
    point where streaming RTPGHI measured -32.8 dB spectral convergence on soundfont notes) with the same
    redundancy of 8, at half the bins; the engine doubles it to 48 kHz by
    zero-padding the inverse FFT, so no resampler sits in the 48 kHz path.
    """

    sample_rate: int = 24000
    n_fft: int = 1024
    hop: int = 128
    window: str = "hann"
    log_floor: float = 1e-5
    note_seconds: float = 4.0
    hold_seconds: float = 3.0

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    @property
    def note_samples(self) -> int:
        return int(round(self.note_seconds * self.sample_rate))

    @property
    def frames_per_note(self) -> int:
        """Frames of a whole note with centred frames (frame j centred at j*hop)."""
        return 1 + self.note_samples // self.hop

    def frame_time(self, j: float) -> float:
        """Seconds from the note's start to the centre of frame ``j``."""
        return j * self.hop / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpectrogramParams":
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown audio parameter(s): {', '.join(sorted(unknown))}")
        return cls(**{k: d[k] for k in d})

    def bins_between(self, low_hz: float, high_hz: float) -> slice:
        """The bins whose centre frequency lies in ``[low_hz, high_hz)``, as a slice of the bin axis."""
        def first_at(hz: float) -> int:
            return min(max(math.ceil(hz * self.n_fft / self.sample_rate), 0), self.n_bins)

        return slice(first_at(low_hz), first_at(high_hz))

    def validate(self) -> None:
        if self.window != "hann":
            raise ValueError(f"window {self.window!r} is not supported (only 'hann')")
        if self.n_fft <= 0 or self.n_fft & (self.n_fft - 1):
            raise ValueError(f"n_fft must be a power of two, got {self.n_fft}")
        if self.hop <= 0 or self.n_fft % self.hop:
            raise ValueError(f"hop {self.hop} must divide n_fft {self.n_fft}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate {self.sample_rate} is too low")
        if not 0 < self.log_floor < 1:
            raise ValueError(f"log_floor must be in (0, 1), got {self.log_floor}")
        if not 0 < self.hold_seconds <= self.note_seconds:
            raise ValueError("hold_seconds must be in (0, note_seconds]")


DEFAULT_PARAMS = SpectrogramParams()

# ---------------------------------------------------------------------------- decoder contract
DECODER_CONTRACT = "framewise-v1"
"""``(z, pitch, velocity, time_on, time_off) -> log_mag``: see ARCHITECTURE.md."""
DECODER_INPUTS = ("z", "pitch", "velocity", "time_on", "time_off")
DECODER_OUTPUT = "log_mag"
ENCODER_INPUT = "log_mag"
"""The encoder's whole note ``(B, T, F)`` (every ``[encoder] frame_stride``-th frame)."""
ENCODER_PITCH = "pitch"
"""The note's MIDI pitch ``(B,)``: a second input from preset format 6, for an encoder that reads
the note at its partials (``training.model.HarmonicEncoder``)."""
ENCODER_OUTPUTS = ("mu", "logvar")


def encoder_feeds(session: Any, log_mag: Any, pitch: Any) -> dict[str, Any]:
    """An encoder.onnx session's feeds for notes ``log_mag (B, T, F)`` at MIDI ``pitch (B,)``, float32:
    the pitch only where the encoder takes it (preset format 6, ``ENCODER_PITCH``)."""
    feeds = {ENCODER_INPUT: np.asarray(log_mag, np.float32), ENCODER_PITCH: np.asarray(pitch, np.float32).reshape(-1)}
    return {a.name: feeds[a.name] for a in session.get_inputs()}

HELD_TIME_OFF = -1.0
"""``time_off`` while the key is still down (the decoder's 'not released' value)."""

# ---------------------------------------------------------------------------- preset format
PRESET_FORMAT_VERSION = 6
"""Version 2 adds the ``[knobs]`` table (PCA directions of the aggregate posterior) and
resolves every General MIDI program to a snapshot. Version 3 lets a snapshot carry its latent at
several keys (``track_keys``, ``track_z``: ``synth.key_track``). Version 4 lets it carry a level
per key (``key_level_keys``, ``key_level_db``: ``synth.key_track.key_gain_table``). Version 5 lets
it carry a tone curve (``tone_db``: one gain per ``TONE_HZ`` point, ``synth.tone``). Version 6 lets
the encoder take the note's pitch as a second input (``ENCODER_PITCH``). The engine still reads
versions 1-5 (version 1's knobs derived from ``[latent] knob_order``); any other version gets a
one-line message that says to re-export the preset."""
MAX_KEY_LEVEL_DB = 12.0
"""A snapshot's per-key level stays within +-12 dB (as its level trim): enough to even out an
instrument's registers, never enough to turn a near-silent decode into a burst of noise."""
TONE_HZ = (125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)
"""The frequencies of a timbre's tone curve (``synth.tone``): a gain in dB at each, straight lines
between them on a log-frequency axis, held below the first and above the last. Octaves, as an
engineer's graphic EQ: fine enough to put back an instrument's highs (4-12 kHz lies on the last
two points), too coarse to draw partials."""
MAX_TONE_DB = 12.0
"""A tone curve's gains stay within +-12 dB, as the level trims do: a correction of the decoder's
spectral balance, never enough to lift the noise floor into hiss."""
SNAPSHOT_TRACK_KEYS = (21, 36, 48, 60, 72, 84, 96, 108)
"""The keys at which training fits a snapshot's latent (``training.snapshots``); between two of
them the engine interpolates linearly, outside them it holds the nearest (``synth.key_track``)."""
SNAPSHOT_HOME_KEY = 60
"""A key-tracked snapshot's ``z`` is its latent at this key (C4): where knobs, capture and morph
start from, and where its key tracking adds nothing."""
BRIGHT_BAND_HZ = (4000.0, 12000.0)
"""The band whose share of a note's energy measures its brightness against the real instrument
(``benchmarks.timbre_space``); the snapshot fit's optional brightness term matches the same share
(``training.snapshots``). Its bins: ``SpectrogramParams.bins_between(*BRIGHT_BAND_HZ)``."""
DEFAULT_KNOB_TRAVEL = 3.0
"""How far a knob reaches by default, in ``[knobs] scale`` units (the posterior's standard
deviation along the knob's direction): CC 0..127 spans center -+ 3 std, most of the data."""
KNOB_TRAVEL_RANGE = (1.0, 6.0)
"""Bounds of the optional per-knob ``[knobs] travel`` export writes for the weaker knobs (see
``export.knob_travel``): beyond 6 std the decoder extrapolates far from any training note."""

# ---------------------------------------------------------------------------- latent map
LATENT_MAP_FILE = "latent_map.npz"
"""Optional preset file (``[map] file``): a sample of the training notes' posteriors, for the
timbre map, random timbres drawn from the aggregate posterior, and capture's distance to the data.
Arrays (N points, L latent dims): ``mu (N, L) float32``, ``sigma (N, L) float32``, ``family (N,)
int16`` (index into ``families``), ``program (N,) int16`` (GM program, -1 when unknown),
``pitch (N,) float32``, ``families (F,) str``. See ``synth.latent_map``."""
LATENT_MAP_POINTS = 3000
"""Points training keeps (a seeded random sample of its notes): enough for a map and for random
draws, a few hundred KB in the preset."""

# ---------------------------------------------------------------------------- note timing
NOTE_SECONDS = DEFAULT_PARAMS.note_seconds
HOLD_SECONDS = (0.1, 0.3, 1.0, 3.0)
"""Key-down lengths the training renders use, so the model hears a release from any
point of a note (real music is mostly notes shorter than a second). NSynth's own notes
are all held 3 s."""

# ---------------------------------------------------------------------------- General MIDI
GM_MELODIC_PROGRAMS = range(0, 112)
"""Programs 0..111 are melodic; 112..119 percussive, 120..127 sound effects."""
GM_GROUPS = ("piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
             "reed", "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic", "percussive",
             "sound_effects")
"""The 16 General MIDI program groups, eight programs each (group = program // 8)."""


def gm_group(program: int) -> str:
    """General MIDI group name of a 0-based program number 0..127."""
    if not 0 <= program <= 127:
        raise ValueError(f"MIDI program {program} outside 0..127")
    return GM_GROUPS[program // 8]
