"""Load and validate a preset folder (decoder.onnx, encoder.onnx, preset.toml).

Every problem becomes a :class:`PresetError` with a one-line message that names
the preset folder, so the CLI can print it as is.
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
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    PRESET_FORMAT_VERSION,
    SpectrogramParams,
    gm_group,
)
from synth.errors import VaesynthError
from synth.latent_map import LatentMap, LatentMapError, load_latent_map

READ_VERSIONS = (1, PRESET_FORMAT_VERSION)
"""Preset format versions this loader reads: 1 (knobs derived from ``[latent] knob_order``) and
the current one, which export writes (``[knobs]`` directions, optional ``[mix]``)."""
MAX_KNOBS = 8
V1_MIX_GAIN = 1.65
"""Output gain for version-1 presets (they have no ``[mix]``): puts the shipped default preset's
velocity-100 single C4 at a median of about -11 dBFS over its snapshots (guitar's pluck, the
loudest attack, at about -6; see README)."""
MAX_MIX_GAIN = 100.0
"""``[mix] gain`` above this (+40 dB) is refused as a broken export."""
ORTHONORMAL_TOL = 1e-3
"""Largest allowed deviation of ``directions @ directions.T`` from the identity."""


# A snapshot's level trim stays within +-12 dB: enough to even out the instruments' loudness,
# never enough to turn a near-silent decode into a burst of noise.
MIN_SNAPSHOT_LEVEL, MAX_SNAPSHOT_LEVEL = 0.25, 4.0


class PresetError(VaesynthError):
    """A preset that cannot be played; the message is one line for the user."""


@dataclass(frozen=True)
class Snapshot:
    """A named point of the latent space, recalled by MIDI program change."""

    name: str
    program: int
    z: NDArray[np.float32]  # (L,)
    level: float = 1.0  # linear output trim that evens the snapshots' loudness (optional 'level')


@dataclass(frozen=True)
class KnobMap:
    """The K = min(8, L) timbre knobs: knob i at u in -1..1 puts the timbre at
    ``center + 3 * scale[i] * u`` along ``directions[i]`` (orthonormal rows, most variance first)."""

    center: NDArray[np.float64]  # (L,)
    directions: NDArray[np.float64]  # (K, L)
    scale: NDArray[np.float64]  # (K,)

    @property
    def count(self) -> int:
        return int(self.directions.shape[0])


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
    arr = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise PresetError(f"{where}: '{key}' holds NaN or Inf")
    return arr


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PresetError(f"{path.parent}: not a preset (no preset.toml)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(f"{path}: not valid TOML ({exc})") from None


def _check_onnx(path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...], last_dims: dict[str, int]) -> None:
    """Open the model with onnxruntime (CPU); check names and the fixed last dims of ``last_dims``."""
    import onnxruntime as ort  # imported here: preset parsing alone needs no runtime

    if not path.is_file():
        raise PresetError(f"{path}: file missing")
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PresetError(f"{path}: not a loadable ONNX model ({first[:160]})") from None
    got_in = tuple(i.name for i in sess.get_inputs())
    got_out = tuple(o.name for o in sess.get_outputs())
    if set(got_in) != set(inputs) or not set(outputs) <= set(got_out):
        raise PresetError(f"{path}: inputs {got_in} / outputs {got_out}, expected {inputs} / {outputs}")
    shapes = {a.name: a.shape for a in [*sess.get_inputs(), *sess.get_outputs()]}
    for name, dim in last_dims.items():
        last = shapes[name][-1] if shapes[name] else None
        if isinstance(last, int) and last != dim:
            raise PresetError(f"{path}: '{name}' has last dimension {last}, the preset says {dim}")


def _model_file(root: Path, table: dict[str, Any], key: str, where: str) -> Path:
    """A model file named by the preset: a plain file name inside the preset folder (never an
    absolute path or a way out of it, whatever a downloaded preset says)."""
    name = _get(table, key, str, where)
    if not name or Path(name).name != name or name in (".", ".."):
        raise PresetError(f"{where}: '{key}' must be a file name inside the preset folder, not {name!r}")
    return root / name


def _latent_map(root: Path, doc: dict[str, Any], size: int, where: str) -> LatentMap | None:
    """The optional ``[map] file`` (see synth.latent_map); None when the preset has none."""
    if "map" not in doc:
        return None
    path = _model_file(root, _table(doc, "map", Path(where)), "file", where)
    try:
        return load_latent_map(path, size)
    except LatentMapError as exc:
        raise PresetError(str(exc)) from None


def _snapshots(doc: dict[str, Any], size: int, where: str) -> list[Snapshot]:
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
        level = float(_get(s, "level", (int, float), w)) if "level" in s else 1.0
        if not (MIN_SNAPSHOT_LEVEL <= level <= MAX_SNAPSHOT_LEVEL):
            raise PresetError(f"{w}: level {level} outside {MIN_SNAPSHOT_LEVEL}..{MAX_SNAPSHOT_LEVEL}")
        snaps.append(Snapshot(_get(s, "name", str, w), program, _vector(s, "z", size, w), level))
    return snaps


def _v1_knobs(latent: dict[str, Any], mean: NDArray, std: NDArray, w: str) -> KnobMap:
    """Version 1: knob i moves latent dim ``knob_order[i]`` over mean +- 3 std."""
    size = mean.shape[0]
    knob_order = [int(k) for k in _get(latent, "knob_order", list, w)]
    if sorted(knob_order) != list(range(size)):
        raise PresetError(f"{w}: knob_order must be a permutation of 0..{size - 1}")
    dims = knob_order[:MAX_KNOBS]
    directions = np.zeros((len(dims), size))
    directions[np.arange(len(dims)), dims] = 1.0
    return KnobMap(mean.astype(np.float64), directions, std[dims].astype(np.float64))


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
    return KnobMap(_vector(table, "center", size, w).astype(np.float64), directions, scale)


def _mix_gain(doc: dict[str, Any], w: str) -> float:
    """Optional ``[mix] gain`` (linear), 1.0 when absent."""
    if "mix" not in doc:
        return 1.0
    gain = float(_get(_table(doc, "mix", Path(w)), "gain", (int, float), f"{w} [mix]"))
    if not (math.isfinite(gain) and 0 < gain <= MAX_MIX_GAIN):
        raise PresetError(f"{w} [mix]: gain {gain} must be a finite number in (0, {MAX_MIX_GAIN:g}]")
    return gain


def load_preset(path: str | Path, check_models: bool = True) -> Preset:
    """Read and validate a preset folder; raises :class:`PresetError` with a one-line message."""
    root = Path(path)
    if not root.is_dir():
        raise PresetError(f"{root}: preset folder not found")
    toml_path = root / "preset.toml"
    doc = _read_toml(toml_path)
    w = str(toml_path)
    meta = _table(doc, "preset", toml_path)
    version = _get(meta, "format_version", int, w)
    if version not in READ_VERSIONS:
        readable = " and ".join(str(v) for v in READ_VERSIONS)
        raise PresetError(f"{w}: format_version {version} is not supported (this engine reads {readable}); "
                          f"re-export the preset with python -m export.onnx")
    try:
        params = SpectrogramParams.from_dict(_table(doc, "audio", toml_path))
        params.validate()
    except (TypeError, ValueError) as exc:
        raise PresetError(f"{w}: bad [audio]: {exc}") from None
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
    pmin, pmax = float(_get(pitch, "min", (int, float), w)), float(_get(pitch, "max", (int, float), w))
    if not 0 <= pmin < pmax <= 127:
        raise PresetError(f"{w}: pitch range {pmin}..{pmax} invalid")
    dec = _table(doc, "decoder", toml_path)
    contract = _get(dec, "contract", str, w)
    if contract != DECODER_CONTRACT:
        raise PresetError(f"{w}: decoder contract '{contract}' is not supported (expected {DECODER_CONTRACT})")
    enc = _table(doc, "encoder", toml_path)
    snaps = _snapshots(doc, size, w)
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
        decoder_path=_model_file(root, dec, "file", w),
        decoder_parts_path=_model_file(root, dec, "parts_file", w) if "parts_file" in dec else None,
        encoder_path=_model_file(root, enc, "file", w),
        time_on_max=float(_get(dec, "time_on_max", (int, float), w)),
        release_seconds=float(_get(dec, "release_seconds", (int, float), w)),
        encoder_frame_stride=_get(enc, "frame_stride", int, w),
        knobs=knobs,
        format_version=version,
        mix_gain=mix_gain,
        snapshots=snaps,
        programs=program_map(snaps),
        latent_map=_latent_map(root, doc, size, w),
    )
    if not (0 < preset.time_on_max <= params.note_seconds and math.isfinite(preset.release_seconds) and preset.release_seconds > 0):
        raise PresetError(f"{w}: time_on_max / release_seconds out of range")
    if check_models:
        bins = params.n_bins
        _check_onnx(preset.decoder_path, DECODER_INPUTS, (DECODER_OUTPUT,), {"z": size, DECODER_OUTPUT: bins})
        if preset.decoder_parts_path is not None:
            from synth.partials import PARTS_OUTPUTS

            _check_onnx(preset.decoder_parts_path, DECODER_INPUTS, PARTS_OUTPUTS, {"z": size, "noise_mag": bins})
        _check_onnx(preset.encoder_path, (ENCODER_INPUT,), ENCODER_OUTPUTS, {ENCODER_INPUT: bins, "mu": size})
    return preset
