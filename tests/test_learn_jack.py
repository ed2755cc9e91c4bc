"""MIDI learn, the saved state and the clean stop, end to end under a real jackd.

Session 1 learns a CC for knob 1 (``--learn 1``), recalls a program and turns the learned
controller; it is stopped (SIGTERM) while a note sounds: the note must be released and
faded before the ports go, not cut. Session 2 (same state and mapping files) must sound like
session 1 ended, without any MIDI, and still obey the learned CC; ``--reset`` must not.
"""
from __future__ import annotations

import signal
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.fake_preset import PROGRAMS, make_fake_preset
from tests.jack_probe import JackProbe, SynthProcess, control, note_off, note_on, spectrum_db

pytestmark = pytest.mark.jack
RATE = 48000
LEARN_KNOB = 1
LEARN_CC = 21  # not one of the default knob CCs 70-77
PROGRAM = PROGRAMS[2]


def _session(server: str, preset: Path, home: Path, *extra: str) -> tuple[SynthProcess, JackProbe]:
    synth = SynthProcess(["--preset", str(preset), "--quiet", *extra], server, env={"VAESYNTH_CONFIG_DIR": str(home)})
    probe = JackProbe(server)
    synth.wait_for_ports(probe.client)
    probe.connect_synth()
    return synth, probe


def _note_spectrum(probe: JackProbe, before: list[tuple[int, bytes]] = ()) -> np.ndarray:  # type: ignore[assignment]
    """Spectrum (dB) of a held A3 after ``before`` (events at frames 0..), freewheel."""
    start = 4 * probe.period + len(before) * 64
    events = [(i * 64 + 64, m) for i, m in enumerate(before)]
    events += [(start, note_on(57)), (start + int(0.5 * RATE), note_off(57))]
    take = probe.record(events, start + int(0.6 * RATE), freewheel=True)
    return spectrum_db(take.audio[start + int(0.15 * RATE): start + int(0.45 * RATE)])


def _gap_db(a: np.ndarray, b: np.ndarray) -> float:
    loud = a > a.max() - 40
    return float(np.max(np.abs(a[loud] - b[loud])))


def _stop_while_sounding(synth: SynthProcess, probe: JackProbe) -> np.ndarray:
    """Hold a chord, SIGTERM the synth during it, record on until it is gone; returns the audio."""
    p = probe.period
    events = [(4 * p, note_on(k)) for k in (57, 61, 64)]
    result: list[np.ndarray] = []
    recorder = threading.Thread(target=lambda: result.append(probe.record(events, int(2.0 * RATE), False).audio))
    recorder.start()
    time.sleep(0.6)
    synth.proc.send_signal(signal.SIGTERM)
    recorder.join(timeout=30)
    return result[0]


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_preset(tmp_path_factory.mktemp("learn") / "fake", release_seconds=0.3)


def test_learn_state_restart_and_clean_stop(jack_server: str, preset: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    synth, probe = _session(jack_server, preset, home, "--learn", str(LEARN_KNOB))
    try:
        probe.record([(4 * probe.period, control(LEARN_CC, 64))], 8 * probe.period, freewheel=True)
        mapping = home / "mappings.toml"
        deadline = time.monotonic() + 5
        while not mapping.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tomllib.loads(mapping.read_text())["cc_to_knob"] == {str(LEARN_CC): LEARN_KNOB}
        # After the program change the knob waits for pick-up: 0 then 127 crosses its position.
        moved = _note_spectrum(probe, [bytes([0xC0, PROGRAM]), control(LEARN_CC, 0), control(LEARN_CC, 127)])
        low = _note_spectrum(probe, [control(LEARN_CC, 0)])
        assert _gap_db(low, moved) > 3.0, "the learned CC does not move its knob"
        probe.record([(4 * probe.period, control(LEARN_CC, 127))], 8 * probe.period, freewheel=True)
        audio = _stop_while_sounding(synth, probe)
    finally:
        probe.close()
        status, err = synth.stop()
    assert status == 0 and "Traceback" not in err, err
    # The clean stop: the chord fades to silence before the ports go (no cut at full level).
    level = np.abs(audio).max(axis=1)
    sounding = np.flatnonzero(level > 1e-6)
    held = float(np.sqrt(np.mean(audio[int(0.3 * RATE): int(0.5 * RATE)] ** 2)))
    end = int(sounding[-1])
    last = float(np.sqrt(np.mean(audio[end - int(0.005 * RATE): end + 1] ** 2)))
    assert held > 1e-3 and last < 0.05 * held, f"output cut at {last / held:.2f} of the held level: a click"
    saved = tomllib.loads((home / "state.toml").read_text())
    assert saved["timbre"]["program"] == PROGRAM
    assert saved["knobs"]["values"][LEARN_KNOB] == pytest.approx(1.0, abs=1e-6)

    synth, probe = _session(jack_server, preset, home)  # session 2: restored, no MIDI before the note
    try:
        restored = _note_spectrum(probe)
        assert _gap_db(moved, restored) < 1.0, "the restored timbre differs from the saved session's"
        again = _note_spectrum(probe, [control(LEARN_CC, 127), control(LEARN_CC, 0)])
        assert _gap_db(low, again) < 1.0, "the learned CC did not survive the restart (or pick-up failed)"
    finally:
        probe.close()
        synth.stop()

    synth, probe = _session(jack_server, preset, home, "--reset")  # session 3: fresh
    try:
        fresh = _note_spectrum(probe)
        unmapped = _note_spectrum(probe, [control(LEARN_CC, 0)])
    finally:
        probe.close()
        synth.stop()
    assert _gap_db(moved, fresh) > 3.0, "--reset restored the saved timbre"
    assert _gap_db(fresh, unmapped) < 0.5, "--reset kept the learned CC"
    assert (home / "state.toml.old").exists() and (home / "mappings.toml.old").exists()
