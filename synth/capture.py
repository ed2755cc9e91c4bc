"""Timbre capture: one recorded note -> its point in the preset's latent space (torch-free).

``capture(preset, audio, rate)``:
1. checks the recording (:class:`CaptureError`, one line, says what is wrong): too quiet, clipped;
2. resamples it to the preset's rate (soxr) and finds the most prominent note: the loudest 10 ms
   frame, its onset where the envelope stops rising (leading silence and earlier notes skipped),
   its end where the next note's attack begins; checks the note is long enough;
3. estimates its pitch (YIN, ``synth.pitch``, then read exactly off its harmonics) unless given,
   and checks it is one clear pitched note (periodic, its spectral peaks on one harmonic series:
   not a chord);
4. normalises its peak to ``CAPTURE_PEAK_DBFS`` (the level of a training note at velocity 100:
   the recording's level is the microphone's, not the instrument's), and runs the preset's
   encoder on the frames training computes (``synth.stft.encoder_frames``): ``z`` is the
   posterior mean ``mu``; then (unless ``refine=False``) ``synth.refine.Refiner`` reads the whole
   note (``Refiner.read``: the latent whose decoder frames reproduce the note's, key held), and
   moves that point so the decoder reproduces the note's first second at its pitch and plays the
   other octaves as the training instruments
   that sound most like it do (on GM programs the model never saw, the encoder's point alone plays
   the other keys worse: see README's capture figures); the captured key itself keeps the
   reading, fading into the fit an octave away by key tracking (``synth.key_track.with_own_key``),
   and the tone curve (``synth.tone``) is the one that gives the reading's decoded note the
   recorded one's band balance;
5. says how far ``z`` lies from the training data (``synth.latent_map``), in posterior standard
   deviations, and :func:`pull_toward_data` moves it toward the nearest training note.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from numpy.typing import NDArray

from synth.contract import ENCODER_OUTPUTS, encoder_feeds
from synth.errors import VaesynthError
from synth.key_track import latent_for_key, with_own_key
from synth.model_file import cpu_session, read_model
from synth.pitch import WINDOW_S, harmonic_pitch, yin
from synth.preset import Preset
from synth.refine import SOUNDING_DB, Refiner
from synth.stft import encoder_frames

CAPTURE_PEAK_DBFS = -12.0
"""The captured note's peak is scaled to this: the median peak of FluidR3 C4 notes at velocity 100
as training renders them (measured: -12.6 dBFS; velocity 60: -21.7)."""
QUIET_DBFS = -50.0  # a note peaking below this is mostly noise floor
MIN_NOTE_S = 0.1  # the shortest key-down training has; shorter sounds carry no steady timbre
ENVELOPE_S = 0.01  # envelope frame
ENVELOPE_SMOOTH = 4  # frames (40 ms) averaged: tremolo and vibrato are not onsets
ONSET_RANGE_DB = 40.0  # the attack is searched back to this far below the peak
ONSET_GAP_DB = 20.0  # the note starts at the last frame this far below its peak (a softer note before it is not it)
RISE_TOLERANCE_DB = 10.0  # going back, a rise this far above the lowest point so far is an earlier note
NEXT_ONSET_DB = 12.0  # a rise this large after the peak is the next note's attack
CLIP_LEVEL = 0.99  # of full scale
CLIP_FLAT = 1e-4  # a sample this close to its neighbour at CLIP_LEVEL is a flat (clipped) top
CLIP_MAX_SAMPLES = 8  # more flat-top samples than this (and 1e-4 of the file) is clipping
POLY_PEAK_DB = 20.0  # spectral peaks within this of the strongest are judged
POLY_MAX_OFF = 0.3  # more than this share of the peaks' energy off the harmonics: a chord
POLY_LOWEST_HARMONIC = 3.5  # the lowest strong peak above this harmonic of f0: f0 is a chord's common root
# (YIN finds C2 under a C4-E4-G4 triad, whose lowest peak is then harmonic 4; a lone note's is 1 or 2)
HARMONIC_TOLERANCE = 0.02  # a peak within 2 % (or 1.5 bins) of k * f0 is on the series (a piano's stretch: ~1 %)
POLY_MAX_HZ = 5000.0
STEADY_S = (0.1, 1.0)  # the note's steady part, past the attack, that its exact pitch is read from
SUBHARMONICS = (2, 3, 4)  # a strong partial at f0/k means YIN locked onto harmonic k
FAR_DISTANCE = 3.0  # posterior std: beyond this the capture lies well outside the data
MAX_SECONDS = 600.0  # longer files are refused before reading (a hostile header cannot exhaust memory)
READ_RATES = (8000, 384000)
READ_SUFFIXES = (".wav", ".flac", ".ogg", ".oga")


class CaptureError(VaesynthError):
    """The recording cannot be captured; the message says why (one line)."""


@dataclass(frozen=True)
class Capture:
    """One captured timbre. ``z (L,)`` float32; ``pitch`` MIDI (estimated or given); ``onset_s`` where
    the captured note starts in the recording; ``distance`` in posterior std to the nearest training
    note (None without a latent map) and ``nearest`` that note's index in the map."""

    z: NDArray[np.float32]
    pitch: float
    onset_s: float
    distance: float | None
    nearest: int
    seconds: float  # time the capture took
    track: NDArray[np.float32] | None = None  # (128, L) key tracking borrowed from the instruments it sounds like
    tone_db: NDArray[np.float64] | None = None  # (P,) tone curve fitted to the recorded note (synth.tone); None: flat

    def z_at(self, key: float) -> NDArray[np.float32]:
        """``(L,)`` the latent this capture plays MIDI key ``key`` at (its borrowed key tracking added)."""
        return latent_for_key(self.z, self.track, key)

    def describe(self, preset: Preset) -> str:
        """One line: pitch, onset, distance to the data (and the hint to pull when far)."""
        text = f"MIDI pitch {self.pitch:.1f}, note at {self.onset_s:.2f} s"
        if self.distance is None:
            return text + "; the preset has no latent map, so its distance to the training data is unknown"
        where = "inside the training data" if self.distance <= 1.0 else (
            "near the training data" if self.distance <= FAR_DISTANCE else "well outside the training data")
        text += f"; {self.distance:.1f} posterior std from the nearest training note ({where}"
        m = preset.latent_map
        if m is not None and 0 <= self.nearest < m.size:
            family = m.families[m.family[self.nearest]]
            text += f", {'an' if family[:1].lower() in 'aeiou' else 'a'} {family} note"
        text += ")"
        if self.distance > FAR_DISTANCE:
            text += "; --pull 0.5 moves it halfway toward that note"
        return text


