"""Live mode: MIDI from python-rtmidi into the Engine, audio out through sounddevice.

Threads: rtmidi calls ``LiveSynth.on_midi`` on its own thread (under JACK, inside
the rtmidi client's process cycle); PortAudio calls ``LiveSynth.audio_callback``
on the audio thread; the main thread prints the status line and waits for
Ctrl-C. The two callbacks share only ``SampleClock``'s single tuple slot (one
reference assignment, atomic under the GIL) and the engine's lock-free queue.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from synth import jack_setup, state
from synth.errors import VaesynthError
from synth.events import (
    CC_ALL_NOTES_OFF,
    CC_ALL_SOUND_OFF,
    CC_SUSTAIN,
    CONTROL_CHANGE,
    PROGRAM_CHANGE,
)
from synth.jack_setup import AudioSetupError
from synth.learn import (
    LearnSession,
    bind,
    default_mapping_path,
    load_mapping,
    save_mapping,
)
from synth.level_follow import FOLLOW_PERIOD_S, LevelFollower
from synth.render_ahead import DEFAULT_AHEAD, MIN_AHEAD, RenderAhead
from synth.state import LiveState
from synth.ui.cli import start_surface

MIDI_CLIENT_NAME = "vaesynth"
# Under JACK, PortAudio's client already holds "vaesynth", and rtmidi is a second
# JACK client: a fixed distinct name keeps its port predictable (no "-01" suffix).
JACK_MIDI_CLIENT_NAME = "vaesynth-midi"
MIDI_PORT_NAME = "midi_in"
STATUS_PERIOD_S = 0.25
# No callback for this long while running means the audio server went away.
STALL_TIMEOUT_S = 3.0
EXIT_SERVER_GONE = 3
# This many failing blocks in a row (about a second at 48 kHz / 128) is a persistent fault.
FAULT_EXIT_BLOCKS = 400
# Render ahead: a callback whose block is late waits for it this much of a period at most (the
# rest of the cycle is the audio server's and the other clients'), then plays silence.
LATE_WAIT_PERIODS = 0.5
# How often the MIDI source watcher looks for sources that went away or came back.
SOURCE_POLL_S = 0.5
WATCHER_JOIN_S = 5.0  # a look at the sources takes milliseconds; a loaded host can stall it for seconds
ALSA_SEQUENCER = "/dev/snd/seq"
# On a clean stop, held notes are released and their tails play for at most this long, then
# whatever still sounds fades out (all sound off: 5 ms) before the stream stops: no click.
EXIT_RELEASE_S = 0.5
EXIT_FADE_S = 0.03


class LiveError(VaesynthError, RuntimeError):
    """A user-facing, one-line failure of live mode (printed without a traceback)."""


class SampleClock:
    """Maps a wall-clock arrival time (``time.perf_counter``) to output-sample time.

    The audio callback marks each block (first frame, wall time at entry, length).
    An event that arrives ``d`` seconds after a block started is scheduled
    ``block_start + n + d * rate``: one block later than "now", which keeps its
    offset inside the block (constant latency, no jitter), clamped to the block
    that has not been rendered yet ("past" events land at its offset 0). With render ahead
    (``lead``) that block lies ``lead`` samples further on.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._mark: tuple[int, float, int] = (0, -1.0, 0)
        # Samples rendered ahead of the block being played (synth.render_ahead): an event can
        # land no sooner than in the first block the worker has not started, this much later.
        self.lead = 0
        # JACK freewheel (an export) runs cycles with no relation to the wall clock: an event then
        # lands on the first block not yet rendered, with no offset read off the wall clock.
        self.freewheeling: Callable[[], bool] | None = None

    def mark_block(self, start_frame: int, wall_time: float, frames: int) -> None:
        """Called by the audio callback before rendering ``frames`` from ``start_frame``."""
        self._mark = (start_frame, wall_time, frames)

    def to_sample(self, wall_time: float) -> int:
        """Output-sample time for an event that arrived at ``wall_time``."""
        start, marked_at, n = self._mark
        if marked_at < 0.0:  # no block rendered yet: play at the very start
            return 0
        next_start = start + n + self.lead
        if self.freewheeling is not None and self.freewheeling():
            return next_start
        target = next_start + int((wall_time - marked_at) * self.sample_rate)
        return min(max(target, next_start), next_start + 2 * n)


@dataclass
class LiveStats:
    """Counters written by the callbacks, read by the status line."""

    frames: int = 0
    callbacks: int = 0
    renders: int = 0  # blocks the engine rendered (in the callback, or ahead of it)
    underflows: int = 0  # blocks PortAudio flagged (JACK's own xrun count is JackWatch's)
    faults: int = 0  # blocks whose rendering raised (output silenced)
    consecutive_faults: int = 0
    load: float = 0.0  # last block's render time / block duration (in the callback, or the render-ahead worker)
    load_peak: float = 0.0
    last_callback_wall: float = 0.0
    midi_events: int = 0
    last_midi: tuple[int, ...] = field(default_factory=tuple)


