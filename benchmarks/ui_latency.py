"""Control-surface figures under a private jackd (dummy driver, sync, 48 kHz, period 128), with
run_synth.py --ui and, one after the other, each headless browser of ``tests.browsers`` (Debian's
chromium and firefox-esr) on its page.

Prints markdown tables, per browser:
- CC-to-screen: a CC 70 sent through JACK until the page has drawn knob 1 at its new value
  (the probe stamps the wall clock of the cycle that carries the CC; the page stamps the state
  message's arrival and its draw, in the animation frame after it);
- knob-to-sound from a browser drag: a real pointer drag (WebDriver input, one step) of knob 1
  over its whole travel under a held note, from the page sending the control to the sound
  changing, against the same change sent over OSC and as a MIDI CC at an exact frame, all with
  the same detector (the moment the spectrum is half-way from the old timbre to the new one,
  which lags the first changed sample by the detector's window and the engine's glide). The
  difference to MIDI is what the browser path adds to knob-to-sound; ``benchmarks.live_latency``
  gives the MIDI knob-to-sound itself (the engine's first changed sample);
- DSP load with the page open (receiving the state, 10 Hz and on knob moves, and drawing it) and
  without, in one run: phases without, with, with, without, the same voices struck in each: the
  synth's own callback load (its state, polled at 10 Hz in every phase) and JACK's DSP load. Goal: the page costs <= 3 points. On a
  shared host these move by more than that from phase to phase, so the CPU time the browser's
  processes and the synth's process took in each phase (``/proc``, % of one core) is shown too:
  what the page takes from the cores the audio runs on.

Run (never while training or another heavy job holds the cores)::

    flock /work/rt-bench.lock python -m benchmarks.ui_latency [--preset DIR] [--repeats 10] [--seconds 20] \
        [--browsers chromium firefox]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tests.browsers import BROWSERS, Page
from tests.jack_probe import JackProbe, control, note_off, note_on
from tests.ui_harness import SurfaceSession, add_latent_map

SERVER = "vaesynth-ui-bench"
RATE, PERIOD = 48000, 128
HELD_KEY = 57
DETECT_WINDOW = 1024  # samples per spectrum of the timbre detector
DETECT_HOP = 32
PHASES = ("without", "with", "with", "without")  # the load phases, in this order


def start_jackd() -> subprocess.Popen[bytes]:
    cmd = ["jackd", "-n", SERVER, "-R", "-S", "-d", "dummy", "-r", str(RATE), "-p", str(PERIOD)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    subprocess.run(["jack_wait", "-s", SERVER, "-w", "-t", "10"], capture_output=True, timeout=15)
    return proc


class StampedProbe(JackProbe):
    """A probe that also notes the wall clock (``time.time``) of every cycle it records."""

    def __init__(self, server: str, name: str) -> None:
        self.stamps: list[tuple[int, float]] = []  # (first frame of the cycle, wall time at its callback)
        super().__init__(server, name)

    def _process(self, frames: int) -> None:
        run = self._run
        if run is not None and not run.done.is_set():
            self.stamps.append((run.pos, time.time()))
        super()._process(frames)

    def record(self, *args, **kwargs):  # noqa: ANN002, ANN003 - JackProbe.record's
        self.stamps = []
        return super().record(*args, **kwargs)

    def wall_of(self, frame: float) -> float:
        """Wall time (s) of a frame of the last recording."""
        pos = np.array([p for p, _ in self.stamps])
        i = max(int(np.searchsorted(pos, frame, side="right")) - 1, 0)
        return self.stamps[i][1] + (frame - self.stamps[i][0]) / RATE

    def frame_of(self, wall: float) -> float:
        """Frame of the last recording at wall time ``wall`` (s)."""
        walls = np.array([w for _, w in self.stamps])
        i = max(int(np.searchsorted(walls, wall, side="right")) - 1, 0)
        return self.stamps[i][0] + (wall - self.stamps[i][1]) * RATE


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and every live descendant (``/proc``)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])  # after "pid (comm)": state, ppid, ...; utime, stime are 14, 15
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, seconds in used.items():
        p = pid
        while p > 1 and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += seconds
    return total


def send_midi(probe: JackProbe, *messages: bytes) -> None:
    probe.record([(2 * PERIOD + i, m) for i, m in enumerate(messages)], 4 * PERIOD, freewheel=False)


def stats_row(name: str, values: list[float], goal: str = "") -> str:
    v = np.asarray(values, float)
    return f"| {name} | {len(v)} | {np.nanmin(v):.1f} | {np.nanmedian(v):.1f} | {np.nanmax(v):.1f} | {goal} |"


def cc_to_screen(page: Page, probe: StampedProbe, repeats: int) -> tuple[list[float], list[float]]:
    """ms from the cycle carrying CC 70 to the page receiving knob 1's new value, and to its draw."""
    received, drawn = [], []
    for r in range(repeats):
        value, shown = (127, 1) if r % 2 == 0 else (0, -1)
        frame = 4 * PERIOD + (37 * r) % PERIOD
        probe.record([(frame, control(70, value))], 8 * PERIOD, freewheel=False)
        sent_ms = probe.wall_of(frame) * 1000.0
        for log, out in (("drawLog", drawn), ("recvLog", received)):
            at = page.wait_js(f"const e = window.vaesynth.{log}.find(d => d.t > {sent_ms - 100.0} && "
                              f"d.knobs[0] === {shown}); return e ? e.t : null", timeout=5.0)
            out.append(at - sent_ms)
        time.sleep(0.05 + 0.0071 * r)  # the next CC at another point of the page's frame and push period
    return received, drawn