def is_audio_path(text: str) -> bool:
    """A name that reads as an audio file (for ``--timbre``/``--morph``: a path, not a snapshot name)."""
    return Path(text).suffix.lower() in READ_SUFFIXES


def read_recording(path: str | Path) -> tuple[NDArray[np.float32], int]:
    """WAV, FLAC or OGG through soundfile -> mono float32 ``(n,)`` (channels averaged), rate."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"{path}: no such file")
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError, OSError) as exc:
        raise CaptureError(f"{path}: not a readable WAV, FLAC or OGG file ({_first(exc)})") from None
    if not READ_RATES[0] <= info.samplerate <= READ_RATES[1]:
        raise CaptureError(f"{path}: sample rate {info.samplerate} Hz outside {READ_RATES[0]}..{READ_RATES[1]}")
    if not 1 <= info.channels <= 32 or info.frames > MAX_SECONDS * info.samplerate:
        raise CaptureError(f"{path}: {info.channels} channels, {info.frames / info.samplerate:.0f} s; "
                           f"capture reads up to 32 channels and {MAX_SECONDS:.0f} s")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError, ValueError) as exc:
        raise CaptureError(f"{path}: unreadable audio ({_first(exc)})") from None
    if not np.isfinite(audio).all():
        raise CaptureError(f"{path}: the audio holds NaN or infinite samples")
    return audio.mean(axis=1).astype(np.float32), int(rate)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def _envelope_db(x: NDArray[np.float32], rate: int) -> tuple[NDArray[np.float64], int]:
    """Power in ``ENVELOPE_S`` frames, averaged over ``ENVELOPE_SMOOTH`` frames (tremolo and vibrato
    are not onsets), in dB -> ``(frames,)``, frame length in samples."""
    hop = max(1, int(ENVELOPE_S * rate))
    n = len(x) // hop
    frames = x[: n * hop].astype(np.float64).reshape(n, hop)
    power = np.mean(frames * frames, axis=1)
    if n >= ENVELOPE_SMOOTH:
        power = np.convolve(power, np.ones(ENVELOPE_SMOOTH) / ENVELOPE_SMOOTH, mode="same")
    return 10.0 * np.log10(power + 1e-20), hop


def _check_clipping(x: NDArray[np.float32], where: str) -> None:
    a = np.abs(x)
    flat = (a[1:] >= CLIP_LEVEL) & (np.abs(np.diff(x)) <= CLIP_FLAT)
    count = int(flat.sum())
    if count > max(CLIP_MAX_SAMPLES, 1e-4 * len(x)):
        raise CaptureError(f"{where}: clipped ({count} samples flat at full scale); record it again with less gain")


def find_note(x: NDArray[np.float32], rate: int, note_samples: int, where: str = "recording") -> tuple[int, int]:
    """``(start, end)`` samples of the most prominent note in ``x (n,)``: its attack's start and
    the next note's attack (or the end), at most ``note_samples`` long."""
    env, hop = _envelope_db(x, rate)
    if env.size == 0:
        raise CaptureError(f"{where}: too short ({len(x) / rate:.3f} s; a note needs at least {MIN_NOTE_S} s)")
    p = int(np.argmax(env))
    top = env[p]
    j, low = p, top
    while j > 0 and env[j - 1] > top - ONSET_RANGE_DB and env[j - 1] <= low + RISE_TOLERANCE_DB:
        j -= 1  # back through the attack, down to silence or to the dip after an earlier note
        low = min(low, env[j])
    quiet = np.nonzero(env[j:p + 1] < top - ONSET_GAP_DB)[0]  # the attack leaves the quiet before it here
    j += int(quiet[-1]) if quiet.size else int(np.argmin(env[j:p + 1]))
    start = j * hop  # still before the attack: the smoothing lets a frame see two frames ahead
    end_frame = min(len(env), j + int(math.ceil(note_samples / hop)))
    low = top
    for k in range(p + 1, end_frame):
        low = min(low, env[k])
        if env[k] > low + NEXT_ONSET_DB:
            end_frame = int(np.argmin(env[p:k])) + p
            break
    end = min(len(x), end_frame * hop, start + note_samples)
    sounding = int(np.sum(env[j:end_frame] > top - SOUNDING_DB)) * hop / rate
    if sounding < MIN_NOTE_S:
        raise CaptureError(f"{where}: too short (the note sounds for {sounding:.2f} s; "
                           f"at least {MIN_NOTE_S} s is needed)")
    return start, end


