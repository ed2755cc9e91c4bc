"""Decoder latency per call by batch size and execution provider.

    python benchmarks/decoder_speed.py [--preset presets/default] [--batches 1,8,32,128]

Prints a markdown table: provider, threads, batch, median and p95 ms per call, µs per frame.
CUDA rows appear only where onnxruntime-gpu finds a GPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from synth.preset import PresetError, load_preset


def _inputs(latent: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "z": rng.standard_normal((batch, latent)).astype(np.float32),
        "pitch": rng.uniform(36, 96, batch).astype(np.float32),
        "velocity": rng.uniform(40, 127, batch).astype(np.float32),
        "time_on": rng.uniform(0, 2.5, batch).astype(np.float32),
        "time_off": np.full(batch, -1.0, np.float32),
    }


def time_calls(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int) -> np.ndarray:
    """Seconds per ``sess.run`` call over ``repeats`` calls after warm-up."""
    for _ in range(5):
        sess.run(None, feeds)
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        out[i] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(Path(__file__).resolve().parents[1] / "presets" / "default"))
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    try:
        preset = load_preset(args.preset)
    except PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    configs = [("CPUExecutionProvider", 1), ("CPUExecutionProvider", 2)]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        configs.append(("CUDAExecutionProvider", 1))
    print(f"decoder: {preset.decoder_path} (latent {preset.latent_size}, {preset.params.n_bins} bins)\n")
    print("| provider | threads | batch | median ms/call | p95 ms/call | µs/frame |")
    print("|---|---|---|---|---|---|")
    for provider, threads in configs:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(preset.decoder_path), opts, providers=[provider])
        for batch in (int(b) for b in args.batches.split(",")):
            t = time_calls(sess, _inputs(preset.latent_size, batch, rng), args.repeats)
            med, p95 = np.median(t) * 1e3, np.percentile(t, 95) * 1e3
            print(f"| {provider.replace('ExecutionProvider', '')} | {threads} | {batch} | {med:.3f} | {p95:.3f} | {med * 1e3 / batch:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
