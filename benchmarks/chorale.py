"""Bach chorale BWV 66.6 played by our synth and by FluidR3, judged by basic-pitch.

    python -m benchmarks.chorale --preset presets/default [--program 4,0] [--snapshot NAME]

The score comes from music21's corpus, written to MIDI with each of the four parts on its
own channel and every channel set to the GM program. FluidR3 (pyfluidsynth, reverb and
chorus off) plays it with that program; our synth plays it through ``run_synth.py --render``
with the preset snapshot nearest to that program (same program, else the same GM family,
else the nearest program number), recalled by program change. Both renders are transcribed
with basic-pitch and scored with mir_eval onset-only F1 (50 ms) against the score. FluidR3's
F1 is the ceiling (a transcriber cannot do better on a soundfont than on the soundfont
itself); the goal is to be within 0.05 of it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from benchmarks.common import (DEFAULT_PRESET, RENDER_RATE, REPO, BenchmarkError, Note, log, markdown_table,
                               open_preset, render_fluidsynth, run_main, transcribe)
from synth.preset import Preset, Snapshot

ONSET_TOLERANCE = 0.05
# The ceiling: FluidR3's own render of BWV 66.6, transcribed the same way (onset F1 per GM program).
FLUIDR3_CEILING = {4: 0.88, 0: 0.84, 33: 0.82, 80: 0.80, 24: 0.75, 61: 0.68, 89: 0.60, 73: 0.35, 48: 0.23, 19: 0.21}


@dataclass(frozen=True)
class ScoreNotes:
    """Reference notes: ``intervals (N, 2)`` seconds, ``pitches (N,)`` MIDI numbers."""

    intervals: NDArray[np.float64]
    pitches: NDArray[np.int64]


def write_score_midi(path: Path, program: int) -> None:
    """BWV 66.6 -> ``path``: part k on channel k, every channel on ``program``."""
    import mido
    import music21

    raw = path.with_suffix(".music21.mid")
    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(raw))
    src = mido.MidiFile(str(raw))
    out = mido.MidiFile(type=1, ticks_per_beat=src.ticks_per_beat)
    channel = -1
    for track in src.tracks:
        has_notes = any(m.type == "note_on" for m in track)
        channel += 1 if has_notes else 0
        new = mido.MidiTrack()
        if has_notes:  # music21 puts all four parts on channel 0, so unisons would cut each other
            new.append(mido.Message("program_change", channel=channel, program=program, time=0))
        pending = 0
        for msg in track:
            if msg.type == "program_change":
                pending += msg.time
                continue
            msg = msg.copy(time=msg.time + pending)
            pending = 0
            new.append(msg.copy(channel=max(channel, 0)) if hasattr(msg, "channel") else msg)
        out.tracks.append(new)
    out.save(str(path))


def score_notes(midi_path: Path) -> ScoreNotes:
    """Notes of the MIDI file; exact duplicates (unisons between parts) counted once."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(midi_path))
    seen, intervals, pitches = set(), [], []
    for note in sorted((n for inst in pm.instruments for n in inst.notes), key=lambda n: n.start):
        key = (round(note.start, 3), note.pitch)
        if key not in seen:
            seen.add(key)
            intervals.append((note.start, note.end))
            pitches.append(note.pitch)
    return ScoreNotes(np.array(intervals, np.float64), np.array(pitches, np.int64))


def onset_f1(ref: ScoreNotes, notes: list[Note]) -> tuple[float, float]:
    """mir_eval onset-only F1 (50 ms) and the median onset lag (s) of matched notes."""
    import mir_eval

    if not notes:
        return 0.0, float("nan")
    est_iv = np.array([[n.start, max(n.end, n.start + 1e-3)] for n in notes])
    est_hz = mir_eval.util.midi_to_hz(np.array([n.pitch for n in notes], np.float64))
    ref_hz = mir_eval.util.midi_to_hz(ref.pitches.astype(np.float64))
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref.intervals, ref_hz, est_iv, est_hz, onset_tolerance=ONSET_TOLERANCE, offset_ratio=None)
    pairs = mir_eval.transcription.match_notes(ref.intervals, ref_hz, est_iv, est_hz,
                                               onset_tolerance=ONSET_TOLERANCE, offset_ratio=None)
    lag = float(np.median([est_iv[j, 0] - ref.intervals[i, 0] for i, j in pairs])) if pairs else float("nan")
    return float(f1), lag


