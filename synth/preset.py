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

from synth.contract import (DECODER_CONTRACT, DECODER_INPUTS, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUTS,
                            SpectrogramParams)

FORMAT_VERSION = 1  # what this loader reads today; synth.contract.PRESET_FORMAT_VERSION is what export writes next


class PresetError(Exception):
    """A preset that cannot be played; the message is one line for the user."""


@dataclass(frozen=True)
class Snapshot:
    """A named point of the latent space, recalled by MIDI program change."""

    name: str
    program: int
    z: NDArray[np.float32]  # (L,)


@dataclass(frozen=True)
class Preset:
    root: Path
    name: str
    description: str
    params: SpectrogramParams
    latent_size: int
    latent_mean: NDArray[np.float32]  # (L,)
    latent_std: NDArray[np.float32]  # (L,)
    knob_order: list[int]
    pitch_min: float
    pitch_max: float
    decoder_path: Path
    encoder_path: Path
    time_on_max: float
    release_seconds: float
    encoder_frame_stride: int
    snapshots: list[Snapshot] = field(default_factory=list)

    def snapshot_for_program(self, program: int) -> Snapshot | None:
        """The snapshot bound to ``program``, else the one at that index, else None."""
        for snap in self.snapshots:
            if snap.program == program:
                return snap
        return self.snapshots[program] if 0 <= program < len(self.snapshots) else None


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
        snaps.append(Snapshot(_get(s, "name", str, w), program, _vector(s, "z", size, w)))
    return snaps


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
    if version != FORMAT_VERSION:
        raise PresetError(f"{w}: format_version {version} is not supported (expected {FORMAT_VERSION})")
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
    knob_order = [int(k) for k in _get(latent, "knob_order", list, w)]
    if sorted(knob_order) != list(range(size)):
        raise PresetError(f"{w}: knob_order must be a permutation of 0..{size - 1}")
    pitch = _table(doc, "pitch", toml_path)
    pmin, pmax = float(_get(pitch, "min", (int, float), w)), float(_get(pitch, "max", (int, float), w))
    if not 0 <= pmin < pmax <= 127:
        raise PresetError(f"{w}: pitch range {pmin}..{pmax} invalid")
    dec = _table(doc, "decoder", toml_path)
    contract = _get(dec, "contract", str, w)
    if contract != DECODER_CONTRACT:
        raise PresetError(f"{w}: decoder contract '{contract}' is not supported (expected {DECODER_CONTRACT})")
    enc = _table(doc, "encoder", toml_path)
    preset = Preset(
        root=root,
        name=_get(meta, "name", str, w),
        description=str(meta.get("description", "")),
        params=params,
        latent_size=size,
        latent_mean=_vector(latent, "mean", size, w),
        latent_std=std,
        knob_order=knob_order,
        pitch_min=pmin,
        pitch_max=pmax,
        decoder_path=root / _get(dec, "file", str, w),
        encoder_path=root / _get(enc, "file", str, w),
        time_on_max=float(_get(dec, "time_on_max", (int, float), w)),
        release_seconds=float(_get(dec, "release_seconds", (int, float), w)),
        encoder_frame_stride=_get(enc, "frame_stride", int, w),
        snapshots=_snapshots(doc, size, w),
    )
    if not (0 < preset.time_on_max <= params.note_seconds and math.isfinite(preset.release_seconds) and preset.release_seconds > 0):
        raise PresetError(f"{w}: time_on_max / release_seconds out of range")
    if check_models:
        bins = params.n_bins
        _check_onnx(preset.decoder_path, DECODER_INPUTS, (DECODER_OUTPUT,), {"z": size, DECODER_OUTPUT: bins})
        _check_onnx(preset.encoder_path, (ENCODER_INPUT,), ENCODER_OUTPUTS, {ENCODER_INPUT: bins, "mu": size})
    return preset
