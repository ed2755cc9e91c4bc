"""A MIDI source that disappears and comes back is wired again without a restart (real jackd).

The keyboard is a real JACK client with a MIDI out port. It exists when the synth starts (so the
synth connects it), goes away (its client closes, as when a USB keyboard is unplugged behind
a2jmidid) and returns under the same name: the synth's watcher connects it again with a JACK
connection while the stream runs (no new rtmidi client: no GIL/activation deadlock), and notes
from it sound. With ``--midi-in NAME`` a source that only appears after the start is connected too.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.fake_preset import make_fake_preset
from tests.jack_probe import AUDIO_PORTS, MIDI_PORT, JackProbe, SynthProcess, note_off, note_on, onset

pytestmark = pytest.mark.jack
RATE = 48000
KEYBOARD = "test-keyboard"
WIRED_WITHIN_S = 3.0  # the watcher looks every 0.5 s


def _keyboard(server: str) -> JackProbe:
    """A JACK client with a MIDI out port named like a hardware source (not connected by us)."""
    kbd = JackProbe(server, KEYBOARD)
    kbd.midi_out = kbd.client.midi_outports.register("midi_out")
    return kbd


def _listen(kbd: JackProbe) -> None:
    """Record the synth's outputs on the keyboard client's own inputs (one timeline)."""
    kbd.ins = [kbd.client.inports.register(f"in_{i}") for i in range(2)]
    for src, dst in zip(AUDIO_PORTS, kbd.ins):
        kbd.client.connect(src, dst)


def _wired(kbd: JackProbe, timeout: float = WIRED_WITHIN_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if MIDI_PORT in {p.name for p in kbd.client.get_all_connections(kbd.midi_out)}:
            return True
        time.sleep(0.05)
    return False


def _plays(kbd: JackProbe) -> bool:
    p = kbd.period
    events = [(8 * p, note_on(64)), (8 * p + int(0.2 * RATE), note_off(64))]
    take = kbd.record(events, 8 * p + int(0.3 * RATE), freewheel=False)
    return onset(take.audio, 8 * p) is not None and float(np.max(np.abs(take.audio))) > 1e-3


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    return make_fake_preset(tmp_path / "fake", release_seconds=0.1)


def _synth(args: list[str], server: str, tmp_path: Path) -> SynthProcess:
    return SynthProcess(args + ["--quiet", "--state", str(tmp_path / "state.toml")], server,
                        env={"VAESYNTH_CONFIG_DIR": str(tmp_path)})


def test_source_that_comes_back_is_reconnected(jack_server: str, preset: Path, tmp_path: Path) -> None:
    kbd = _keyboard(jack_server)
    synth = _synth(["--preset", str(preset)], jack_server, tmp_path)
    try:
        synth.wait_for_ports(kbd.client)
        assert _wired(kbd), "the keyboard present at start was not connected"
        _listen(kbd)
        assert _plays(kbd)
        kbd.close()  # unplugged
        time.sleep(1.0)
        assert synth.proc.poll() is None, "the synth stopped when its source went away"
        kbd = _keyboard(jack_server)  # plugged in again, same name
        assert _wired(kbd), "the returning keyboard was not reconnected"
        _listen(kbd)
        assert _plays(kbd), "notes from the reconnected keyboard do not sound"
    finally:
        kbd.close()
        status, err = synth.stop()
    assert status == 0 and "Traceback" not in err, err
    assert "went away" in err and "connected" in err, err


def test_midi_in_source_that_appears_later_is_connected(jack_server: str, preset: Path, tmp_path: Path) -> None:
    watcher = JackProbe(jack_server, "vaesynth-test-watcher")
    synth = _synth(["--preset", str(preset), "--midi-in", KEYBOARD], jack_server, tmp_path)
    kbd = None
    try:
        synth.wait_for_ports(watcher.client)
        watcher.close()
        kbd = _keyboard(jack_server)
        assert _wired(kbd), "a source matching --midi-in that appeared after the start was not connected"
        _listen(kbd)
        assert _plays(kbd)
    finally:
        if kbd is not None:
            kbd.close()
        status, err = synth.stop()
    assert status == 0 and "Traceback" not in err, err
    assert f"no MIDI source matches {KEYBOARD!r} yet" in err, err
