"""Overload protection: when blocks run over their time budget, shed voices instead of dropping out.

A block's load is its render time over its duration. Under a steady overload the audio server
would miss cycles (a dropout a listener hears as a crack); taking a voice away is quieter: the
voice ``find_voice_to_steal`` picks (released first, never the lowest or highest held note)
stops decoding, fades out over 5 ms and the polyphony cap drops to what the machine carries.
After each shed the governor waits a few blocks for the smoothed load to show the effect, so
it does not overshoot. When the load has stayed low for a while the cap rises again, one voice
at a time. Offline rendering has no budget and never sheds.
"""
from __future__ import annotations

from synth.voices import NO_VOICE, VoiceBank

SHED_LOAD = 0.85  # smoothed block load above which a voice is shed (one per hold-off while it stays there)
SPIKE_LOAD = 1.0  # one block over its whole budget, twice in a row, sheds too
SMOOTHING = 0.25  # one-pole smoothing of the block load: frames fall due every other block
RECOVER_LOAD = 0.5  # below this (smoothed) for RECOVER_S, the cap rises by one voice
RECOVER_S = 0.5
MIN_VOICES = 1  # shedding never silences the last voice
HOLDOFF_BLOCKS = 4  # after a shed, blocks to wait before judging again (the smoothed load lags)


class LoadGovernor:
    """Watches block loads and keeps ``voices.cap`` at what the machine carries."""

    def __init__(self, polyphony: int, sample_rate: int) -> None:
        self.polyphony = int(polyphony)
        self.recover_samples = int(RECOVER_S * sample_rate)
        # A block may take this many budgets before it counts as a spike: 1 in the audio callback;
        # with render ahead (synth.render_ahead), the blocks of slack the ring holds.
        self.spike_load = SPIKE_LOAD
        self.reset()

    def reset(self) -> None:
        self.shed = 0  # voices shed so far
        self.load = 0.0  # smoothed block load
        self._spikes = 0
        self._calm = 0  # samples the load has stayed below RECOVER_LOAD
        self._holdoff = 0

    def after_block(self, load: float, frames: int, voices: VoiceBank, t: int) -> None:
        """Account one rendered block of ``frames`` samples whose load was ``load``; ``t``: its end."""
        self.load += SMOOTHING * (load - self.load)
        self._spikes = self._spikes + 1 if load > self.spike_load else 0
        if self._holdoff > 0:
            self._holdoff -= 1
        elif self.load > SHED_LOAD or self._spikes >= 2:
            self._calm = 0
            self._spikes = 0
            self._holdoff = HOLDOFF_BLOCKS
            sounding = voices.sounding_count()
            if sounding > MIN_VOICES:
                voices.cap = sounding - 1
                if voices.steal_one(t) != NO_VOICE:
                    self.shed += 1
        elif self.load < RECOVER_LOAD and voices.cap < self.polyphony:
            self._calm += frames
            if self._calm >= self.recover_samples:
                voices.cap += 1
                self._calm = 0
