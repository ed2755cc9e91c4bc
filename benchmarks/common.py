"""Shared helpers for the benchmark scripts.

Markdown tables go to stdout, progress to stderr; every failure a user can cause becomes a
:class:`BenchmarkError` whose one-line message :func:`run_main` prints. The decoder is driven
straight through onnxruntime with the "framewise-v1" times the engine uses, and basic-pitch
runs its ONNX model (no TensorFlow).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from synth.contract import SpectrogramParams, encoder_feeds
from synth.errors import VaesynthError, run_command
from synth.preset import Preset, PresetError, load_preset
from synth.stft import frame_times

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PRESET = REPO / "presets" / "default"
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
RENDER_RATE = 48000  # FluidR3 and engine renders


class BenchmarkError(VaesynthError):
    """A benchmark that cannot run; the message is one line for the user."""


def log(message: str) -> None:
    """Progress line on stderr (stdout carries only the tables)."""
    print(message, file=sys.stderr, flush=True)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain markdown table; floats keep the formatting the caller gave them."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, table has {len(headers)} columns")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def rms_envelope_1ms(x: NDArray, rate: int = RENDER_RATE) -> NDArray[np.float64]:
    """Centred 1 ms RMS envelope of a mono signal ``(N,)`` -> ``(N,)``."""
    n = rate // 1000
    x = np.asarray(x, np.float64)
    return np.sqrt(np.convolve(x * x, np.ones(n) / n, "same"))


def frames_to_within_20db(x: NDArray, start: int, span: int, rate: int = RENDER_RATE) -> int:
    """Frames from ``start`` until the 1 ms RMS envelope of mono ``x`` first reaches 20 dB below
    its peak within ``span`` frames: the attack a player feels."""
    env = rms_envelope_1ms(x[start:start + span], rate)
    return int(np.argmax(env >= 0.1 * env.max()))


def run_main(body: Callable[[], int]) -> int:
    """Run a script body; known failures become ``error: ...`` on stderr and exit code 2."""
    return run_command(body)  # BenchmarkError, PresetError...: VaesynthError


def chosen_sections(text: str, known: Sequence[str]) -> list[str]:
    """A ``--sections`` comma list -> its names; one unknown is a one-line error."""
    sections = [s for s in text.split(",") if s]
    bad = set(sections) - set(known)
    if bad:
        raise BenchmarkError(f"unknown section(s): {', '.join(sorted(bad))}")
    return sections


def open_preset(path: str | Path) -> Preset:
    """Load a preset; a missing or unreadable one is one line."""
    try:
        return load_preset(path)
    except PresetError as exc:
        raise BenchmarkError(str(exc)) from None


def split_settings(run_dir: str | None, val_fraction: float, seed: int) -> tuple[float, int]:
    """(val_fraction, seed) from the run's config.toml [train] when given, else the arguments."""
    if run_dir is None:
        return val_fraction, seed
    path = Path(run_dir) / "config.toml"
    try:
        train = tomllib.loads(path.read_text()).get("train", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BenchmarkError(f"{path}: cannot read the run's config ({exc})") from None
    return float(train.get("val_fraction", val_fraction)), int(train.get("seed", seed))


# ---------------------------------------------------------------------------- decoder

def _session(path: Path, threads: int) -> "object":
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class PresetModels:
    """The preset's encoder and decoder as CPU onnxruntime sessions."""

    def __init__(self, preset: Preset, threads: int = 1) -> None:
        self.preset = preset
        self.params = preset.params
        self._enc = _session(preset.encoder_path, threads)
        self._dec = _session(preset.decoder_path, threads)

    def encode(self, log_mag: NDArray, pitch: float) -> NDArray[np.float32]:
        """Whole-note log-mag at the encoder's frame stride ``(T, F)`` at MIDI ``pitch`` -> ``mu (L,)``."""
        feeds = encoder_feeds(self._enc, np.asarray(log_mag, np.float32)[None], np.array([pitch]))
        mu, _ = self._enc.run(["mu", "logvar"], feeds)
        return np.asarray(mu[0], np.float32)

    def decode(self, z: NDArray, pitch: float, velocity: float, time_on: NDArray,
               time_off: NDArray, batch: int = 256) -> NDArray[np.float32]:
        """One note's frames: ``z (L,)``, times ``(T,)`` -> ``log_mag (T, F)``."""
        n = len(time_on)
        out = np.empty((n, self.params.n_bins), np.float32)
        for a in range(0, n, batch):
            b = min(n, a + batch)
            feeds = {
                "z": np.repeat(np.asarray(z, np.float32)[None], b - a, axis=0),
                "pitch": np.full(b - a, pitch, np.float32),
                "velocity": np.full(b - a, velocity, np.float32),
                "time_on": np.asarray(time_on[a:b], np.float32),
                "time_off": np.asarray(time_off[a:b], np.float32),
            }
            out[a:b] = self._dec.run(["log_mag"], feeds)[0]
        return out

    def decode_note(self, z: NDArray, pitch: float, velocity: float, n_frames: int,
                    hold_seconds: float | None = None) -> NDArray[np.float32]:
        """Every frame (stride 1) of a note held ``hold_seconds`` -> ``log_mag (n_frames, F)``."""
        on, off = frame_times(self.params, n_frames, 1, self.preset.time_on_max, hold_seconds)
        return self.decode(z, pitch, velocity, on, off)


def magnitude_convergence_db(reference_mag: NDArray, estimate_mag: NDArray) -> float:
    """20 log10(||S - Ŝ|| / ||S||) on magnitudes (no phase involved); lower is better."""
    t = min(len(reference_mag), len(estimate_mag))
    err = max(float(np.linalg.norm(reference_mag[:t] - estimate_mag[:t])), 1e-30)
    return float(20 * np.log10(err / max(float(np.linalg.norm(reference_mag[:t])), 1e-12)))


def latent_draws(preset: Preset, n: int, rng: np.random.Generator, spread: float = 2.0) -> NDArray[np.float32]:
    """``n`` latents uniform within mean ± spread·std -> ``(n, L)``."""
    u = rng.uniform(-spread, spread, (n, preset.latent_size))
    return (preset.latent_mean + u * preset.latent_std).astype(np.float32)


# ---------------------------------------------------------------------------- FluidR3

def render_fluidsynth(midi_path: Path, tail_seconds: float = 2.0) -> NDArray[np.float32]:
    """FluidR3 render of a MIDI file at 48 kHz (reverb, chorus off) -> mono float32."""
    import fluidsynth
    import mido

    if not Path(SOUNDFONT).is_file():
        raise BenchmarkError(f"{SOUNDFONT}: soundfont not found (Debian package fluid-soundfont-gm)")
    synth = fluidsynth.Synth(gain=1.0, samplerate=float(RENDER_RATE))
    synth.setting("synth.reverb.active", 0)
    synth.setting("synth.chorus.active", 0)
    sfid = synth.sfload(SOUNDFONT)
    for ch in range(16):
        synth.program_select(ch, sfid, 0, 0)
    chunks, clock, written = [], 0.0, 0
    for msg in mido.MidiFile(str(midi_path)):  # iteration gives delta times in seconds
        clock += msg.time
        n = int(round(clock * RENDER_RATE)) - written
        if n > 0:
            chunks.append(synth.get_samples(n))
            written += n
        if msg.type == "note_on" and msg.velocity > 0:
            synth.noteon(msg.channel, msg.note, msg.velocity)
        elif msg.type in ("note_on", "note_off"):
            synth.noteoff(msg.channel, msg.note)
        elif msg.type == "program_change":
            synth.program_select(msg.channel, sfid, 0, msg.program)
    chunks.append(synth.get_samples(int(tail_seconds * RENDER_RATE)))
    synth.delete()
    stereo = np.concatenate(chunks).astype(np.float32).reshape(-1, 2) / 32768.0
    return stereo.mean(axis=1)


def write_note_sequence(path: Path, notes: Sequence[tuple[float, float, int, int]], program: int) -> None:
    """``(start s, end s, pitch, velocity)`` notes -> a one-channel MIDI file on ``program``."""
    import mido

    tpb, tempo = 480, 500000  # 960 ticks per second
    events = [(0, mido.Message("program_change", program=program))]
    for start, end, pitch, vel in notes:
        events += [(round(start * 960), mido.Message("note_on", note=pitch, velocity=vel)),
                   (round(end * 960), mido.Message("note_off", note=pitch, velocity=0))]
    events.sort(key=lambda e: (e[0], e[1].type == "note_on"))  # offs before ons at a tie
    track, now = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo)]), 0
    for tick, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    mid = mido.MidiFile(type=0, ticks_per_beat=tpb)
    mid.tracks.append(track)
    mid.save(str(path))


