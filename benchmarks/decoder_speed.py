"""Decoder latency per call by batch size, thread count and execution provider.

    python -m benchmarks.decoder_speed [--preset presets/default] [--batches 1,8,16,32,128]

Times the path the engine uses: ``synth.decoder.FrameDecoder.decode`` on preallocated buffers
bound once (I/O binding, batch sizes rounded up to the decoder's buckets), not ``session.run``.
Prints a markdown table: provider, threads, batch, median and p95 ms per call, µs per frame.
CUDA rows appear only where onnxruntime-gpu finds a GPU.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from synth.decoder import FrameDecoder
from synth.errors import report
from synth.preset import PresetError, load_preset


def _buffers(latent: int, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Engine-style decoder buffers: ``z (rows, L)``, pitch, velocity, time_on, time_off ``(rows,)``, out."""
    return (rng.standard_normal((rows, latent)).astype(np.float32), rng.uniform(36, 96, rows).astype(np.float32),
            rng.uniform(40, 127, rows).astype(np.float32), rng.uniform(0, 2.5, rows).astype(np.float32),
            np.full(rows, -1.0, np.float32))


def time_calls(decoder: FrameDecoder, buffers: tuple[np.ndarray, ...], out: np.ndarray, batch: int,
               repeats: int) -> np.ndarray:
    """Seconds per ``decode`` call of ``batch`` rows over ``repeats`` calls after warm-up."""
    for _ in range(5):
        decoder.decode(*buffers, out, batch)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        decoder.decode(*buffers, out, batch)
        times[i] = time.perf_counter() - t0
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(Path(__file__).resolve().parents[1] / "presets" / "default"))
    ap.add_argument("--batches", default="1,8,16,32,128")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    try:
        preset = load_preset(args.preset)
    except PresetError as exc:
        return report(exc)
    rng = np.random.default_rng(0)
    configs = [("cpu", 1), ("cpu", 2)]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        configs.append(("gpu", 1))
    batches = [int(b) for b in args.batches.split(",")]
    rows = max(batches)
    print(f"decoder: {preset.decoder_path} (latent {preset.latent_size}, {preset.params.n_bins} bins)\n")
    print("| provider | threads | batch | median ms/call | p95 ms/call | µs/frame |")
    print("|---|---|---|---|---|---|")
    for device, threads in configs:
        decoder = FrameDecoder(preset, device, threads, max_batch=rows)
        buffers = _buffers(preset.latent_size, rows, rng)
        out = np.zeros((rows, preset.params.n_bins), np.float32)
        decoder.bind(*buffers, out)
        decoder.warm_up()
        provider = decoder.providers[0].replace("ExecutionProvider", "")
        for batch in batches:
            t = time_calls(decoder, buffers, out, batch, args.repeats)
            med, p95 = np.median(t) * 1e3, np.percentile(t, 95) * 1e3
            print(f"| {provider} | {threads} | {batch} | {med:.3f} | {p95:.3f} | {med * 1e3 / batch:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
