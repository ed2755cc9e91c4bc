"""Engine speed: offline render speed and CPU cost per voice of one 128-frame block at 48 kHz.

    python -m benchmarks.render_speed [--preset DIR] [--seconds 8] [--blocks 150] [--baseline OLD_ENGINE.py]

Render speed is measured twice on the same 16-voice passage: net (the engine's ``process`` loop
in this process, at the CLI's render block) and gross (``run_synth.py --render`` as a user runs
it, start-up included, numba cache warm); start-up alone is the CLI on a one-note file. The
per-block table times every block from the note-on block on, and shows the note-on block itself
(all voices start there: the worst case).

``--baseline`` loads ``Engine`` from another copy of ``synth/engine.py`` (e.g. the last commit's,
``git show HEAD:synth/engine.py > /tmp/engine_old.py``) and measures both in the same run, which
is the only fair comparison on a shared, noisy machine.

Uses presets/default when it exists, else a fake preset built by tests/fake_preset.py (the
table says which). Single-threaded: onnxruntime gets one intra-op thread and numba code runs
on the calling thread. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.common import markdown_table
from synth.engine import Engine
from synth.preset import Preset, load_preset

RATE = 48000
BLOCK = 128
RENDER_BLOCK = 1024  # run_synth.py --render's default block
STARTUP_RUNS = 3
BUDGET_FRACTION = 0.70
VOICE_COUNTS = (1, 8, 16, 32, 48, 64)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_PRESET = REPO / "presets" / "default"


def _preset(path: Path | None) -> tuple[Preset, str]:
    if path is not None:
        return load_preset(path), str(path)
    if (DEFAULT_PRESET / "preset.toml").is_file():
        return load_preset(DEFAULT_PRESET), "presets/default"
    from tests.fake_preset import make_fake_preset

    root = make_fake_preset(Path(tempfile.mkdtemp(prefix="vaesynth-bench-")) / "fake")
    return load_preset(root), "fake preset (tests/fake_preset.py)"


EngineClass = Callable[..., Engine]


def load_engine_class(path: Path) -> EngineClass:
    """``Engine`` from another copy of synth/engine.py (it imports the rest of ``synth`` as usual)."""
    if not path.is_file():
        raise SystemExit(f"error: no engine file {path}")
    spec = importlib.util.spec_from_file_location("baseline_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module.Engine


def _engine(preset: Preset, polyphony: int, engine_cls: EngineClass = Engine) -> Engine:
    eng = engine_cls(preset, polyphony=polyphony, device="cpu", threads=1)
    eng.prepare(RATE, BLOCK)
    return eng


def passage(seconds: float) -> list[tuple[int, int, int, int]]:
    """The 16-voice passage: chords of 4 notes every 0.25 s, each held 1 s -> (sample, status, d1, d2)."""
    n = int(seconds * RATE)
    rng = np.random.default_rng(1)
    events = []
    for i, start in enumerate(range(0, n - RATE, RATE // 4)):
        for key in rng.choice(np.arange(40, 88), 4, replace=False):
            events += [(start + i % 7, 0x90, int(key), 100), (start + RATE, 0x80, int(key), 0)]
    return sorted(events)


def render_speed(preset: Preset, seconds: float, engine_cls: EngineClass = Engine) -> float:
    """Net × real time of the passage through ``process`` at the CLI's render block (no start-up)."""
    eng = engine_cls(preset, polyphony=32, device="cpu", threads=1)
    eng.prepare(RATE, RENDER_BLOCK, warm=False)
    for event in passage(seconds):
        eng.push(*event)
    out = np.zeros((RENDER_BLOCK, 2), np.float32)
    eng.process(out[:1])  # compile on a cold cache: not part of the figure
    n = int(seconds * RATE)
    t0 = time.perf_counter()
    for _ in range(n // RENDER_BLOCK):
        eng.process(out)
    return (n / RATE) / (time.perf_counter() - t0)


def _write_midi(path: Path, events: list[tuple[int, int, int, int]]) -> None:
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)  # 120 bpm: 960 ticks a second
    track = mido.MidiTrack()
    mid.tracks.append(track)
    last = 0
    for sample, status, d1, d2 in events:
        tick = round(sample * 960 / RATE)
        track.append(mido.Message.from_bytes([status, d1, d2], time=tick - last))
        last = tick
    mid.save(str(path))


