"""Load and validate a preset folder (decoder.onnx, encoder.onnx, preset.toml).

Every problem becomes a :class:`PresetError` with a one-line message that names
the preset folder, so the CLI can print it as is. A preset is untrusted input: its files are
opened through ``synth.model_file`` (bare names inside the folder, bounded sizes, ONNX models
without external data), every ``[audio]`` value is type-checked and bounded before anything is
sized from it, each model's inputs and outputs are checked for name, dtype and rank, and the
decoders and the encoder run once on a few rows at load (NaN or a wrong shape is refused here,
not found in the audio callback).
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from synth.contract import (
    DECODER_CONTRACT,
    DECODER_INPUTS,
    DECODER_OUTPUT,
    DEFAULT_KNOB_TRAVEL,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    ENCODER_PITCH,
    HELD_TIME_OFF,
    KNOB_TRAVEL_RANGE,
    MAX_KEY_LEVEL_DB,
    PRESET_FORMAT_VERSION,
    TONE_HZ,
    SpectrogramParams,
    encoder_feeds,
    gm_group,
)
from synth.key_track import MAX_TRACK_KEYS, key_gain_table, latent_for_key, offset_table, valid_track_keys
from synth.latent_map import LatentMap, LatentMapError, load_latent_map
from synth.model_file import (MAX_MODEL_BYTES, MAX_TOML_BYTES, PresetError, cpu_session, preset_file, read_bounded,
                               read_model)
from synth.tone import TONE_RULE, valid_tone

READ_VERSIONS = (1, 2, 3, 4, 5, PRESET_FORMAT_VERSION)
"""Preset format versions this loader reads: 1 (knobs derived from ``[latent] knob_order``), 2
(``[knobs]`` directions, optional ``[mix]``), 3 (2 plus snapshots' optional key tracking), 4 (3
plus snapshots' optional level per key), 5 (4 plus snapshots' optional tone curve) and the
current one, which export writes (5 plus the encoder's optional pitch input)."""
TRACK_VERSION = 3
"""The first format version whose snapshots may carry ``track_keys`` / ``track_z``."""
KEY_LEVEL_VERSION = 4
"""The first format version whose snapshots may carry ``key_level_keys`` / ``key_level_db``."""
TONE_VERSION = 5
"""The first format version whose snapshots may carry ``tone_db``."""
ENCODER_PITCH_VERSION = 6
"""The first format version whose encoder may take the note's pitch (``ENCODER_PITCH``)."""
MAX_KNOBS = 8
V1_MIX_GAIN = 1.65
"""Output gain for version-1 presets (they have no ``[mix]``): puts the shipped default preset's
velocity-100 single C4 at a median of about -11 dBFS over its snapshots (guitar's pluck, the
loudest attack, at about -6; see README)."""
MAX_MIX_GAIN = 100.0
"""``[mix] gain`` above this (+40 dB) is refused as a broken export."""
ORTHONORMAL_TOL = 1e-3
"""Largest allowed deviation of ``directions @ directions.T`` from the identity."""
MAX_LATENT_MAP_BYTES = 64 << 20
"""``[map] file`` above this is refused unread (synth.latent_map bounds its contents)."""

# Bounds of the [audio] values: what the engine can size its buffers from and still run in real
# time (the default preset: 24 kHz, n_fft 1024, hop 128, 187.5 frames/s, 4 s notes).
SAMPLE_RATE_RANGE = (8000, 96000)
N_FFT_RANGE = (256, 8192)  # a power of two
MAX_REDUNDANCY = 16  # n_fft / hop: 2 .. 16, hop a power of two
MAX_FRAME_RATE = 500.0  # sample_rate / hop: frames each voice decodes per second
LOG_FLOOR_RANGE = (1e-12, 0.1)
MAX_NOTE_SECONDS = 60.0  # note_seconds, hold_seconds and the decoder's release_seconds
MAX_FRAME_STRIDE = 16  # [encoder] frame_stride
TRIAL_ROWS = 4
"""Rows of the trial decode at load: a few pitches, both velocities, held and released."""
# A snapshot's level trim stays within +-12 dB: enough to even out the instruments' loudness,
# never enough to turn a near-silent decode into a burst of noise.
MIN_SNAPSHOT_LEVEL, MAX_SNAPSHOT_LEVEL = 0.25, 4.0


@dataclass(frozen=True)
class Snapshot:
    """A named point of the latent space, recalled by MIDI program change."""

    name: str
    program: int
    z: NDArray[np.float32]  # (L,) its latent at SNAPSHOT_HOME_KEY (knobs, capture and morph start here)
    level: float = 1.0  # linear output trim that evens the snapshots' loudness (optional 'level')
    track: NDArray[np.float32] | None = None  # (128, L) what each key adds to z (synth.key_track); None: nothing
    key_level: NDArray[np.float32] | None = None  # (128,) linear gain of each key's notes (format 4); None: 1
    tone_db: NDArray[np.float64] | None = None  # (P,) its tone curve at TONE_HZ (format 5, synth.tone); None: flat

    def z_at(self, key: float) -> NDArray[np.float32]:
        """``(L,)`` the latent this snapshot plays MIDI key ``key`` at (rounded, as the engine looks it up)."""
        return latent_for_key(self.z, self.track, key)

    def key_gain(self) -> NDArray[np.float32]:
        """``(128,)`` the linear gain of each key's notes: its level trim times its level per key, as a
        program change plays it (within ±MAX_KEY_LEVEL_DB: the bound a timbre slot takes)."""
        gain = np.full(128, self.level, np.float64) * (1.0 if self.key_level is None else self.key_level)
        bound = 10.0 ** (MAX_KEY_LEVEL_DB / 20.0)
        return np.clip(gain, 1.0 / bound, bound).astype(np.float32)


@dataclass(frozen=True)
class KnobMap:
    """The K = min(8, L) timbre knobs: knob i at u in -1..1 puts the timbre at
    ``center + travel[i] * scale[i] * u`` along ``directions[i]`` (orthonormal rows, most variance
    first). ``scale`` is the posterior's std along the direction; ``travel`` (std units) is
    ``DEFAULT_KNOB_TRAVEL`` unless the preset widens a weak knob (``[knobs] travel``)."""

    center: NDArray[np.float64]  # (L,)
    directions: NDArray[np.float64]  # (K, L)
    scale: NDArray[np.float64]  # (K,)
    travel: NDArray[np.float64]  # (K,)

    @property
    def count(self) -> int:
        return int(self.directions.shape[0])

    @property
    def step(self) -> NDArray[np.float64]:
        """``(K,)`` latent distance from a knob's center to either end of its travel."""
        return self.travel * self.scale

    def coordinates(self, z: NDArray) -> NDArray[np.float64]:
        """Knob coordinates (-1..1 spans each knob's travel) of latent(s) ``z (..., L)`` -> ``(..., K)``."""
        return (np.asarray(z, np.float64) - self.center) @ self.directions.T / self.step

    def move(self, z: NDArray, knob: int, u: float | NDArray) -> NDArray[np.float32]:
        """``z (L,)`` with knob ``knob`` set to ``u`` (scalar or ``(n,)``) -> ``(L,)`` or ``(n, L)``."""
        d = self.directions[knob]
        z64 = np.asarray(z, np.float64)
        base = z64 - ((z64 - self.center) @ d) * d
        u = np.asarray(u, np.float64)
        return (base + (u[..., None] if u.ndim else u) * self.step[knob] * d).astype(np.float32)


def program_map(snapshots: list[Snapshot]) -> tuple[int, ...]:
    """Snapshot index for each MIDI program 0..127 (all -1 when there are no snapshots).

    Program p recalls the snapshot whose program is p; else the nearest-numbered snapshot in
    p's General MIDI group (``gm_group``: p // 8); else the nearest-numbered one overall.
    Ties go to the lower program number, then to the earlier snapshot.
    """
    def closest(p: int, pool: list[int] | range) -> int:
        return min(pool, key=lambda i: (abs(snapshots[i].program - p), snapshots[i].program, i), default=-1)

    return tuple(closest(p, [i for i, s in enumerate(snapshots) if gm_group(s.program) == gm_group(p)]
                         or range(len(snapshots))) for p in range(128))


@dataclass(frozen=True)
class Preset:
    root: Path
    name: str
    description: str
    params: SpectrogramParams
    latent_size: int
    latent_mean: NDArray[np.float32]  # (L,)
    latent_std: NDArray[np.float32]  # (L,)
    knob_order: list[int]  # the latent dim each knob leans on most (v1: [latent] knob_order[:K])
    pitch_min: float
    pitch_max: float
    decoder_path: Path
    decoder_parts_path: Path | None  # optional: the decoder before its geometry (synth.partials)
    encoder_path: Path
    time_on_max: float
    release_seconds: float
    encoder_frame_stride: int
    knobs: KnobMap
    format_version: int = PRESET_FORMAT_VERSION
    mix_gain: float = 1.0  # linear output gain before the limiter ([mix] gain; V1_MIX_GAIN for v1)
    snapshots: list[Snapshot] = field(default_factory=list)
    programs: tuple[int, ...] = ()  # program 0..127 -> snapshot index (see program_map), -1 for none
    latent_map: LatentMap | None = None  # optional [map] file: a sample of the training posteriors

    def snapshot_for_program(self, program: int) -> Snapshot | None:
        """The snapshot program change ``program`` recalls (see :func:`program_map`), None if none."""
        if not 0 <= program < len(self.programs) or self.programs[program] < 0:
            return None
        return self.snapshots[self.programs[program]]


def _table(doc: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise PresetError(f"{where}: missing [{name}] table")
    return value


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise PresetError(f"{where}: missing key '{key}'")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise PresetError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _vector(table: dict[str, Any], key: str, size: int, where: str) -> NDArray[np.float32]:
    values = _get(table, key, list, where)
    if len(values) != size or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise PresetError(f"{where}: '{key}' must be {size} numbers")
    arr = np.asarray([_as_float(v) for v in values], dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise PresetError(f"{where}: '{key}' holds NaN or Inf")
    return arr


def _read_toml(root: Path) -> dict[str, Any]:
    if not (root / "preset.toml").exists() and not (root / "preset.toml").is_symlink():
        raise PresetError(f"{root}: not a preset (no preset.toml)")
    path = preset_file(root, "preset.toml", f"{root}: preset.toml", MAX_TOML_BYTES)
    try:
        return tomllib.loads(read_bounded(path, MAX_TOML_BYTES).decode("utf-8"))
    except UnicodeDecodeError:
        raise PresetError(f"{path}: not valid TOML (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path}: not valid TOML ({str(exc).splitlines()[0][:160]})") from None
    except RecursionError:
        raise PresetError(f"{path}: not valid TOML (nested too deeply)") from None


def _as_float(value: int | float) -> float:
    """``float(value)``; an integer too large for a float becomes inf (then refused as out of range)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _number(table: dict[str, Any], key: str, where: str, low: float, high: float, integer: bool = False) -> Any:
    """``table[key]``: an int (``integer``) or a finite int/float, within ``low..high``."""
    kind = "an integer" if integer else "a number"
    if key not in table:
        raise PresetError(f"{where}: missing key '{key}'")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise PresetError(f"{where}: '{key}' must be {kind}, not {type(value).__name__} {value!r:.40}")
    if not (math.isfinite(_as_float(value)) and low <= value <= high):
        raise PresetError(f"{where}: '{key}' = {value!r:.40} outside {low:g}..{high:g}")
    return value


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _audio_params(table: dict[str, Any], where: str) -> SpectrogramParams:
    """``[audio]`` (missing keys take the contract's defaults), type-checked and bounded."""
    w = f"{where} [audio]"
    known = SpectrogramParams.__dataclass_fields__
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise PresetError(f"{w}: unknown audio parameter(s): {', '.join(unknown)}")
    d = {**SpectrogramParams().to_dict(), **table}
    sr = _number(d, "sample_rate", w, *SAMPLE_RATE_RANGE, integer=True)
    n_fft = _number(d, "n_fft", w, *N_FFT_RANGE, integer=True)
    if not _power_of_two(n_fft):
        raise PresetError(f"{w}: 'n_fft' = {n_fft} must be a power of two")
    hop = _number(d, "hop", w, n_fft // MAX_REDUNDANCY, n_fft // 2, integer=True)
    if not _power_of_two(hop):
        raise PresetError(f"{w}: 'hop' = {hop} must be a power of two dividing n_fft {n_fft}")
    if sr / hop > MAX_FRAME_RATE:
        raise PresetError(f"{w}: sample_rate / hop = {sr / hop:g} frames/s, more than {MAX_FRAME_RATE:g}")
    if not isinstance(d["window"], str) or d["window"] != "hann":
        raise PresetError(f"{w}: 'window' = {d['window']!r:.40} is not supported (only 'hann')")
    log_floor = _number(d, "log_floor", w, *LOG_FLOOR_RANGE)
    note = _number(d, "note_seconds", w, 0.5, MAX_NOTE_SECONDS)
    hold = _number(d, "hold_seconds", w, 0.0, note)
    if hold <= 0:
        raise PresetError(f"{w}: 'hold_seconds' must be positive")
    params = SpectrogramParams(sample_rate=sr, n_fft=n_fft, hop=hop, window="hann", log_floor=float(log_floor),
                               note_seconds=float(note), hold_seconds=float(hold))
    params.validate()  # the contract's own rules (implied by the bounds above)
    return params


TensorSpec = tuple[int, int | None]
"""(rank, fixed last dimension or None) of one model input or output; all are float32."""


def _session(path: Path) -> Any:
    """An onnxruntime CPU session over the checked bytes of ``path`` (see synth.model_file)."""
    model = read_model(path)
    try:
        return cpu_session(model)
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PresetError(f"{path}: not a loadable ONNX model ({first[:160]})") from None


def _check_io(sess: Any, path: Path, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec],
              dynamic_batch: bool) -> None:
    """Names (inputs exactly, outputs at least), float32 dtype, rank and fixed last dims."""
    got_in = {a.name: a for a in sess.get_inputs()}
    got_out = {a.name: a for a in sess.get_outputs()}
    if set(got_in) != set(inputs) or not set(outputs) <= set(got_out):
        raise PresetError(f"{path}: inputs {tuple(got_in)} / outputs {tuple(got_out)}, "
                          f"expected {tuple(inputs)} / {tuple(outputs)}")
    for name, (rank, last) in [*inputs.items(), *outputs.items()]:
        arg = got_in.get(name) or got_out[name]
        if arg.type != "tensor(float)":
            raise PresetError(f"{path}: '{name}' is {arg.type}, expected tensor(float) (float32)")
        shape = arg.shape
        if not isinstance(shape, list) or len(shape) != rank:
            raise PresetError(f"{path}: '{name}' has rank {len(shape) if isinstance(shape, list) else '?'}, "
                              f"expected {rank}")
        if last is not None and rank > 1 and isinstance(shape[-1], int) and shape[-1] != last:
            raise PresetError(f"{path}: '{name}' has last dimension {shape[-1]}, the preset says {last}")
        if dynamic_batch and isinstance(shape[0], int):
            raise PresetError(f"{path}: '{name}' has a fixed batch dimension {shape[0]}; the engine decodes "
                              "batches of any size (re-export with a dynamic batch)")


def _trial_feeds(preset: "Preset") -> dict[str, NDArray[np.float32]]:
    """``TRIAL_ROWS`` decoder rows a player meets: mean and snapshot timbres, pitches in the
    middle of the preset's range, both velocities, early and held, held and just released."""
    rows = TRIAL_ROWS
    z = np.tile(preset.latent_mean, (rows, 1))
    for i, snap in enumerate(preset.snapshots[: rows - 1]):
        z[i + 1] = snap.z
    mid = (preset.pitch_min + preset.pitch_max) / 2
    pitch = np.clip([60.0, 72.0, 48.0, mid], preset.pitch_min, preset.pitch_max)
    return {"z": np.ascontiguousarray(z, np.float32),
            "pitch": pitch.astype(np.float32),
            "velocity": np.array([100, 64, 100, 64], np.float32),
            "time_on": np.array([0.05, preset.time_on_max, 0.3, preset.time_on_max / 2], np.float32),
            "time_off": np.array([HELD_TIME_OFF, HELD_TIME_OFF, 0.05, min(0.2, preset.release_seconds)], np.float32)}


def _trial_run(sess: Any, path: Path, feeds: dict[str, NDArray], expect: dict[str, tuple[int, ...]]) -> None:
    """Run ``sess`` once; every output in ``expect`` must have that shape and be finite."""
    names = list(expect)
    try:
        got = sess.run(names, feeds)
    except Exception as exc:  # onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PresetError(f"{path}: the trial run at load failed ({first[:160]})") from None
    for name, value in zip(names, got):
        if not isinstance(value, np.ndarray) or value.shape != expect[name]:
            shape = getattr(value, "shape", type(value).__name__)
            raise PresetError(f"{path}: the trial run gave '{name}' of shape {shape}, expected {expect[name]}")
        if not np.all(np.isfinite(value)):
            raise PresetError(f"{path}: the trial run gave NaN or Inf in '{name}' (a broken export)")


def _check_models(preset: "Preset") -> None:
    """Open, check and trial-run the decoder, the parts decoder (if any) and the encoder."""
    from synth.partials import PARTS_OUTPUTS

    size, bins, rows = preset.latent_size, preset.params.n_bins, TRIAL_ROWS
    dec_inputs: dict[str, TensorSpec] = {name: (1, None) for name in DECODER_INPUTS}
    dec_inputs["z"] = (2, size)
    feeds = _trial_feeds(preset)
    sess = _session(preset.decoder_path)
    _check_io(sess, preset.decoder_path, dec_inputs, {DECODER_OUTPUT: (2, bins)}, dynamic_batch=True)
    _trial_run(sess, preset.decoder_path, feeds, {DECODER_OUTPUT: (rows, bins)})
    if preset.decoder_parts_path is not None:
        path = preset.decoder_parts_path
        amp, inharm, noise = PARTS_OUTPUTS
        sess = _session(path)
        _check_io(sess, path, dec_inputs, {amp: (2, None), inharm: (1, None), noise: (2, bins)}, dynamic_batch=True)
        harmonics = next(a.shape[-1] for a in sess.get_outputs() if a.name == amp)
        if not isinstance(harmonics, int) or not 1 <= harmonics <= bins:
            raise PresetError(f"{path}: '{amp}' must have a fixed number of partials 1..{bins}, not {harmonics!r}")
        _trial_run(sess, path, feeds, {amp: (rows, harmonics), inharm: (rows,), noise: (rows, bins)})
    path = preset.encoder_path
    sess = _session(path)
    enc_inputs: dict[str, TensorSpec] = {ENCODER_INPUT: (3, bins)}
    if preset.format_version >= ENCODER_PITCH_VERSION and ENCODER_PITCH in {a.name for a in sess.get_inputs()}:
        enc_inputs[ENCODER_PITCH] = (1, None)
    _check_io(sess, path, enc_inputs, {name: (2, size) for name in ENCODER_OUTPUTS}, dynamic_batch=False)
    frames = -(-preset.params.frames_per_note // preset.encoder_frame_stride)
    note = np.full((1, frames, bins), math.log(preset.params.log_floor), np.float32)
    note[0, :, 1 : bins // 8] += 3.0  # some energy, so a real encoder sees a note rather than silence
    _trial_run(sess, path, encoder_feeds(sess, note, [60.0]), {name: (1, size) for name in ENCODER_OUTPUTS})


def _model_file(root: Path, table: dict[str, Any], key: str, where: str, max_bytes: int = MAX_MODEL_BYTES) -> Path:
    """A file named by the preset: a plain file name inside the preset folder (never an absolute
    path or a way out of it, whatever a downloaded preset says), checked by synth.model_file."""
    return preset_file(root, _get(table, key, str, where), f"{where}: '{key}'", max_bytes)


def _latent_map(root: Path, doc: dict[str, Any], size: int, where: str) -> LatentMap | None:
    """The optional ``[map] file`` (see synth.latent_map); None when the preset has none."""
    if "map" not in doc:
        return None
    path = _model_file(root, _table(doc, "map", Path(where)), "file", f"{where} [map]", MAX_LATENT_MAP_BYTES)
    try:
        return load_latent_map(path, size)
    except LatentMapError as exc:
        raise PresetError(str(exc)) from None


def _per_key(s: dict[str, Any], keys_name: str, values_name: str, since: int, version: int,
             w: str) -> tuple[list[int], list[Any]] | None:
    """A snapshot's optional values given at keys (``keys_name``: 1..MAX_TRACK_KEYS increasing MIDI
    keys, ``values_name``: a list), allowed from format ``since``; None when it has neither."""
    if keys_name not in s and values_name not in s:
        return None
    if version < since:
        raise PresetError(f"{w}: '{keys_name}' needs format_version {since} or later")
    keys = _get(s, keys_name, list, w)
    values = _get(s, values_name, list, w)
    if not valid_track_keys(keys):
        raise PresetError(f"{w}: '{keys_name}' must be 1..{MAX_TRACK_KEYS} increasing keys in 0..127")
    return keys, values


def _track(s: dict[str, Any], size: int, z: NDArray[np.float32], version: int, w: str) -> NDArray[np.float32] | None:
    """A snapshot's optional key tracking -> its ``(128, L)`` offset table (synth.key_track), None without."""
    given = _per_key(s, "track_keys", "track_z", TRACK_VERSION, version, w)
    if given is None:
        return None
    keys, rows = given
    if len(rows) != len(keys):
        raise PresetError(f"{w}: 'track_z' must hold one latent per track key ({len(keys)})")
    track_z = np.stack([_vector({"track_z": r}, "track_z", size, w) for r in rows])
    return offset_table(keys, track_z, z)


def _snapshots(doc: dict[str, Any], size: int, version: int, where: str) -> list[Snapshot]:
    raw = doc.get("snapshots", [])
    if not isinstance(raw, list):
        raise PresetError(f"{where}: 'snapshots' must be an array of tables")
    snaps = []
    for i, s in enumerate(raw):
        w = f"{where} [[snapshots]] #{i + 1}"
        if not isinstance(s, dict):
            raise PresetError(f"{w}: not a table")
        program = _get(s, "program", int, w)
        if not 0 <= program <= 127:
            raise PresetError(f"{w}: program {program} outside 0..127")
        level = _as_float(_get(s, "level", (int, float), w)) if "level" in s else 1.0
        if not (MIN_SNAPSHOT_LEVEL <= level <= MAX_SNAPSHOT_LEVEL):
            raise PresetError(f"{w}: level {level} outside {MIN_SNAPSHOT_LEVEL}..{MAX_SNAPSHOT_LEVEL}")
        z = _vector(s, "z", size, w)
        snaps.append(Snapshot(_get(s, "name", str, w), program, z, level, _track(s, size, z, version, w),
                              _key_level(s, version, w), _tone(s, version, w)))
    return snaps


def _tone(s: dict[str, Any], version: int, w: str) -> NDArray[np.float64] | None:
    """A snapshot's optional tone curve (``tone_db``: one gain per TONE_HZ point), None without."""
    if "tone_db" not in s:
        return None
    if version < TONE_VERSION:
        raise PresetError(f"{w}: 'tone_db' needs format_version {TONE_VERSION} or later")
    values = _get(s, "tone_db", list, w)
    if not valid_tone(values):
        raise PresetError(f"{w}: 'tone_db' must hold {TONE_RULE} (at {', '.join(f'{hz:g}' for hz in TONE_HZ)} Hz)")
    return np.asarray(values, np.float64)


def _key_level(s: dict[str, Any], version: int, w: str) -> NDArray[np.float32] | None:
    """A snapshot's optional level per key -> its ``(128,)`` linear gain table (synth.key_track), None without."""
    given = _per_key(s, "key_level_keys", "key_level_db", KEY_LEVEL_VERSION, version, w)
    if given is None:
        return None
    keys, db = given
    values = [_as_float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in db]
    if len(values) != len(keys) or not all(abs(v) <= MAX_KEY_LEVEL_DB for v in values):
        raise PresetError(f"{w}: 'key_level_db' must hold one level in -{MAX_KEY_LEVEL_DB:g}..{MAX_KEY_LEVEL_DB:g} dB "
                          f"per key ({len(keys)})")
    return key_gain_table(keys, values)


def _v1_knobs(latent: dict[str, Any], mean: NDArray, std: NDArray, w: str) -> KnobMap:
    """Version 1: knob i moves latent dim ``knob_order[i]`` over mean +- 3 std."""
    size = mean.shape[0]
    knob_order = _get(latent, "knob_order", list, w)
    integers = all(isinstance(k, int) and not isinstance(k, bool) for k in knob_order)
    if not integers or sorted(knob_order) != list(range(size)):
        raise PresetError(f"{w}: knob_order must be a permutation of 0..{size - 1}")
    dims = knob_order[:MAX_KNOBS]
    directions = np.zeros((len(dims), size))
    directions[np.arange(len(dims)), dims] = 1.0
    return KnobMap(mean.astype(np.float64), directions, std[dims].astype(np.float64),
                   np.full(len(dims), DEFAULT_KNOB_TRAVEL))


def _knobs(table: dict[str, Any], size: int, w: str) -> KnobMap:
    """Version 2 ``[knobs]``: center (L,), K = min(8, L) orthonormal direction rows, K positive scales."""
    w = f"{w} [knobs]"
    k = min(MAX_KNOBS, size)
    rows = _get(table, "directions", list, w)
    if len(rows) != k:
        raise PresetError(f"{w}: 'directions' must have {k} rows (min(8, latent size)), got {len(rows)}")
    directions = np.stack([_vector({"directions": r}, "directions", size, f"{w} row {i + 1}")
                           for i, r in enumerate(rows)]).astype(np.float64)
    gram_error = float(np.abs(directions @ directions.T - np.eye(k)).max())
    if gram_error > ORTHONORMAL_TOL:
        raise PresetError(f"{w}: 'directions' rows are not orthonormal (off by {gram_error:.2g})")
    scale = _vector(table, "scale", k, w).astype(np.float64)
    if np.any(scale <= 0):
        raise PresetError(f"{w}: 'scale' must be positive")
    travel = np.full(k, DEFAULT_KNOB_TRAVEL)
    if "travel" in table:
        travel = _vector(table, "travel", k, w).astype(np.float64)
        low, high = KNOB_TRAVEL_RANGE
        if np.any(travel < low) or np.any(travel > high):
            raise PresetError(f"{w}: 'travel' must lie in {low:g}..{high:g} (std units)")
    return KnobMap(_vector(table, "center", size, w).astype(np.float64), directions, scale, travel)


def _mix_gain(doc: dict[str, Any], w: str) -> float:
    """Optional ``[mix] gain`` (linear), 1.0 when absent."""
    if "mix" not in doc:
        return 1.0
    gain = _as_float(_get(_table(doc, "mix", Path(w)), "gain", (int, float), f"{w} [mix]"))
    if not (math.isfinite(gain) and 0 < gain <= MAX_MIX_GAIN):
        raise PresetError(f"{w} [mix]: gain {gain} must be a finite number in (0, {MAX_MIX_GAIN:g}]")
    return gain


def load_preset(path: str | Path, check_models: bool = True) -> Preset:
    """Read and validate a preset folder; raises :class:`PresetError` with a one-line message."""
    root = Path(path)
    if not root.is_dir():
        raise PresetError(f"{root}: preset folder not found")
    toml_path = root / "preset.toml"
    doc = _read_toml(root)
    w = str(toml_path)
    meta = _table(doc, "preset", toml_path)
    version = _get(meta, "format_version", int, w)
    if version not in READ_VERSIONS:
        readable = ", ".join(str(v) for v in READ_VERSIONS[:-1]) + f" and {READ_VERSIONS[-1]}"
        raise PresetError(f"{w}: format_version {version} is not supported (this engine reads {readable}); "
                          f"re-export the preset with python -m export.onnx")
    params = _audio_params(_table(doc, "audio", toml_path), w)
    latent = _table(doc, "latent", toml_path)
    size = _get(latent, "size", int, w)
    if not 1 <= size <= 256:
        raise PresetError(f"{w}: latent size {size} outside 1..256")
    std = _vector(latent, "std", size, w)
    if np.any(std <= 0):
        raise PresetError(f"{w}: latent std must be positive")
    mean = _vector(latent, "mean", size, w)
    if version == 1:
        knobs, mix_gain = _v1_knobs(latent, mean, std, w), V1_MIX_GAIN
    else:
        knobs, mix_gain = _knobs(_table(doc, "knobs", toml_path), size, w), _mix_gain(doc, w)
    knob_order = [int(np.argmax(np.abs(d))) for d in knobs.directions]
    pitch = _table(doc, "pitch", toml_path)
    pmin, pmax = (_as_float(_get(pitch, key, (int, float), w)) for key in ("min", "max"))
    if not 0 <= pmin < pmax <= 127:  # NaN fails too
        raise PresetError(f"{w}: pitch range {pmin}..{pmax} invalid")
    dec = _table(doc, "decoder", toml_path)
    contract = _get(dec, "contract", str, w)
    if contract != DECODER_CONTRACT:
        raise PresetError(f"{w}: decoder contract '{contract}' is not supported (expected {DECODER_CONTRACT})")
    enc = _table(doc, "encoder", toml_path)
    snaps = _snapshots(doc, size, version, w)
    preset = Preset(
        root=root,
        name=_get(meta, "name", str, w),
        description=str(meta.get("description", "")),
        params=params,
        latent_size=size,
        latent_mean=mean,
        latent_std=std,
        knob_order=knob_order,
        pitch_min=pmin,
        pitch_max=pmax,
        decoder_path=_model_file(root, dec, "file", f"{w} [decoder]"),
        decoder_parts_path=_model_file(root, dec, "parts_file", f"{w} [decoder]") if "parts_file" in dec else None,
        encoder_path=_model_file(root, enc, "file", f"{w} [encoder]"),
        time_on_max=float(_number(dec, "time_on_max", f"{w} [decoder]", 1e-3, params.note_seconds)),
        release_seconds=float(_number(dec, "release_seconds", f"{w} [decoder]", 1e-3, MAX_NOTE_SECONDS)),
        encoder_frame_stride=_number(enc, "frame_stride", f"{w} [encoder]", 1, MAX_FRAME_STRIDE, integer=True),
        knobs=knobs,
        format_version=version,
        mix_gain=mix_gain,
        snapshots=snaps,
        programs=program_map(snaps),
        latent_map=_latent_map(root, doc, size, w),
    )
    if check_models:
        _check_models(preset)
    return preset