def _off_harmonic_share(note: NDArray[np.float32], rate: int, f0: float) -> tuple[float, float]:
    """(share of the strong spectral peaks' energy off the harmonics of ``f0``, the lowest strong
    peak in harmonics of ``f0``) over the steady part of ``note``."""
    n = min(len(note), int(WINDOW_S * 2 * rate))
    seg = note[:n].astype(np.float64) * np.hanning(n)
    mag = np.abs(np.fft.rfft(seg, 1 << int(math.ceil(math.log2(max(n, 2))))))
    hz = rate / (2 * (len(mag) - 1))
    keep = int(POLY_MAX_HZ / hz)
    m = mag[1:keep]
    is_peak = (m[1:-1] > m[:-2]) & (m[1:-1] >= m[2:])
    idx = np.nonzero(is_peak)[0] + 2  # bin index into mag
    db = 20 * np.log10(mag[idx] + 1e-20)
    strong = idx[db > db.max() - POLY_PEAK_DB] if idx.size else idx
    if strong.size == 0:
        return 0.0, 1.0
    f = strong * hz
    k = np.maximum(np.round(f / f0), 1.0)
    tolerance = np.maximum(HARMONIC_TOLERANCE * f, 1.5 * hz)
    off = np.abs(f - k * f0) > tolerance
    energy = mag[strong] ** 2
    return float(energy[off].sum() / energy.sum()), float(f.min() / f0)