def render_cli(preset: Preset, midi_path: Path, tmp: Path) -> NDArray[np.float32]:
    """``run_synth.py --render`` at 48 kHz -> mono float32."""
    out = tmp / "ours_cli.wav"
    cmd = [sys.executable, str(REPO / "run_synth.py"), "--render", str(midi_path), "--out", str(out),
           "--preset", str(preset.root), "--samplerate", str(RENDER_RATE)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0 or not out.is_file():
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BenchmarkError(f"run_synth.py --render failed (exit {done.returncode}): {last}")
    audio, _ = sf.read(str(out), dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def render_engine(preset: Preset, midi_path: Path, tail_seconds: float = 2.0,
                  block: int = 512) -> NDArray[np.float32]:
    """The same render path in-process: mido events -> Engine.push_event -> Engine.process."""
    import mido

    from synth.engine import Engine

    engine = Engine(preset)
    engine.prepare(RENDER_RATE, block)
    events, clock = [], 0.0
    for msg in mido.MidiFile(str(midi_path)):
        clock += msg.time
        if not msg.is_meta:
            events.append((int(round(clock * RENDER_RATE)), bytes(msg.bytes())))
    total = (int((clock + tail_seconds) * RENDER_RATE) // block + 1) * block
    out = np.zeros((total, 2), np.float32)
    k = 0
    for a in range(0, total, block):
        while k < len(events) and events[k][0] < a + block:  # feed each block's events just in time
            engine.push_event(*events[k])
            k += 1
        engine.process(out[a:a + block])
    return out.mean(axis=1)


def render_ours(preset: Preset, midi_path: Path, tmp: Path) -> tuple[str, NDArray[np.float32]]:
    """(renderer label, mono audio): run_synth.py --render when it exists, else the Engine in-process."""
    if (REPO / "run_synth.py").is_file():
        return "vaesynth (run_synth.py --render)", render_cli(preset, midi_path, tmp)
    log("run_synth.py not found: rendering with synth.engine.Engine in-process (same render path)")
    return "vaesynth (synth.engine in-process)", render_engine(preset, midi_path)


def choose_snapshot(preset: Preset, program: int, name: str | None = None) -> Snapshot:
    """``name`` if given, else the snapshot of ``program``, its GM family, or the nearest program."""
    from training.data import gm_family

    if not preset.snapshots:
        raise BenchmarkError(f"{preset.root}: the preset has no snapshots")
    if name is not None:
        for snap in preset.snapshots:
            if snap.name == name:
                return snap
        raise BenchmarkError(f"no snapshot named {name!r} (have: {', '.join(s.name for s in preset.snapshots)})")
    family = gm_family(program)[0]
    for test in (lambda s: s.program == program, lambda s: gm_family(s.program)[0] == family):
        for snap in preset.snapshots:
            if test(snap):
                return snap
    return min(preset.snapshots, key=lambda s: abs(s.program - program))


def _programs(text: str) -> list[int]:
    try:
        programs = [int(p) for p in text.split(",")]
    except ValueError:
        raise BenchmarkError(f"--program wants comma-separated numbers, got {text!r}") from None
    if not all(0 <= p <= 127 for p in programs):
        raise BenchmarkError(f"--program values must be in 0..127, got {text!r}")
    return programs


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.chorale", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--program", default="4,0", help="GM program(s) for FluidR3 and the snapshot choice")
    ap.add_argument("--snapshot", default=None, help="force this snapshot (by name) for our synth")
    ap.add_argument("--save", default=None, help="folder to keep the score MIDI and renders in")
    return ap.parse_args(argv)


def _fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3f}"


def compare_program(preset: Preset, program: int, snapshot: Snapshot, tmp: Path) -> list[list[object]]:
    """Rows for FluidR3 and our synth on one GM program."""
    fluid_mid, ours_mid = tmp / f"score_p{program}.mid", tmp / f"ours_p{program}.mid"
    write_score_midi(fluid_mid, program)
    write_score_midi(ours_mid, snapshot.program)  # program change recalls the snapshot
    ref = score_notes(fluid_mid)
    log(f"program {program}: {len(ref.pitches)} score notes; rendering with FluidR3")
    f_fluid, lag_fluid = onset_f1(ref, transcribe(render_fluidsynth(fluid_mid), RENDER_RATE))
    log(f"program {program}: rendering with our synth (snapshot {snapshot.name!r})")
    label, ours = render_ours(preset, ours_mid, tmp)
    sf.write(str(tmp / f"ours_p{program}.wav"), ours, RENDER_RATE)
    f_ours, lag_ours = onset_f1(ref, transcribe(ours, RENDER_RATE))
    facts = FLUIDR3_CEILING.get(program)
    facts_txt = "n/a" if facts is None else f"{facts:.2f}"
    return [["FluidR3 (ceiling)", program, "-", _fmt(f_fluid), facts_txt, "0.000", f"{1e3 * lag_fluid:.0f}"],
            [label, program, snapshot.name, _fmt(f_ours), facts_txt, f"{f_ours - f_fluid:+.3f}",
             f"{1e3 * lag_ours:.0f}"]]


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)

    def body() -> int:
        programs = _programs(args.program)
        preset = open_preset(args.preset)
        rows = []
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(args.save) if args.save else Path(t)
            tmp.mkdir(parents=True, exist_ok=True)
            for program in programs:
                rows += compare_program(preset, program, choose_snapshot(preset, program, args.snapshot), tmp)
        print(f"preset: {preset.root} ({preset.name}); BWV 66.6, basic-pitch, mir_eval onset F1 "
              f"({1e3 * ONSET_TOLERANCE:.0f} ms); gap = our F1 - FluidR3's F1 in this run (goal >= -0.05)\n")
        print(markdown_table(["renderer", "GM program", "snapshot", "onset F1", "FluidR3 ceiling",
                              "gap to FluidR3", "median onset lag (ms)"], rows))
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
