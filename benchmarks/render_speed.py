"""Engine speed: offline render speed and CPU cost per voice of one 128-frame block at 48 kHz.

    python -m benchmarks.render_speed [--preset DIR] [--seconds 8] [--blocks 150]

Uses presets/default when it exists, else a fake preset built by tests/fake_preset.py (the
table says which). Single-threaded: onnxruntime gets one intra-op thread and numba code runs
on the calling thread. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import markdown_table
from synth.engine import Engine
from synth.preset import Preset, load_preset

RATE = 48000
BLOCK = 128
BUDGET_FRACTION = 0.70
VOICE_COUNTS = (1, 8, 16, 32, 48, 64)
DEFAULT_PRESET = Path(__file__).resolve().parents[1] / "presets" / "default"


def _preset(path: Path | None) -> tuple[Preset, str]:
    if path is not None:
        return load_preset(path), str(path)
    if (DEFAULT_PRESET / "preset.toml").is_file():
        return load_preset(DEFAULT_PRESET), "presets/default"
    from tests.fake_preset import make_fake_preset

    root = make_fake_preset(Path(tempfile.mkdtemp(prefix="vaesynth-bench-")) / "fake")
    return load_preset(root), "fake preset (tests/fake_preset.py)"


def _engine(preset: Preset, polyphony: int) -> Engine:
    eng = Engine(preset, polyphony=polyphony, device="cpu", threads=1)
    eng.prepare(RATE, BLOCK)
    return eng


def render_speed(preset: Preset, seconds: float) -> float:
    """× real time for a 16-voice passage: chords of 4 notes every 0.25 s, each held 1 s."""
    eng = _engine(preset, 32)
    n = int(seconds * RATE)
    rng = np.random.default_rng(1)
    for i, start in enumerate(range(0, n - RATE, RATE // 4)):
        for key in rng.choice(np.arange(40, 88), 4, replace=False):
            eng.push(start + i % 7, 0x90, int(key), 100)
            eng.push(start + RATE, 0x80, int(key), 0)
    out = np.zeros((BLOCK, 2), np.float32)
    eng.process(out)  # compile/warm
    t0 = time.perf_counter()
    for _ in range(n // BLOCK):
        eng.process(out)
    return (n / RATE) / (time.perf_counter() - t0)


def block_cost(preset: Preset, voices: int, blocks: int) -> tuple[float, float]:
    """(mean, 95th percentile) seconds per 128-frame block with ``voices`` notes held.

    All notes start together, so every voice decodes its frame in the same block (one block
    in two at hop 256): the percentile is that worst, decoding block.
    """
    eng = _engine(preset, max(voices, 1))
    for k in range(voices):
        eng.push(0, 0x90, 30 + k, 100)  # distinct keys: no re-strike releases
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(40):
        eng.process(out)
    times = np.empty(blocks)
    for i in range(blocks):
        t0 = time.perf_counter()
        eng.process(out)
        times[i] = time.perf_counter() - t0
    assert eng.voices.sounding_count() == voices
    return float(np.mean(times)), float(np.percentile(times, 95))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--blocks", type=int, default=150, help="timed blocks per voice count")
    args = ap.parse_args()
    preset, which = _preset(args.preset)
    budget = BLOCK / RATE
    speed = render_speed(preset, args.seconds)
    rows = []
    fits = 0
    for v in VOICE_COUNTS:
        mean, worst = block_cost(preset, v, args.blocks)
        if worst < BUDGET_FRACTION * budget:
            fits = v
        rows.append([v, f"{mean * 1e3:.3f}", f"{worst * 1e3:.3f}", f"{100 * worst / budget:.1f} %",
                     f"{mean / v * 1e3:.4f}"])
    print(f"preset: {which}; {RATE} Hz, block {BLOCK} ({budget * 1e3:.2f} ms budget), single thread\n")
    print(markdown_table(["passage", "render speed"], [["16-voice chords, 8 s" if args.seconds == 8 else
                                                         f"16-voice chords, {args.seconds:g} s", f"{speed:.2f}x real time"]]))
    print()
    print(markdown_table(["voices", "mean ms/block", "p95 ms/block", "p95 of budget", "mean ms/voice"], rows))
    print(f"\nlargest measured voice count with p95 block time under {BUDGET_FRACTION:.0%} of the budget: {fits or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
