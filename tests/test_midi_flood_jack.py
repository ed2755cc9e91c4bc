"""A MIDI flood through real JACK never leaves a note stuck.

A chord, then thousands of controller messages (knob moves and an unmapped CC) packed into a few
JACK cycles, then the note-offs right behind them: every note must end. This covers the whole
live path (JACK's MIDI buffers, rtmidi's ring, the producer lock). At this rate the engine's own
queue does not fill (rtmidi hands over one message per Python call, slower than blocks drain
them); its reserve for messages that end sound (``synth.events.RELEASE_RESERVE``) is tested
directly in ``test_engine.test_full_queue_still_takes_note_offs``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.fake_preset import make_fake_preset
from tests.jack_probe import JackProbe, control, note_off, note_on, wired_synth

pytestmark = pytest.mark.jack
RATE = 48000
RELEASE_S = 0.2
FLOOD = 6000  # controller messages
PER_CYCLE = 400  # what one JACK MIDI buffer takes comfortably
CHORD = (48, 55, 60, 64, 67, 72, 76, 79)


@pytest.fixture
def live(jack_server: str, tmp_path: Path) -> Iterator[JackProbe]:
    preset = make_fake_preset(tmp_path / "fake", release_seconds=RELEASE_S)
    with wired_synth(["--preset", str(preset), "--quiet", "--state", str(tmp_path / "s.toml")], jack_server,
                     env={"VAESYNTH_CONFIG_DIR": str(tmp_path)}) as probe:
        yield probe


def test_flood_leaves_no_note_stuck(live: JackProbe) -> None:
    p = live.period
    start = 8 * p
    events = [(start, note_on(k)) for k in CHORD]
    for i in range(FLOOD):
        frame = start + 1 + (i // PER_CYCLE) * p + (i % PER_CYCLE) * (p - 2) // PER_CYCLE
        events.append((frame, control(70 + i % 8, i % 128) if i % 2 else control(2, i % 128)))
    end_of_flood = start + 1 + (FLOOD // PER_CYCLE) * p
    events += [(end_of_flood, note_off(k)) for k in CHORD]
    tail = end_of_flood + int((RELEASE_S + 0.3) * RATE)
    take = live.record(events, tail + int(0.2 * RATE), freewheel=False)
    sounding = np.abs(take.audio[start + 4 * p: end_of_flood]).max()
    after = np.abs(take.audio[tail:]).max()
    assert sounding > 1e-3, "the chord never sounded"
    assert after < 1e-5, f"a note is still sounding {RELEASE_S + 0.3:.1f} s after its note-off ({after:.2e})"
