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

The ``captures`` section (``--skip captures`` leaves it out) plays D#2..D#5 by half octaves with a
capture of each held-out GM program's FluidR3 C4 as ``--timbre PATH.wav`` plays it: its latent, the
key tracking it borrowed and its own key's reading, its tone curve and the level per key measured at
capture (``synth.loudness.measure_key_level``, at C2..C6 by octaves and F#3, F#4 around its own key:
these seven keys lie halfway between, where interpolating the level misses most),
against the same band; and, for comparison, the same captures without that level (as every
capture played before it was measured). The ``random`` section plays the random button's timbres
(seeds 0..9) the same way, with the level per key the synth gives a draw (drawn while the synth
plays, a draw is not measured through the engine but estimated from the decoder alone:
``synth.loudness.LevelEstimate``), and without it.

The ``knobs`` section plays a v100 C4 of one program per GM group (programs 0, 8, ... 104) after a
program change, and again after each knob is turned to CC 0 and to CC 127, rendered as
``--render`` renders (the loudness follower looking at the latent, ``synth.level_follow``) and
without the follower: how far each knob's ends move the note's peak from the program's own.
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
CAPTURE_KEYS = (39, 45, 51, 57, 63, 69, 75)  # D#2 .. D#5: halfway between the keys a C4 capture's level is measured at


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


def capture_rows(preset: Preset, programs: list[int] | None = None) -> tuple[list[list[float]], list[list[float]]]:
    """Per program (default: the preset's held-out ones), ``[program, peak at each of CAPTURE_KEYS]`` (v100,
    dBFS) of a capture of its FluidR3 C4: with its measured level per key, and without it."""
    from benchmarks.capture_fidelity import CAPTURE_KEY, FluidNotes, holdout_programs
    from synth.capture import Encoder, capture
    from synth.loudness import measure_key_level
    from synth.refine import Refiner
    from synth.timbre import CAPTURE, TimbreInfo

    rate = preset.params.sample_rate
    fluid, encoder, refiner = FluidNotes(rate, HOLD_S), Encoder(preset), Refiner(preset)
    levelled, plain = [], []
    for program in holdout_programs(preset) if programs is None else programs:
        cap = capture(preset, fluid.note(program, CAPTURE_KEY), rate, encoder=encoder, refiner=refiner)
        timbre = (cap.z, TimbreInfo(CAPTURE, f"GM {program}"), cap.track, cap.tone_db)
        gains = measure_key_level(preset, cap.z, cap.track, cap.tone_db, cap.pitch).gains()
        levelled.append([program, *[dbfs(render_peak(preset, None, (key,), 100, (*timbre, gains)))
                                    for key in CAPTURE_KEYS]])
        plain.append([program, *[dbfs(render_peak(preset, None, (key,), 100, timbre)) for key in CAPTURE_KEYS]])
    return levelled, plain


def random_rows(preset: Preset, seeds: range = range(10)) -> tuple[list[list[float]], list[list[float]]]:
    """Per seed, ``[seed, peak at each of KEYS]`` (v100, dBFS) of the random timbre ``random:SEED``: with the
    level per key the synth gives a draw (``synth.loudness.LevelEstimate``), and without it."""
    from synth.loudness import LevelEstimate
    from synth.timbre import RANDOM, TimbreInfo, draw_random

    estimate = LevelEstimate(preset)
    levelled, plain = [], []
    for seed in seeds:
        timbre = (draw_random(preset, seed), TimbreInfo(RANDOM, f"random:{seed}"))
        gains = estimate.key_level(timbre[0]).gains()
        levelled.append([seed, *[dbfs(render_peak(preset, None, (key,), 100, (*timbre, None, None, gains))) for key in KEYS]])
        plain.append([seed, *[dbfs(render_peak(preset, None, (key,), 100, timbre)) for key in KEYS]])
    return levelled, plain


class PeakWriter:
    """A render writer that keeps the largest |sample| from sample ``start`` on."""

    def __init__(self, start: int) -> None:
        self.start, self.at, self.peak = start, 0, 0.0

    def write(self, block: np.ndarray) -> None:
        tail = block[max(0, self.start - self.at):]
        if len(tail):
            self.peak = max(self.peak, float(np.max(np.abs(tail))))
        self.at += len(block)