def half_way_frame(audio: np.ndarray, change: int) -> float | None:
    """The first frame after ``change`` where the spectrum is closer to the new timbre than the old.

    Log spectra of ``DETECT_WINDOW`` samples every ``DETECT_HOP``; old = their mean over the 200 ms
    before ``change``, new = over 300..500 ms after it; a window's progress is its distance to old
    over the sum of both distances; returns the end of the first window past 0.5 (None: no change).
    """
    mono = audio.mean(axis=1).astype(np.float64)
    win = np.hanning(DETECT_WINDOW)
    starts = np.arange(change - int(0.2 * RATE), change + int(0.5 * RATE) - DETECT_WINDOW, DETECT_HOP)
    spec = np.log(np.abs(np.fft.rfft(np.stack([mono[s:s + DETECT_WINDOW] * win for s in starts]), axis=1)) + 1e-6)
    ends = starts + DETECT_WINDOW
    old = spec[ends <= change].mean(axis=0)
    new = spec[starts >= change + int(0.3 * RATE)].mean(axis=0)
    loud = np.maximum(old, new) > max(old.max(), new.max()) - np.log(1e3)  # 60 dB
    d_old = np.linalg.norm(spec[:, loud] - old[loud], axis=1)
    d_new = np.linalg.norm(spec[:, loud] - new[loud], axis=1)
    if np.linalg.norm(old[loud] - new[loud]) < 1.0:
        return None
    past = np.flatnonzero((d_old / (d_old + d_new) > 0.5) & (ends > change))
    return float(ends[past[0]]) if past.size else None


def _osc_knob_1(value: float) -> bytes:
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder("/vaesynth/knob/1")
    builder.add_arg(float(value), "f")
    return builder.build().dgram


