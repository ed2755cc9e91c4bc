"""Export a training run to a preset folder (decoder.onnx, encoder.onnx, preset.toml).

    python -m export.onnx runs/NAME/checkpoint.pt --out presets/NAME [--name NAME] [--fp16]

Reads ``config.toml`` and ``latent_stats.json`` beside the checkpoint, checks onnxruntime
against PyTorch on random inputs (max abs error 1e-4; 5e-2 with --fp16) and writes the
preset layout of ARCHITECTURE.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tomli_w
import torch
from torch import Tensor, nn

from synth.contract import DECODER_INPUTS
from training.model import CONTRACT, TimbreVAE
from training.train import RunConfig, TrainError, load_config

OPSET = 17
TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2
MIN_SNAPSHOTS = 8
# NSynth family -> a General MIDI program (0-based, as in MIDI program-change messages).
FAMILY_PROGRAMS = {"keyboard": 0, "mallet": 12, "organ": 19, "guitar": 24, "bass": 33,
                   "string": 48, "brass": 61, "reed": 65, "flute": 73, "synth_lead": 80,
                   "vocal": 52}


class ExportError(Exception):
    """Export failed (bad run folder, parity check); the message says why."""


class _Half(nn.Module):
    """float32 in/out around a module with float16 weights, so the ONNX interface never changes.

    The decoder casts its own conditioning (pitch must stay float32: a float16 MIDI number is
    off by up to 0.03 semitones); the encoder's log-mag input is cast here.
    """

    def __init__(self, inner: nn.Module, cast_inputs: bool) -> None:
        super().__init__()
        self.inner, self.cast_inputs = inner.half(), cast_inputs

    def forward(self, *xs: Tensor) -> Any:
        out = self.inner(*(x.half() if self.cast_inputs else x for x in xs))
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
    model = TimbreVAE(run.model, run.audio)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
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


def export_models(run: RunConfig, model: TimbreVAE, out: Path, fp16: bool = False) -> dict[str, float]:
    """Write decoder.onnx and encoder.onnx, check each against float32 PyTorch; returns the errors."""
    tol = FP16_TOLERANCE if fp16 else TOLERANCE
    dec, enc = copy.deepcopy(model.decoder), copy.deepcopy(model.encoder)
    if fp16:
        dec.harm_k, dec.offsets = dec.harm_k.float(), dec.offsets.float()
        dec, enc = _Half(dec, cast_inputs=False), _Half(enc, cast_inputs=True)
    batch = {n: {0: "batch"} for n in (*DECODER_INPUTS, "log_mag")}
    _export(dec, random_decoder_inputs(run, 2), out / "decoder.onnx", DECODER_INPUTS, ["log_mag"], batch)
    x = torch.randn(2, 40, run.audio.n_bins) - 6.0
    _export(enc, (x,), out / "encoder.onnx", ["log_mag"], ["mu", "logvar"],
            {"log_mag": {0: "batch", 1: "frames"}, "mu": {0: "batch"}, "logvar": {0: "batch"}})
    # Compare with the float32 model, on other batch sizes / lengths than the traced ones.
    errors = {"decoder": check_parity(out / "decoder.onnx", model.decoder, random_decoder_inputs(run, 64, seed=1),
                                      DECODER_INPUTS, tol)}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 376, run.audio.n_bins, generator=g) * 2.0 - 7.0
    errors["encoder"] = check_parity(out / "encoder.onnx", model.encoder, (x,), ["log_mag"], tol)
    return errors


def snapshots(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One snapshot per family (mean latent), padded to MIN_SNAPSHOTS with points along the top knobs."""
    snaps, used = [], set()
    for name, fam in sorted(stats["families"].items()):
        program = FAMILY_PROGRAMS.get(name, 0)
        while program in used:
            program = (program + 1) % 128
        used.add(program)
        snaps.append({"name": name, "program": program, "z": [float(v) for v in fam["z"]]})
    mean, std, order = np.array(stats["mean"]), np.array(stats["std"]), stats["knob_order"]
    i = 0
    while len(snaps) < MIN_SNAPSHOTS:  # few families (small data sets): explore the top knobs
        dim, sign = order[(i // 2) % len(order)], 1.0 if i % 2 == 0 else -1.0
        z = mean.copy()
        z[dim] += sign * 2.0 * std[dim]
        program = next(p for p in range(128) if p not in used)
        used.add(program)
        snaps.append({"name": f"knob{order.index(dim) + 1}{'+' if sign > 0 else '-'}", "program": program,
                      "z": [float(v) for v in z]})
        i += 1
    return snaps


def preset_doc(run: RunConfig, stats: dict[str, Any], name: str, reproduce: str) -> dict[str, Any]:
    """The preset.toml content (ARCHITECTURE.md layout)."""
    p = run.audio
    return {
        "preset": {"name": name, "format_version": 1,
                   "description": f"timbre VAE, latent {run.model.latent_size}, trained {run.train.steps} steps "
                                  f"on {stats['n_notes']} notes ({', '.join(sorted(stats['families']))})",
                   "reproduce": reproduce},
        "audio": p.to_dict(),
        "latent": {"size": run.model.latent_size, "mean": [float(v) for v in stats["mean"]],
                   "std": [float(v) for v in stats["std"]], "knob_order": [int(k) for k in stats["knob_order"]]},
        "pitch": {"min": float(stats["pitch_min"]), "max": float(stats["pitch_max"])},
        "decoder": {"file": "decoder.onnx", "contract": CONTRACT, "time_on_max": float(run.model.time_on_max),
                    "release_seconds": float(p.note_seconds - p.hold_seconds)},
        "encoder": {"file": "encoder.onnx", "frame_stride": int(run.train.frame_stride)},
        "snapshots": snapshots(stats),
    }


def export_preset(checkpoint: str | Path, out: str | Path, name: str | None = None, fp16: bool = False,
                  command: str | None = None) -> dict[str, float]:
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
    reproduce = f"{run.data.get('command', '')}\n{command}\n"
    tmp = out / "preset.toml.tmp"
    tmp.write_text(tomli_w.dumps(preset_doc(run, stats, name, reproduce), multiline_strings=True))
    tmp.replace(out / "preset.toml")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="runs/NAME/checkpoint.pt")
    p.add_argument("--out", required=True, help="preset folder to write")
    p.add_argument("--name", help="preset name (default: the folder name)")
    p.add_argument("--fp16", action="store_true", help="float16 weights (float32 inputs/outputs)")
    args = p.parse_args(argv)
    try:
        errors = export_preset(args.checkpoint, args.out, args.name, args.fp16,
                               command=shlex.join(["python", "-m", "export.onnx", *(argv or sys.argv[1:])]))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: decoder max err {errors['decoder']:.2g}, encoder max err {errors['encoder']:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
