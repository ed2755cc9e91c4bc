"""Overload: with more voices than the machine can render in time, the engine sheds voices
(never the lowest or highest held note) instead of running over budget, and gives them back
when the load falls. The decoder is the real one, slowed per row so 32 voices cannot fit."""
from __future__ import annotations

import time

import numpy as np
import pytest

from synth.engine import Engine
from synth.preset import Preset, load_preset
from synth.voices import HELD, SUSTAINED, VoiceBank, find_voice_to_steal
from tests.fake_preset import make_fake_preset

SR, BLOCK = 48000, 128
ROW_COST_S = 250e-6  # 32 voices make ~16 rows a block: 4 ms of a 2.67 ms budget


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("overload") / "fake"))


class SlowDecoder:
    """The real FrameDecoder, busy for ``ROW_COST_S`` per decoded row (a slower machine)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def decode(self, z, pitch, velocity, time_on, time_off, out, batch=None) -> None:  # type: ignore[no-untyped-def]
        self.inner.decode(z, pitch, velocity, time_on, time_off, out, batch)
        until = time.perf_counter() + ROW_COST_S * int(batch)
        while time.perf_counter() < until:
            pass


def test_overload_sheds_middle_voices_and_recovers(preset: Preset) -> None:
    from synth.decoder import FrameDecoder

    eng = Engine(preset, polyphony=32, device="cpu", decoder=SlowDecoder(FrameDecoder(preset, "cpu")),  # type: ignore[arg-type]
                 shed_load=True)
    eng.prepare(SR, BLOCK)
    keys = list(range(30, 62))
    for k in keys:
        eng.push(0, 0x90, k, 100)
    out = np.zeros((BLOCK, 2), np.float32)
    peaks = []
    for _ in range(int(1.5 * SR) // BLOCK):
        eng.process(out)
        peaks.append(float(np.abs(out).max()))
    vb = eng.voices
    sounding = {int(vb.key[v]) for v in range(vb.slots) if vb.state[v] in (HELD, SUSTAINED)}
    assert eng.stats.shed_voices > 0 and len(sounding) < 32, "nothing was shed under overload"
    assert eng.stats.voice_cap < 32
    assert min(keys) in sounding and max(keys) in sounding, "the lowest or highest held note was shed"
    assert min(peaks[len(peaks) // 4:]) > 0.0, "a block of silence: shedding must never drop out"


def test_governor_sheds_under_load_and_recovers_when_it_falls() -> None:
    """The governor alone, fed block loads (a busy test machine cannot fake a calm one)."""
    from synth.overload import HOLDOFF_BLOCKS, RECOVER_S, LoadGovernor

    vb = VoiceBank(32, SR)
    for k in range(32):
        vb.allocate(0, 30 + k, 0, 100)
    gov = LoadGovernor(32, SR)
    for _ in range(40):  # 40 blocks at 1.3x the budget
        gov.after_block(1.3, BLOCK, vb, 0)
    shed = gov.shed
    assert 40 // (HOLDOFF_BLOCKS + 1) - 2 <= shed <= 40 // (HOLDOFF_BLOCKS + 1) + 1, "one shed per hold-off"
    assert vb.cap == 32 - shed and vb.sounding_count() == 32 - shed
    for _ in range(int(3.5 * RECOVER_S * SR / BLOCK)):  # a calm stretch of 3.5 recovery periods
        gov.after_block(0.2, BLOCK, vb, 0)
    low = 32 - gov.shed  # the smoothed load may shed once more while it falls
    assert gov.shed <= shed + 1 and vb.cap >= low + 3, f"the cap recovered to {vb.cap} from {low}"


def test_spikes_within_the_render_ahead_slack_shed_nothing() -> None:
    """Rendering two blocks ahead, a block may take up to two budgets: pairs of slow blocks among
    fast ones (mean well under the shedding load) shed nothing there, and do in the callback;
    blocks over two budgets still shed."""
    from synth.overload import LoadGovernor

    pattern = [1.4, 1.4, 0.05, 0.05, 0.05, 0.05]
    shed = {}
    for spike_load in (1.0, 2.0):
        vb = VoiceBank(32, SR)
        for k in range(32):
            vb.allocate(0, 30 + k, 0, 100)
        gov = LoadGovernor(32, SR)
        gov.spike_load = spike_load
        for i in range(300):
            gov.after_block(pattern[i % len(pattern)], BLOCK, vb, 0)
        shed[spike_load] = gov.shed
    assert shed[1.0] > 0 and shed[2.0] == 0, shed
    for _ in range(4):
        gov.after_block(2.2, BLOCK, vb, 0)
    assert gov.shed > 0, "blocks over the whole slack must shed"


def test_offline_engine_never_sheds(preset: Preset) -> None:
    from synth.decoder import FrameDecoder

    eng = Engine(preset, polyphony=32, device="cpu", decoder=SlowDecoder(FrameDecoder(preset, "cpu")))  # type: ignore[arg-type]
    eng.prepare(SR, BLOCK, warm=False)
    for k in range(30, 62):
        eng.push(0, 0x90, k, 100)
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(40):
        eng.process(out)
    assert eng.stats.shed_voices == 0 and eng.voices.sounding_count() == 32


def test_find_voice_to_steal_order() -> None:
    vb = VoiceBank(6, SR)
    for i, k in enumerate((60, 40, 80, 50, 70)):  # oldest first
        vb.allocate(i, k, 0, 100)
    steal = lambda: int(find_voice_to_steal(vb.state, vb.key, vb.order, vb.release_t))  # noqa: E731
    # no released voice: the oldest held one that is neither lowest (40) nor highest (80) -> key 60
    assert int(vb.key[steal()]) == 60
    vb.release(3, 100)  # key 50 released
    vb.release(4, 90)  # key 70 released earlier
    assert int(vb.key[steal()]) == 70, "the earliest-released voice goes first"
    for v in (0, 3, 4):
        vb.state[v] = 0
    # only the lowest and highest are left: the oldest of them
    assert vb.state[1] == HELD and int(vb.key[steal()]) == 40