# ---------------------------------------------------------------------------- transcription

@dataclass(frozen=True)
class Note:
    """A transcribed note: seconds, MIDI pitch, basic-pitch amplitude (0..1)."""

    start: float
    end: float
    pitch: int
    amplitude: float

    @property
    def strength(self) -> float:
        return self.amplitude * (self.end - self.start)


_BASIC_PITCH: dict = {}


def _basic_pitch_model() -> "object":
    """basic-pitch's ICASSP 2022 model, ONNX variant (onnxruntime; TensorFlow is not needed)."""
    if "model" not in _BASIC_PITCH:
        logging.getLogger().setLevel(logging.ERROR)  # "Tensorflow is not installed" is expected
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            try:
                import resampy  # noqa: F401  (its pkg_resources warning, silenced here once)
                from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
                from basic_pitch.inference import Model
            except ImportError as exc:
                raise BenchmarkError(f"basic-pitch is not installed ({exc}); install it with "
                                     "`pip install --no-deps basic-pitch==0.4.0` and its needs") from None
            _BASIC_PITCH["model"] = Model(build_icassp_2022_model_path(FilenameSuffix.onnx))
    return _BASIC_PITCH["model"]


def transcribe(audio: NDArray, sample_rate: int) -> list[Note]:
    """Mono audio -> basic-pitch notes (default thresholds), sorted by start."""
    model = _basic_pitch_model()
    from basic_pitch.inference import predict  # imported (quietly) by _basic_pitch_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audio.wav"
        sf.write(str(path), np.asarray(audio, np.float32), sample_rate, subtype="FLOAT")
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            _, _, events = predict(str(path), model)
    notes = [Note(float(e[0]), float(e[1]), int(e[2]), float(e[3])) for e in events]
    return sorted(notes, key=lambda n: n.start)


def strongest_note(notes: Sequence[Note], start: float = -np.inf, end: float = np.inf) -> Note | None:
    """The note starting in ``[start, end)`` with the largest amplitude × duration, or None."""
    inside = [n for n in notes if start <= n.start < end]
    return max(inside, key=lambda n: n.strength) if inside else None


def classify_pitch(requested: int, got: int | None) -> str:
    """'exact', 'octave' (a nonzero multiple of 12 off), 'missed' or 'other'."""
    if got is None:
        return "missed"
    if got == requested:
        return "exact"
    return "octave" if (got - requested) % 12 == 0 else "other"


def reconstruct_audio(log_mag: NDArray, params: SpectrogramParams) -> NDArray[np.float64]:
    """Decoded ``(T, F)`` log-mag -> audio through the engine's streaming RTPGHI (synth.phase)."""
    from synth.phase import reconstruct

    return reconstruct(np.asarray(log_mag, np.float32), params)
