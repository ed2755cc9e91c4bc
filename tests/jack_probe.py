"""A measuring JACK client: plays MIDI into the live synth and records what comes out.

``SynthProcess`` starts ``run_synth.py`` (or any live command) as a subprocess and
waits for its JACK ports; ``JackProbe`` owns a MIDI out port and two audio in
ports, writes scheduled events at exact frames of its own timeline and records
its inputs on the same timeline, so "frame of note-on" and "frame of first sound"
are directly comparable. Used by tests/test_live_jack.py and
benchmarks/live_latency.py.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import jack
import numpy as np

REPO = Path(__file__).resolve().parents[1]
AUDIO_PORTS = ("vaesynth:out_0", "vaesynth:out_1")
MIDI_PORT = "vaesynth-midi:midi_in"


def note_on(note: int, velocity: int = 100) -> bytes:
    return bytes([0x90, note, velocity])


def note_off(note: int) -> bytes:
    return bytes([0x80, note, 0])


def control(cc: int, value: int) -> bytes:
    return bytes([0xB0, cc, value])


class SynthProcess:
    """``python run_synth.py ARGS`` under JACK, started and stopped cleanly (SIGTERM)."""

    def __init__(self, args: list[str], server: str, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        # PYTHONFAULTHANDLER: a crash in native code (one CI run saw a SIGSEGV on stop) prints every
        # thread's Python stack into the stderr a failing assertion shows.
        env = dict(os.environ, PYTHONFAULTHANDLER="1", **(env or {}), JACK_DEFAULT_SERVER=server)
        # Never the user's saved session, MIDI mapping or snapshot library: a measurement starts from the
        # defaults.
        self._home = None if "VAESYNTH_CONFIG_DIR" in env else tempfile.mkdtemp(prefix="vaesynth-home-")
        if self._home is not None:
            env["VAESYNTH_CONFIG_DIR"] = self._home
            env["XDG_DATA_HOME"] = self._home  # nor the user's snapshot library (platformdirs' data folder)
        cmd = command or [sys.executable, str(REPO / "run_synth.py")]
        self.proc = subprocess.Popen(cmd + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def wait_for_ports(self, client: jack.Client, timeout: float = 60.0) -> None:
        """Block until the synth's audio and MIDI ports exist (or raise with its stderr)."""
        deadline = time.monotonic() + timeout
        while True:
            names = {p.name for p in client.get_ports("vaesynth")}
            # PortAudio connects its outputs when the stream starts: that means "running".
            if all(p in names for p in AUDIO_PORTS + (MIDI_PORT,)) and (
                client.get_all_connections(AUDIO_PORTS[0]) or time.monotonic() > deadline - timeout + 5
            ):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"synth exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"synth ports did not appear in {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> tuple[int, str]:
        """SIGTERM, wait; returns (exit status, stderr)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
        return self.proc.returncode, err


@dataclass
class Take:
    """One recording. ``audio (n, 2) float32`` on the probe's timeline; events as sent."""

    audio: np.ndarray
    events: list[tuple[int, bytes]]
    period: int
    sample_rate: int
    xruns: int
    lost_cycles: int  # cycles whose frame time skipped ahead (real-time mode only)
    dsp_load_max: float = 0.0
    dsp_load_mean: float = 0.0  # JACK's DSP load (percent of the cycle), sampled every 50 ms


@dataclass
class _Run:
    events: list[tuple[int, bytes]]
    audio: np.ndarray
    pos: int = 0
    next_event: int = 0
    last_frame_time: int | None = None
    lost_cycles: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class JackProbe:
    """MIDI out + stereo in; ``record`` plays a schedule and returns the recording."""

    def __init__(self, server: str, name: str = "vaesynth-probe") -> None:
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.xruns = 0
        self._run: _Run | None = None
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._on_xrun)
        # Ports come in connect_synth(): the synth connects every MIDI source it sees at
        # start, and our MIDI out must not be one of them (events would arrive twice).
        self.midi_out: jack.OwnMidiPort | None = None
        self.ins: list[jack.OwnPort] = []
        self.client.activate()

    @property
    def period(self) -> int:
        return int(self.client.blocksize)

    @property
    def sample_rate(self) -> int:
        return int(self.client.samplerate)

    def connect_synth(self) -> None:
        """Register our ports; probe:midi_out -> synth MIDI in; synth outputs -> probe inputs."""
        self.ins = [self.client.inports.register(f"in_{i}") for i in range(2)]
        self.midi_out = self.client.midi_outports.register("midi_out")
        self.client.connect(self.midi_out, MIDI_PORT)
        for src, dst in zip(AUDIO_PORTS, self.ins):
            self.client.connect(src, dst)

    def _on_xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def _process(self, frames: int) -> None:
        if self.midi_out is None:
            return
        self.midi_out.clear_buffer()
        run = self._run
        if run is None or run.done.is_set():
            return
        if run.last_frame_time is not None and self.client.last_frame_time - run.last_frame_time > frames:
            run.lost_cycles += 1
        run.last_frame_time = self.client.last_frame_time
        end = min(run.pos + frames, len(run.audio))
        for ch, port in enumerate(self.ins):
            run.audio[run.pos:end, ch] = port.get_array()[: end - run.pos]
        while run.next_event < len(run.events) and run.events[run.next_event][0] < run.pos + frames:
            frame, message = run.events[run.next_event]
            self.midi_out.write_midi_event(max(frame - run.pos, 0), message)
            run.next_event += 1
        run.pos = end
        if run.pos >= len(run.audio):
            run.done.set()

    def record(self, events: list[tuple[int, bytes]], frames: int, freewheel: bool,
               timeout: float = 120.0) -> Take:
        """Send ``events`` (frame, message) and record ``frames`` frames from now."""
        xruns0 = self.xruns
        run = _Run(sorted(events, key=lambda e: e[0]), np.zeros((frames, 2), np.float32))
        loads: list[float] = []
        if freewheel:
            self.client.set_freewheel(True)
        self._run = run
        try:
            deadline = time.monotonic() + timeout
            while not run.done.wait(0.05):
                loads.append(float(self.client.cpu_load()))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"recording of {frames} frames took over {timeout} s")
        finally:
            if freewheel:
                self.client.set_freewheel(False)
            self._run = None
        return Take(run.audio, run.events, self.period, self.sample_rate, self.xruns - xruns0, run.lost_cycles,
                    max(loads, default=0.0), float(np.mean(loads)) if loads else 0.0)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def ports_left_behind(server: str, timeout: float = 5.0) -> list[str]:
    """The synth's audio and MIDI ports the server still holds ``timeout`` s after it exited.

    A stopped synth never closes its ports under JACK (synth.jack_setup.may_unregister_ports):
    the server must drop them with the process, or the next synth would find its names taken."""
    client = jack.Client("vaesynth-gone-check", servername=server, no_start_server=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = [p.name for p in client.get_ports() if p.name in AUDIO_PORTS + (MIDI_PORT,)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)
    finally:
        client.close()


@contextlib.contextmanager
def wired_synth(args: list[str], server: str, env: dict[str, str] | None = None) -> Iterator[JackProbe]:
    """``run_synth.py ARGS`` under ``server``, wired to a fresh probe; on leaving, stops the synth
    and checks that it exited with status 0 and no traceback."""
    synth = SynthProcess(args, server, env=env)
    probe = JackProbe(server)
    try:
        synth.wait_for_ports(probe.client)
        probe.connect_synth()
        yield probe
    finally:
        probe.close()
        status, err = synth.stop()
    assert status == 0 and "Traceback" not in err, err
    assert not ports_left_behind(server), "the server kept the stopped synth's ports"

def kill_server_under_synth(preset: Path, server: str, home: Path, wait: float) -> tuple[float, int, str]:
    """Start a private jackd and the synth on ``preset``, play a note, SIGTERM the server while
    the synth plays, and wait up to ``wait`` s for the synth to exit -> ``(seconds from the kill
    to the exit (``wait`` or more if it did not), exit status, stderr)``."""
    from tests.conftest import _start_jackd, _stop

    jackd = _start_jackd(server)
    synth = SynthProcess(["--preset", str(preset), "--quiet"], server, env={"VAESYNTH_CONFIG_DIR": str(home)})
    try:
        probe = JackProbe(server, f"{server}-probe")
        synth.wait_for_ports(probe.client)
        probe.connect_synth()
        probe.record([(256, note_on(60))], 48000 // 4, freewheel=False)  # playing when it dies
        probe.close()
        killed = time.monotonic()
        _stop(jackd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            synth.proc.wait(timeout=wait)  # the time taken says it
        took = time.monotonic() - killed
    finally:
        status, err = synth.stop()
        _stop(jackd)
    return took, status, err


def onset(audio: np.ndarray, start: int, threshold: float = 1e-4) -> int | None:
    """First frame at or after ``start`` where either channel exceeds ``threshold``."""
    loud = np.flatnonzero(np.max(np.abs(audio[start:]), axis=1) > threshold)
    return int(start + loud[0]) if loud.size else None


def pitch_hz(audio: np.ndarray, sample_rate: int) -> float:
    """Strongest spectral peak of the mono mix, refined by parabolic interpolation."""
    mono = audio.mean(axis=1).astype(np.float64)
    n = len(mono)
    spec = np.abs(np.fft.rfft(mono * np.hanning(n), n=4 * n))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-20)
    delta = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + delta) * sample_rate / (4 * n)


def cents(f: float, ref: float) -> float:
    return 1200.0 * float(np.log2(f / ref))


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def spectrum_db(audio: np.ndarray, n_fft: int = 4096) -> np.ndarray:
    """Average log power spectrum (dB) of the mono mix over n_fft windows, hop n_fft/2."""
    mono = audio.mean(axis=1).astype(np.float64)
    win = np.hanning(n_fft)
    frames = [mono[i : i + n_fft] * win for i in range(0, len(mono) - n_fft + 1, n_fft // 2)]
    power = np.mean(np.abs(np.fft.rfft(np.array(frames), axis=1)) ** 2, axis=0)
    return 10 * np.log10(power + 1e-20)
