"""Note datasets on disk: the NSynth layout, plain WAV folders, and a soundfont renderer.

Layout (as Magenta publishes NSynth): ``ROOT/examples.json``, a dict keyed by
``note_str`` (``keyboard_acoustic_000-060-100``), and ``ROOT/audio/<note_str>.wav``.

Every check (readable WAV, sample rate, length, keys) happens while loading, so bad
data stops a run before training starts, never mid-epoch. Bad data raises
:class:`DatasetError` naming the file; ``on_error="skip"`` warns in one line and skips.

CLI::

    python -m training.data render-soundfont --out data/gm4 --soundfont A.sf2 --soundfont B.sf2 ...

Optional per-note field ``hold_seconds`` in examples.json: how long the key was held
(absent -> 3.0 s, as in every note of a real NSynth download).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray
from scipy.signal import butter, sosfilt

from synth.contract import GM_MELODIC_PROGRAMS
from synth.contract import HOLD_SECONDS as RENDER_HOLDS
from synth.contract import NOTE_SECONDS as NOTE_LENGTH
from synth.errors import VaesynthError, report

OnError = Literal["stop", "skip"]

NSYNTH_FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ",
                   "reed", "string", "synth_lead", "vocal")
NSYNTH_SOURCES = ("acoustic", "electronic", "synthetic")
NSYNTH_QUALITIES = 10  # NSynth's `qualities` is a 10-element 0/1 list
REQUIRED_KEYS = ("pitch", "velocity", "instrument_str", "instrument_family_str", "sample_rate")
MIN_SAMPLE_RATE = 8000  # below this a note cannot be resampled to the model rate usefully
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
# The General MIDI soundfonts of Debian 12 (packages fluid-soundfont-gm, timgm6mb-soundfont,
# csound-soundfont, opl3-soundfont) and the short tags their instrument names carry.
DEBIAN_SOUNDFONTS = {
    "/usr/share/sounds/sf2/FluidR3_GM.sf2": "fluidr3",
    "/usr/share/sounds/sf2/TimGM6mb.sf2": "timgm6mb",
    "/usr/share/sounds/sf2/sf_GMbank.sf2": "gmbank",
    "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2": "opl3",
}
DEFAULT_PROGRAMS = tuple(GM_MELODIC_PROGRAMS)
DEFAULT_PITCHES = tuple(range(21, 109, 3))
DEFAULT_VELOCITIES = (60, 100)
RENDER_RATE = 48000  # render at 48 kHz, resample down with soxr (rendering at 24 kHz aliases)
NOTE_SECONDS = NOTE_LENGTH
HOLD_SECONDS = 3.0  # a note without ``hold_seconds`` (NSynth) was held this long
SILENCE_PEAK = 1e-4  # -80 dBFS: FluidR3 has no samples for some keys; such notes are skipped
# FluidR3's pad (89) samples carry a DC offset (mean 0.05 at rms 0.09) that follows the
# envelope; a 10 Hz high-pass removes it and costs 0.3 dB at the lowest key (27.5 Hz).
HIGHPASS_HZ = 10.0


class DatasetError(VaesynthError):
    """Bad data in a note dataset; the message names the file."""


@dataclass(frozen=True)
class NoteRecord:
    """One note of a dataset: where its audio is and what it is."""

    note_str: str
    path: Path
    pitch: int
    velocity: int
    instrument: str
    family: str
    sample_rate: int
    hold_seconds: float = HOLD_SECONDS


class ErrorPolicy:
    """Raise or warn-and-count, by ``on_error``; one place for the skip logic."""

    def __init__(self, on_error: OnError) -> None:
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped = 0

    def handle(self, err: DatasetError) -> None:
        if self.on_error == "stop":
            raise err
        self.skipped += 1
        print(f"warning: skipped: {err}", file=sys.stderr)

    def report(self, what: str) -> None:
        if self.skipped:
            print(f"warning: skipped {self.skipped} bad {what}", file=sys.stderr)


# ---------------------------------------------------------------------------- readers

def _check_wav(path: Path, sample_rate: int | None, expected_seconds: float | None) -> int:
    """Validate a WAV header (readable, rate, length); returns its sample rate."""
    if not path.is_file():
        raise DatasetError(f"{path}: audio file is missing")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types for bad files
        raise DatasetError(f"{path}: unreadable audio ({str(exc).splitlines()[0]})") from None
    if sample_rate is not None and info.samplerate != sample_rate:
        raise DatasetError(f"{path}: WAV sample rate {info.samplerate} Hz does not match "
                           f"examples.json sample_rate {sample_rate}")
    if info.samplerate < MIN_SAMPLE_RATE:
        raise DatasetError(f"{path}: sample rate {info.samplerate} Hz is below {MIN_SAMPLE_RATE}")
    if info.frames == 0:
        raise DatasetError(f"{path}: no audio frames")
    if expected_seconds is not None:
        expected = int(round(expected_seconds * info.samplerate))
        if info.frames != expected:
            raise DatasetError(f"{path}: {info.frames} samples, expected {expected} "
                               f"({expected_seconds:g} s at {info.samplerate} Hz)")
    return int(info.samplerate)


def _record_from_entry(root: Path, key: str, entry: object, expected_seconds: float | None) -> NoteRecord:
    path = root / "audio" / f"{key}.wav"
    if not isinstance(entry, dict):
        raise DatasetError(f"{root / 'examples.json'}: entry {key!r} is not an object")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        raise DatasetError(f"{root / 'examples.json'}: entry {key!r} lacks {', '.join(missing)}")
    try:
        pitch, velocity, rate = int(entry["pitch"]), int(entry["velocity"]), int(entry["sample_rate"])
    except (TypeError, ValueError):
        raise DatasetError(f"{root / 'examples.json'}: entry {key!r} has a non-integer "
                           "pitch, velocity or sample_rate") from None
    if not (0 <= pitch <= 127 and 0 <= velocity <= 127):
        raise DatasetError(f"{root / 'examples.json'}: entry {key!r} pitch/velocity out of 0..127")
    try:
        hold = float(entry.get("hold_seconds", HOLD_SECONDS))
    except (TypeError, ValueError):
        hold = float("nan")
    if not 0 < hold <= (expected_seconds or math.inf):
        raise DatasetError(f"{root / 'examples.json'}: entry {key!r} hold_seconds "
                           f"{entry.get('hold_seconds')!r} is not in (0, note length]")
    _check_wav(path, rate, expected_seconds)
    return NoteRecord(key, path, pitch, velocity, str(entry["instrument_str"]),
                      str(entry["instrument_family_str"]), rate, hold)


def load_examples(root: str | Path, on_error: OnError = "stop",
                  expected_seconds: float | None = NOTE_SECONDS) -> list[NoteRecord]:
    """Read an NSynth-layout dataset (a real NSynth download loads unchanged).

    Checks every entry's keys and WAV header (readable, sample rate equal to the
    entry's ``sample_rate``, exactly ``expected_seconds`` long; None accepts any
    length). Records come sorted by ``note_str``.
    """
    root = Path(root)
    policy = ErrorPolicy(on_error)
    index = root / "examples.json"
    try:
        with open(index) as f:
            examples = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{index}: cannot read ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(examples, dict):
        raise DatasetError(f"{index}: expected a JSON object keyed by note_str")
    records = []
    for key in sorted(examples):
        try:
            records.append(_record_from_entry(root, key, examples[key], expected_seconds))
        except DatasetError as err:
            policy.handle(err)
    policy.report("notes")
    if not records:
        raise DatasetError(f"{index}: no usable notes")
    return records


NOTE_NAME = re.compile(r"(?<![A-Za-z])([A-Ga-g])(#|s|b)?(-?\d)(?!\d)")
NOTE_NUMBER = re.compile(r"(?<!\d)(\d{1,3})(?!\d)")
_SEMITONE = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


def pitch_from_name(stem: str, pattern: str | None = None) -> int | None:
    """MIDI pitch from a file name: ``C4``/``F#3``/``Bb2`` (C4 = 60) or a number ``60``.

    ``pattern`` (a regex whose first group is a note name or a MIDI number) overrides
    the default search, which tries a note name first, then the last 1-3 digit number.
    """
    if pattern is not None:
        m = re.search(pattern, stem)
        token = m.group(1) if m else None
    else:
        names = NOTE_NAME.findall(stem)
        nums = NOTE_NUMBER.findall(stem)
        token = "".join(names[-1]) if names else (nums[-1] if nums else None)
    if token is None:
        return None
    if token.isdigit():
        p = int(token)
    else:
        m = NOTE_NAME.fullmatch(token)
        if m is None:
            return None
        acc = {"#": 1, "s": 1, "b": -1}.get(m.group(2) or "", 0)
        p = 12 * (int(m.group(3)) + 1) + _SEMITONE[m.group(1).lower()] + acc
    return p if 0 <= p <= 127 else None


def estimate_pitch(audio: NDArray, sample_rate: int, fmin: float = 25.0, fmax: float = 4200.0) -> float | None:
    """YIN (cumulative-mean-normalised difference) on the loudest 0.2 s -> MIDI pitch, or None."""
    x = np.asarray(audio, dtype=np.float64)
    n = min(len(x), int(0.2 * sample_rate))
    if n < 2 * int(sample_rate / fmax) + 8:
        return None
    energy = np.convolve(x * x, np.ones(n), mode="valid")
    start = int(np.argmax(energy))
    seg = x[start:start + n] - x[start:start + n].mean()
    max_lag = min(int(sample_rate / fmin), n // 2)
    min_lag = max(2, int(sample_rate / fmax))
    w = n - max_lag
    # difference function d(t) = sum_{j<w} (x_j - x_{j+t})^2 = E0 + Et - 2 r(t), r by FFT
    size = 1 << int(math.ceil(math.log2(2 * n)))
    r = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(seg[:w], size)), size)[:max_lag + 1]
    cs = np.concatenate([[0.0], np.cumsum(seg * seg)])
    lags = np.arange(max_lag + 1)
    d = np.maximum(cs[w] + cs[lags + w] - cs[lags] - 2 * r, 0.0)
    cmnd = np.ones_like(d)
    cmnd[1:] = d[1:] * lags[1:] / np.maximum(np.cumsum(d[1:]), 1e-12)
    below = np.nonzero(cmnd[min_lag:] < 0.15)[0]
    if below.size == 0:
        return None
    lag = int(below[0]) + min_lag
    while lag < max_lag and cmnd[lag + 1] < cmnd[lag]:  # walk down to the dip's minimum
        lag += 1
    a, b, c = cmnd[lag - 1], cmnd[lag], cmnd[min(lag + 1, max_lag)]
    shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c > 0 else 0.0  # parabolic refinement
    f0 = sample_rate / (lag + shift)
    return 69.0 + 12.0 * math.log2(f0 / 440.0)


def _wav_record(root: Path, path: Path, pattern: str | None, velocity: int, family: str) -> NoteRecord:
    rate = _check_wav(path, None, None)
    pitch = pitch_from_name(path.stem, pattern)
    if pitch is None:
        audio, _ = _read_mono(path)
        est = estimate_pitch(audio, rate)
        if est is None:
            raise DatasetError(f"{path}: no pitch in the file name and none could be estimated")
        pitch = int(round(est))
    rel = path.parent.relative_to(root)
    instrument = str(rel).replace(os.sep, "_") if str(rel) != "." else root.name
    return NoteRecord(str(path.relative_to(root).with_suffix("")).replace(os.sep, "_"), path,
                      pitch, velocity, instrument, family, rate)


def load_wav_folder(root: str | Path, pattern: str | None = None, on_error: OnError = "stop",
                    velocity: int = 100, family: str = "unknown") -> list[NoteRecord]:
    """Read a folder (recursively) of WAV notes; pitch from the name or estimated.

    The instrument is the sub-folder (or the root folder's name); velocity and family
    are the same for every note, as a plain folder carries neither.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    policy = ErrorPolicy(on_error)
    records = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav"):
        try:
            records.append(_wav_record(root, path, pattern, velocity, family))
        except DatasetError as err:
            policy.handle(err)
    policy.report("WAV files")
    if not records:
        raise DatasetError(f"{root}: no usable WAV notes")
    return records


def load_dataset(root: str | Path, on_error: OnError = "stop") -> list[NoteRecord]:
    """NSynth layout when ``root/examples.json`` exists, else a plain WAV folder."""
    root = Path(root)
    if (root / "examples.json").exists():
        return load_examples(root, on_error)
    return load_wav_folder(root, on_error=on_error)


def _read_mono(path: Path) -> tuple[NDArray[np.float32], int]:
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable audio ({str(exc).splitlines()[0]})") from None
    return audio.mean(axis=1).astype(np.float32), int(rate)


def read_audio(record: NoteRecord, sample_rate: int) -> NDArray[np.float32]:
    """The note as mono float32 ``(n,)`` at ``sample_rate`` (soxr when the rates differ)."""
    audio, rate = _read_mono(record.path)
    if rate != record.sample_rate:
        raise DatasetError(f"{record.path}: sample rate {rate} Hz, expected {record.sample_rate}")
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
    return audio


# ---------------------------------------------------------------------------- writing

def _write_note(root: Path, entry: dict, audio: NDArray) -> None:
    sf.write(str(root / "audio" / f"{entry['note_str']}.wav"), audio, entry["sample_rate"],
             subtype="PCM_16")


def nsynth_entry(family: str, source: str, index: int, pitch: int, velocity: int,
                 sample_rate: int, soundfont: str | None = None,
                 hold_seconds: float | None = None) -> dict:
    """One examples.json entry in Magenta's NSynth format.

    ``soundfont`` (a short tag) goes into the instrument name, ``family_source_TAG_NNN``, so
    the same program of two soundfonts are two instruments; ``hold_seconds`` is our extra
    field (NSynth's notes are all held 3 s and lack it).
    """
    instrument_str = f"{family}_{source}_{soundfont + '_' if soundfont else ''}{index:03d}"
    extra = {} if hold_seconds is None else {"hold_seconds": float(hold_seconds)}
    if soundfont:
        extra["soundfont"] = soundfont
    return extra | {
        "note_str": f"{instrument_str}-{pitch:03d}-{velocity:03d}",
        "pitch": pitch, "velocity": velocity,
        "instrument": index, "instrument_str": instrument_str,
        "instrument_family": NSYNTH_FAMILIES.index(family) if family in NSYNTH_FAMILIES else -1,
        "instrument_family_str": family,
        "instrument_source": NSYNTH_SOURCES.index(source), "instrument_source_str": source,
        "sample_rate": sample_rate,
        "qualities": [0] * NSYNTH_QUALITIES, "qualities_str": [],
    }


def _write_index(root: Path, entries: Iterable[dict]) -> None:
    index = {e["note_str"]: e for e in sorted(entries, key=lambda e: e["note_str"])}
    tmp = root / "examples.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(root / "examples.json")


def _synthetic_tone(pitch: int, velocity: int, timbre: int, rate: int, seconds: float,
                    hold: float) -> NDArray[np.float32]:
    """A harmonic tone whose spectral tilt, odd/even balance and attack depend on ``timbre``."""
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    tilt = 0.6 + 0.7 * timbre  # dB-ish slope: larger = darker
    x = np.zeros_like(t)
    for k in range(1, 40):
        if k * f0 >= 0.45 * rate:
            break
        odd_only = timbre % 2 == 1 and k % 2 == 0
        amp = 0.0 if odd_only else k ** -tilt
        x += amp * np.sin(2 * np.pi * k * f0 * t + 0.3 * k)
    attack = 0.005 + 0.04 * timbre
    env = np.minimum(t / attack, 1.0) * np.exp(-t * (0.3 + 0.2 * timbre))
    env *= np.where(t < hold, 1.0, np.exp(-(t - hold) * 12.0))
    x *= env
    return (0.5 * (velocity / 127) * x / np.max(np.abs(x))).astype(np.float32)


def make_synthetic_dataset(root: str | Path, n_instruments: int = 3,
                           pitches: Sequence[int] = (48, 55, 60, 67, 72),
                           velocities: Sequence[int] = (50, 100), sample_rate: int = 24000,
                           seconds: float = NOTE_SECONDS,
                           hold: float | Sequence[float] = HOLD_SECONDS) -> list[dict]:
    """Write a tiny NSynth-layout dataset of harmonic tones (for tests; no soundfont needed).

    Instrument i is ``<family>_synthetic_00i`` with its own tilt/odd-even/attack. ``hold``:
    one key-down length for every note (no ``hold_seconds`` field, like NSynth), or a
    sequence cycled over the notes and written as ``hold_seconds``.
    Returns the examples.json entries.
    """
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    fams = ("keyboard", "organ", "brass", "reed", "flute", "string", "bass", "guitar")
    entries = []
    for i in range(n_instruments):
        for p in pitches:
            for v in velocities:
                h = hold if isinstance(hold, (int, float)) else hold[(len(entries)) % len(hold)]
                e = nsynth_entry(fams[i % len(fams)], "synthetic", i, p, v, sample_rate,
                                 hold_seconds=None if isinstance(hold, (int, float)) else h)
                _write_note(root, e, _synthetic_tone(p, v, i, sample_rate, seconds, h))
                entries.append(e)
    _write_index(root, entries)
    return entries


# ---------------------------------------------------------------------------- soundfont

# GM program -> (NSynth family, source). Pads and FX use "synth_lead" (NSynth has no
# pad family); choir/voice programs map to "vocal", chromatic percussion to "mallet".
_GM_GROUPS = ("keyboard", "mallet", "organ", "guitar", "bass", "string", "string", "brass",
              "reed", "flute", "synth_lead", "synth_lead", "synth_lead", "guitar", "mallet",
              "synth_lead")
_ELECTRONIC = set(range(2, 8)) | set(range(16, 19)) | set(range(26, 32)) | set(range(33, 40))


def gm_family(program: int) -> tuple[str, str]:
    """(NSynth family, source) for a General MIDI program number 0..127."""
    if not 0 <= program <= 127:
        raise ValueError(f"program {program} is not in 0..127")
    family = "vocal" if program in (52, 53, 54, 85) else _GM_GROUPS[program // 8]
    if program >= 80 and family == "synth_lead" or 38 <= program <= 39 or program in (62, 63):
        source = "synthetic"
    elif program in _ELECTRONIC:
        source = "electronic"
    else:
        source = "acoustic"
    return family, source


# General MIDI 1 program names (0-based), short snake_case; names snapshots and reports.
GM_PROGRAM_NAMES = (
    "acoustic_grand_piano", "bright_acoustic_piano", "electric_grand_piano", "honky_tonk_piano",
    "electric_piano_1", "electric_piano_2", "harpsichord", "clavinet",
    "celesta", "glockenspiel", "music_box", "vibraphone", "marimba", "xylophone", "tubular_bells",
    "dulcimer",
    "drawbar_organ", "percussive_organ", "rock_organ", "church_organ", "reed_organ", "accordion",
    "harmonica", "tango_accordion",
    "nylon_guitar", "steel_guitar", "jazz_guitar", "clean_guitar", "muted_guitar",
    "overdriven_guitar", "distortion_guitar", "guitar_harmonics",
    "acoustic_bass", "finger_bass", "pick_bass", "fretless_bass", "slap_bass_1", "slap_bass_2",
    "synth_bass_1", "synth_bass_2",
    "violin", "viola", "cello", "contrabass", "tremolo_strings", "pizzicato_strings",
    "orchestral_harp", "timpani",
    "string_ensemble_1", "string_ensemble_2", "synth_strings_1", "synth_strings_2", "choir_aahs",
    "voice_oohs", "synth_voice", "orchestra_hit",
    "trumpet", "trombone", "tuba", "muted_trumpet", "french_horn", "brass_section", "synth_brass_1",
    "synth_brass_2",
    "soprano_sax", "alto_sax", "tenor_sax", "baritone_sax", "oboe", "english_horn", "bassoon",
    "clarinet",
    "piccolo", "flute", "recorder", "pan_flute", "blown_bottle", "shakuhachi", "whistle", "ocarina",
    "square_lead", "sawtooth_lead", "calliope_lead", "chiff_lead", "charang_lead", "voice_lead",
    "fifths_lead", "bass_lead",
    "new_age_pad", "warm_pad", "polysynth_pad", "choir_pad", "bowed_pad", "metallic_pad", "halo_pad",
    "sweep_pad",
    "rain_fx", "soundtrack_fx", "crystal_fx", "atmosphere_fx", "brightness_fx", "goblins_fx",
    "echoes_fx", "sci_fi_fx",
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipe", "fiddle", "shanai",
    "tinkle_bell", "agogo", "steel_drums", "woodblock", "taiko_drum", "melodic_tom", "synth_drum",
    "reverse_cymbal",
    "guitar_fret_noise", "breath_noise", "seashore", "bird_tweet", "telephone_ring", "helicopter",
    "applause", "gunshot",
)
INSTRUMENT_NAME = re.compile(r"^(?P<family>.+)_(?P<source>acoustic|electronic|synthetic)_"
                             r"(?P<soundfont>[a-z][a-z0-9]*)_(?P<program>\d{3})$")


def soundfont_tag(path: str) -> str:
    """Short lowercase tag of a soundfont file for instrument names (``fluidr3``, ``opl3``)."""
    if path in DEBIAN_SOUNDFONTS:
        return DEBIAN_SOUNDFONTS[path]
    tag = re.sub(r"[^a-z0-9]", "", Path(path).stem.lower())[:16]
    return tag if tag and tag[0].isalpha() else f"sf{tag}"


def parse_instrument(name: str) -> tuple[str, int] | None:
    """``(soundfont tag, GM program)`` of a rendered instrument name (``brass_acoustic_fluidr3_056``);
    None for other names (NSynth's ``bass_electronic_000``, WAV folders)."""
    m = INSTRUMENT_NAME.match(name)
    return (m.group("soundfont"), int(m.group("program"))) if m else None


_RENDER: dict = {}  # per-process synth state, set by _render_init


def _render_init(soundfonts: Sequence[str], out: str, sample_rate: int) -> None:
    import fluidsynth  # only the renderer needs the C library

    synth = fluidsynth.Synth(gain=1.0, samplerate=float(RENDER_RATE))
    synth.setting("synth.reverb.active", 0)
    synth.setting("synth.chorus.active", 0)
    sfids = []
    for path in soundfonts:
        sfid = synth.sfload(path)
        if sfid < 0:
            raise DatasetError(f"{path}: fluidsynth cannot load this soundfont")
        sfids.append(sfid)
    write = fluidsynth._fl.fluid_synth_write_float  # pyfluidsynth wraps only the int16 path
    write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    write.restype = ctypes.c_int
    highpass = butter(2, HIGHPASS_HZ, "highpass", fs=RENDER_RATE, output="sos")
    _RENDER.update(synth=synth, sfids=sfids, tags=[soundfont_tag(p) for p in soundfonts],
                   write=write, out=Path(out), rate=sample_rate, highpass=highpass)


def _synth_write(n: int) -> NDArray[np.float32]:
    left = np.zeros(n, np.float32)
    right = np.zeros(n, np.float32)
    _RENDER["write"](_RENDER["synth"].synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
    return 0.5 * (left + right)


def render_note(program: int, pitch: int, velocity: int, hold: float = HOLD_SECONDS,
                soundfont: int = 0) -> NDArray[np.float32]:
    """One note at 48 kHz mono, key held ``hold`` s of NOTE_SECONDS, from the ``soundfont``-th
    loaded soundfont; needs _render_init."""
    synth = _RENDER["synth"]
    synth.program_select(0, _RENDER["sfids"][soundfont], 0, program)
    synth.noteon(0, pitch, velocity)
    held = _synth_write(int(round(hold * RENDER_RATE)))
    synth.noteoff(0, pitch)
    tail = _synth_write(int(round(NOTE_SECONDS * RENDER_RATE)) - len(held))
    synth.all_sounds_off(0)
    _synth_write(256)  # let the killed voices finish so the next note starts from silence
    audio = sosfilt(_RENDER["highpass"], np.concatenate([held, tail]))
    return audio.astype(np.float32)


RenderJob = tuple[int, int, int, int, float]  # (soundfont index, program, pitch, velocity, hold)


def _render_job(job: RenderJob) -> tuple[dict | None, float]:
    """Render, resample and write one note -> (entry or None if silent or clipping, peak)."""
    sf_index, program, pitch, velocity, hold = job
    audio = render_note(program, pitch, velocity, hold, sf_index)
    peak = float(np.max(np.abs(audio)))
    if peak < SILENCE_PEAK:
        return None, peak
    rate = _RENDER["rate"]
    if rate != RENDER_RATE:
        audio = soxr.resample(audio, RENDER_RATE, rate, quality="HQ")
    peak = float(np.max(np.abs(audio)))
    if peak >= 1.0:  # would clip in PCM16; skipped and counted, never scaled (levels stay comparable)
        return None, peak
    family, source = gm_family(program)
    entry = nsynth_entry(family, source, program, pitch, velocity, rate, _RENDER["tags"][sf_index], hold)
    entry["program"] = program
    _write_note(_RENDER["out"], entry, audio)
    return entry, peak


def render_plan(n_soundfonts: int, programs: Sequence[int], pitches: Sequence[int],
                velocities: Sequence[int], holds: Sequence[float], every_velocity: bool = False) -> list[RenderJob]:
    """The notes to render: for each (soundfont, program) every pitch once, with one velocity and
    one hold length each, cycled so every (velocity, hold) pair recurs across the keyboard
    (offset by program and soundfont, so no pitch always gets the same pair).
    ``every_velocity``: every pitch at every velocity instead (holds still cycled)."""
    nv, nh = len(velocities), len(holds)
    if not (nv and nh and len(pitches) and len(programs)):
        raise ValueError("programs, pitches, velocities and holds must not be empty")
    jobs: list[RenderJob] = []
    for s in range(n_soundfonts):
        for g in programs:
            for i, p in enumerate(pitches):
                vels = list(range(nv)) if every_velocity else [(i + g) % nv]
                for j, v in enumerate(vels):
                    h = holds[((i + g) // (1 if every_velocity else nv) + j + s) % nh]
                    jobs.append((s, g, p, velocities[v], float(h)))
    return jobs


def render_soundfont(out: str | Path, soundfonts: str | Sequence[str] = (DEFAULT_SOUNDFONT,),
                     programs: Sequence[int] = DEFAULT_PROGRAMS, pitches: Sequence[int] = DEFAULT_PITCHES,
                     velocities: Sequence[int] = DEFAULT_VELOCITIES, sample_rate: int = 24000,
                     jobs: int | None = None, progress: bool = True,
                     holds: Sequence[float] = RENDER_HOLDS, every_velocity: bool = False) -> dict:
    """Render soundfonts into one NSynth-layout dataset (see :func:`render_plan`); returns stats.

    Instruments are named ``family_source_TAG_PPP`` (TAG from :func:`soundfont_tag`); each entry
    carries ``hold_seconds``, ``soundfont`` and ``program``. Silent notes (missing samples) and
    notes that would clip are skipped and listed in the stats.
    """
    from tqdm import tqdm

    soundfonts = [soundfonts] if isinstance(soundfonts, (str, Path)) else [str(p) for p in soundfonts]
    for path in soundfonts:
        if not Path(path).is_file():
            raise DatasetError(f"{path}: soundfont not found")
    tags = [soundfont_tag(p) for p in soundfonts]
    if len(set(tags)) != len(tags):
        raise DatasetError(f"soundfonts with the same tag: {', '.join(tags)} (rename a file)")
    if sample_rate > RENDER_RATE or sample_rate < MIN_SAMPLE_RATE:
        raise DatasetError(f"--sample-rate {sample_rate} must be in {MIN_SAMPLE_RATE}..{RENDER_RATE}")
    for g in programs:
        gm_family(g)
    for h in holds:
        if not 0 < h <= NOTE_SECONDS:
            raise DatasetError(f"hold {h} s is not in (0, {NOTE_SECONDS:g}]")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    work = render_plan(len(soundfonts), programs, pitches, velocities, holds, every_velocity)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    entries, silent, clipped, peaks = [], [], [], []
    start = time.perf_counter()
    ctx = mp.get_context("spawn")  # fork deadlocks once onnxruntime/numba/torch threads exist
    with ctx.Pool(jobs, _render_init, (soundfonts, str(out), sample_rate)) as pool:
        results = pool.imap(_render_job, work, chunksize=8)
        for job, (entry, peak) in tqdm(zip(work, results), total=len(work), disable=not progress,
                                       desc="render", unit="note"):
            if entry is None:
                (clipped if peak >= 1.0 else silent).append((tags[job[0]],) + job[1:4])
            else:
                entries.append(entry)
                peaks.append(peak)
    seconds = time.perf_counter() - start
    _write_index(out, entries)
    return {"notes": len(entries), "silent_skipped": silent, "clipped_skipped": clipped,
            "seconds": seconds, "notes_per_second": len(work) / seconds,
            "max_peak": max(peaks, default=0.0), "jobs": jobs, "soundfonts": tags}


# ---------------------------------------------------------------------------- CLI

def _int_list(text: str) -> list[int]:
    """``0,4,19`` or ``21-108`` or ``21-108:3`` (every 3rd) or a mix -> list of ints."""
    out: list[int] = []
    for part in text.split(","):
        span, _, step = part.partition(":")
        a, _, b = span.partition("-")
        out.extend(range(int(a), int(b) + 1, int(step or 1)) if b else [int(a)])
    return out


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


RENDER_EPILOG = """\
Each (soundfont, program) gets every listed pitch once, with one velocity and one hold
length cycled over the pitches (every (velocity, hold) pair recurs across the keyboard);
--every-velocity renders each pitch at every velocity instead. Notes a soundfont leaves
silent and notes that would clip are skipped and counted.

The default preset's dataset (4 soundfonts x 112 programs x 30 keys: 13208 sounding notes,
2.4 GB of WAV at 24 kHz, about 3 min on 2 cores; its feature cache takes 4.8 GB more):
  python -m training.data render-soundfont --out data/gm4 \\
      --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2 \\
      --soundfont /usr/share/sounds/sf2/sf_GMbank.sf2 --soundfont /usr/share/sounds/sf2/OPL-3_FM_128M.sf2
"""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render-soundfont", help="render soundfonts into an NSynth-layout dataset",
                       description="Render General MIDI soundfonts into one NSynth-layout dataset "
                                   "(48 kHz render, soxr to --sample-rate, PCM16 WAV, 4 s notes).",
                       epilog=RENDER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--out", required=True, help="dataset folder to write (examples.json + audio/)")
    r.add_argument("--soundfont", action="append", default=None, metavar="PATH",
                   help="a .sf2 file; repeat for several (the first is the reference soundfont "
                        "whose programs name the preset's snapshots). Instrument names carry a tag "
                        "of the file (fluidr3, timgm6mb, gmbank, opl3, else the file name). "
                        f"Default: {DEFAULT_SOUNDFONT}")
    r.add_argument("--programs", type=_int_list, default=list(DEFAULT_PROGRAMS), metavar="LIST",
                   help="0-based GM programs, e.g. '0,4,19' or '0-111' (default: 0-111, every melodic one)")
    r.add_argument("--pitches", type=_int_list, default=list(DEFAULT_PITCHES), metavar="LIST",
                   help="MIDI keys, e.g. '48,60' or '21-108' or '21-108:3' for every 3rd key "
                        "(default: 21-108:3, 30 keys)")
    r.add_argument("--velocities", type=_int_list, default=list(DEFAULT_VELOCITIES), metavar="LIST",
                   help="velocities 1..127, cycled over the pitches (default: 60,100)")
    r.add_argument("--holds", type=_float_list, default=list(RENDER_HOLDS), metavar="LIST",
                   help="key-down seconds within the 4 s note, cycled over the pitches "
                        f"(default: {','.join(f'{h:g}' for h in RENDER_HOLDS)})")
    r.add_argument("--every-velocity", action="store_true",
                   help="render each pitch at every velocity instead of cycling them")
    r.add_argument("--sample-rate", type=int, default=24000, help="WAV rate in Hz (default: 24000)")
    r.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    try:
        stats = render_soundfont(args.out, args.soundfont or [DEFAULT_SOUNDFONT], args.programs, args.pitches,
                                 args.velocities, args.sample_rate, args.jobs, holds=args.holds,
                                 every_velocity=args.every_velocity)
    except (DatasetError, ValueError) as exc:
        return report(exc)
    print(f"wrote {stats['notes']} notes from {', '.join(stats['soundfonts'])} to {args.out} in "
          f"{stats['seconds']:.1f} s ({stats['notes_per_second']:.0f} notes/s on {stats['jobs']} processes), "
          f"skipped {len(stats['silent_skipped'])} silent and {len(stats['clipped_skipped'])} clipping, "
          f"max peak {stats['max_peak']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
