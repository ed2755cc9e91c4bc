"""Live-mode measurements under a private jackd (dummy driver, sync, 48 kHz, period 128).

Prints markdown tables:
- start-up on a cold numba cache (an empty ``NUMBA_CACHE_DIR``, as a fresh install) and on a warm
  one: seconds until the synth's ports are up, and the first note's key-to-sound latency;
- key-to-sound latency vs the floor (period - offset), and the time from the key to within
  20 dB of the note's peak (the attack a player feels), on the piano program;
- knob-to-sound time;
- real-time polyphony: N voices held for S seconds against an idle baseline in the same run, with
  JACK's DSP load (mean and peak), xruns counted by our own JACK client, lost cycles and
  dropouts. A step passes with no lost cycle, no dropout and xruns <= 2 x idle + 2.

Run: ``python -m benchmarks.live_latency [--preset DIR] [--seconds 30] [--steps 16,32,48]
[--synth-args '--render-ahead 0'] [--skip startup,latency,knob]``.
Never while training or another heavy job holds the cores: the table would measure that job.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import frames_to_within_20db
from tests.conftest import _start_jackd, _stop
from tests.jack_probe import JackProbe, SynthProcess, note_off, note_on, onset

SERVER = "vaesynth-bench"
RATE, PERIOD = 48000, 128


def start_jackd() -> subprocess.Popen[bytes]:
    """The test suite's private server (dummy driver, sync, 48 kHz, period 128) under our name."""
    proc = _start_jackd(SERVER)
    os.environ["JACK_DEFAULT_SERVER"] = SERVER
    return proc


def within_20db(audio: np.ndarray, start: int, span: int) -> int:
    """Frames from ``start`` until the 1 ms RMS envelope of the stereo take ``(N, 2)`` first
    reaches 20 dB below its peak in ``span``."""
    return frames_to_within_20db(audio[start:start + span].mean(axis=1), 0, span, RATE)


def latency_table(probe: JackProbe, n_notes: int, gap_s: float) -> tuple[str, np.ndarray]:
    """Real-time key-to-sound latency at offsets spread over the cycle, on the piano program."""
    gap = int(gap_s * RATE) // PERIOD * PERIOD
    events, ons = [(10 * PERIOD, bytes([0xC0, 0]))], []
    for i in range(n_notes):
        offset = (i * PERIOD) // n_notes
        on = 20 * PERIOD + i * gap + offset
        events += [(on, note_on(60 + i % 12)), (on + PERIOD * 40, note_off(60 + i % 12))]
        ons.append((on, offset))
    take = probe.record(events, ons[-1][0] + gap, freewheel=False)
    lat = np.array([onset(take.audio, on - 10) - on for on, _ in ons], float)
    attack = np.array([within_20db(take.audio, on, PERIOD * 40) for on, _ in ons], float)
    floor = np.array([PERIOD - off for _, off in ons], float)
    ms = 1000 / RATE
    rows = ["| key-to-sound (real time, 48 kHz, period 128, piano) | min | median | max | goal |",
            "|---|---|---|---|---|"]
    for name, v, goal in (("latency, frames", lat, ""), ("latency, ms", lat * ms, "≤ 10 ms"),
                          ("floor period − offset, frames", floor, ""), ("latency − floor, frames", lat - floor, ""),
                          ("key to within 20 dB of the note's peak, ms", attack * ms, "≤ 10 ms")):
        rows.append(f"| {name} | {v.min():.2f} | {np.median(v):.2f} | {v.max():.2f} | {goal} |")
    rows.append(f"\n{n_notes} notes; xruns during the take: {take.xruns}; lost cycles: {take.lost_cycles}")
    return "\n".join(rows), lat * ms


