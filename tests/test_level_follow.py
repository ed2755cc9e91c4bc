"""The loudness follower (synth.level_follow): knob moves change the timbre at about the level the
last timbre change set, on the real engine and decoder; a timbre change never plays with an older
timbre's gain."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.loudness import PeakWriter
from synth.cli_render import render
from synth.engine import Engine
from synth.events import KNOB_CCS, MidiEvent
from synth.level_follow import MAX_FOLLOW_DB, LevelFollower
from synth.preset import Preset, load_preset
from tests.fake_preset import PROGRAMS, make_fake_preset

RATE, BLOCK = 48000, 256
CC, PC, ON, OFF = 0xB0, 0xC0, 0x90, 0x80


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("follow") / "fake"))


def note_peak_db(preset: Preset, knob: int | None, value: int, follow: bool) -> float:
    """dBFS of a v100 C4 played 0.3 s after a program change and a knob move, rendered offline."""
    engine = Engine(preset, device="cpu", knob_pickup=False, master_gain=0.1)  # 20 dB down: the limiter stays out
    engine.prepare(RATE, BLOCK, warm=False)
    events = [MidiEvent(0, PC, PROGRAMS[1])]
    if knob is not None:
        events.append(MidiEvent(10, CC, KNOB_CCS[knob], value))
    start = int(0.3 * RATE)
    events += [MidiEvent(start, ON, 60, 100), MidiEvent(start + RATE // 2, OFF, 60, 0)]
    writer = PeakWriter(start)
    render(engine, events, writer, BLOCK, follower=LevelFollower(engine) if follow else None)
    return 20.0 * np.log10(max(writer.peak, 1e-9) / 0.1)


def test_knob_moves_keep_the_level_the_timbre_change_set(preset: Preset) -> None:
    base = note_peak_db(preset, None, 0, follow=False)
    assert abs(note_peak_db(preset, None, 0, follow=True) - base) < 0.01  # nothing moved: nothing changes
    plain, followed = [], []
    for knob in range(3):
        for value in (0, 127):
            plain.append(abs(note_peak_db(preset, knob, value, follow=False) - base))
            followed.append(abs(note_peak_db(preset, knob, value, follow=True) - base))
    assert max(plain) > 3.0, plain  # the fake decoder's loudness moves with the knobs: the test can fail
    assert np.median(followed) < np.median(plain) / 2, (followed, plain)


def test_a_timbre_change_drops_the_last_timbre_s_gain(preset: Preset) -> None:
    engine = Engine(preset, device="cpu", knob_pickup=False)
    engine.prepare(RATE, BLOCK, warm=False)
    follower = LevelFollower(engine)
    engine.push(0, CC, KNOB_CCS[0], 0)
    engine.process(np.zeros((BLOCK, 2), np.float32))
    assert follower.update() and not follower.update()  # a moved latent costs one look, an unmoved one none
    serial = engine.timbre_serial
    assert engine._follow_serial == serial and engine._follow_gain != 1.0
    assert 10 ** (-MAX_FOLLOW_DB / 20) - 1e-6 <= engine._follow_gain <= 10 ** (MAX_FOLLOW_DB / 20) + 1e-6
    engine.push(engine.sample_time, PC, PROGRAMS[2])
    engine.process(np.zeros((BLOCK, 2), np.float32))
    assert engine.timbre_serial > serial
    for _ in range(200):  # the glide (about 10 ms) is long over: the level is the new snapshot's own
        engine.process(np.zeros((BLOCK, 2), np.float32))
    assert engine.level == pytest.approx(engine.level_target, rel=1e-6)
    engine.set_level_follow(serial, 4.0)  # a gain computed for the old timbre, arriving late: ignored
    engine.process(np.zeros((BLOCK, 2), np.float32))
    assert engine.level == pytest.approx(engine.level_target, rel=1e-6)


def test_the_live_thread_follows_and_stops(preset: Preset, tmp_path: Path) -> None:
    engine = Engine(preset, device="cpu", knob_pickup=False)
    engine.prepare(RATE, BLOCK, warm=False)
    follower = LevelFollower(engine)
    follower.start(period=0.005)
    engine.push(0, CC, KNOB_CCS[1], 127)
    engine.process(np.zeros((BLOCK, 2), np.float32))
    for _ in range(400):
        if follower.updates:
            break
        follower._stop.wait(0.005)
    follower.stop()
    assert follower.updates >= 1 and engine._follow_serial == engine.timbre_serial
    assert not follower._thread.is_alive()


def test_in_freewheel_the_renderer_looks_in_audio_time(preset: Preset) -> None:
    """A JACK export (freewheel) runs apart from the wall clock: the live renderer then looks itself every
    FOLLOW_PERIOD_S of audio, as --render does; in real time it leaves the looking to the thread."""
    from synth.live import LiveSynth

    for freewheel in (False, True):
        engine = Engine(preset, device="cpu", knob_pickup=False)
        engine.prepare(RATE, BLOCK, warm=False)
        synth = LiveSynth(engine, RATE)
        synth.clock.freewheeling = lambda freewheel=freewheel: freewheel
        synth.follower = LevelFollower(engine)  # not started: only the renderer may look
        engine.push(0, CC, KNOB_CCS[0], 0)
        out = np.zeros((BLOCK, 2), np.float32)
        for _ in range(int(0.1 * RATE) // BLOCK):
            synth._render(out)
        assert synth.fault is None
        assert (synth.follower.updates >= 1) == freewheel
        assert (engine._follow_serial == engine.timbre_serial) == freewheel


def test_freewheel_is_the_watchs_without_render_ahead_too(preset: Preset) -> None:
    """With ``--render-ahead 0`` (the callback renders) an export under JACK still runs the follower and the
    events in audio time: the synth reads freewheel off its JACK watch, not off the render-ahead worker."""
    from synth.live import LiveSynth

    class Watch:
        freewheel = True

        def is_freewheeling(self) -> bool:
            return self.freewheel

    watch = Watch()
    engine = Engine(preset, device="cpu", knob_pickup=False)
    engine.prepare(RATE, BLOCK, warm=False)
    synth = LiveSynth(engine, RATE, watch=watch)
    assert synth.ahead is None and synth.freewheeling
    synth.follower = LevelFollower(engine)
    engine.push(0, CC, KNOB_CCS[0], 0)
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(int(0.1 * RATE) // BLOCK):
        synth._render(out)
    assert synth.fault is None and synth.follower.updates >= 1
    watch.freewheel = False
    assert not synth.freewheeling


def test_no_level_follow_lets_the_knobs_change_the_level(preset: Preset, tmp_path: Path) -> None:
    """``run_synth.py --render`` (a real subprocess): a knob that changes the fake decoder's loudness moves a
    note's peak further from the unmoved one's with ``--no-level-follow`` than without it."""
    import subprocess
    import sys

    import mido
    import soundfile as sf

    knob = int(np.argmax([abs(note_peak_db(preset, k, 0, follow=False) - note_peak_db(preset, None, 0, follow=False))
                          for k in range(3)]))

    def peak_db(moved: bool, *flags: str) -> float:
        mid = mido.MidiFile(ticks_per_beat=480)  # 120 bpm: 960 ticks a second
        track = mido.MidiTrack()
        mid.tracks.append(track)
        track.append(mido.Message("program_change", program=PROGRAMS[1], time=0))
        if moved:
            track.append(mido.Message("control_change", control=KNOB_CCS[knob], value=0, time=5))
        track.append(mido.Message("note_on", note=60, velocity=100, time=288))
        track.append(mido.Message("note_off", note=60, velocity=0, time=480))
        path, out = tmp_path / "knob.mid", tmp_path / f"out{moved}{len(flags)}.wav"
        mid.save(str(path))
        done = subprocess.run([sys.executable, "run_synth.py", "--preset", str(preset.root), "--render", str(path),
                               "--out", str(out), "--float", "--quiet", *flags],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
        assert done.returncode == 0, done.stderr
        return 20 * np.log10(float(np.abs(sf.read(out)[0]).max()))

    base = peak_db(False)
    followed, free = abs(peak_db(True) - base), abs(peak_db(True, "--no-level-follow") - base)
    assert free > followed + 1.0, (free, followed)
