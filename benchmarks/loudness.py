"""Loudness through the engine: velocity-100 notes of every General MIDI program, and dense chords.

    python -m benchmarks.loudness [--preset presets/default]

Each program 0..127 is recalled by a program change (its own snapshot, else its group's), then a
note at velocity 100 is held 1 s and released, at F#2, C3, F#3, C4, F#4, C5 and F#5. Export
measured each snapshot's level per key at every other key from C#2 to B5
(``export.onnx.KEY_LEVEL_KEYS``, all odd): none of these seven keys, so they test the
interpolation between measured keys as well as the engine applying it. Rendered offline by the
engine exactly as ``run_synth.py --render`` would (default master gain, the preset's [mix]
gain, the snapshot's level and its level per key). Goal: the single note peaks between -12 and -6 dBFS; chords (8 notes at velocity 127, on
the loudest programs) never pass 0 dBFS.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import DEFAULT_PRESET, RENDER_RATE, log, markdown_table, open_preset, run_main
from synth.contract import GM_GROUPS, gm_group
from synth.engine import Engine
from synth.preset import Preset

NOTE_RANGE_DBFS = (-12.0, -6.0)
HOLD_S, TAIL_S = 1.0, 0.6
CHORD = (48, 52, 55, 60, 64, 67, 72, 76)
KEYS = (42, 48, 54, 60, 66, 72, 78)  # F#2 .. F#5 by half octaves: even keys, never measured by export


def render_peak(preset: Preset, program: int, keys: tuple[int, ...], velocity: int) -> float:
    """Peak |sample| of ``keys`` played together on ``program`` (after the glide to its snapshot)."""
    eng = Engine(preset, device="cpu")
    eng.prepare(RENDER_RATE, 1024, warm=False)
    start = RENDER_RATE // 10
    eng.push(0, 0xC0, program, 0)
    for key in keys:
        eng.push(start, 0x90, key, velocity)
        eng.push(start + int(HOLD_S * RENDER_RATE), 0x80, key, 0)
    out = np.zeros((start + int((HOLD_S + TAIL_S) * RENDER_RATE), 2), np.float32)
    eng.process(out)
    return float(np.max(np.abs(out)))


def dbfs(peak: float) -> float:
    return 20.0 * np.log10(max(peak, 1e-9))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    args = ap.parse_args(argv)

    def body() -> int:
        preset = open_preset(args.preset)
        lo, hi = NOTE_RANGE_DBFS
        by_key = {key: np.asarray([dbfs(render_peak(preset, p, (key,), 100)) for p in range(128)]) for key in KEYS}
        log("rendered")
        print(f"### v100 single notes, all 128 programs: share inside {lo:g}..{hi:g} dBFS\n")
        print(markdown_table(["key", "inside", "median dBFS", "min", "max"],
                             [[key, f"{int(np.sum((v >= lo) & (v <= hi)))}/128", f"{np.median(v):.1f}",
                               f"{v.min():.1f}", f"{v.max():.1f}"] for key, v in by_key.items()]))
        print()
        levels_arr = by_key[60]
        rows = []
        for g, name in enumerate(GM_GROUPS):
            grp = levels_arr[g * 8:(g + 1) * 8]
            inside = int(np.sum((grp >= lo) & (grp <= hi)))
            rows.append([name, f"{grp.min():.1f}", f"{np.median(grp):.1f}", f"{grp.max():.1f}", f"{inside}/8"])
        print(f"### v100 C4 peak per General MIDI group (dBFS; goal {lo:g}..{hi:g})\n")
        print(markdown_table(["group", "min", "median", "max", "inside"], rows))
        inside = int(np.sum((levels_arr >= lo) & (levels_arr <= hi)))
        print(f"\nall 128 programs: median {np.median(levels_arr):.1f} dBFS, {inside}/128 "
              f"({100 * inside / 128:.0f} %) inside {lo:g}..{hi:g}; outside: "
              + (", ".join(f"{p} ({levels_arr[p]:.1f})" for p in range(128) if not lo <= levels_arr[p] <= hi)
                 or "none"))
        loudest = [int(p) for p in np.argsort(levels_arr)[-4:]]
        chords = [(p, dbfs(render_peak(preset, p, CHORD, 127))) for p in loudest]
        print("\n### 8-note chord at velocity 127 on the loudest programs (goal <= 0 dBFS)\n")
        print(markdown_table(["program", "group", "peak dBFS"],
                             [[p, gm_group(p), f"{v:.3f}"] for p, v in chords]))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