def _check_one_pitched_note(note: NDArray[np.float32], rate: int, preset: Preset, where: str) -> float:
    """The MIDI pitch of ``note``; CaptureError when it has no clear pitch or sounds like a chord."""
    skip = int(0.05 * rate)  # past the attack's noise
    seg = note[skip: skip + int(WINDOW_S * rate)] if len(note) > skip + int(0.1 * rate) else note
    fmin = 440.0 * 2 ** ((preset.pitch_min - 1 - 69) / 12)
    fmax = min(440.0 * 2 ** ((preset.pitch_max + 1 - 69) / 12), 0.45 * rate)
    midi, aperiodicity = yin(seg, rate, fmin, fmax)
    if midi is None:
        raise CaptureError(f"{where}: no clear pitched note (periodicity {1 - aperiodicity:.2f}, needs 0.85 or "
                           "more: noise, or several notes at once?); capture one pitched note, or give its pitch "
                           "with --pitch N")
    off, lowest = _off_harmonic_share(note[skip:], rate, 440.0 * 2 ** ((midi - 69) / 12))
    for k in SUBHARMONICS:  # YIN's first dip can be a strong upper partial's period: the lowest partial decides
        if abs(lowest * k - 1.0) <= HARMONIC_TOLERANCE:
            midi -= 12.0 * math.log2(k)
            off, lowest = _off_harmonic_share(note[skip:], rate, 440.0 * 2 ** ((midi - 69) / 12))
            break
    if lowest > POLY_LOWEST_HARMONIC:
        raise CaptureError(f"{where}: sounds polyphonic (a chord?): its strong partials fit one harmonic series only "
                           f"from MIDI {midi:.0f}, {lowest:.1f} times below the lowest of them; record a single note, "
                           "or give its pitch with --pitch N")
    if off > POLY_MAX_OFF:
        raise CaptureError(f"{where}: sounds polyphonic (a chord?): {100 * off:.0f} % of its strong partials' energy "
                           f"lies off the harmonics of MIDI {midi:.1f}; record a single note, or give its pitch with "
                           "--pitch N")
    steady = note[int(STEADY_S[0] * rate): int(STEADY_S[1] * rate)]
    return harmonic_pitch(steady if len(steady) >= skip else note[skip:], rate, midi, POLY_MAX_HZ)


class Encoder:
    """The preset's encoder.onnx on the CPU, one thread (deterministic): ``(T, F)`` frames of a note
    at MIDI ``pitch`` -> ``mu (L,)``."""

    def __init__(self, preset: Preset) -> None:
        self._session = cpu_session(read_model(preset.encoder_path))

    def __call__(self, frames: NDArray[np.float32], pitch: float) -> NDArray[np.float32]:
        feeds = encoder_feeds(self._session, np.asarray(frames, np.float32)[None], np.array([pitch]))
        mu, _ = self._session.run(list(ENCODER_OUTPUTS), feeds)
        return np.asarray(mu[0], np.float32)


