"""A fresh install's first notes, under a real jackd in real time (not freewheel).

The synth starts with an empty numba cache (``NUMBA_CACHE_DIR`` pointing at a new folder),
as in a fresh clone or venv, plays the shipped default preset, and gets a note and a chord
as soon as its ports exist. Everything the callback needs must already be compiled, bound
and warmed: the first note is in tune and on time, and no JACK cycle is lost.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import JACK_TEST_PERIOD
from tests.jack_probe import REPO, JackProbe, SynthProcess, cents, note_off, note_on, onset, pitch_hz

pytestmark = pytest.mark.jack
RATE = 48000


def max_latency_frames() -> int:
    """The usual key-to-sound bound: the render-ahead lead, one period for JACK MIDI (the key's
    offset in its cycle is lost on the way), and two periods of scheduling jitter on a shared
    host (a late MIDI thread or callback: one such note took 11.6 ms in a CI run, a stall of the
    kind this test is for costs tens to thousands of ms)."""
    from synth.render_ahead import DEFAULT_AHEAD

    return int(round(DEFAULT_AHEAD * JACK_TEST_PERIOD)) + 3 * JACK_TEST_PERIOD


def test_first_notes_of_a_cold_start_sound_on_time(jack_server: str, tmp_path) -> None:  # noqa: ANN001
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    synth = SynthProcess(["--preset", str(REPO / "presets" / "default")], jack_server,
                         env={"NUMBA_CACHE_DIR": str(cache), "VAESYNTH_CONFIG_DIR": str(tmp_path)})
    probe = JackProbe(jack_server)
    try:
        synth.wait_for_ports(probe.client, timeout=180)
        probe.connect_synth()
        p = probe.period
        first = 4 * p + 17  # the very first note, a few cycles after the ports appear
        chord = first + int(0.4 * RATE)
        events = [(first, note_on(69)), (first + int(0.3 * RATE), note_off(69))]
        events += [(chord, note_on(k)) for k in (60, 64, 67, 72)]
        events += [(chord + int(0.4 * RATE), note_off(k)) for k in (60, 64, 67, 72)]
        take = probe.record(events, chord + int(0.8 * RATE), freewheel=False)
    finally:
        probe.close()
        status, err = synth.stop()
    assert status == 0 and "Traceback" not in err, err
    assert "ready in" in err and "compiled" in err, f"no cold-start preparing line: {err!r}"
    start = onset(take.audio, 0)
    assert start is not None, "the first note never sounded"
    bound = max_latency_frames()  # 640 frames, 13.3 ms, with the default lead of 2 blocks
    assert 0 <= start - first <= bound, f"first note {1000 * (start - first) / RATE:.1f} ms late"
    held = take.audio[first + int(0.05 * RATE): first + int(0.25 * RATE)]
    assert abs(cents(pitch_hz(held, RATE), 440.0)) <= 20, "first note out of tune"
    assert take.lost_cycles == 0, f"{take.lost_cycles} JACK cycles lost"
    # A stalled callback shows as a whole period of silence inside a sounding note or chord (each
    # sounds the first note's latency after its key: render ahead makes that several periods).
    lag = start - first
    for a, b in ((start + p, first + int(0.3 * RATE)), (chord + lag + p, chord + int(0.4 * RATE))):
        quiet = np.convolve(np.abs(take.audio[a:b, 0]) < 1e-6, np.ones(p), "valid")
        assert quiet.max() < p, f"a period of silence at {a / RATE:.2f}-{b / RATE:.2f} s"
