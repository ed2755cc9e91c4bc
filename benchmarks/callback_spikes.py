"""Where the audio callback's tail spikes come from: one process, a private jackd (dummy driver,
48 kHz, period 128), the real ``LiveSynth`` and engine on the default preset, N voices held.

For each mode (render in the callback: ``--render-ahead 0``; or on the worker, e.g. 1.5 blocks ahead), prints
- JACK's xruns (our own JACK client) and render-ahead's late blocks;
- the callback's duration, and the engine's render duration, as percentiles of the period;
- how late the callback is entered: the gap between consecutive callback entries minus a
  period (the dummy driver ticks every period, so a large gap is time the callback thread lost
  before our Python code ran: the GIL, the scheduler, or the previous cycle running long);
- the render time against the decoder rows of its block (frames are due unevenly across
  blocks), to tell compute variance from waiting.

A status-line thread (the live synth's, 4 Hz) and a MIDI-like thread pushing a CC every 20 ms
run alongside, as they do in ``run_synth.py``. Run under ``flock /work/rt-bench.lock`` on a
quiet machine: ``python -m benchmarks.callback_spikes [--voices 32] [--seconds 20]``.
"""
from __future__ import annotations

import argparse
import math
import os
import threading
import time

import numpy as np

from tests.conftest import JACK_TEST_PERIOD as PERIOD, JACK_TEST_RATE as RATE, _start_jackd, _stop

SERVER = "vaesynth-spikes"


class Timed:
    """Wraps a callable, recording (entry, exit) perf_counter times into preallocated arrays."""

    def __init__(self, fn: object, capacity: int) -> None:
        self.fn = fn
        self.enter = np.zeros(capacity)
        self.leave = np.zeros(capacity)
        self.n = 0

    def __call__(self, *args: object) -> None:
        i = self.n
        if i < len(self.enter):
            self.enter[i] = time.perf_counter()
        self.fn(*args)  # type: ignore[operator]
        if i < len(self.enter):
            self.leave[i] = time.perf_counter()
            self.n = i + 1


def _pct(x: np.ndarray, period_s: float) -> str:
    q = np.percentile(x, [50, 95, 99, 99.9]) / period_s * 100
    return " | ".join(f"{v:.0f}" for v in q) + f" | {x.max() / period_s * 100:.0f}"


def _slack_rows(cb_enter: np.ndarray, rd_enter: np.ndarray, rd_leave: np.ndarray, ahead: float,
                period_s: float, first: int, last: int) -> list[str]:
    """How much of render ahead's slack the worker used, and what a later start would have cost.

    With a ring of ``depth = ceil(ahead)`` blocks, block j is rendered after callback j - depth
    frees its slot (plus the hold-back of a fractional lead) and played by callback j. "Ready
    after the pull" is ``leave_j - enter_(j-depth)`` in periods (the slack: ``ahead``). The
    replay then holds each block back ``hold`` periods after its pull (a lead of ``depth - hold``
    blocks) and re-runs the measured render durations in order, each starting then or when the
    previous one ended; a block finishing after its callback (plus half a period of the late
    path's wait) would have been late.
    """
    depth = math.ceil(ahead)
    idx = np.arange(max(first, depth), min(last, len(rd_leave), len(cb_enter)))
    ready = (rd_leave[idx] - cb_enter[idx - depth]) / period_s
    rows = [f"| {ahead:g} | ready after the pull, periods (slack {ahead:g}) | "
            + " | ".join(f"{v:.2f}" for v in np.percentile(ready, [50, 95, 99, 99.9])) + f" | {ready.max():.2f} |"]
    dur = rd_leave[idx] - rd_enter[idx]
    for hold in (0.0, 0.25, 0.5, 0.75):
        end, late = -np.inf, 0
        for i, j in enumerate(idx):
            end = max(cb_enter[j - depth] + hold * period_s, end) + dur[i]
            late += end > cb_enter[j] + 0.5 * period_s
        rows.append(f"| {ahead:g} | replay, lead {depth - hold:g} (held back {hold:g} period): late blocks "
                    f"| {late} of {len(idx)} | | | | |")
    return rows