def drag_to_sound(session: SurfaceSession, page: Page, probe: StampedProbe, repeats: int) -> dict[str, list[float]]:
    """ms from a knob-1 change (-> -1) to the half-way point of the timbre change, per path: a browser
    drag (from the page sending it), OSC (from the datagram's send), MIDI CC (from its exact frame)."""
    osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seconds, change_s = 1.6, 0.8
    out: dict[str, list[float]] = {"browser": [], "osc": [], "midi": []}
    try:
        for r in range(3 * repeats):
            path = ("browser", "osc", "midi")[r % 3]
            send_midi(probe, control(70, 127))
            page.wait_js("return window.vaesynth.state.knobs[0] === 1")
            change = int(change_s * RATE) + (53 * r) % PERIOD
            events = [(10 * PERIOD, note_on(HELD_KEY)), (int((seconds - 0.05) * RATE), note_off(HELD_KEY))]
            if path == "midi":
                events.append((change, control(70, 0)))
            holder: list = []
            thread = threading.Thread(target=lambda: holder.append(probe.record(events, int(seconds * RATE), False)))
            thread.start()
            sent = 0.0
            if path == "browser":
                time.sleep(change_s)
                page.drag('.knob[data-knob="0"] svg', [(0, 300)])
            elif path == "osc":
                time.sleep(change_s)
                sent = time.time()
                osc.sendto(_osc_knob_1(-1.0), ("127.0.0.1", session.osc_port))
            thread.join(30)
            audio = holder[0].audio
            if path == "midi":
                at = half_way_frame(audio, change)
                out[path].append(np.nan if at is None else (at - change) * 1000.0 / RATE)
                continue
            if path == "browser":
                sent = page.js(
                    "const e = window.vaesynth.sendLog.filter(s => s.msg.type === 'knob' && s.msg.knob === 0).pop();"
                    "return e ? e.t : null") / 1000.0
            at = half_way_frame(audio, int(probe.frame_of(sent)))
            out[path].append(np.nan if at is None else (probe.wall_of(at) - sent) * 1000.0)
            time.sleep(0.35)  # the release ends
    finally:
        osc.close()
    return out