class LiveSynth:
    """The engine wrapped for real-time use: audio callback, MIDI callback, status text."""

    def __init__(self, engine: Any, sample_rate: int, learn: LearnSession | None = None,
                 watch: jack_setup.JackWatch | None = None) -> None:
        self.engine = engine
        self.sample_rate = sample_rate
        self.clock = SampleClock(sample_rate)
        self.stats = LiveStats()
        self.learn = learn
        self.watch = watch
        # freewheel is the server's, with or without render ahead: events and the loudness follower
        # run in audio time through an export either way
        self.clock.freewheeling = None if watch is None else watch.is_freewheeling
        self.fault: BaseException | None = None  # the first exception the callback caught
        # Several rtmidi inputs (virtual + hardware) call on_midi from their own threads,
        # but the engine queue has a single producer: serialise them. The audio thread
        # never takes this lock.
        self._producer_lock = threading.Lock()
        # Called on the producer's thread, after a control that may move a knob (a CC, a program
        # change, an engine event) is queued, with the output sample it lands on: the control
        # surface wakes its push with it while a page is open. It must never block.
        self.control_listener: Callable[[int], None] | None = None
        self.ahead: RenderAhead | None = None  # the render-ahead worker (start_render_ahead)
        # The loudness follower (synth.level_follow): on its own thread in real time; in JACK
        # freewheel (an export) audio time runs apart from the wall clock, so the renderer looks
        # itself every FOLLOW_PERIOD_S of audio, as --render does, and the export is the same
        # whatever the machine's speed.
        self.follower: LevelFollower | None = None
        self._follow_next = 0  # engine sample time of the renderer's next look in freewheel

    def start_render_ahead(self, block: int, blocks: float = DEFAULT_AHEAD) -> RenderAhead:
        """Render on a worker thread ``blocks`` blocks of ``block`` frames ahead of the callback
        (``synth.render_ahead``), before the stream starts. Events are scheduled that much
        later, and the engine reports that delay as its "render ahead" stage. In JACK freewheel
        (the synth's watch says) the callback waits for the worker."""
        period_s = block / self.sample_rate
        ahead = RenderAhead(self._render, block, 2, blocks, freewheeling=self.clock.freewheeling,
                            late_wait_s=LATE_WAIT_PERIODS * period_s, block_s=period_s)
        self.clock.lead = ahead.delay_samples
        set_stage = getattr(self.engine, "set_render_ahead", None)
        if set_stage is not None:
            set_stage(ahead.delay_samples)
        ahead.start()
        self.ahead = ahead
        return ahead

    @property
    def late_blocks(self) -> int:
        """Callbacks whose render-ahead block was not ready (they played silence); 0 without
        render ahead."""
        return self.ahead.late if self.ahead is not None else 0

    def stop_render_ahead(self) -> None:
        """Stop the worker (after the stream stopped)."""
        if self.ahead is not None:
            self.ahead.stop()

    def audio_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """sounddevice callback: render ``outdata (frames, 2) float32`` (or, with render ahead,
        copy the worker's block); no IO, no allocation, no lock taken. With render ahead it
        waits only on the late path, half a period at most (``synth.render_ahead``)."""
        start = time.perf_counter()
        st = self.stats
        if status.output_underflow:
            st.underflows += 1
        self.clock.mark_block(st.frames, start, frames)
        ahead = self.ahead
        if ahead is None:
            self._render(outdata)
        else:
            try:
                ahead.pull(outdata, start)  # a late block plays silence, counted by the ring (late_blocks)
            except Exception as exc:  # noqa: BLE001 - a block of the wrong size: silence, never the stream
                outdata.fill(0.0)
                self._failed(exc)
        st.frames += frames
        st.callbacks += 1
        st.last_callback_wall = start

    def _render(self, out: np.ndarray) -> None:
        """Render the engine's next block into ``out``: on the audio thread, or the render-ahead
        worker's. A failure costs one silent block, never the stream."""
        start = time.perf_counter()
        st = self.stats
        try:
            self.engine.process(out)
            st.consecutive_faults = 0
            if self.follower is not None and self.freewheeling and self.engine.sample_time >= self._follow_next:
                self.follower.update()  # no deadline in freewheel (never reached in real time)
                self._follow_next = self.engine.sample_time + int(FOLLOW_PERIOD_S * self.sample_rate)
        except Exception as exc:  # noqa: BLE001 - any failure costs one silent block, never the stream
            out.fill(0.0)
            self._failed(exc)
        st.renders += 1
        st.load = (time.perf_counter() - start) * self.sample_rate / out.shape[0]
        if st.load > st.load_peak and st.renders > 8:  # the first blocks warm caches up
            st.load_peak = st.load

    @property
    def freewheeling(self) -> bool:
        """Whether the audio server runs without a deadline now (JACK freewheel, an export)."""
        return self.clock.freewheeling is not None and self.clock.freewheeling()

    def start_follower(self, follower: LevelFollower) -> None:
        """Keep the loudness as the knobs move (synth.level_follow): ``follower`` looks on its own thread
        in real time, and from the renderer in freewheel."""
        self.follower = follower
        follower.start(paused=lambda: self.freewheeling,
                       on_error=lambda exc: _say(f"the level stopped following the knobs ({_one_line(exc)})"))

    def _failed(self, exc: BaseException) -> None:
        st = self.stats
        st.faults += 1
        st.consecutive_faults += 1
        if self.fault is None:
            self.fault = exc  # reported once by the main thread

    def on_midi(self, event: tuple[list[int], float], data: object = None) -> None:
        """rtmidi callback: timestamp the message in output samples and queue it."""
        message = event[0]
        self.push_control(message)
        learn = self.learn  # read once: the control surface may end a learn session meanwhile
        if learn is not None:
            learn.offer(message)

    def push_control(self, message: bytes | list[int] | tuple[int, ...]) -> bool:
        """Queue one MIDI message now, from any thread (MIDI inputs, control surface, OSC): the
        engine's only way in. False when the queue refused it (full, or not a channel message)."""
        arrival = time.perf_counter()
        with self._producer_lock:
            sample = self.clock.to_sample(arrival)
            ok = self.engine.push_event(sample, bytes(message))
            self.stats.midi_events += 1
            self.stats.last_midi = tuple(message)
        if ok and message[0] & 0xF0 in (CONTROL_CHANGE, PROGRAM_CHANGE):
            self._control_queued(sample)
        return ok

    def push_engine_event(self, status: int, d1: int = 0, d2: int = 0) -> bool:
        """Queue one of the engine's own events (``synth.timbre``: select a slot, morph endpoints) now,
        on the producer path ``push_control`` uses."""
        arrival = time.perf_counter()
        with self._producer_lock:
            sample = self.clock.to_sample(arrival)
            ok = self.engine.push(sample, status, d1, d2)
        if ok:
            self._control_queued(sample)
        return ok

    def _control_queued(self, sample: int) -> None:
        listener = self.control_listener  # read once: the surface unsets it when its last page closes
        if listener is not None:
            listener(sample)

    @property
    def xruns(self) -> int:
        """JACK's own xrun count where a JackWatch runs, else PortAudio's underflow flags."""
        return self.watch.xruns if self.watch is not None else self.stats.underflows

    def status_line(self) -> str:
        """One line: voices, callback load, xruns, last MIDI event, knob values."""
        st = self.stats
        est = getattr(self.engine, "stats", None)
        voices = getattr(est, "active_voices", "?")
        knobs = _knob_text(self.engine)
        midi = " ".join(f"{b:02x}" for b in st.last_midi) or "-"
        line = (
            f"voices {voices:>3} | load {100 * st.load:5.1f}% (peak {100 * st.load_peak:5.1f}%) | "
            f"xruns {self.xruns} | midi {midi}"
        )
        dropped = getattr(est, "dropped_events", 0)
        nans = getattr(est, "nan_count", 0)
        shed = getattr(est, "shed_voices", 0)
        if shed:
            line += f" | overload: shed {shed}, cap {getattr(est, 'voice_cap', '?')}"
        if dropped or nans:
            line += f" | dropped {dropped} nan {nans}"
        if self.late_blocks:
            line += f" | late blocks {self.late_blocks}"
        timbre = getattr(self.engine, "current_timbre", None)
        line += f" | timbre {timbre.label}" if timbre is not None else ""
        return line + (f" | knobs {knobs}" if knobs else "")