def run_mode(preset_dir: str, voices: int, seconds: float, depth: float) -> list[str]:
    import sounddevice as sd

    from synth import jack_setup, realtime
    from synth.engine import Engine
    from synth.live import LiveSynth
    from synth.preset import load_preset

    engine = Engine(load_preset(preset_dir), polyphony=64, device="cpu", shed_load=True)
    engine.prepare(RATE, PERIOD, warm=True)
    rows = np.zeros(1 << 17, np.int32)
    count = [0]
    decode = engine._decoder.decode

    def counted_decode(*args: object, **kw: object) -> None:  # the decoder batch of each block
        if count[0] < len(rows):
            rows[count[0]] = args[-1]  # type: ignore[assignment]
            count[0] += 1
        decode(*args, **kw)  # type: ignore[arg-type]

    engine._decoder.decode = counted_decode  # type: ignore[method-assign]
    realtime.freeze_kernels()
    realtime.settle_process()
    watch = jack_setup.open_jack_watch()
    synth = LiveSynth(engine, RATE, watch=watch)
    blocks = int(seconds * RATE / PERIOD) + 2000
    render = Timed(synth._render, blocks)
    synth._render = render  # type: ignore[method-assign]
    if depth:
        synth.start_render_ahead(PERIOD, depth)
    callback = Timed(synth.audio_callback, blocks)
    stop = threading.Event()

    def status() -> None:  # the live status line, to a sink
        while not stop.wait(0.25):
            synth.status_line()

    def midi() -> None:  # a knob turned slowly: a producer holding the GIL now and then
        v = 0
        while not stop.wait(0.02):
            synth.push_control([0xB0, 71, v % 128])
            v += 1

    threads = [threading.Thread(target=f, daemon=True) for f in (status, midi)]
    stream = sd.OutputStream(samplerate=RATE, blocksize=PERIOD, channels=2, dtype="float32",
                             latency="low", callback=callback)
    stream.start()
    for t in threads:
        t.start()
    time.sleep(1.0)
    for i in range(voices):
        synth.push_control([0x90, 36 + (i * 7) % 60, 90])
    time.sleep(1.0)  # the chord's onset is the worst block; measure the held voices after it
    x0, c0, r0, k0 = watch.xruns if watch else 0, callback.n, render.n, count[0]
    time.sleep(seconds)
    x1, c1, r1, k1 = watch.xruns if watch else 0, callback.n, render.n, count[0]
    stop.set()
    stream.stop()
    stream.close()
    synth.stop_render_ahead()
    if watch is not None:
        watch.close()
    period_s = PERIOD / RATE
    cb = callback.leave[c0:c1] - callback.enter[c0:c1]
    rd = render.leave[r0:r1] - render.enter[r0:r1]
    gaps = np.diff(callback.enter[c0:c1]) - period_s
    nrows = rows[k0:k1]
    slow = rd > 0.5 * period_s
    lines = [
        f"| {depth:g} | callback duration | {_pct(cb, period_s)} |",
        f"| {depth:g} | render duration | {_pct(rd, period_s)} |",
        f"| {depth:g} | callback entry gap − period | {_pct(np.maximum(gaps, 0), period_s)} |",
    ]
    rows_info = "" if len(nrows) != len(rd) or nrows.std() == 0 else (
        f"decoder rows per block: median {np.median(nrows):.0f}, max {nrows.max()}; "
        f"rows in renders over half a period: median {np.median(nrows[slow]) if slow.any() else 0:.0f}; "
        f"render time vs rows: r = {np.corrcoef(nrows, rd)[0, 1]:.2f}")
    if depth:
        lines += _slack_rows(callback.enter[:callback.n], render.enter[:render.n], render.leave[:render.n],
                             depth, period_s, first=c0, last=c1)
    summary = (f"render ahead {depth:g}: {voices} voices, {c1 - c0} callbacks, xruns {x1 - x0}, "
               f"late blocks {synth.late_blocks}, faults {synth.stats.faults}, voices sounding "
               f"{engine.stats.active_voices}, shed {engine.stats.shed_voices}; "
               f"callbacks entered over 1 ms late: {int(np.sum(gaps > 0.001))}; {rows_info}")
    return lines + [summary]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="presets/default")
    ap.add_argument("--voices", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--modes", default="0,2", help="render-ahead leads in blocks to measure (0: in the callback)")
    args = ap.parse_args()
    from synth import jack_setup

    jackd = _start_jackd(SERVER)  # the test suite's server: dummy driver, sync, 48 kHz, period 128
    os.environ["JACK_DEFAULT_SERVER"] = SERVER
    try:
        jack_setup.init_portaudio("vaesynth")
        table = ["| render ahead | % of the period | p50 | p95 | p99 | p99.9 | max |", "|---|---|---|---|---|---|---|"]
        notes = []
        for depth in (float(d) for d in args.modes.split(",")):
            out = run_mode(args.preset, args.voices, args.seconds, depth)
            table += out[:-1]
            notes.append(out[-1])
        print("\n".join(table))
        print()
        print("\n".join(notes))
    finally:
        jack_setup.terminate_portaudio()
        _stop(jackd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