def load_phases(session: SurfaceSession, browser: str, probe: JackProbe, voices: int, seconds: float) -> str:
    """Phases without, with, with, without the page in ``browser`` (a drift of the host's load over
    the run cancels out), the same voices struck afresh at the start of each (the overload governor
    may have shed some in the phase before)."""
    keys = [36 + (7 * i) % 48 for i in range(voices)]
    rows = []
    try:
        page = None
        for phase in PHASES:
            if phase == "with" and page is None:
                page = session.open_page(browser)
            elif phase == "without" and page is not None:
                session.close_page(page)
                page = None
            send_midi(probe, *[note_off(k) for k in keys], *[note_on(k, 90) for k in keys])
            time.sleep(1.0)
            loads: list[float] = []
            sounding: list[int] = []
            stop = threading.Event()

            def poll() -> None:
                while not stop.wait(0.1):
                    state = session.api("/api/state")
                    loads.append(state["load"])
                    sounding.append(state["voices"])

            poller = threading.Thread(target=poll)
            count = "return window.vaesynth.counts.messages"
            messages0 = page.js(count) if page else 0
            synth_cpu0, page_cpu0 = cpu_seconds(session.synth.proc.pid), cpu_seconds(page.pid) if page else 0.0
            poller.start()
            take = probe.record([], int(seconds * RATE), freewheel=False)
            stop.set()
            poller.join()
            rate = (page.js(count) - messages0) / seconds if page else 0.0
            synth_cpu = 100 * (cpu_seconds(session.synth.proc.pid) - synth_cpu0) / seconds
            page_cpu = 100 * (cpu_seconds(page.pid) - page_cpu0) / seconds if page else 0.0
            rows.append((phase, 100 * float(np.mean(loads)), 100 * float(np.percentile(loads, 99)),
                         take.dsp_load_mean, take.dsp_load_max, take.xruns, int(np.median(sounding)), rate,
                         synth_cpu, page_cpu))
    finally:
        send_midi(probe, *[note_off(k) for k in keys])
    lines = ["| page | voices | synth load mean, % | synth load p99, % | JACK DSP load mean, % | JACK DSP max, % "
             "| xruns | state messages/s | synth process CPU, % of a core | browser CPU, % of a core |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for phase, mean, p99, jmean, jmax, xr, v, rate, synth_cpu, page_cpu in rows:
        with_page = phase == "with"
        lines.append(f"| {phase} | {v} | {mean:.1f} | {p99:.1f} | {jmean:.1f} | {jmax:.1f} | {xr} "
                     f"| {f'{rate:.1f}' if with_page else '–'} | {synth_cpu:.1f} "
                     f"| {f'{page_cpu:.1f}' if with_page else '–'} |")
    off = [r for r in rows if r[0] == "without"]
    on = [r for r in rows if r[0] == "with"]
    cost = np.mean([r[1] for r in on]) - np.mean([r[1] for r in off])
    jcost = np.mean([r[3] for r in on]) - np.mean([r[3] for r in off])
    synth_extra = np.mean([r[8] for r in on]) - np.mean([r[8] for r in off])
    lines.append(f"\nThe page's cost: {cost:+.1f} points of synth load, {jcost:+.1f} points of JACK DSP load "
                 f"(goal <= 3); it took {np.mean([r[9] for r in on]):.1f} % of a core in the browser and "
                 f"{synth_extra:+.1f} % in the synth's process (its server).")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="presets/default")
    ap.add_argument("--repeats", type=int, default=10, help="CC-to-screen and drag takes each")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per load phase (four phases)")
    ap.add_argument("--voices", type=int, default=16, help="voices held during the load phases")
    ap.add_argument("--browsers", nargs="+", choices=sorted(BROWSERS), default=["chromium", "firefox"],
                    help="the browsers to measure, one after the other")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    if not (Path(args.preset) / "preset.toml").exists():
        from tests.fake_preset import make_fake_preset

        print(f"({args.preset} has no preset.toml: using tests/fake_preset.py's fake preset)", file=sys.stderr)
        args.preset = str(add_latent_map(make_fake_preset(work / "fake")))
    jackd = start_jackd()
    os.environ["JACK_DEFAULT_SERVER"] = SERVER
    session = None
    try:
        session = SurfaceSession(Path(args.preset), SERVER, extra=["--polyphony", "64"],
                                 env={"VAESYNTH_CONFIG_DIR": str(work / "cfg")},
                                 probe=StampedProbe(SERVER, "vaesynth-ui-bench-probe"))
        probe = session.probe
        print(f"preset: {args.preset}")
        for browser in args.browsers:
            page = session.open_page(browser)
            print(f"\n### {browser} {page.version}\n")
            print("| measure, ms | takes | min | median | max | goal |\n|---|---|---|---|---|---|")
            received, drawn = cc_to_screen(page, probe, args.repeats)
            print(stats_row("CC 70 through JACK -> state with knob 1's new value received by the page", received))
            print(stats_row("CC 70 through JACK -> knob drawn on the page", drawn, "one display frame (16.7 ms)"),
                  flush=True)
            paths = drag_to_sound(session, page, probe, args.repeats)
            session.close_page(page)
            print(stats_row("browser drag of knob 1 -> sound half-way to the new timbre", paths["browser"]))
            print(stats_row("OSC /vaesynth/knob/1 -> the same point", paths["osc"]))
            print(stats_row("MIDI CC 70 at an exact frame -> the same point (reference)", paths["midi"]))
            added = np.nanmedian(paths["browser"]) - np.nanmedian(paths["midi"])
            print(stats_row("what the browser path adds to knob-to-sound (medians: drag minus MIDI)", [added],
                            "knob-to-sound <= 20 ms"), "\n", flush=True)
            print(load_phases(session, browser, probe, args.voices, args.seconds), flush=True)
    finally:
        status, err = session.close() if session is not None else (0, "")
        jackd.terminate()
        jackd.wait(timeout=10)
    if status != 0:
        print(f"synth exited {status}: {err[-500:]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
