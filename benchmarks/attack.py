"""How fast a note's attack comes, and whether it clicks: the engine's start normalisation
(``synth.engine.START_NORM_FLOOR``) against the real notes.

For plucked and struck General MIDI programs (pianos, chromatic percussion, guitars, basses,
pizzicato, harp, timpani, plucked ethnic, percussive) at keys 36-84, each note rendered alone
by the engine at 48 kHz (velocity 100, program change recalls its snapshot), prints per floor:
- rise: ms from the note's first non-zero sample until its 1 ms RMS envelope first reaches
  20 dB below its peak (what ``live_latency`` adds to key-to-sound for "within 20 dB");
- onset overshoot: the loudest 1 ms RMS of the first 2 ms against the loudest of 10-30 ms in
  (dB; above 0 the normalisation boosts phase errors of the window's tail into a burst: a click);
- onset brightness: the share of energy above 8 kHz in the first 3 ms against the same share
  20 ms in (dB; a click is broadband);
and the same rise for FluidR3's own notes of those programs and keys.

Run: ``python -m benchmarks.attack [--preset DIR] [--floors 0.02,0.01,0.005]``. Offline and
single-threaded: no real-time figure, any machine load only slows it.
"""
from __future__ import annotations

import argparse

import numpy as np
from numpy.typing import NDArray

from benchmarks.common import (DEFAULT_PRESET, RENDER_RATE, frames_to_within_20db, log, markdown_table, open_preset,
                               rms_envelope_1ms, run_main)

PROGRAMS = (0, 2, 4, 6, 8, 11, 13, 24, 25, 27, 32, 33, 45, 46, 47, 105, 108, 112, 115)
KEYS = (36, 48, 60, 72, 84)
NOTE_GAP = 24000  # samples between notes (0.5 s), each held 0.25 s
BLOCK = 128


def rise_ms(x: NDArray, first: int, span: int = BLOCK * 40) -> float:
    """ms from ``first`` until the 1 ms RMS envelope reaches 20 dB below its peak within ``span``."""
    return frames_to_within_20db(x, first, span) * 1000 / RENDER_RATE


def overshoot_db(x: NDArray, first: int) -> float:
    """Loudest 1 ms of the first 2 ms against the loudest of 10-30 ms after ``first``."""
    env = rms_envelope_1ms(x[first:first + RENDER_RATE * 30 // 1000])
    head, body = env[:RENDER_RATE * 2 // 1000].max(), env[RENDER_RATE // 100:].max()
    return float(20 * np.log10(max(head, 1e-12) / max(body, 1e-12)))


def onset_brightness_db(x: NDArray, first: int, ms: int = 3) -> float:
    """Share of energy above 8 kHz in the first ``ms`` ms against the same share 20 ms in (dB)."""
    n = RENDER_RATE * ms // 1000

    def share(seg: NDArray) -> float:
        power = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
        freqs = np.fft.rfftfreq(len(seg), 1 / RENDER_RATE)
        return float(power[freqs > 8000].sum() / (power.sum() + 1e-30)) + 1e-12

    later = first + RENDER_RATE // 50
    return float(10 * np.log10(share(x[first:first + n]) / share(x[later:later + n])))


def first_sample(x: NDArray, start: int, threshold: float = 0.0) -> int:
    """Index of the first sample after ``start`` louder than ``threshold`` x the note's peak."""
    seg = np.abs(x[start:start + NOTE_GAP])
    return start + int(np.argmax(seg > threshold * seg.max()))


def engine_notes(preset_dir: str, floor: float) -> list[tuple[int, int, NDArray, int]]:
    """(program, key, audio, first sample) for every note, rendered by the engine with ``floor``."""
    import synth.engine as engine_module

    engine_module.START_NORM_FLOOR = floor  # read when prepare builds the windows
    engine = engine_module.Engine(open_preset(preset_dir), polyphony=8, device="cpu")
    engine.prepare(RENDER_RATE, BLOCK, warm=False)
    out = np.zeros((BLOCK, 2), np.float32)
    notes = []
    for program in PROGRAMS:
        engine._reset_performance()
        onsets = [1000 + i * NOTE_GAP for i in range(len(KEYS))]
        events = sorted([(0, 0xC0, program, 0)] + [(o, 0x90, k, 100) for o, k in zip(onsets, KEYS)]
                        + [(o + NOTE_GAP // 2, 0x80, k, 0) for o, k in zip(onsets, KEYS)])
        audio, t, i = [], 0, 0
        while t < onsets[-1] + NOTE_GAP:
            while i < len(events) and events[i][0] < t + BLOCK:
                engine.push(*events[i])
                i += 1
            engine.process(out)
            audio.append(out[:, 0].copy())
            t += BLOCK
        x = np.concatenate(audio)
        notes += [(program, key, x, first_sample(x, o)) for o, key in zip(onsets, KEYS)]
    return notes


def fluidsynth_rises() -> NDArray[np.float64]:
    """The same rise for FluidR3's own notes, velocity 100 (first sample: 1e-4 of the peak, past
    the render's high-pass filter's settling)."""
    from benchmarks.capture_fidelity import FluidNotes

    fluid = FluidNotes(RENDER_RATE, hold=0.5)
    rises = []
    for program in PROGRAMS:
        for key in KEYS:
            x = fluid.note(program, key)
            rises.append(rise_ms(x, first_sample(x, 0, 1e-4)))
    return np.array(rises)


def summary(values: NDArray) -> str:
    return " / ".join(f"{v:.2f}" for v in (np.percentile(values, 10), np.median(values),
                                            np.percentile(values, 90), values.max()))


def main() -> int:
    import synth.engine as engine_module

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--floors", default=None,
                    help=f"start-normalisation floors to compare (default: the engine's, {engine_module.START_NORM_FLOOR:g})")
    args = ap.parse_args()
    floors = [float(f) for f in args.floors.split(",")] if args.floors else [engine_module.START_NORM_FLOOR]
    rows = []
    for floor in floors:
        log(f"engine notes, floor {floor:g}...")
        notes = engine_notes(args.preset, floor)
        rise = np.array([rise_ms(x, f) for _, _, x, f in notes])
        over = np.array([overshoot_db(x, f) for _, _, x, f in notes])
        bright = np.array([onset_brightness_db(x, f) for _, _, x, f in notes])
        piano = np.array([rise_ms(x, f) for p, k, x, f in notes if p == 0 and k == 60])
        rows.append([f"engine, floor {floor:g}", summary(rise), f"{piano[0]:.2f}",
                     f"{np.median(over):.1f} / {over.max():.1f}", f"{np.median(bright):.1f} / {bright.max():.1f}"])
    log("FluidR3 notes...")
    real = fluidsynth_rises()
    rows.append(["FluidR3 (the real notes)", summary(real), f"{real[PROGRAMS.index(0) * len(KEYS) + KEYS.index(60)]:.2f}",
                 "", ""])
    print(markdown_table(
        ["notes", "rise to −20 dB of peak, ms: p10 / median / p90 / max", "piano C4", "onset overshoot, dB: median / max (≤ 0: no burst)",
         "onset brightness vs 20 ms in, dB: median / max"], rows))
    print(f"\n{len(PROGRAMS)} programs × keys {', '.join(map(str, KEYS))}, velocity 100, 48 kHz.")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