def dropouts(audio: np.ndarray, start: int, end: int) -> int:
    """Whole periods of exact silence inside a held chord (a dropped cycle's signature)."""
    quiet = np.max(np.abs(audio[start:end]), axis=1) < 1e-7
    runs = np.convolve(quiet, np.ones(PERIOD), "valid")
    return int(np.sum(runs[::PERIOD] >= PERIOD))


def polyphony_table(probe: JackProbe, steps: list[int], seconds: float) -> str:
    """Hold N notes for ``seconds`` in real time; compare with an idle baseline of the same length."""
    frames = int(seconds * RATE)
    idle = probe.record([], frames, freewheel=False)
    allowed = 2 * idle.xruns + 2
    rows = ["| held voices | xruns (ours) | allowed (2 × idle + 2) | lost cycles | dropouts | DSP load mean % "
            "| DSP load peak % | holds |", "|---|---|---|---|---|---|---|---|",
            f"| idle | {idle.xruns} | - | {idle.lost_cycles} | - | {idle.dsp_load_mean:.0f} | "
            f"{idle.dsp_load_max:.0f} | - |"]
    best = 0
    for n in steps:
        keys = [36 + (i * 7) % 60 for i in range(n)]
        events = [(PERIOD * 4, note_on(k, 90)) for k in keys] + [(frames - PERIOD * 8, note_off(k)) for k in keys]
        take = probe.record(events, frames, freewheel=False)
        drops = dropouts(take.audio, int(0.5 * RATE), frames - PERIOD * 10)
        holds = not take.lost_cycles and not drops and take.xruns <= allowed
        rows.append(f"| {n} | {take.xruns} | {allowed} | {take.lost_cycles} | {drops} | {take.dsp_load_mean:.0f} | "
                    f"{take.dsp_load_max:.0f} | {'yes' if holds else 'no'} |")
        time.sleep(1.5)  # let releases finish
        if not holds:
            break
        best = n
    return "\n".join(rows) + f"\n\nlargest held voice count that holds ({seconds:g} s each): {best}"


