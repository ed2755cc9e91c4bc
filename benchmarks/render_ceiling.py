"""How fast offline ``--render`` could ever be on this machine: the 16-voice passage of
``benchmarks.render_speed``, its cost per decoded frame split by stage, and the ceilings that follow.

- per voice-frame: decoder (ONNX + partial placement), phase reconstruction, inverse FFT, the
  rest (planning, overlap-add, mixing, limiter, Python), each timed around its call over the
  whole passage (one thread, render block 1024);
- the net ceiling on one core if the rest cost nothing, and on ``--cores`` cores with perfect
  scaling of every stage;
- the start-up floor: a bare interpreter importing what ``--render`` must import (numpy, numba,
  onnxruntime, the engine), median of 5 runs, against the passage's length / 20.

Run on a quiet machine: ``python -m benchmarks.render_ceiling [--seconds 8] [--cores 2]``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import markdown_table
from benchmarks.render_speed import RATE, RENDER_BLOCK, _preset, passage
from synth.engine import Engine

GOAL = 20.0


class Stopwatch:
    """Wraps a callable: total seconds spent in it, and how many calls."""

    def __init__(self, fn: object) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: object, **kw: object) -> object:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kw)  # type: ignore[operator]
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


def stage_costs(seconds: float) -> tuple[dict[str, float], int, float]:
    """({stage: seconds}, decoded voice-frames, total seconds) for the passage."""
    preset, _ = _preset(None)
    eng = Engine(preset, polyphony=32, device="cpu", threads=1)
    eng.prepare(RATE, RENDER_BLOCK, warm=True)
    for event in passage(seconds):
        eng.push(*event)
    rows = [0]
    decode = eng._decoder.decode

    def counted(*args: object, **kw: object) -> None:
        rows[0] += int(args[-1])  # type: ignore[call-overload]
        decode(*args, **kw)  # type: ignore[arg-type]

    dec, ph = Stopwatch(counted), Stopwatch(eng.phase.push)
    fft = Stopwatch(np.fft.irfft)
    eng._decoder.decode, eng.phase.push = dec, ph  # type: ignore[method-assign]
    np.fft.irfft = fft  # type: ignore[assignment]
    out = np.zeros((RENDER_BLOCK, 2), np.float32)
    try:
        t0 = time.perf_counter()
        for _ in range(int(seconds * RATE) // RENDER_BLOCK):
            eng.process(out)
        total = time.perf_counter() - t0
    finally:
        np.fft.irfft = fft.fn  # type: ignore[assignment]
    stages = {"decoder (ONNX + partial placement)": dec.seconds, "phase reconstruction": ph.seconds,
              "inverse FFT": fft.seconds}
    stages["the rest"] = total - sum(stages.values())
    return stages, rows[0], total


def import_floor(runs: int = 5) -> float:
    """Median seconds for a fresh interpreter to import what ``--render`` needs, nothing run."""
    code = "import numpy, numba, onnxruntime, synth.engine, synth.cli_render, synth.midifile"
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    stages, frames, total = stage_costs(args.seconds)
    rows = [[name, f"{t:.3f}", f"{t / frames * 1e6:.1f}", f"{100 * t / total:.0f} %"] for name, t in stages.items()]
    rows.append(["total", f"{total:.3f}", f"{total / frames * 1e6:.1f}", "100 %"])
    print(f"16-voice passage, {args.seconds:g} s, {frames} decoded voice-frames; net {args.seconds / total:.2f}x real time\n")
    print(markdown_table(["stage", "seconds", "µs per voice-frame", "share"], rows))
    core = total - stages["the rest"]
    floor = import_floor()
    budget = args.seconds / GOAL
    ceilings = [
        ["net, one core, only decoder + phase + inverse FFT (the rest free)", f"{args.seconds / core:.1f}x"],
        [f"net, {args.cores} cores, every stage scaling perfectly", f"{args.seconds / total * args.cores:.1f}x"],
        ["net, one core, decoder alone", f"{args.seconds / stages['decoder (ONNX + partial placement)']:.1f}x"],
        ["start-up floor: importing numpy, numba, onnxruntime and the engine (median of 5)", f"{floor:.2f} s"],
        [f"the whole {args.seconds:g} s render at {GOAL:g}x, start-up included", f"{budget:.2f} s"],
        [f"gross, {args.cores} perfect cores + the import floor alone",
         f"{args.seconds / (floor + total / args.cores):.1f}x"],
    ]
    print()
    print(markdown_table(["ceiling", "value"], ceilings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