def _knob_text(engine: Any) -> str:
    """Knob coordinates; a ``*`` marks a knob waiting for pick-up (its control is ignored until it
    reaches the value shown)."""
    values = getattr(engine, "knob_values", None)
    if values is None:
        return ""
    picked = getattr(engine, "knob_pickup", None)
    try:
        values = list(values)[:8]
        waiting = [False] * len(values) if picked is None else [not bool(p) for p in list(picked)[:8]]
        return " ".join(f"{float(v):+.2f}{'*' if w else ''}" for v, w in zip(values, waiting))
    except TypeError:
        return ""


class MidiInputs:
    """Our virtual MIDI input port and the sources wired to it, kept wired while the synth runs.

    Under JACK every source is a JACK connection into the one virtual port
    (``vaesynth-midi:midi_in``), made with JACK-Client (see :class:`JackWiring`); elsewhere
    (ALSA, CoreMIDI, WinMM) each source gets its own rtmidi input (:class:`RtmidiWiring`).
    :meth:`watch` keeps the chosen sources connected: one that disappears (a keyboard unplugged,
    a2jmidid restarted) is connected again when it comes back, without a restart.
    """

    def __init__(self, use_jack: bool) -> None:
        try:
            import rtmidi
        except ImportError as exc:
            raise LiveError(f"no MIDI backend: {exc}") from None
        self._rtmidi = rtmidi
        self.use_jack = use_jack
        self.api = rtmidi.API_UNIX_JACK if use_jack else _native_midi_api(rtmidi)
        self.client_name = JACK_MIDI_CLIENT_NAME if use_jack else MIDI_CLIENT_NAME
        # Our virtual input as other programs see it (None where the system has no virtual ports).
        self.port_name: str | None = f"{self.client_name}:{MIDI_PORT_NAME}"
        self.ports: list[Any] = []  # rtmidi objects, kept alive while open
        self.connected: list[str] = []  # sources wired to us now
        self._wiring: JackWiring | RtmidiWiring | None = None
        self._select: str | None = None
        self._remembered: set[str] = set()  # sources to reconnect when they come back
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()

    def new_input(self) -> Any:
        """A fresh rtmidi input of our backend (never while a JACK stream runs: see ``_play``)."""
        try:
            port = self._rtmidi.MidiIn(self.api, name=self.client_name)
        except self._rtmidi.RtMidiError as exc:
            raise LiveError(f"no MIDI backend: {exc}") from None
        port.ignore_types(sysex=True, timing=True, active_sense=True)
        return port

    def sources(self) -> list[str]:
        """Names of the MIDI sources this backend can see, minus our own ports."""
        if self._wiring is not None:
            return self._wiring.sources()
        if self.use_jack:
            return JackWiring.list_sources(self.client_name)
        probe = self.new_input()
        try:
            names = probe.get_ports()
        finally:
            probe.delete()
        return [n for n in names if not n.startswith(self.client_name)]

    def open(self, callback: Callable[..., None], select: str | None, follow_sources: bool = True) -> None:
        """Open the virtual port and connect sources: those matching ``select``, else (unless
        ``follow_sources`` is False, ``--no-connect``) every source present now."""
        virtual = self.new_input()
        try:
            virtual.open_virtual_port(MIDI_PORT_NAME)
            virtual.set_callback(callback)
            self.ports.append(virtual)
        except self._rtmidi.RtMidiError:  # Windows (WinMM) has no virtual ports: sources only
            virtual.delete()
            self.port_name = None
            _say("this system has no virtual MIDI ports: MIDI comes only from sources "
                 "(--midi-in NAME picks them, e.g. a loopMIDI port)")
        self._wiring = (JackWiring(self.client_name, f"{self.client_name}:{MIDI_PORT_NAME}") if self.use_jack
                        else RtmidiWiring(self, callback))
        self._select = select
        if not follow_sources and select is None:
            return
        present = self.sources()
        for name in present:
            if self._wanted(name):
                self._remembered.add(name)
                self._connect(name)
        if select is not None and not self.connected:
            _say(f"no MIDI source matches {select!r} yet ({', '.join(present) or 'none found'}); "
                 "it will be connected when it appears")

    def _wanted(self, name: str) -> bool:
        return self._select is None or self._select.lower() in name.lower()

    def _connect(self, name: str) -> bool:
        assert self._wiring is not None
        if self._wiring.connect(name):
            self.connected.append(name)
            return True
        return False

    def check_sources(self) -> None:
        """One look at the sources: forget the ones gone, reconnect the chosen ones present again."""
        if self._wiring is None:
            return
        present = set(self.sources())
        for name in [n for n in self.connected if n not in present]:
            self.connected.remove(name)
            self._wiring.forget(name)
            _say(f"MIDI source {name} went away; it will be reconnected when it comes back")
        for name in sorted(present):
            chosen = name in self._remembered or (self._select is not None and self._wanted(name))
            if chosen and name not in self.connected and self._connect(name):
                self._remembered.add(name)
                _say(f"MIDI source {name} connected")

    def watch(self, period: float = SOURCE_POLL_S) -> None:
        """Check the sources every ``period`` seconds on a thread of its own (never the audio thread)."""
        if self._wiring is None or (self._select is None and not self._remembered):
            return

        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.check_sources()
                except Exception as exc:  # noqa: BLE001 - a failed look is retried, never fatal
                    _say(f"MIDI source check failed ({_one_line(exc)}); retrying")

        self._watcher = threading.Thread(target=loop, name="vaesynth-midi-sources", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop the watcher and close the wiring client; then close the rtmidi ports, except under JACK.

        Under JACK the ports stay open until the process ends, and the server drops their client
        with it (``run_synth`` leaves through ``os._exit``): see :func:`jack_setup.may_unregister_ports`.
        Their callback may still queue a late message meanwhile; nothing plays it.
        """
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=WATCHER_JOIN_S)
            if self._watcher.is_alive():  # still inside a JACK call: closing its client under it could crash
                self._wiring = None  # (the process is ending; the server drops the client with it)
        if self._wiring is not None:
            self._wiring.close()
        if jack_setup.may_unregister_ports(self.use_jack):
            for port in self.ports:
                port.close_port()
                port.delete()
        self.ports.clear()  # (dropping an rtmidi input leaves its port: python-rtmidi 1.5.8 unregisters only in delete())


def _native_midi_api(rtmidi: Any) -> int:
    """rtmidi's default backend, after checking that ALSA's sequencer exists on Linux (otherwise
    libasound prints its own errors before rtmidi fails)."""
    if sys.platform.startswith("linux") and not os.path.exists(ALSA_SEQUENCER):
        raise LiveError(f"no MIDI backend: no JACK server is running and ALSA's sequencer ({ALSA_SEQUENCER}) is "
                        "missing; start JACK (jackd -d dummy -r 48000 -p 128 &) or load snd-seq (modprobe snd-seq)")
    return rtmidi.API_UNSPECIFIED


class JackWiring:
    """Sources wired into our virtual port by JACK connections, through a JACK-Client client.

    Why not rtmidi: python-rtmidi holds the GIL while its JACK client (de)activates, and
    activation waits for a JACK cycle, which waits for our Python audio callback: opening an
    rtmidi client while the stream runs can deadlock. JACK-Client (cffi) releases the GIL in
    every call, and connecting ports needs no new client and no activation.
    """

    def __init__(self, own_client: str, own_port: str) -> None:
        try:
            import jack
        except ImportError as exc:
            raise LiveError(f"JACK-Client is missing ({exc}); pip install JACK-Client") from None
        self._jack = jack
        self.own_client, self.own_port = own_client, own_port
        try:
            self._client = jack.Client(f"{own_client}-wiring", no_start_server=True)
        except jack.JackError as exc:
            raise LiveError(f"cannot reach the JACK server to wire MIDI ({exc})") from None

    @staticmethod
    def list_sources(own_client: str) -> list[str]:
        import jack

        try:
            client = jack.Client(f"{own_client}-query", no_start_server=True)
        except jack.JackError as exc:
            raise LiveError(f"cannot reach the JACK server ({exc})") from None
        try:
            return _jack_sources(client, own_client)
        finally:
            client.close()

    def sources(self) -> list[str]:
        return _jack_sources(self._client, self.own_client)

    def connect(self, name: str) -> bool:
        try:
            if self.own_port not in {p.name for p in self._client.get_all_connections(name)}:
                self._client.connect(name, self.own_port)
            return True
        except self._jack.JackError:  # vanished meanwhile: the next look tries again
            return False

    def forget(self, name: str) -> None:
        """JACK drops the connections of a port that goes away: nothing to undo."""

    def close(self) -> None:
        self._client.close()


def _jack_sources(client: Any, own_client: str) -> list[str]:
    return [p.name for p in client.get_ports(is_midi=True, is_output=True) if not p.name.startswith(own_client + ":")]


class RtmidiWiring:
    """Elsewhere than JACK (ALSA, CoreMIDI, WinMM), one rtmidi input per source."""

    def __init__(self, inputs: MidiInputs, callback: Callable[..., None]) -> None:
        self._inputs = inputs
        self._callback = callback
        self._probe = inputs.new_input()  # listing refreshes on every get_ports()
        self._by_name: dict[str, Any] = {}

    def sources(self) -> list[str]:
        return [n for n in self._probe.get_ports() if not n.startswith(self._inputs.client_name)]

    def connect(self, name: str) -> bool:
        port = self._inputs.new_input()
        names = port.get_ports()  # indices are into this object's own, full list
        if name not in names:  # vanished meanwhile
            port.delete()
            return False
        port.open_port(names.index(name), f"in_{len(self._by_name) + 1}")
        port.set_callback(self._callback)
        self._by_name[name] = port
        return True

    def forget(self, name: str) -> None:
        port = self._by_name.pop(name, None)
        if port is not None:
            port.close_port()
            port.delete()

    def close(self) -> None:
        for name in list(self._by_name):
            self.forget(name)
        self._probe.delete()


@dataclass
class AudioConfig:
    """What the output stream will be opened with."""

    device: int
    sample_rate: int
    blocksize: int  # 0: let the host pick (the JACK period under JACK)
    under_jack: bool


def choose_audio(args: argparse.Namespace) -> AudioConfig:
    """Resolve ``--output/--samplerate/--blocksize`` against the devices; one-line errors."""
    import sounddevice as sd

    device = jack_setup.resolve_output_device(getattr(args, "output", None))
    info = sd.query_devices(device)
    under_jack = sd.query_hostapis(info["hostapi"])["name"] == jack_setup.JACK_HOSTAPI_NAME
    rate = int(getattr(args, "samplerate", None) or info["default_samplerate"])
    blocksize = int(getattr(args, "blocksize", None) or 0)
    if blocksize < 0:
        raise LiveError(f"--blocksize {blocksize}: must be 0 (the host's choice) or positive")
    try:
        sd.check_output_settings(device=device, channels=2, dtype="float32", samplerate=rate)
    except sd.PortAudioError as exc:
        raise LiveError(f"output {info['name']!r} refuses {rate} Hz stereo float32: {exc}") from None
    if under_jack and blocksize:
        period = _jack_period()
        if period and period % blocksize:
            raise LiveError(
                f"--blocksize {blocksize} does not divide the JACK period {period}; "
                "use 0 or a divisor (otherwise PortAudio adds a constant delay)"
            )
    return AudioConfig(device, rate, blocksize, under_jack)


MAX_AHEAD = 8.0  # blocks: beyond this render ahead only adds latency


def render_ahead_blocks(args: argparse.Namespace, audio: AudioConfig) -> float:
    """Blocks to render ahead of the callback (``--render-ahead``); 0 where the callback's block
    length may vary (``--blocksize 0`` outside JACK), since the ring holds fixed blocks."""
    blocks = float(getattr(args, "render_ahead", DEFAULT_AHEAD))
    if blocks != 0.0 and not MIN_AHEAD <= blocks <= MAX_AHEAD:
        raise LiveError(f"--render-ahead {blocks:g}: must be 0 (render in the callback) or "
                        f"{MIN_AHEAD:g} to {MAX_AHEAD:g} blocks")
    return blocks if audio.blocksize or audio.under_jack else 0.0


def _jack_period() -> int | None:
    """The JACK server's period in frames, or None when JACK-Client is not installed."""
    try:
        import jack
    except ImportError:
        return None
    client = jack.Client("vaesynth-query", no_start_server=True)
    try:
        return int(client.blocksize)
    finally:
        client.close()


def build_engine(args: argparse.Namespace, audio: AudioConfig) -> tuple[Any, Any]:
    """Load ``args.preset`` and make an Engine prepared for ``audio``; returns (engine, preset)."""
    from synth.engine import Engine
    from synth.preset import load_preset

    preset = load_preset(args.preset)
    engine = Engine(preset, polyphony=getattr(args, "polyphony", 32), bend_range=getattr(args, "bend_range", 2.0),
                    channel=getattr(args, "channel", None), device=getattr(args, "decoder_device", "auto"),
                    threads=getattr(args, "threads", None), shed_load=True)
    from synth.timbre_cli import apply_timbre_options

    apply_timbre_options(args, engine)
    max_block = audio.blocksize or _jack_period() or 1024
    _prepare_announced(engine, audio.sample_rate, max_block, quiet=bool(getattr(args, "quiet", False)))
    return engine, preset


def _prepare_announced(engine: Any, sample_rate: int, max_block: int, quiet: bool) -> None:
    """``engine.prepare`` (warm) under one line: 'preparing the engine... ready in X s'."""
    from synth import realtime

    if not quiet:
        print("vaesynth: preparing the engine... ", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        engine.prepare(sample_rate, max_block, warm=True)
    except BaseException:
        if not quiet:
            print(file=sys.stderr)  # end the line before the error message
        raise
    took = time.perf_counter() - started
    compiled = sum(sum(k.stats.cache_misses.values()) for k in realtime.compiled_kernels() if k.signatures)
    if not quiet:
        note = " (first start: DSP kernels compiled and cached for the next one)" if compiled else ""
        print(f"ready in {took:.1f} s{note}", file=sys.stderr, flush=True)


def apply_mapping(engine: Any, mapping: dict[int, int]) -> None:
    """Learned CC -> knob bindings on top of the default CCs (``synth.events.KNOB_CCS``)."""
    from synth.events import KNOB_CCS

    merged = {cc: knob for knob, cc in enumerate(KNOB_CCS)}
    for cc, knob in mapping.items():
        merged = bind(merged, cc, knob)
    engine.set_knob_ccs(merged)


def _say(text: str) -> None:
    print(f"vaesynth: {text}", file=sys.stderr, flush=True)


def _list_midi() -> int:
    """``--list-midi``: the sources found, or what to start to get one."""
    use_jack = jack_setup.jack_server_running()
    inputs = MidiInputs(use_jack)
    names = inputs.sources()
    backend = "JACK" if use_jack else "system MIDI"
    if names:
        print(f"{len(names)} MIDI source(s) ({backend}); vaesynth listens on {inputs.port_name}:")
        print("\n".join(f"  {n}" for n in names))
    elif use_jack:
        print(f"no MIDI sources under JACK. vaesynth listens on {inputs.port_name}: connect one with "
              f"jack_connect SOURCE {inputs.port_name}, or bridge ALSA keyboards into JACK with a2jmidid -e")
    else:
        print("no MIDI sources found: plug in a keyboard, or start a virtual port (macOS: IAC Driver in "
              "Audio MIDI Setup; Windows: loopMIDI; Linux: JACK, or aconnect with ALSA)")
    return 0


def _open_stream(synth: LiveSynth, audio: AudioConfig, on_finished: Callable[[], None]) -> Any:
    import sounddevice as sd

    try:
        stream = sd.OutputStream(
            device=audio.device, samplerate=audio.sample_rate, blocksize=audio.blocksize,
            channels=2, dtype="float32", latency="low",
            callback=synth.audio_callback, finished_callback=on_finished,
        )
    except sd.PortAudioError as exc:
        raise LiveError(f"cannot open the audio output: {exc}") from None
    return stream


def _start_stream(stream: Any) -> None:
    import sounddevice as sd

    try:
        stream.start()
    except sd.PortAudioError as exc:
        raise LiveError(f"cannot start the audio output: {exc}") from None


def _start_learning(args: argparse.Namespace, preset: Any) -> LearnSession | None:
    knob = getattr(args, "learn", None)
    if knob is None:
        return None
    session = LearnSession(int(knob), preset.knobs.directions.shape[0])
    _say(f"MIDI learn: move a controller to bind knob {session.knob + 1} of {preset.knobs.directions.shape[0]}")
    return session


def _finish_learning(learn: LearnSession, engine: Any, path: Path) -> None:
    cc = learn.learned_cc
    assert cc is not None
    mapping = bind(load_mapping(path), cc, learn.knob)
    save_mapping(path, mapping)
    apply_mapping(engine, mapping)
    _say(f"learned CC {cc} -> knob {learn.knob}; saved to {path}")


def _server_gone(message: str, on_exit: Callable[[], None]) -> None:
    """Exit now without touching PortAudio: closing a stream after jackd died was seen to hang."""
    _say(message)
    on_exit()
    sys.stderr.flush()
    os._exit(EXIT_SERVER_GONE)


def _run_loop(synth: LiveSynth, args: argparse.Namespace, finished: list[bool], on_exit: Callable[[], None]) -> None:
    quiet = bool(getattr(args, "quiet", False))  # the status line is on unless --quiet
    tty = sys.stderr.isatty()
    learn, path = synth.learn, default_mapping_path()
    learned = False
    reported_fault = False
    while True:
        if synth.watch is not None and synth.watch.server_gone.wait(STATUS_PERIOD_S):
            _server_gone(f"the JACK server went away ({synth.watch.shutdown_reason}); exiting", on_exit)
        elif synth.watch is None:
            time.sleep(STATUS_PERIOD_S)
        if finished[0]:
            _server_gone("the audio stream stopped (audio server gone?); exiting", on_exit)
        if synth.fault is not None and not reported_fault:
            reported_fault = True
            _say(f"error while rendering audio ({_one_line(synth.fault)}); that block was silenced")
        if synth.stats.consecutive_faults > FAULT_EXIT_BLOCKS:
            _say(f"rendering keeps failing ({_one_line(synth.fault)}); exiting")
            raise KeyboardInterrupt  # the normal shutdown path: stream stopped, MIDI closed
        stalled = time.perf_counter() - synth.stats.last_callback_wall
        if synth.stats.callbacks and stalled > STALL_TIMEOUT_S:
            _server_gone(f"no audio callback for {stalled:.1f} s (audio server gone?); exiting", on_exit)
        if hasattr(synth.engine, "timbre"):
            synth.engine.timbre.refill_random()  # the random button's next draws (never in the callback)
        if learn is not None and not learned and learn.learned_cc is not None:
            _finish_learning(learn, synth.engine, path)
            learned = True
        if not quiet:
            end = "\r" if tty else "\n"
            print(synth.status_line() + ("\x1b[K" if tty else ""), end=end, file=sys.stderr, flush=True)


def silence_before_stop(synth: LiveSynth, finished: list[bool]) -> None:
    """A clean stop: release every note (pedal up, all notes off), let the tails play for up to
    ``EXIT_RELEASE_S``, then fade what still sounds (all sound off) before the stream stops, so
    the output ends in silence, with no click and no note left hanging in a recording."""
    engine = synth.engine
    channel = getattr(engine, "channel", None) or 0
    cc = CONTROL_CHANGE | channel
    with synth._producer_lock:  # the engine queue has one producer at a time
        now = synth.clock.to_sample(time.perf_counter())
        engine.push(now, cc, CC_SUSTAIN, 0)
        engine.push(now, cc, CC_ALL_NOTES_OFF, 0)
    deadline = time.perf_counter() + EXIT_RELEASE_S
    while not engine.idle and not finished[0] and time.perf_counter() < deadline:
        time.sleep(0.01)
    if engine.idle or finished[0]:
        return
    with synth._producer_lock:
        engine.push(synth.clock.to_sample(time.perf_counter()), cc, CC_ALL_SOUND_OFF, 0)
    time.sleep(EXIT_FADE_S)


def _play(args: argparse.Namespace, audio: AudioConfig, saved: LiveState | None, restored: list[str]) -> int:
    from synth import realtime

    engine, preset = build_engine(args, audio)
    # --timbre / --morph on the command line win over the saved session's timbre
    given = getattr(args, "timbre", None) is not None or getattr(args, "morph", None) is not None
    timbre = None if given else state.restore_timbre(engine, saved)
    restored = restored + ([timbre] if timbre else [])
    path = default_mapping_path()
    apply_mapping(engine, load_mapping(path))
    watch = jack_setup.open_jack_watch() if audio.under_jack else None
    synth = LiveSynth(engine, audio.sample_rate, _start_learning(args, preset), watch)
    midi = MidiInputs(audio.under_jack)
    finished = [False]

    def on_finished() -> None:
        finished[0] = True

    def save() -> None:
        _save_state(args, engine)

    # Last set-up step: the MIDI and audio ports below appear only once the engine is ready.
    realtime.freeze_kernels()
    realtime.settle_process()
    # MIDI is opened before the stream starts and closed after it stops: python-rtmidi
    # holds the GIL while its JACK client (de)activates, and activation waits for a
    # JACK cycle, which waits for our Python audio callback: a deadlock. Sources that come
    # and go later are wired by JACK connections (MidiInputs.watch), never by new rtmidi clients.
    midi.open(synth.on_midi, getattr(args, "midi_in", None), follow_sources=not getattr(args, "no_connect", False))
    ahead = render_ahead_blocks(args, audio)
    if ahead:
        synth.start_render_ahead(engine.max_block, ahead)
    # knobs move the timbre, not the volume (synth.level_follow), unless the player wants the decoder's level
    follower = None if getattr(args, "no_level_follow", False) else LevelFollower(engine)
    stream = _open_stream(synth, audio, on_finished)
    stopping = False
    surface = None
    try:
        surface = start_surface(args, synth, preset, path)  # --ui: web page + OSC on their own thread
        _start_stream(stream)
        if follower is not None:
            synth.start_follower(follower)
        midi.watch()
        if audio.under_jack and getattr(args, "no_connect", False):
            jack_setup.disconnect_client_outputs(jack_setup.AUDIO_CLIENT_NAME)
        if not getattr(args, "quiet", False):
            inputs = ([midi.port_name] if midi.port_name else []) + midi.connected
            _say(f"playing {preset.name!r} at {audio.sample_rate} Hz; MIDI in {' + '.join(inputs) or 'none yet'}"
                 + (f"; restored {', '.join(restored)}" if restored else ""))
        _run_loop(synth, args, finished, save)
    except KeyboardInterrupt:
        stopping = True
    finally:
        if follower is not None:
            follower.stop()
        if surface is not None:
            surface.stop()
        if not finished[0]:
            if stopping:
                try:
                    silence_before_stop(synth, finished)
                except KeyboardInterrupt:  # a second Ctrl-C: stop at once, but still close cleanly
                    pass
            stream.stop()
            if jack_setup.may_unregister_ports(audio.under_jack):
                stream.close()
        synth.stop_render_ahead()
        midi.close()
        if watch is not None:
            watch.close()
    if stopping and not getattr(args, "quiet", False):
        print(file=sys.stderr)
    save()
    _say_trouble(synth)
    return 0


def _save_state(args: argparse.Namespace, engine: Any) -> None:
    """Save the session's state; a failure is one warning line (the music is not lost for it)."""
    path = state.state_path(args)
    try:
        state.save_state(path, state.capture(engine, args))
    except OSError as exc:
        state.warn(f"could not save the session state to {path} ({exc})")


def _say_trouble(synth: LiveSynth) -> None:
    """One closing line, even with --quiet, when the session had overloads or faults."""
    est = synth.engine.stats
    shed = getattr(est, "shed_voices", 0)
    if shed or synth.stats.faults or synth.xruns or synth.late_blocks:
        _say(f"session summary: {synth.xruns} xruns, {shed} voices shed under overload, "
             f"{synth.stats.faults} blocks silenced by errors, {synth.late_blocks} late blocks")


def _one_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _saved_state(args: argparse.Namespace) -> LiveState | None:
    """The state to start from: None with ``--reset`` (old files set aside) or when there is none."""
    path = state.state_path(args)
    if getattr(args, "reset", False):
        moved = [str(p) for p in (path, default_mapping_path()) if state.set_aside(p)]
        if moved:
            _say(f"reset: starting fresh ({' and '.join(moved)} kept as *.old)")
        return None
    return state.load_state(path)


def _choose_audio_restoring(args: argparse.Namespace, restored: list[str]) -> AudioConfig:
    """``choose_audio``; a remembered output that is gone falls back to the default, in one line."""
    try:
        return choose_audio(args)
    except AudioSetupError as exc:
        if not any(r.startswith("output ") for r in restored):
            raise
        _say(f"the last session's output {args.output!r} is not available ({exc}); using the default output")
        args.output = None
        return choose_audio(args)


def run_live(args: argparse.Namespace) -> int:
    """Play ``args.preset`` from MIDI until Ctrl-C / SIGTERM; returns the exit status.

    Expected failures (no output, no MIDI backend, refused rate, bad preset or mapping file)
    raise ``VaesynthError`` subclasses, which ``run_synth.main`` reports in one line.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        jack_setup.init_portaudio(jack_setup.AUDIO_CLIENT_NAME)
        try:
            if getattr(args, "list_devices", False):
                print(jack_setup.list_output_devices())
                return 0
            if getattr(args, "list_midi", False):
                return _list_midi()
            saved = _saved_state(args)
            restored = state.restore_options(args, saved)
            return _play(args, _choose_audio_restoring(args, restored), saved, restored)
        finally:
            jack_setup.terminate_portaudio()
    except KeyboardInterrupt:
        return 0
