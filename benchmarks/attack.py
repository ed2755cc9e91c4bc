"""How fast a note's attack comes, and whether it clicks: the engine's start normalisation
(``synth.engine.START_NORM_FLOOR``) and skipped head (``START_SKIP_DB``) against the real notes.

For plucked and struck General MIDI programs (pianos, chromatic percussion, guitars, basses,
pizzicato, harp, timpani, plucked ethnic, percussive) at keys 36-84, each note rendered alone
by the engine at 48 kHz (velocity 100, program change recalls its snapshot), prints per
(floor, skip):
- rise: ms from the note's first non-zero sample until its 1 ms RMS envelope first reaches
  20 dB below its peak (what ``live_latency`` adds to key-to-sound for "within 20 dB");
- head: the loudest 1 ms RMS of the first 5 ms against the loudest of 10-30 ms in (dB), and
  its excess over the real note's own head (FluidR3, same program and key, where that head
  sounds): a normalisation that boosts the first window's error makes the head a burst louder
  than the instrument's;
- head highs: the loudest 1 ms RMS above 8 kHz in the first 5 ms, against the note's peak
  (dB; a click is broadband and loud up there);
and the same rise and head for FluidR3's own notes of those programs and keys.

Run: ``python -m benchmarks.attack [--preset DIR] [--floors 0.01,0.005] [--skips -22,-inf]``.
Offline and single-threaded: no real-time figure, any machine load only slows it.
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


HEAD_MS = 5
BODY_MS = (10, 30)
SOUNDING_HEAD_DB = -30.0  # a real note's head quieter than this against its body: it starts late or slowly


def head_db(x: NDArray, first: int) -> float:
    """Loudest 1 ms of the first ``HEAD_MS`` against the loudest of ``BODY_MS`` after ``first``."""
    env = rms_envelope_1ms(x[first:first + RENDER_RATE * BODY_MS[1] // 1000])
    head, body = env[:RENDER_RATE * HEAD_MS // 1000].max(), env[RENDER_RATE * BODY_MS[0] // 1000:].max()
    return float(20 * np.log10(max(head, 1e-12) / max(body, 1e-12)))


def head_highs_db(x: NDArray, first: int) -> float:
    """Loudest 1 ms above 8 kHz in the first ``HEAD_MS`` against the note's loudest 1 ms (dB)."""
    seg = x[first:first + NOTE_GAP // 2]
    spectrum = np.fft.rfft(seg)
    spectrum[np.fft.rfftfreq(len(seg), 1 / RENDER_RATE) < 8000] = 0
    highs = np.fft.irfft(spectrum, len(seg))
    head = rms_envelope_1ms(highs[:RENDER_RATE * HEAD_MS // 1000]).max()
    return float(20 * np.log10(max(head, 1e-12) / max(rms_envelope_1ms(seg).max(), 1e-12)))


def first_sample(x: NDArray, start: int, threshold: float = 0.0) -> int:
    """Index of the first sample after ``start`` louder than ``threshold`` x the note's peak."""
    seg = np.abs(x[start:start + NOTE_GAP])
    return start + int(np.argmax(seg > threshold * seg.max()))


def engine_notes(preset_dir: str, floor: float, skip_db: float | None = None) -> list[tuple[int, int, NDArray, int]]:
    """(program, key, audio, first sample) for every note, rendered by the engine with ``floor``
    and ``skip_db`` (``START_SKIP_DB``, -inf: no skip; None: the engine's)."""
    import synth.engine as engine_module

    engine_module.START_NORM_FLOOR = floor  # both read when prepare builds the windows
    if skip_db is not None:
        engine_module.START_SKIP_DB = skip_db
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


def fluidsynth_notes() -> dict[tuple[int, int], tuple[float, float]]:
    """(rise, head) of FluidR3's own notes, velocity 100, by (program, key) (first sample: 1e-4
    of the peak, past the render's high-pass filter's settling)."""
    from benchmarks.capture_fidelity import FluidNotes

    fluid = FluidNotes(RENDER_RATE, hold=0.5)
    real = {}
    for program in PROGRAMS:
        for key in KEYS:
            x = fluid.note(program, key)
            first = first_sample(x, 0, 1e-4)
            real[program, key] = (rise_ms(x, first), head_db(x, first))
    return real


def summary(values: NDArray) -> str:
    return " / ".join(f"{v:.2f}" for v in (np.percentile(values, 10), np.median(values),
                                            np.percentile(values, 90), values.max()))


def main() -> int:
    import synth.engine as engine_module

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--floors", default=None,
                    help=f"start-normalisation floors to compare (default: the engine's, {engine_module.START_NORM_FLOOR:g})")
    ap.add_argument("--skips", default=None,
                    help=f"start skips to compare with every floor, dB (-inf: none; default: the engine's, "
                         f"{engine_module.START_SKIP_DB:g})")
    args = ap.parse_args()
    floors = [float(f) for f in args.floors.split(",")] if args.floors else [engine_module.START_NORM_FLOOR]
    skips = [float(f) for f in args.skips.split(",")] if args.skips else [engine_module.START_SKIP_DB]
    log("FluidR3 notes...")
    real = fluidsynth_notes()
    rows = []
    for floor, skip in [(f, k) for f in floors for k in skips]:
        log(f"engine notes, floor {floor:g}, skip {skip:g} dB...")
        notes = engine_notes(args.preset, floor, skip)
        rise = np.array([rise_ms(x, f) for _, _, x, f in notes])
        head = np.array([head_db(x, f) for _, _, x, f in notes])
        # against real heads that sound (a real note starting late or slowly has a silent head)
        excess = np.array([head_db(x, f) - real[p, k][1] for p, k, x, f in notes if real[p, k][1] > SOUNDING_HEAD_DB])
        highs = np.array([head_highs_db(x, f) for _, _, x, f in notes])
        piano = rise[[i for i, (p, k, _, _) in enumerate(notes) if p == 0 and k == 60][0]]
        rows.append([f"engine, floor {floor:g}, skip {skip:g} dB", summary(rise), f"{piano:.2f}",
                     f"{np.median(head):.1f} / {head.max():.1f}", f"{np.median(excess):.1f} / {excess.max():.1f}",
                     f"{highs.max():.1f}"])
    real_rise = np.array([r for r, _ in real.values()])
    real_head = np.array([h for _, h in real.values()])
    rows.append(["FluidR3 (the real notes)", summary(real_rise), f"{real[0, 60][0]:.2f}",
                 f"{np.median(real_head):.1f} / {real_head.max():.1f}", "", ""])
    print(markdown_table(
        ["notes", "rise to −20 dB of peak, ms: p10 / median / p90 / max", "piano C4",
         f"head (first {HEAD_MS} ms vs {BODY_MS[0]}–{BODY_MS[1]} ms in), dB: median / max",
         "head over the real note's, dB: median / max", "head above 8 kHz vs the note's peak, dB: max"], rows))
    sounding = sum(h > SOUNDING_HEAD_DB for _, h in real.values())
    print(f"\n{len(PROGRAMS)} programs × keys {', '.join(map(str, KEYS))}, velocity 100, 48 kHz. The excess "
          f"compares with the same FluidR3 note, on the {sounding} whose own head is within "
          f"{-SOUNDING_HEAD_DB:g} dB of its body (the others start late or slowly).")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