def cli_render_seconds(preset_dir: Path, events: list[tuple[int, int, int, int]]) -> float:
    """Wall seconds of ``python run_synth.py --render`` on ``events``, start-up included."""
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "passage.mid", Path(tmp) / "out.wav"
        _write_midi(mid, events)
        cmd = [sys.executable, str(REPO / "run_synth.py"), "--render", str(mid), "--out", str(wav),
               "--preset", str(preset_dir), "--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        return time.perf_counter() - t0


def block_cost(preset: Preset, voices: int, blocks: int, engine_cls: EngineClass = Engine,
               repeats: int = 3) -> tuple[float, float, float, float]:
    """(mean, p95, quiet p95, note-on block) seconds per 128-frame block with ``voices`` notes held.

    All notes start together, so every voice's frames fall due in the same block (one block in
    two at hop 256): the worst case for the engine's balancing of frame work across blocks.
    The run is repeated ``repeats`` times with fresh engines (the same blocks each time); the
    quiet p95 takes each block's fastest repeat first, which removes most preemption by other
    processes on a shared machine but keeps the engine's own slow blocks.
    """
    times = np.empty((repeats, blocks))
    for r in range(repeats):
        eng = _engine(preset, max(voices, 1), engine_cls)
        for k in range(voices):
            eng.push(0, 0x90, 30 + k, 100)  # distinct keys: no re-strike releases
        out = np.zeros((BLOCK, 2), np.float32)
        for i in range(blocks):  # block 0 holds every note-on and their first frames
            t0 = time.perf_counter()
            eng.process(out)
            times[r, i] = time.perf_counter() - t0
        assert eng.voices.sounding_count() == voices
    note_on = float(np.median(times[:, 0]))
    return (float(np.mean(times)), float(np.percentile(times, 95)), float(np.percentile(times.min(axis=0), 95)),
            note_on)


def report(preset: Preset, seconds: float, blocks: int, engine_cls: EngineClass = Engine,
           preset_dir: Path | None = None) -> None:
    """Print the render-speed table and the per-block cost table for one engine."""
    budget = BLOCK / RATE
    speed = render_speed(preset, seconds, engine_cls)
    rows = []
    fits, fits_quiet = 0, 0
    for v in VOICE_COUNTS:
        mean, worst, quiet, note_on = block_cost(preset, v, blocks, engine_cls)
        fits = v if worst < BUDGET_FRACTION * budget else fits
        fits_quiet = v if quiet < BUDGET_FRACTION * budget else fits_quiet
        rows.append([v, f"{mean * 1e3:.3f}", f"{worst * 1e3:.3f}", f"{100 * worst / budget:.1f} %",
                     f"{quiet * 1e3:.3f}", f"{100 * quiet / budget:.1f} %", f"{note_on * 1e3:.3f}",
                     f"{mean / v * 1e3:.4f}"])
    table = [[f"16-voice chords, {seconds:g} s: net (process loop, block {RENDER_BLOCK})", f"{speed:.2f}x real time",
              "≥ 20x"]]
    if preset_dir is not None and engine_cls is Engine:
        one_note = [(0, 0x90, 60, 100), (RATE // 10, 0x80, 60, 0)]
        starts = sorted(cli_render_seconds(preset_dir, one_note) for _ in range(STARTUP_RUNS))
        startup = starts[len(starts) // 2]  # the median: one run alone is at the mercy of the page cache
        gross = cli_render_seconds(preset_dir, passage(seconds))
        table += [["the same through run_synth.py --render: gross (start-up included)",
                   f"{seconds / gross:.2f}x real time ({gross:.2f} s)", "≥ 20x"],
                  [f"start-up: run_synth.py --render of a 0.1 s note, median of {STARTUP_RUNS} runs "
                   f"({' / '.join(f'{t:.2f}' for t in starts)} s)", f"{startup:.2f} s", "≤ 1.5 s"]]
    print(markdown_table(["render", "measured", "goal"], table))
    print()
    print(markdown_table(["voices", "mean ms/block", "p95 ms/block", "p95 of budget", "quiet p95 ms/block",
                          "quiet p95 of budget", "note-on block ms", "mean ms/voice"], rows))
    print(f"\nlargest measured voice count with p95 block time under {BUDGET_FRACTION:.0%} of the budget: "
          f"{fits or 'none'} (quiet p95: {fits_quiet or 'none'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--blocks", type=int, default=150, help="timed blocks per voice count")
    ap.add_argument("--baseline", type=Path, default=None, help="another synth/engine.py to measure first")
    args = ap.parse_args()
    preset, which = _preset(args.preset)
    preset_dir = preset.root
    print(f"preset: {which}; {RATE} Hz, block {BLOCK} ({BLOCK / RATE * 1e3:.2f} ms budget), single thread\n")
    if args.baseline is not None:
        print(f"### baseline: {args.baseline}\n")
        report(preset, args.seconds, args.blocks, load_engine_class(args.baseline))
        print("\n### this tree: synth/engine.py\n")
    report(preset, args.seconds, args.blocks, preset_dir=preset_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
