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

The ``captures`` section (``--skip captures`` leaves it out) plays the same seven keys with a
capture of each held-out GM program's FluidR3 C4 (as ``--timbre PATH.wav`` would: its latent, the
key tracking it borrowed and its tone curve), against the same band. A capture plays at level 1.0
with no level per key (export measures those for snapshots only), so this says how far a captured
sound's loudness strays from the snapshots' band across the keyboard.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import DEFAULT_PRESET, RENDER_RATE, chosen_sections, log, markdown_table, open_preset, run_main
from synth.contract import GM_GROUPS, gm_group
from synth.engine import Engine
from synth.preset import Preset

NOTE_RANGE_DBFS = (-12.0, -6.0)
HOLD_S, TAIL_S = 1.0, 0.6
CHORD = (48, 52, 55, 60, 64, 67, 72, 76)
KEYS = (42, 48, 54, 60, 66, 72, 78)  # F#2 .. F#5 by half octaves: even keys, never measured by export


def render_peak(preset: Preset, program: int | None, keys: tuple[int, ...], velocity: int,
                timbre: tuple | None = None) -> float:
    """Peak |sample| of ``keys`` played together on ``program`` (after the glide to its snapshot), or
    on a stored ``timbre (z, info, track, tone_db)`` as a slot plays it (``program`` None)."""
    eng = Engine(preset, device="cpu")
    if timbre is not None:
        eng.set_timbre_now(eng.store_timbre(*timbre))
    eng.prepare(RENDER_RATE, 1024, warm=False)
    start = RENDER_RATE // 10
    if program is not None:
        eng.push(0, 0xC0, program, 0)
    for key in keys:
        eng.push(start, 0x90, key, velocity)
        eng.push(start + int(HOLD_S * RENDER_RATE), 0x80, key, 0)
    out = np.zeros((start + int((HOLD_S + TAIL_S) * RENDER_RATE), 2), np.float32)
    eng.process(out)
    return float(np.max(np.abs(out)))


def capture_rows(preset: Preset, programs: list[int] | None = None) -> list[list[object]]:
    """Per program (default: the preset's held-out ones): the v100 peaks (dBFS) at ``KEYS`` of a
    capture of its FluidR3 C4."""
    from benchmarks.capture_fidelity import CAPTURE_KEY, FluidNotes, holdout_programs
    from synth.capture import Encoder, capture
    from synth.refine import Refiner
    from synth.timbre import CAPTURE, TimbreInfo

    rate = preset.params.sample_rate
    fluid, encoder, refiner = FluidNotes(rate, HOLD_S), Encoder(preset), Refiner(preset)
    rows = []
    for program in holdout_programs(preset) if programs is None else programs:
        cap = capture(preset, fluid.note(program, CAPTURE_KEY), rate, encoder=encoder, refiner=refiner)
        timbre = (cap.z, TimbreInfo(CAPTURE, f"GM {program}"), cap.track, cap.tone_db)
        rows.append([program, *[dbfs(render_peak(preset, None, (key,), 100, timbre)) for key in KEYS]])
    return rows


def dbfs(peak: float) -> float:
    return 20.0 * np.log10(max(peak, 1e-9))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--skip", default="", help="sections to leave out: captures")
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
        if "captures" not in chosen_sections(args.skip, ["captures"]):
            rows = capture_rows(preset)
            peaks = np.array([r[1:] for r in rows], np.float64)
            inside = (peaks >= lo) & (peaks <= hi)
            print(f"\n### v100 notes of a C4 capture of each held-out program (dBFS; the snapshots' band {lo:g}..{hi:g})\n")
            print(markdown_table(["program", *[f"key {k}" for k in KEYS], "inside"],
                                 [[r[0], *[f"{v:.1f}" for v in r[1:]], f"{int(ok.sum())}/{len(KEYS)}"]
                                  for r, ok in zip(rows, inside)]))
            print(f"\ncaptures: {int(inside.sum())}/{inside.size} notes inside {lo:g}..{hi:g}; "
                  f"median {np.median(peaks):.1f}, min {peaks.min():.1f}, max {peaks.max():.1f} dBFS")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