def startup_table(preset: str) -> str:
    """Cold (empty numba cache) and warm start: seconds to ports up, first note's latency and attack."""
    rows = ["| start | seconds to ports up | first note: key to first sound, ms | key to within 20 dB, ms |",
            "|---|---|---|---|"]
    cache = tempfile.mkdtemp(prefix="vaesynth-numba-")
    for label in ("cold (empty NUMBA_CACHE_DIR)", "warm"):
        started = time.monotonic()
        synth = SynthProcess(["--preset", preset, "--quiet"], SERVER, env={"NUMBA_CACHE_DIR": cache})
        probe = JackProbe(SERVER, "vaesynth-bench-start")
        try:
            synth.wait_for_ports(probe.client, timeout=300)
            up = time.monotonic() - started
            probe.connect_synth()
            on = 2 * PERIOD + 17  # the very first event the synth gets
            take = probe.record([(on, bytes([0xC0, 0])), (on, note_on(69)), (on + RATE // 4, note_off(69))],
                                on + RATE // 2, freewheel=False)
            first = onset(take.audio, 0)
            lat = "never" if first is None else f"{(first - on) * 1000 / RATE:.2f}"
            att = f"{within_20db(take.audio, on, RATE // 4) * 1000 / RATE:.2f}"
            rows.append(f"| {label} | {up:.1f} | {lat} | {att} |")
        finally:
            probe.close()
            synth.stop()
    return "\n".join(rows)


def knob_table(preset_dir: str, latency_ms: np.ndarray, repeats: int = 5) -> str:
    """Knob-to-sound: CC 70 (knob 1) 0 -> 127 under a held chord. The engine's own response is
    measured exactly, offline: the same chord rendered with and without the CC is identical up to
    the moment the knob is heard (first sample differing by 0.1 % of the peak). Under JACK a CC
    reaches the engine like a note-on, so the key-to-sound latency measured above adds to it
    (two real-time takes are not sample-identical: MIDI arrival jitters by a few samples)."""
    from synth.engine import Engine
    from synth.preset import load_preset

    preset = load_preset(preset_dir)
    times = []
    for r in range(repeats):
        on, cc_at = 4800, 4800 + RATE // 2 + 37 * r
        takes = []
        for with_cc in (False, True):
            eng = Engine(preset, device="cpu")
            eng.prepare(RATE, PERIOD, warm=False)
            eng.push(0, 0xB0, 70, 0)
            for k in (48, 55, 60, 64):
                eng.push(on, 0x90, k, 100)
            if with_cc:
                eng.push(cc_at, 0xB0, 70, 127)
            out = np.zeros((cc_at + RATE // 10, 2), np.float32)
            for i in range(0, len(out), PERIOD):
                eng.process(out[i:i + PERIOD])
            takes.append(out[:, 0])
        differs = np.flatnonzero(np.abs(takes[1] - takes[0]) > 1e-3 * np.abs(takes[0]).max())
        times.append((differs[0] - cc_at) * 1000 / RATE if differs.size else np.nan)
    t = np.array(times)
    lat = (float(np.min(latency_ms)), float(np.median(latency_ms)), float(np.max(latency_ms)))
    return ("| knob-to-sound (CC 70 0 -> 127 under a chord) | min | median | max | goal |\n|---|---|---|---|---|\n"
            f"| engine: CC to the first changed sample (offline, exact), ms | {np.nanmin(t):.1f} | "
            f"{np.nanmedian(t):.1f} | {np.nanmax(t):.1f} | |\n"
            f"| + MIDI to engine under JACK (the key-to-sound latency above), ms | {np.nanmin(t) + lat[0]:.1f} | "
            f"{np.nanmedian(t) + lat[1]:.1f} | {np.nanmax(t) + lat[2]:.1f} | ~20 ms |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="presets/default")
    ap.add_argument("--notes", type=int, default=24)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between latency notes (> release)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds per polyphony step")
    ap.add_argument("--steps", default="16,32,48", help="voices per polyphony step (comma-separated; empty: no polyphony table)")
    ap.add_argument("--synth-args", default="", help="extra run_synth.py options, e.g. '--render-ahead 0'")
    ap.add_argument("--skip", default="", help="tables to leave out: startup,latency,knob (comma-separated)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    extra = args.synth_args.split()
    if not (Path(args.preset) / "preset.toml").exists():
        import tempfile

        from tests.fake_preset import make_fake_preset

        print(f"({args.preset} has no preset.toml: using tests/fake_preset.py's fake preset)", file=sys.stderr)
        args.preset = str(make_fake_preset(Path(tempfile.mkdtemp()) / "fake"))
    jackd = start_jackd()
    if "startup" not in skip:
        print(startup_table(args.preset), "\n", flush=True)
    synth = SynthProcess(["--preset", args.preset, "--quiet", "--polyphony", "64", *extra], SERVER)
    probe = JackProbe(SERVER, "vaesynth-bench-probe")
    try:
        synth.wait_for_ports(probe.client)
        probe.connect_synth()
        time.sleep(1.0)
        print(f"preset: {Path(args.preset)}; synth options: {' '.join(extra) or 'defaults'}\n")
        if "latency" not in skip:
            table, latency_ms = latency_table(probe, args.notes, args.gap)
            print(table, "\n", flush=True)
            if "knob" not in skip:
                print(knob_table(args.preset, latency_ms), "\n", flush=True)
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
        if steps:
            print(polyphony_table(probe, steps, args.seconds))
    finally:
        probe.close()
        status, err = synth.stop()
        _stop(jackd)
    if status != 0:
        print(f"synth exited {status}: {err[-500:]}", file=sys.stderr)
    summary = [line for line in err.splitlines() if "session summary" in line]
    if summary:  # the synth's own count of late blocks (render ahead) and shed voices, all takes together
        print(f"\nsynth: {summary[-1].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
