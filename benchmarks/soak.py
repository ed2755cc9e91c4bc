"""Soak: random dense MIDI into the live synth under a real JACK server, for minutes on end.

``run_synth.py`` is started as a user starts it, under a private jackd (dummy driver, sync,
48 kHz, period 128) or ``--server NAME``. A separate JACK client (the soak probe) owns a MIDI out
port wired to the synth's ``vaesynth-midi:midi_in`` and two audio inputs wired to its outputs.

1. **Idle baseline**: the synth runs with no MIDI; the probe counts JACK's xruns.
2. **Soak**: a seeded random performance, about 8 notes/s in single notes and clusters of 3-6,
   durations 50 ms to 2 s, velocity 30-127, pitch-bend gestures, sweeps of the knob CCs 70-77,
   program changes and sustain-pedal cycles. The probe keeps each period's peak; the main thread
   samples the synth's ``VmRSS`` (``/proc/PID/status``) once a second.
3. **Ending**: bend centred and pedal up, every note already released by its own note-off; the
   output is recorded for the release time plus 2 s (**stuck notes**: pitches still sounding at
   its end, counted from the spectrum), then all-notes-off (CC 123) on every channel and 2 s more
   (must end in silence, below -80 dBFS).

Report (markdown): RSS at the end of the warm-up (the first quarter of the soak, at most 2 min)
and its growth after it (goal <= 5 MB), stuck notes (goal 0), silence after all-notes-off, xruns
counted by the probe (never the synth's own counter) against the idle baseline scaled to the same
length (allowed 2 x idle + 2, as benchmarks.live_latency), the peak level (goal <= 0 dBFS), and
how the synth exited. ``--json FILE`` writes the same figures for tests/test_soak_jack.py.

Real-time figures mean something only on an otherwise idle machine (never while training or
another heavy job holds the cores). ``--minutes 0.5`` checks that it works.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from synth.events import CC_ALL_NOTES_OFF, CC_SUSTAIN, KNOB_CCS
from tests.jack_probe import JackProbe, SynthProcess

SERVER = "vaesynth-soak"
RATE, PERIOD = 48000, 128
NOTES_PER_SECOND = 8.0
CLUSTER_SHARE = 0.3  # onsets that are clusters of 3-6 notes rather than one note
KEYS = (36, 96)
SILENCE_DBFS = -80.0
STUCK_BAND_CENTS = 50.0
RSS_PERIOD_S = 1.0
IDLE_SHARE, IDLE_MIN_S, IDLE_MAX_S = 0.1, 10.0, 180.0  # idle baseline: 10 % of the soak, 10 s .. 3 min
WARMUP_SHARE, WARMUP_MAX_S = 0.25, 120.0
ALL_CHANNELS = range(16)


# ---------------------------------------------------------------------------- the performance
def note_on(ch: int, key: int, vel: int) -> bytes:
    return bytes([0x90 | ch, key, vel])


def note_off(ch: int, key: int) -> bytes:
    return bytes([0x80 | ch, key, 0])


def cc(ch: int, number: int, value: int) -> bytes:
    return bytes([0xB0 | ch, number, value])


def bend(ch: int, value: int) -> bytes:
    """``value`` -8192..8191, 0 = centre."""
    v = int(np.clip(value + 8192, 0, 16383))
    return bytes([0xE0 | ch, v & 0x7F, v >> 7])


def program(ch: int, number: int) -> bytes:
    return bytes([0xC0 | ch, number])


@dataclass
class Performance:
    events: list[tuple[int, bytes]]  # (frame, message), sorted
    notes: int
    end: int  # frame by which every note is released and the pedal up


def dense_performance(seconds: float, seed: int, start: int = 4 * PERIOD) -> Performance:
    """A seeded random performance of ``seconds`` on channel 1 (see the module doc); every note
    gets its own note-off before ``end``; a key is never struck again while it is held."""
    rng = np.random.default_rng(seed)
    end = start + int(seconds * RATE)
    ev: list[tuple[int, bytes]] = []
    ch = 0
    held_until: dict[int, int] = {}
    mean_notes = (1 - CLUSTER_SHARE) + CLUSTER_SHARE * 4.5
    onset_rate = NOTES_PER_SECOND / mean_notes
    t, notes = float(start), 0
    while True:
        t += rng.exponential(RATE / onset_rate)
        if t >= end - RATE // 10:
            break
        size = int(rng.integers(3, 7)) if rng.random() < CLUSTER_SHARE else 1
        for _ in range(size):
            on = int(t + rng.uniform(0, 0.02 * RATE))
            free = [k for k in range(*KEYS) if held_until.get(k, -1) < on]
            if not free:
                break
            key = int(rng.choice(free))
            off = min(on + int(math.exp(rng.uniform(math.log(0.05), math.log(2.0))) * RATE), end - PERIOD)
            held_until[key] = off
            ev += [(on, note_on(ch, key, int(rng.integers(30, 128)))), (off, note_off(ch, key))]
            notes += 1
    for gesture_every, make in ((2.0, _bend_gesture), (1.0, _knob_sweep), (8.0, _program_change), (5.0, _pedal_cycle)):
        t = float(start)
        while True:
            t += rng.exponential(gesture_every * RATE)
            if t >= end - 3 * RATE:
                break
            ev += make(rng, int(t), ch)
    ev += [(end, bend(ch, 0)), (end, cc(ch, CC_SUSTAIN, 0))]
    return Performance(sorted(ev, key=lambda e: e[0]), notes, end)


def _bend_gesture(rng: np.random.Generator, t: int, ch: int) -> list[tuple[int, bytes]]:
    target, steps, span = int(rng.integers(-8192, 8192)), 20, int(rng.uniform(0.2, 0.8) * RATE)
    curve = np.concatenate([np.linspace(0, target, steps // 2), np.linspace(target, 0, steps // 2)])
    return [(t + i * span // steps, bend(ch, int(v))) for i, v in enumerate(curve)]


def _knob_sweep(rng: np.random.Generator, t: int, ch: int) -> list[tuple[int, bytes]]:
    number, steps = int(rng.choice(KNOB_CCS)), int(rng.integers(10, 31))
    span = int(rng.uniform(0.3, 1.0) * RATE)
    values = np.linspace(rng.integers(0, 128), rng.integers(0, 128), steps).round().astype(int)
    return [(t + i * span // steps, cc(ch, number, int(v))) for i, v in enumerate(values)]


def _program_change(rng: np.random.Generator, t: int, ch: int) -> list[tuple[int, bytes]]:
    return [(t, program(ch, int(rng.integers(0, 128))))]


def _pedal_cycle(rng: np.random.Generator, t: int, ch: int) -> list[tuple[int, bytes]]:
    return [(t, cc(ch, CC_SUSTAIN, 127)), (t + int(rng.uniform(0.5, 3.0) * RATE), cc(ch, CC_SUSTAIN, 0))]


# ---------------------------------------------------------------------------- the probe
@dataclass
class _Run:
    events: list[tuple[int, bytes]]
    frames: int
    peaks: np.ndarray  # (periods,) float32: each period's peak over both channels
    tail: np.ndarray  # (tail frames, 2) float32: the run's last frames
    pos: int = 0
    next_event: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class SoakProbe(JackProbe):
    """A JACK client apart from the synth (tests.jack_probe's, with its ports, wiring and xrun
    count): plays a schedule into the synth's MIDI input, keeps per-period peaks and the last
    seconds of its output instead of the whole recording."""

    def __init__(self, server: str, name: str = "vaesynth-soak-probe") -> None:
        super().__init__(server, name)

    def _process(self, frames: int) -> None:
        if self.midi_out is None:
            return
        self.midi_out.clear_buffer()
        run = self._run
        if run is None or run.done.is_set():
            return
        a, b = self.ins[0].get_array(), self.ins[1].get_array()
        period = run.pos // frames
        if period < len(run.peaks):
            run.peaks[period] = max(a.max(), -a.min(), b.max(), -b.min())
        tail_start = run.frames - len(run.tail)
        if run.pos + frames > tail_start:
            lo = max(run.pos, tail_start)
            hi = min(run.pos + frames, run.frames)
            run.tail[lo - tail_start:hi - tail_start, 0] = a[lo - run.pos:hi - run.pos]
            run.tail[lo - tail_start:hi - tail_start, 1] = b[lo - run.pos:hi - run.pos]
        while run.next_event < len(run.events) and run.events[run.next_event][0] < run.pos + frames:
            frame, message = run.events[run.next_event]
            self.midi_out.write_midi_event(max(frame - run.pos, 0), message)
            run.next_event += 1
        run.pos += frames
        if run.pos >= run.frames:
            run.done.set()

    def play(self, events: list[tuple[int, bytes]], frames: int, tail_frames: int,
             every_second: Callable[[], None] = lambda: None) -> tuple[_Run, int]:
        """Play ``events`` over ``frames`` in real time; returns the run and the xruns during it.
        ``every_second`` runs on the calling thread about once a second (RSS sampling)."""
        run = _Run(events, frames, np.zeros(frames // PERIOD + 2, np.float32),
                   np.zeros((min(tail_frames, frames), 2), np.float32))
        xruns0 = self.xruns
        self._run = run
        try:
            limit = time.monotonic() + 2 * frames / RATE + 60
            while not run.done.wait(RSS_PERIOD_S):
                every_second()
                if time.monotonic() > limit:
                    raise TimeoutError("the JACK server stopped running our client (no cycles)")
        finally:
            self._run = None
        return run, self.xruns - xruns0

# ---------------------------------------------------------------------------- analysis
def dbfs(x: float) -> float:
    return 20 * math.log10(max(x, 1e-12))


def sounding_pitches(audio: np.ndarray, threshold_dbfs: float = SILENCE_DBFS) -> list[int]:
    """MIDI keys whose fundamental stands out in ``audio (n, 2)`` above ``threshold_dbfs`` (peak
    amplitude of a sine), lowest first, skipping the harmonics of keys already found."""
    mono = audio.mean(axis=1).astype(np.float64)
    if np.abs(mono).max() < 10 ** (threshold_dbfs / 20):
        return []
    n = len(mono)
    window = np.hanning(n)
    amp = np.abs(np.fft.rfft(mono * window)) * 2 / window.sum()  # a sine of amplitude A peaks at A
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    found: list[int] = []
    for key in range(21, 109):
        f0 = 440 * 2 ** ((key - 69) / 12)
        band = (freqs > f0 * 2 ** (-STUCK_BAND_CENTS / 1200)) & (freqs < f0 * 2 ** (STUCK_BAND_CENTS / 1200))
        if not band.any() or dbfs(float(amp[band].max())) < threshold_dbfs:
            continue
        if any(abs(1200 * math.log2(f0 / (440 * 2 ** ((k - 69) / 12)) / h)) < STUCK_BAND_CENTS
               for k in found for h in range(2, 16)):
            continue
        found.append(key)
    return found


def read_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class SoakResult:
    minutes: float
    preset: str
    seed: int
    notes_sent: int
    events_sent: int
    idle_seconds: float
    idle_xruns: int
    soak_xruns: int
    xruns_allowed: float
    rss_warmup_mb: float
    rss_end_mb: float
    rss_peak_after_warmup_mb: float
    rss_growth_mb: float
    stuck_notes: int
    stuck_keys: list[int]
    level_before_all_notes_off_dbfs: float
    level_after_all_notes_off_dbfs: float
    silent_after_all_notes_off: bool
    peak_dbfs: float
    median_second_peak_dbfs: float
    synth_exit: int
    synth_traceback: bool
    synth_last_line: str
    rss_samples_mb: list[float] = field(default_factory=list)


def _level(db: float) -> str:
    return "silent (exact zeros)" if db <= dbfs(0.0) else f"{db:.0f} dBFS"


def table(r: SoakResult) -> str:
    def ok(good: bool) -> str:
        return "yes" if good else "**no**"

    rows = [f"Soak: {r.minutes:g} min of random dense MIDI ({r.notes_sent} notes, {r.events_sent} MIDI messages, "
            f"seed {r.seed}) into run_synth.py on {r.preset} under JACK (dummy, {RATE} Hz, period {PERIOD}).", "",
            "| figure | measured | goal | met |", "|---|---|---|---|",
            f"| RSS at the end of the warm-up | {r.rss_warmup_mb:.1f} MB | - | - |",
            f"| RSS growth after the warm-up (end / peak) | {r.rss_growth_mb:+.2f} MB / "
            f"{r.rss_peak_after_warmup_mb - r.rss_warmup_mb:+.2f} MB | ≤ 5 MB | {ok(r.rss_growth_mb <= 5)} |",
            f"| stuck notes (every key released, pedal up; level after the release time) | {r.stuck_notes}"
            f"{' ' + str(r.stuck_keys) if r.stuck_keys else ''} ({_level(r.level_before_all_notes_off_dbfs)}) "
            f"| 0 | {ok(r.stuck_notes == 0)} |",
            f"| silence after all-notes-off (last 0.5 s) | {_level(r.level_after_all_notes_off_dbfs)} | "
            f"≤ {SILENCE_DBFS:.0f} dBFS | {ok(r.silent_after_all_notes_off)} |",
            f"| xruns (soak probe) during the soak / idle baseline ({r.idle_seconds:.0f} s) | {r.soak_xruns} / "
            f"{r.idle_xruns} | ≤ {r.xruns_allowed:.0f} (2 × idle scaled + 2) | {ok(r.soak_xruns <= r.xruns_allowed)} |",
            f"| peak level (median of the 1-s peaks: {r.median_second_peak_dbfs:.1f} dBFS) | {r.peak_dbfs:.2f} dBFS "
            f"| ≤ 0 dBFS "
            f"| {ok(r.peak_dbfs <= 0)} |",
            f"| synth exit on SIGTERM | {r.synth_exit}{', traceback' if r.synth_traceback else ''} | 0 | "
            f"{ok(r.synth_exit == 0 and not r.synth_traceback)} |"]
    if r.synth_last_line:
        rows.append(f"\nsynth's last line: `{r.synth_last_line}`")
    return "\n".join(rows)


# ---------------------------------------------------------------------------- the run
def start_jackd(name: str) -> subprocess.Popen[bytes]:
    cmd = ["jackd", "-n", name, "-R", "-S", "-d", "dummy", "-r", str(RATE), "-p", str(PERIOD)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    subprocess.run(["jack_wait", "-s", name, "-w", "-t", "10"], capture_output=True, timeout=15)
    if proc.poll() is not None:
        raise RuntimeError(f"jackd -n {name} exited with {proc.returncode} (a server of that name running?)")
    return proc


def _release_seconds(preset: str) -> float:
    from synth.preset import load_preset

    return load_preset(preset, check_models=False).release_seconds


def soak(preset: str, minutes: float, seed: int, server: str, polyphony: int) -> SoakResult:
    seconds = minutes * 60
    idle_s = float(np.clip(IDLE_SHARE * seconds, IDLE_MIN_S, IDLE_MAX_S))
    warmup_s = min(WARMUP_SHARE * seconds, WARMUP_MAX_S)
    release_s = _release_seconds(preset)
    perf = dense_performance(seconds, seed)
    quiet_a = int((release_s + 2.0) * RATE)  # after the last note-off: the release, then stuck notes
    quiet_b = 2 * RATE  # after all-notes-off
    events = perf.events + [(perf.end + quiet_a, cc(c, CC_ALL_NOTES_OFF, 0)) for c in ALL_CHANNELS]
    total = perf.end + quiet_a + quiet_b
    config = tempfile.mkdtemp(prefix="vaesynth-soak-config-")  # never the user's saved state or mapping
    synth = SynthProcess(["--preset", preset, "--quiet", "--polyphony", str(polyphony)], server,
                         env={"VAESYNTH_CONFIG_DIR": config})
    probe = SoakProbe(server)
    rss: list[tuple[float, int]] = []
    try:
        synth.wait_for_ports(probe.client, timeout=300)
        probe.connect_synth()
        print(f"soak: idle baseline {idle_s:.0f} s", file=sys.stderr, flush=True)
        _, idle_xruns = probe.play([], int(idle_s * RATE), 0)
        print(f"soak: {minutes:g} min of dense MIDI ({perf.notes} notes)", file=sys.stderr, flush=True)
        started = time.monotonic()

        def sample_rss() -> None:
            kb = read_rss_kb(synth.proc.pid)
            if kb is not None:
                rss.append((time.monotonic() - started, kb))

        run, soak_xruns = probe.play(events, total, quiet_a + quiet_b, sample_rss)
        alive = synth.proc.poll() is None
    finally:
        probe.close()
        status, err = synth.stop()
    if not alive:
        raise RuntimeError(f"the synth exited during the soak ({status}): {err.strip()[-500:]}")
    times = np.array([t for t, _ in rss])
    mb = np.array([kb / 1024 for _, kb in rss])
    after = times >= warmup_s
    if after.sum() < 2:
        raise RuntimeError("too few RSS samples after the warm-up (soak too short?)")
    rss_warm, rss_end = float(mb[after][0]), float(np.median(mb[-5:]))
    stuck_seg = run.tail[quiet_a - int(0.5 * RATE):quiet_a]  # the last 0.5 s before all-notes-off
    final_seg = run.tail[-int(0.5 * RATE):]
    stuck_keys = sounding_pitches(stuck_seg)
    per_period = RATE // PERIOD  # 375 periods make a second
    soak_peaks = run.peaks[: perf.end // PERIOD // per_period * per_period]
    per_second = soak_peaks.reshape(-1, per_period).max(axis=1)
    lines = err.strip().splitlines()
    seconds_played = perf.end / RATE
    return SoakResult(
        minutes=minutes, preset=str(preset), seed=seed, notes_sent=perf.notes, events_sent=len(events),
        idle_seconds=idle_s, idle_xruns=idle_xruns, soak_xruns=soak_xruns,
        xruns_allowed=2 * idle_xruns * (seconds_played + (quiet_a + quiet_b) / RATE) / idle_s + 2,
        rss_warmup_mb=rss_warm, rss_end_mb=rss_end, rss_peak_after_warmup_mb=float(mb[after].max()),
        rss_growth_mb=rss_end - rss_warm, stuck_notes=len(stuck_keys), stuck_keys=stuck_keys,
        level_before_all_notes_off_dbfs=dbfs(float(np.abs(stuck_seg).max())),
        level_after_all_notes_off_dbfs=dbfs(float(np.abs(final_seg).max())),
        silent_after_all_notes_off=dbfs(float(np.abs(final_seg).max())) <= SILENCE_DBFS,
        peak_dbfs=dbfs(float(run.peaks.max())), median_second_peak_dbfs=dbfs(float(np.median(per_second))),
        synth_exit=status, synth_traceback="Traceback" in err, synth_last_line=lines[-1][:200] if lines else "",
        rss_samples_mb=[round(float(x), 2) for x in mb],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the dense-MIDI soak (default 30)")
    ap.add_argument("--preset", default=str(Path(__file__).resolve().parents[1] / "presets" / "default"))
    ap.add_argument("--seed", type=int, default=1, help="seed of the random performance")
    ap.add_argument("--polyphony", type=int, default=32, help="the synth's --polyphony (default 32)")
    ap.add_argument("--server", default=None,
                    help="use this running JACK server instead of starting a private one (dummy 48 kHz / 128)")
    ap.add_argument("--json", metavar="FILE", default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    if args.minutes <= 0:
        ap.error("--minutes must be positive")
    jackd = None if args.server else start_jackd(SERVER)
    try:
        result = soak(args.preset, args.minutes, args.seed, args.server or SERVER, args.polyphony)
    finally:
        if jackd is not None:
            jackd.terminate()
            jackd.wait(timeout=10)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
