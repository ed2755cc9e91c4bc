"""Export a training run to a preset folder (decoder.onnx, encoder.onnx, preset.toml).

    python -m export.onnx runs/NAME/checkpoint.pt --out presets/NAME [--name NAME] [--fp16]
        [--reference-soundfont TAG]

Reads ``config.toml`` and ``latent_stats.json`` beside the checkpoint, checks onnxruntime
against PyTorch on random inputs (max abs error 1e-4; 5e-2 with --fp16) and writes the
preset layout of ARCHITECTURE.md, format version 3: knobs are the principal directions of
the training notes' mu, snapshots one per GM program of the reference soundfont (key-tracked), and
``[mix] gain`` levels a velocity-100 C4 of the median snapshot at about -9 dBFS.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import tomllib
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray
import tomli_w
import torch
from torch import Tensor, nn

from export.knob_travel import guarded_travel
from synth.contract import DECODER_CONTRACT as CONTRACT
from synth.contract import (DECODER_INPUTS, DEFAULT_KNOB_TRAVEL, ENCODER_PITCH, KNOB_TRAVEL_RANGE, LATENT_MAP_FILE,
                             PRESET_FORMAT_VERSION)
from synth.errors import VaesynthError, report
from synth.loudness import (KEY_LEVEL_BAND_DBFS, MEASURE_HEADROOM, MIX_RENDER_RATE, TARGET_PEAK_DBFS, into_band,
                             measured_peaks)
from synth.partials import PARTS_OUTPUTS
from synth.preset import MAX_SNAPSHOT_LEVEL, MIN_SNAPSHOT_LEVEL, load_preset
from synth.tone import valid_tone
from training.data import GM_PROGRAM_NAMES, parse_instrument
from training.model import TimbreVAE
from training.snapshots import reference_soundfont
from training.train import RunConfig, TrainError, encoder_at, load_config

OPSET = 17
TOLERANCE = 1e-4
# With learned inharmonicity the partials' positions come out of the MLP: float32 GEMM rounding
# (~1e-6 relative, different in onnxruntime and PyTorch) moves a high partial by ~1e-4 bins,
# which changes log-mags on the steep flanks of its lobe by up to ~1e-3 (0.01 dB).
INHARMONIC_TOLERANCE = 3e-3
FP16_TOLERANCE = 5e-2
MIN_SNAPSHOTS = 8
MEDIAN_PEAK_TEXT = "median peak at unity gain {:.3g}"  # in the description (export.relevel rewrites it)
MIX_GAIN_KEY = 60  # C4: the note whose median peak [mix] gain sets
MIX_LEVEL_KEYS = (48, MIX_GAIN_KEY, 72)  # C3, C4, C5: the keys a snapshot's level trim evens out
KEY_LEVEL_KEYS = tuple(range(37, 84, 2))  # C#2 .. B5, every other key: where a snapshot's level per key is measured
PARTS_FILE = "decoder_parts.onnx"
# NSynth family -> a General MIDI program (0-based, as in MIDI program-change messages).
FAMILY_PROGRAMS = {"keyboard": 0, "mallet": 12, "organ": 19, "guitar": 24, "bass": 33,
                   "string": 48, "brass": 61, "reed": 65, "flute": 73, "synth_lead": 80,
                   "vocal": 52}


class ExportError(VaesynthError):
    """Export failed (bad run folder, parity check); the message says why."""


class _Half(nn.Module):
    """float32 in/out around a module with float16 weights, so the ONNX interface never changes.

    The decoder casts its own conditioning (pitch must stay float32: a float16 MIDI number is
    off by up to 0.03 semitones); the encoder's log-mag input, its first, is cast here.
    """

    def __init__(self, inner: nn.Module, cast_first: bool) -> None:
        super().__init__()
        self.inner, self.cast_first = inner.half(), cast_first

    def forward(self, *xs: Tensor) -> Any:
        out = self.inner(*(x.half() if self.cast_first and i == 0 else x for i, x in enumerate(xs)))
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def load_run(checkpoint: Path) -> tuple[RunConfig, TimbreVAE, dict[str, Any]]:
    """Config, model (eval, CPU) and latent stats of the run that wrote ``checkpoint``."""
    folder = checkpoint.parent
    if not checkpoint.is_file():
        raise ExportError(f"{checkpoint}: checkpoint not found")
    for need in ("config.toml", "latent_stats.json"):
        if not (folder / need).is_file():
            raise ExportError(f"{folder}: no {need} beside the checkpoint (did training finish?)")
    try:
        run = load_config(folder / "config.toml")
    except TrainError as exc:
        raise ExportError(str(exc)) from None
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model = TimbreVAE(run.model, run.audio, encoder_at(run, int(state["step"])))
        model.load_state_dict(state["model"])
    except Exception as exc:  # torch raises many types for a corrupt or mismatched file
        raise ExportError(f"{checkpoint}: cannot load ({str(exc).splitlines()[0][:200]})") from None
    stats = json.loads((folder / "latent_stats.json").read_text())
    return run, model.eval(), stats


def random_decoder_inputs(run: RunConfig, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Random but realistic ``z, pitch, velocity, time_on, time_off`` ``(B, L), (B,) x4``."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(batch, generator=g)  # noqa: E731
    time_off = torch.where(torch.rand(batch, generator=g) < 0.5, u(0.0, 1.0), torch.full((batch,), -1.0))
    return (torch.randn(batch, run.model.latent_size, generator=g), u(21.0, 108.0), u(1.0, 127.0),
            u(0.0, run.model.time_on_max), time_off)


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: Sequence[str],
            outputs: Sequence[str], dynamic: dict[str, dict[int, str]]) -> None:
    # The legacy TorchScript exporter: it maps scatter_add to ScatterElements(reduction="add").
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


def check_parity(path: Path, module: nn.Module, args: tuple[Tensor, ...], names: Sequence[str],
                 tolerance: float) -> float:
    """Max abs error between onnxruntime and PyTorch on ``args``; raises above ``tolerance``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        ref = module(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    err = max(float(np.max(np.abs(g - r.numpy()))) for g, r in zip(got, ref))
    if not err <= tolerance:
        raise ExportError(f"{path.name}: onnxruntime differs from PyTorch by {err:.3g} (limit {tolerance:g})")
    return err


class _DecoderParts(nn.Module):
    """The decoder stopped before its geometry (``FrameDecoder.parts``): see synth/partials.py."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.decoder.parts(*inputs)


def check_parts_parity(path: Path, decoder: nn.Module, run: RunConfig, args: tuple[Tensor, ...],
                       tolerance: float) -> float:
    """Max abs log-mag error of onnxruntime's parts plus the engine's placement against PyTorch."""
    import onnxruntime as ort

    from synth.partials import place_partials

    p = run.audio
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    amp, inharm, noise = sess.run(list(PARTS_OUTPUTS), {n: a.numpy() for n, a in zip(DECODER_INPUTS, args)})
    pitch = args[1].numpy().astype(np.float32)
    got = np.zeros((len(pitch), p.n_bins), np.float32)
    place_partials(amp, inharm, noise, pitch, len(pitch), p.n_fft / p.sample_rate, p.sample_rate / 2.0,
                   p.log_floor, got)
    with torch.no_grad():
        ref = decoder(*args).float().numpy()
    err = float(np.max(np.abs(got - ref)))
    if not err <= tolerance:
        raise ExportError(f"{path.name}: parts + engine placement differ from PyTorch by {err:.3g} "
                          f"(limit {tolerance:g})")
    return err


def export_models(run: RunConfig, model: TimbreVAE, out: Path, fp16: bool = False) -> dict[str, float]:
    """Write decoder.onnx, decoder_parts.onnx (float32 only) and encoder.onnx, check each against
    float32 PyTorch; returns the errors."""
    tol = FP16_TOLERANCE if fp16 else TOLERANCE
    dec_tol = max(tol, INHARMONIC_TOLERANCE) if run.model.max_inharmonicity > 0 else tol
    dec, enc = copy.deepcopy(model.decoder), copy.deepcopy(model.encoder)
    if fp16:
        dec.harm_k, dec.offsets = dec.harm_k.float(), dec.offsets.float()
        dec, enc = _Half(dec, cast_first=False), _Half(enc, cast_first=True)
    batch = {n: {0: "batch"} for n in (*DECODER_INPUTS, "log_mag")}
    _export(dec, random_decoder_inputs(run, 2), out / "decoder.onnx", DECODER_INPUTS, ["log_mag"], batch)
    enc_inputs = tuple(model.encoder.inputs)  # ENCODER_INPUT, and ENCODER_PITCH where the encoder reads it (format 6)
    enc_axes = {"log_mag": {0: "batch", 1: "frames"}, ENCODER_PITCH: {0: "batch"}, "mu": {0: "batch"}, "logvar": {0: "batch"}}
    _export(enc, encoder_args(enc_inputs, run.audio.n_bins, 2, 40), out / "encoder.onnx", enc_inputs, ["mu", "logvar"],
            {name: axes for name, axes in enc_axes.items() if name in (*enc_inputs, "mu", "logvar")})
    # Compare with the float32 model, on other batch sizes / lengths than the traced ones.
    errors = {"decoder": check_parity(out / "decoder.onnx", model.decoder, random_decoder_inputs(run, 64, seed=1),
                                      DECODER_INPUTS, dec_tol)}
    (out / PARTS_FILE).unlink(missing_ok=True)
    if not fp16:  # the parts path is the CPU's; a float16 preset decodes on a GPU
        parts_axes = {n: {0: "batch"} for n in (*DECODER_INPUTS, *PARTS_OUTPUTS)}
        _export(_DecoderParts(dec), random_decoder_inputs(run, 2), out / PARTS_FILE, DECODER_INPUTS, PARTS_OUTPUTS,
                parts_axes)
        errors["decoder_parts"] = check_parts_parity(out / PARTS_FILE, model.decoder, run,
                                                     random_decoder_inputs(run, 64, seed=3), dec_tol)
    errors["encoder"] = check_parity(out / "encoder.onnx", model.encoder, encoder_args(enc_inputs, run.audio.n_bins, 3, 376, seed=2),
                                     enc_inputs, tol)
    return errors


def encoder_args(inputs: Sequence[str], n_bins: int, notes: int, frames: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Trace or parity inputs: log-mag frames near a note's levels and, if taken, MIDI pitches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(notes, frames, n_bins, generator=g) * 2.0 - 7.0
    pitch = 36.0 + 48.0 * torch.rand(notes, generator=g)
    return (x, pitch) if ENCODER_PITCH in inputs else (x,)


def _knob_points(stats: dict[str, Any], count: int, used: set[int]) -> list[dict[str, Any]]:
    """``count`` snapshots at center ± 2 scale along knobs 1, 1, 2, 2, ... on free programs."""
    k = stats["knobs"]
    center, out = np.array(k["center"]), []
    for i in range(count):
        knob, sign = (i // 2) % len(k["scale"]), 1.0 if i % 2 == 0 else -1.0
        z = center + sign * 2.0 * k["scale"][knob] * np.array(k["directions"][knob])
        program = next(p for p in range(128) if p not in used)
        used.add(program)
        out.append({"name": f"knob{knob + 1}{'+' if sign > 0 else '-'}", "program": program,
                    "z": [float(v) for v in z]})
    return out


def reference_tag(stats: dict[str, Any], wanted: str | None = None) -> str | None:
    """``training.snapshots.reference_soundfont`` over the run's instruments; a ``wanted`` tag the
    data lacks is an ExportError."""
    tag = reference_soundfont(stats.get("instruments", {}), wanted)
    if wanted is not None and tag is None:
        tags = sorted({p[0] for name in stats.get("instruments", {}) if (p := parse_instrument(name))})
        raise ExportError(f"reference soundfont {wanted!r} is not in the training data ({', '.join(tags)})")
    return tag


def _track(entry: dict[str, Any]) -> dict[str, Any]:
    """A fitted snapshot's key tracking as preset.toml keys (``synth.key_track``); none for a mean."""
    if "track_z" not in entry:
        return {}
    return {"track_keys": [int(k) for k in entry["track_keys"]],
            "track_z": [[float(v) for v in row] for row in entry["track_z"]]}


def _tone(entry: dict[str, Any]) -> dict[str, Any]:
    """A fitted snapshot's tone curve as preset.toml keys (``synth.tone``); none when training fitted none."""
    return {"tone_db": [float(v) for v in entry["tone_db"]]} if "tone_db" in entry else {}


def snapshots(stats: dict[str, Any], reference: str | None = None) -> list[dict[str, Any]]:
    """One snapshot per trained GM program of the reference soundfont (its latent fitted to the
    program's training notes, ``training.snapshots``; the mean mu for another reference soundfont,
    which training did not fit), named by the GM instrument; data without soundfont
    tags (NSynth, WAV folders) gets one per family. Padded to MIN_SNAPSHOTS with points along the top knobs."""
    snaps, used = [], set()
    tag = reference_tag(stats, reference)
    if tag is not None:
        for name, inst in stats["instruments"].items():
            parsed = parse_instrument(name)
            if parsed and parsed[0] == tag:
                snaps.append({"name": GM_PROGRAM_NAMES[parsed[1]], "program": parsed[1],
                              "z": [float(v) for v in inst["z"]], **_track(inst), **_tone(inst)})
                used.add(parsed[1])
        snaps.sort(key=lambda s: s["program"])
    else:
        for name, fam in sorted(stats["families"].items()):
            program = FAMILY_PROGRAMS.get(name, 0)
            while program in used:
                program = (program + 1) % 128
            used.add(program)
            snaps.append({"name": name, "program": program, "z": [float(v) for v in fam["z"]], **_track(fam),
                          **_tone(fam)})
    return snaps + _knob_points(stats, max(0, MIN_SNAPSHOTS - len(snaps)), used)


@torch.no_grad()
def engine_note_peaks(preset_dir: Path, snaps: Sequence[dict[str, Any]], pitches: Sequence[int] = MIX_LEVEL_KEYS,
                      velocity: int = 100) -> NDArray[np.float64]:
    """Peak of one note per pitch and snapshot (held then released, MIX_NOTE_SECONDS) played by
    the engine itself on the preset written in ``preset_dir``, at unity output gain: attack
    normalisation, phase reconstruction and all, exactly what a player hears before the gain
    -> ``(len(pitches), len(snaps))``. The engine plays them MEASURE_HEADROOM quieter and the peaks
    are scaled back, so its limiter never touches a loud snapshot's note."""
    from synth.engine import Engine

    preset = load_preset(preset_dir)
    peaks = np.zeros((len(pitches), len(snaps)))
    for j, snap in enumerate(snaps):  # one engine per snapshot, its notes in turn (synth.loudness)
        eng = Engine(preset, device="cpu", master_gain=MEASURE_HEADROOM / preset.mix_gain)
        eng.prepare(MIX_RENDER_RATE, 1024, warm=False)
        eng.push(0, 0xC0, int(snap["program"]), 0)  # the first note starts after the glide to the snapshot
        peaks[:, j] = measured_peaks(eng, pitches, velocity)
    return peaks


def mix_gain(preset_dir: Path, snaps: Sequence[dict[str, Any]]) -> tuple[float, float, list[float]]:
    """``(gain, median peak, levels)``: the [mix] gain that puts a v100 C4 of the median snapshot at
    TARGET_PEAK_DBFS through the engine (its master gain is the user's trim, 1.0 by default),
    bounded to 1e-2..1e3 for (untrained) near-silent models; and each snapshot's level trim, which
    brings the geometric mean of its own v100 peaks at MIX_LEVEL_KEYS to that of the median
    snapshot's C4 (within the engine's +-12 dB bounds): one trim for the middle of the keyboard,
    not for C4 alone, since a fitted snapshot keeps its instrument's louder or softer registers."""
    spread = engine_note_peaks(preset_dir, snaps)  # (keys, snapshots)
    median = float(np.median(spread[MIX_LEVEL_KEYS.index(MIX_GAIN_KEY)]))
    gain = 10 ** (TARGET_PEAK_DBFS / 20) / max(median, 1e-12)
    middle = np.exp(np.log(np.maximum(spread, 1e-12)).mean(axis=0))
    levels = np.clip(median / middle, MIN_SNAPSHOT_LEVEL, MAX_SNAPSHOT_LEVEL)
    return float(np.clip(gain, 1e-2, 1e3)), median, [round(float(v), 4) for v in levels]


def key_levels(preset_dir: Path, snaps: Sequence[dict[str, Any]], gain: float,
               band: tuple[float, float] = KEY_LEVEL_BAND_DBFS) -> list[dict[str, Any]]:
    """Each snapshot's level per key as preset.toml keys (``key_level_keys``, ``key_level_db``;
    none when every key is inside the band): v100 notes at those of KEY_LEVEL_KEYS inside the
    preset's trained pitch range (else C4) played by the engine on
    the preset in ``preset_dir`` (its snapshot trims applied, none per key yet) at the [mix]
    ``gain``, each brought into ``band`` (dBFS; within +-MAX_KEY_LEVEL_DB)."""
    preset = load_preset(preset_dir)
    keys = [k for k in KEY_LEVEL_KEYS if preset.pitch_min <= k <= preset.pitch_max] or [MIX_GAIN_KEY]  # trained keys
    heard = 20.0 * np.log10(np.maximum(engine_note_peaks(preset_dir, snaps, keys) * gain, 1e-12))
    correction = into_band(heard, band)
    return [{"key_level_keys": list(keys), "key_level_db": [round(float(v), 2) for v in column]}
            if np.any(np.abs(column) >= 0.005) else {} for column in correction.T]


def without_key_levels(snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` without its level per key (to measure what the snapshot plays before it)."""
    return {k: v for k, v in snap.items() if k not in ("key_level_keys", "key_level_db")}


def validate_doc(doc: dict[str, Any]) -> None:
    """Check a version-2 preset document's shapes and invariants; raises ExportError."""
    size = doc["latent"]["size"]
    k = doc["knobs"]
    dirs, scale = np.array(k["directions"], np.float64), np.array(k["scale"], np.float64)
    n = min(8, size)
    problems = []
    if len(doc["latent"]["mean"]) != size or len(doc["latent"]["std"]) != size or len(k["center"]) != size:
        problems.append("latent mean/std or knob center has the wrong length")
    if dirs.shape != (n, size) or scale.shape != (n,):
        problems.append(f"knob directions {dirs.shape} / scale {scale.shape}, expected ({n}, {size}) / ({n},)")
    elif not np.allclose(dirs @ dirs.T, np.eye(n), atol=1e-4):
        problems.append("knob directions are not orthonormal")
    if not np.all(scale >= 0) or list(scale) != sorted(scale, reverse=True):
        problems.append("knob scales must be >= 0 and in decreasing order")
    travel = np.array(k.get("travel", [DEFAULT_KNOB_TRAVEL] * n), np.float64)
    if travel.shape != (n,) or not np.all((travel >= KNOB_TRAVEL_RANGE[0]) & (travel <= KNOB_TRAVEL_RANGE[1])):
        problems.append(f"knob travel must be {n} values in {KNOB_TRAVEL_RANGE[0]:g}..{KNOB_TRAVEL_RANGE[1]:g}")
    if not (np.isfinite(doc["mix"]["gain"]) and doc["mix"]["gain"] > 0):
        problems.append("mix gain must be positive")
    programs = [s["program"] for s in doc["snapshots"]]
    if len(set(programs)) != len(programs) or not all(0 <= p <= 127 for p in programs):
        problems.append("snapshot programs must be distinct and in 0..127")
    if any(len(s["z"]) != size for s in doc["snapshots"]):
        problems.append("a snapshot z has the wrong length")
    if any(np.asarray(s["track_z"]).shape != (len(s["track_keys"]), size) for s in doc["snapshots"] if "track_z" in s):
        problems.append("a snapshot's track_z is not one latent per track key")
    if not all(valid_tone(s["tone_db"]) for s in doc["snapshots"] if "tone_db" in s):
        problems.append("a snapshot's tone_db is not one gain within the bounds per TONE_HZ point")
    if problems:
        raise ExportError("bad preset: " + "; ".join(problems))


def refit_text(run: RunConfig) -> str:
    """The description's note of an encoder refit (``[train] encoder_refit_steps``), else nothing."""
    tc = run.train
    return f" (then a {run.model.encoder} encoder {tc.encoder_refit_steps} steps alone)" if tc.encoder_refit_steps > 0 else ""


def preset_doc(run: RunConfig, stats: dict[str, Any], name: str, reproduce: str,
               snaps: list[dict[str, Any]], gain: float, median_peak: float, parts: bool = True,
               latent_map: bool = False, travel: Sequence[float] | None = None) -> dict[str, Any]:
    """The preset.toml content (format version 3, ARCHITECTURE.md layout)."""
    p = run.audio
    k = stats["knobs"]
    n_inst = len(stats.get("instruments", {}))
    doc = {
        "preset": {"name": name, "format_version": PRESET_FORMAT_VERSION,
                   "description": f"timbre VAE, latent {run.model.latent_size}, trained {run.train.steps} steps{refit_text(run)} "
                                  f"on {stats['n_notes']} notes of {n_inst} instruments "
                                  f"({', '.join(sorted(stats['families']))}); knobs = principal directions "
                                  f"of the training notes' mu; [mix] gain puts a v100 C4 of the median "
                                  f"snapshot at {TARGET_PEAK_DBFS:g} dBFS through the engine "
                                  f"({MEDIAN_PEAK_TEXT.format(median_peak)})",
                   "reproduce": reproduce},
        "audio": p.to_dict(),
        "latent": {"size": run.model.latent_size, "mean": [float(v) for v in stats["mean"]],
                   "std": [float(v) for v in stats["std"]]},
        "knobs": {"center": [float(v) for v in k["center"]],
                  "directions": [[float(v) for v in row] for row in k["directions"]],
                  "scale": [float(v) for v in k["scale"]],
                  **({"travel": [round(float(v), 3) for v in travel]} if travel is not None else {})},
        "pitch": {"min": float(stats["pitch_min"]), "max": float(stats["pitch_max"])},
        "decoder": {"file": "decoder.onnx", "contract": CONTRACT, "time_on_max": float(run.model.time_on_max),
                    "release_seconds": float(p.note_seconds - p.hold_seconds),
                    **({"parts_file": PARTS_FILE} if parts else {})},
        "encoder": {"file": "encoder.onnx", "frame_stride": int(run.train.frame_stride)},
        "mix": {"gain": float(gain)},
        **({"map": {"file": LATENT_MAP_FILE}} if latent_map else {}),
        "snapshots": snaps,
    }
    validate_doc(doc)
    return doc


def export_preset(checkpoint: str | Path, out: str | Path, name: str | None = None, fp16: bool = False,
                  command: str | None = None, reference: str | None = None,
                  data_commands: Sequence[str] = ()) -> dict[str, float]:
    """Export ``checkpoint``'s run into the preset folder ``out``; returns the parity errors."""
    checkpoint, out = Path(checkpoint), Path(out)
    run, model, stats = load_run(checkpoint)
    if stats.get("pitch_min") == stats.get("pitch_max"):
        stats["pitch_max"] = min(127.0, float(stats["pitch_max"]) + 1.0)  # one-pitch data: keep min < max
    out.mkdir(parents=True, exist_ok=True)
    errors = export_models(run, model, out, fp16)
    name = name or out.name
    command = command or shlex.join(["python", "-m", "export.onnx", str(checkpoint), "--out", str(out),
                                     "--name", name] + (["--fp16"] if fp16 else []))
    reproduce = "".join(f"{c}\n" for c in data_commands) + f"{run.data.get('command', '')}\n{command}\n"
    if "knobs" not in stats:
        raise ExportError(f"{checkpoint.parent / 'latent_stats.json'}: no [knobs] (written by an older "
                          "training.train; re-run finish or retrain)")
    snaps = snapshots(stats, reference)
    parts = (out / PARTS_FILE).is_file()
    has_map = (checkpoint.parent / LATENT_MAP_FILE).is_file()  # runs trained before the map have none
    if has_map:
        shutil.copyfile(checkpoint.parent / LATENT_MAP_FILE, out / LATENT_MAP_FILE)
    # Written once at unity gain so the engine can play it, then again with the measured gain.
    _write_doc(out, preset_doc(run, stats, name, reproduce, snaps, 1.0, 0.0, parts, has_map))
    gain, median_peak, levels = mix_gain(out, snaps)
    errors["mix_gain"] = gain
    unity = load_preset(out)
    travel = guarded_travel(unity)
    snaps = [{**snap, "level": level} for snap, level in zip(snaps, levels)]
    _write_doc(out, preset_doc(run, stats, name, reproduce, snaps, gain, median_peak, parts, has_map, travel))
    snaps = [{**snap, **keyed} for snap, keyed in zip(snaps, key_levels(out, snaps, gain))]
    _write_doc(out, preset_doc(run, stats, name, reproduce, snaps, gain, median_peak, parts, has_map, travel))
    keep_run_files(checkpoint.parent, out)
    return errors


RUN_FILES = {"config.toml": "train_config.toml", "log.csv": "train_log.csv", "report.png": "train_report.png"}
"""The run's resolved config, loss log and report, kept beside the preset under these names."""


def keep_run_files(run_dir: Path, out: Path) -> None:
    """Copy the run's config, log and report into the preset folder (RAVE keeps the resolved config
    beside every checkpoint). Data paths inside this working tree are written relative to it, so
    a shipped preset names no folder of the machine it was trained on."""
    for name, kept in RUN_FILES.items():
        if not (run_dir / name).is_file():
            continue
        if name != "config.toml":
            shutil.copyfile(run_dir / name, out / kept)
            continue
        doc = tomllib.loads((run_dir / name).read_text())
        for key, value in doc.get("data", {}).items():
            if isinstance(value, str) and value and Path(value).is_absolute():
                try:
                    doc["data"][key] = Path(value).relative_to(Path.cwd()).as_posix()
                except ValueError:
                    doc["data"][key] = Path(value).name  # outside the tree: only its name means anything
        (out / kept).write_text(tomli_w.dumps(doc))


def _write_doc(out: Path, doc: dict[str, Any]) -> None:
    tmp = out / "preset.toml.tmp"
    tmp.write_text(tomli_w.dumps(doc, multiline_strings=True))
    tmp.replace(out / "preset.toml")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="runs/NAME/checkpoint.pt")
    p.add_argument("--out", required=True, help="preset folder to write")
    p.add_argument("--name", help="preset name (default: the folder name)")
    p.add_argument("--fp16", action="store_true", help="float16 weights (float32 inputs/outputs)")
    p.add_argument("--reference-soundfont", default=None, metavar="TAG",
                   help="soundfont tag whose programs become snapshots (default: fluidr3 when trained on, "
                        "else the one with the most programs)")
    p.add_argument("--data-command", action="append", default=[], metavar="CMD",
                   help="a command that made the training data (render, features); repeat in order; "
                        "written first in [preset] reproduce")
    args = p.parse_args(argv)
    try:
        errors = export_preset(args.checkpoint, args.out, args.name, args.fp16,
                               command=shlex.join(["python", "-m", "export.onnx", args.checkpoint, "--out", args.out,
                                                   "--name", args.name or Path(args.out).name]
                                                  + (["--fp16"] if args.fp16 else [])
                                                  + (["--reference-soundfont", args.reference_soundfont]
                                                     if args.reference_soundfont else [])),
                               reference=args.reference_soundfont, data_commands=args.data_command)
    except ExportError as exc:
        return report(exc)
    print(f"wrote {args.out}: decoder max err {errors['decoder']:.2g}, encoder max err {errors['encoder']:.2g}, "
          f"mix gain {errors['mix_gain']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