def capture(preset: Preset, audio: NDArray, rate: int, pitch: float | None = None, where: str = "recording",
            encoder: Encoder | None = None, refiner: Refiner | None = None, refine: bool = True,
            read: bool = True) -> Capture:
    """Capture the most prominent note of ``audio (n,)`` mono at ``rate`` Hz (see the module doc).

    ``pitch``: the note's MIDI pitch when known (skips detection and its checks). ``refine=False``
    keeps the encoder's point, ``read=False`` refines it without reading the whole note first
    (benchmarks and tests compare them); ``encoder``/``refiner``: models
    kept across captures (opened here otherwise)."""
    started = time.perf_counter()
    x = np.asarray(audio, np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono (n,), got {x.shape}")
    if pitch is not None and not (math.isfinite(pitch) and preset.pitch_min <= pitch <= preset.pitch_max):
        raise CaptureError(f"--pitch {pitch}: outside the preset's range {preset.pitch_min:g}..{preset.pitch_max:g}")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak <= 0.0 or 20 * math.log10(peak) < QUIET_DBFS:
        level = "silent" if peak <= 0.0 else f"peaks at {20 * math.log10(peak):.0f} dBFS"
        raise CaptureError(f"{where}: too quiet ({level}; a note must reach {QUIET_DBFS:.0f} dBFS)")
    _check_clipping(x, where)
    params = preset.params
    if rate != params.sample_rate:
        x = soxr.resample(x, rate, params.sample_rate).astype(np.float32)
    rate = params.sample_rate
    start, end = find_note(x, rate, params.note_samples, where)
    note = x[start:end]
    if pitch is None:
        pitch = _check_one_pitched_note(note, rate, preset, where)
    note = note * np.float32(10 ** (CAPTURE_PEAK_DBFS / 20) / float(np.abs(note).max()))
    frames = encoder_frames(note, params, preset.encoder_frame_stride)
    z = (encoder or Encoder(preset))(frames, float(pitch))
    if not np.isfinite(z).all():
        raise CaptureError(f"{where}: the encoder returned NaN for this recording")
    track = tone_db = None
    if refine:
        refiner = refiner or Refiner(preset)
        if read:
            z = refiner.read(z, frames, float(pitch))
        reading = z
        z, track = refiner(z, note, float(pitch)), refiner.track
        if read:
            # The captured key plays the note's own reading, fading into the keyboard fit an octave
            # away, and the tone curve is the reading's (nearly flat: the reading matches the note).
            # Measured, benchmarks.capture_fidelity on the 10 held-out programs: the captured key's
            # whole note -8.6 / 3.7 dB SC / LSD against -6.5 / 4.1 from the fit alone; the other keys
            # closer than the program-change snapshot by +2.46 dB (with the fit's own curve +1.39)
            tone_db = refiner.tone_for(reading)
            track = with_own_key(track, preset.latent_size, float(pitch), reading - z)
        else:
            tone_db = refiner.tone_for(z)
    distance, nearest = (None, -1) if preset.latent_map is None else preset.latent_map.distance(z)
    return Capture(z, float(pitch), start / rate, distance, nearest, time.perf_counter() - started, track, tone_db)


def capture_file(preset: Preset, path: str | Path, pitch: float | None = None) -> Capture:
    """:func:`capture` of the recording at ``path`` (messages name the file)."""
    audio, rate = read_recording(path)
    return capture(preset, audio, rate, pitch, where=str(path))


def pull_toward_data(preset: Preset, z: NDArray[np.floating], amount: float) -> NDArray[np.float32]:
    """``z`` moved ``amount`` (0..1) of the way to the nearest training note's posterior mean (the
    latent map's), or to the nearest snapshot when the preset has no map."""
    if not 0.0 <= amount <= 1.0:
        raise CaptureError(f"--pull {amount}: must be 0..1 (0 keeps the capture, 1 is the nearest training note)")
    z = np.asarray(z, np.float32)
    if preset.latent_map is not None:
        target = preset.latent_map.mu[preset.latent_map.distance(z)[1]]
    elif preset.snapshots:
        target = min((np.asarray(s.z, np.float32) for s in preset.snapshots), key=lambda s: float(np.sum((s - z) ** 2)))
    else:
        return z
    return (z + np.float32(amount) * (target - z)).astype(np.float32)
