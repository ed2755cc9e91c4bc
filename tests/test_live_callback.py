"""The audio callback's contract, without an audio server: a failing render costs one silent
block (never the stream), the failure is kept for the main thread to report once, and the
status line shows JACK's own xrun count and any shedding. The real-server side of live mode is
in test_live_jack.py and test_cold_start_jack.py."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.engine import EngineStats
from synth.live import LiveSynth


@dataclass
class Flags:
    """What sounddevice hands the callback as ``status``."""

    output_underflow: bool = False

    def __bool__(self) -> bool:
        return self.output_underflow


class FlakyEngine:
    """Renders a constant, except on the blocks listed in ``fail_on`` where it raises."""

    def __init__(self, fail_on: set[int]) -> None:
        self.fail_on, self.calls = fail_on, 0
        self.stats = EngineStats(active_voices=3, shed_voices=2, voice_cap=30)
        self.knob_values = np.zeros(8, np.float32)
        self.knob_pickup = np.ones(8, bool)

    def process(self, out: np.ndarray) -> None:
        self.calls += 1
        out.fill(0.5)  # half-written output must not escape
        if self.calls in self.fail_on:
            raise FloatingPointError(f"block {self.calls} went wrong")


class Watch:
    xruns = 7

    def is_freewheeling(self) -> bool:
        return False


def test_a_failing_block_is_silent_and_reported_once() -> None:
    synth = LiveSynth(FlakyEngine({2, 3}), 48000)
    out = np.zeros((128, 2), np.float32)
    synth.audio_callback(out, 128, None, Flags())
    assert np.all(out == 0.5)
    synth.audio_callback(out, 128, None, Flags())
    assert np.all(out == 0.0), "a failing block must be silence"
    first = synth.fault
    synth.audio_callback(out, 128, None, Flags())
    assert isinstance(first, FloatingPointError) and "block 2" in str(first)
    assert synth.fault is first, "the first failure is the one reported"
    assert synth.stats.faults == 2 and synth.stats.consecutive_faults == 2
    synth.audio_callback(out, 128, None, Flags())
    assert np.all(out == 0.5) and synth.stats.consecutive_faults == 0, "the stream plays on"
    assert synth.stats.frames == 4 * 128


def test_status_line_counts_jack_xruns_and_shedding() -> None:
    plain = LiveSynth(FlakyEngine(set()), 48000)
    out = np.zeros((128, 2), np.float32)
    plain.audio_callback(out, 128, None, Flags(output_underflow=True))
    assert "xruns 1" in plain.status_line(), "without a JACK watch, PortAudio's underflows count"
    watched = LiveSynth(FlakyEngine(set()), 48000, watch=Watch())  # type: ignore[arg-type]
    line = watched.status_line()
    assert "xruns 7" in line and "shed 2" in line and "cap 30" in line, line