def knob_note_db(preset: Preset, program: int, knob: int | None, value: int, follow: bool) -> float:
    """dBFS of a v100 C4 (held 1 s) 0.3 s after a program change and a knob move, rendered offline as
    ``--render`` renders it (``follow``: with the loudness follower), 20 dB down and scaled back."""
    from synth.cli_render import render
    from synth.events import KNOB_CCS, MidiEvent
    from synth.level_follow import LevelFollower

    eng = Engine(preset, device="cpu", knob_pickup=False, master_gain=0.1)
    eng.prepare(RENDER_RATE, 256, warm=False)
    start = int(0.3 * RENDER_RATE)
    events = [MidiEvent(0, 0xC0, program)] + ([MidiEvent(10, 0xB0, KNOB_CCS[knob], value)] if knob is not None else [])
    events += [MidiEvent(start, 0x90, 60, 100), MidiEvent(start + int(HOLD_S * RENDER_RATE), 0x80, 60, 0)]
    writer = PeakWriter(start)
    render(eng, events, writer, 256, follower=LevelFollower(eng) if follow else None)
    return dbfs(writer.peak / 0.1)


def knob_table(preset: Preset, programs: range = range(0, 112, 8)) -> str:
    """Per knob: the median, 90th percentile and largest |change| (dB) of a C4's peak between the
    program's own and each knob end, over ``programs``, with the loudness follower and without."""
    knobs = preset.knobs.count
    change = np.zeros((2, len(programs), knobs, 2))
    for j, program in enumerate(programs):
        for f, follow in enumerate((True, False)):
            base = knob_note_db(preset, program, None, 0, follow)
            for k in range(knobs):
                for e, value in enumerate((0, 127)):
                    change[f, j, k, e] = knob_note_db(preset, program, k, value, follow) - base
    size = np.abs(change)
    rows = [[f"knob {k + 1}", *[f"{np.median(size[f, :, k]):.1f} / {np.percentile(size[f, :, k], 90):.1f} / "
                                f"{size[f, :, k].max():.1f}" for f in (0, 1)]] for k in range(knobs)]
    rows.append(["all", *[f"{np.median(size[f]):.1f} / {np.percentile(size[f], 90):.1f} / {size[f].max():.1f}"
                          for f in (0, 1)]])
    return markdown_table(["knob", "|change| dB with the follower: median / p90 / max", "without it"], rows)


def band_table(rows: list[list[float]], title: str, label: str, keys: tuple[int, ...] = KEYS) -> str:
    """``rows`` of ``[name, peak at each of keys]`` as a table with the share inside NOTE_RANGE_DBFS, and a summary."""
    lo, hi = NOTE_RANGE_DBFS
    peaks = np.array([r[1:] for r in rows], np.float64)
    inside = (peaks >= lo) & (peaks <= hi)
    table = markdown_table([label, *[f"key {k}" for k in keys], "inside"],
                           [[int(r[0]), *[f"{v:.1f}" for v in r[1:]], f"{int(ok.sum())}/{len(keys)}"]
                            for r, ok in zip(rows, inside)])
    return (f"### {title} (dBFS; the snapshots' band {lo:g}..{hi:g})\n\n{table}\n\n{int(inside.sum())}/{inside.size} "
            f"notes inside {lo:g}..{hi:g}; median {np.median(peaks):.1f}, min {peaks.min():.1f}, max {peaks.max():.1f} dBFS")


def dbfs(peak: float) -> float:
    return 20.0 * np.log10(max(peak, 1e-9))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--skip", default="", help="sections to leave out: captures,random,knobs")
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
        skipped = chosen_sections(args.skip, ["captures", "random", "knobs"])
        if "captures" not in skipped:
            levelled, plain = capture_rows(preset)
            print("\n" + band_table(levelled, "v100 notes of a C4 capture of each held-out program, with the level per "
                                   "key measured at capture", "program", CAPTURE_KEYS))
            print("\n" + band_table(plain, "the same captures without it (level 1.0, as before captures were "
                                   "measured)", "program", CAPTURE_KEYS))
        if "random" not in skipped:
            levelled, plain = random_rows(preset)
            print("\n" + band_table(levelled, "v100 notes of the random timbres random:0 .. random:9, with the level "
                                   "per key the synth estimates for a draw", "seed"))
            print("\n" + band_table(plain, "the same draws without it (level 1.0, as before)", "seed"))
        if "knobs" not in skipped:
            print("\n### a v100 C4's peak moved by each knob's ends (CC 0, CC 127) from the program's own, "
                  "one program per GM group\n")
            print(knob_table(preset))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
