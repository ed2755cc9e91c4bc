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

Run: ``python -m benchmarks.live_latency [--preset DIR] [--seconds 30] [--steps 16,32,48]``.
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

from tests.jack_probe import JackProbe, SynthProcess, control, note_off, note_on, onset

SERVER = "vaesynth-bench"
RATE, PERIOD = 48000, 128


def start_jackd() -> subprocess.Popen[bytes]:
    cmd = ["jackd", "-n", SERVER, "-R", "-S", "-d", "dummy", "-r", str(RATE), "-p", str(PERIOD)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    subprocess.run(["jack_wait", "-s", SERVER, "-w", "-t", "10"], capture_output=True, timeout=15)
    os.environ["JACK_DEFAULT_SERVER"] = SERVER
    return proc


def within_20db(audio: np.ndarray, start: int, span: int) -> int:
    """Frames from ``start`` until the 1 ms RMS envelope first reaches 20 dB below its peak in ``span``."""
    x = audio[start:start + span].mean(axis=1).astype(np.float64)
    env = np.sqrt(np.convolve(x * x, np.ones(48) / 48, "same"))
    return int(np.argmax(env >= 0.1 * env.max()))


def latency_table(probe: JackProbe, n_notes: int, gap_s: float) -> str:
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
    return "\n".join(rows)


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


def knob_table(probe: JackProbe, repeats: int = 5) -> str:
    """CC 70 (knob 0) 0 -> 127 under a held chord, in real time; time until the short-time spectrum moves 3 dB."""
    times = []
    for r in range(repeats):
        chord = [48, 55, 60, 64]
        cc_at = int(1.0 * RATE) + (r * 37) % PERIOD
        end = cc_at + int(0.5 * RATE)
        events = [(PERIOD, control(70, 0))] + [(2 * PERIOD, note_on(k)) for k in chord]
        events += [(cc_at, control(70, 127))] + [(end, note_off(k)) for k in chord]
        take = probe.record(events, end + PERIOD, freewheel=False)  # real time: what a player feels
        mono = take.audio.mean(axis=1)
        win = np.hanning(2048)
        spec = lambda i: 20 * np.log10(np.abs(np.fft.rfft(mono[i - 2048 : i] * win)) + 1e-9)  # noqa: E731
        ref = spec(cc_at)
        loud = ref > ref.max() - 40
        # The chord itself drifts (time_on envelope): the threshold sits 3 dB above the
        # drift seen over the 2048 frames before the CC.
        drift = max(np.max(np.abs(spec(cc_at - j * 256) - ref)[loud]) for j in range(1, 9))
        for i in range(cc_at + 32, end, 32):
            if np.max(np.abs(spec(i) - ref)[loud]) > 3.0 + drift:
                times.append((i - cc_at) * 1000 / RATE)
                break
    t = np.array(times) if times else np.array([np.nan])
    return ("| knob-to-sound (CC to a 3 dB spectral change, 2048-sample window ending there) | min | median | max |\n"
            f"|---|---|---|---|\n| ms ({len(times)}/{repeats} detected) | {np.nanmin(t):.1f} | {np.nanmedian(t):.1f} "
            f"| {np.nanmax(t):.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="presets/default")
    ap.add_argument("--notes", type=int, default=24)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between latency notes (> release)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds per polyphony step")
    ap.add_argument("--steps", default="16,32,48")
    args = ap.parse_args()
    if not (Path(args.preset) / "preset.toml").exists():
        import tempfile

        from tests.fake_preset import make_fake_preset

        print(f"({args.preset} has no preset.toml: using tests/fake_preset.py's fake preset)", file=sys.stderr)
        args.preset = str(make_fake_preset(Path(tempfile.mkdtemp()) / "fake"))
    jackd = start_jackd()
    print(startup_table(args.preset), "\n", flush=True)
    synth = SynthProcess(["--preset", args.preset, "--quiet", "--polyphony", "64"], SERVER)
    probe = JackProbe(SERVER, "vaesynth-bench-probe")
    try:
        synth.wait_for_ports(probe.client)
        probe.connect_synth()
        time.sleep(1.0)
        print(f"preset: {Path(args.preset)}\n")
        print(latency_table(probe, args.notes, args.gap), "\n", flush=True)
        print(knob_table(probe), "\n", flush=True)
        print(polyphony_table(probe, [int(s) for s in args.steps.split(",")], args.seconds))
    finally:
        probe.close()
        status, err = synth.stop()
        jackd.terminate()
        jackd.wait(timeout=10)
    if status != 0:
        print(f"synth exited {status}: {err[-500:]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
