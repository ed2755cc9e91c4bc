"""Per-knob travel at export (export.knob_travel), on the fake preset's real ONNX decoder."""
from pathlib import Path

import numpy as np
import pytest

from export.knob_travel import TARGET_EFFECT_DB, KnobProbe, calibrate_travel, family_snapshots
from synth.contract import DEFAULT_KNOB_TRAVEL, KNOB_TRAVEL_RANGE
from synth.preset import KnobMap, load_preset
from tests.fake_preset import make_fake_preset


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory):
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("travel") / "p"))


def test_each_knob_reaches_the_target_or_the_cap(preset) -> None:
    probe = KnobProbe(preset)
    snaps = family_snapshots(preset)
    travel = calibrate_travel(preset, probe)
    assert travel.shape == (preset.knobs.count,)
    assert np.all((travel >= DEFAULT_KNOB_TRAVEL) & (travel <= KNOB_TRAVEL_RANGE[1]))
    kmap = KnobMap(preset.knobs.center, preset.knobs.directions, preset.knobs.scale, travel)
    default = KnobMap(preset.knobs.center, preset.knobs.directions, preset.knobs.scale,
                      np.full(preset.knobs.count, DEFAULT_KNOB_TRAVEL))
    widened = 0
    for k in range(preset.knobs.count):
        weakest = probe.end_to_end_db(kmap, k, snaps).min()
        if travel[k] == DEFAULT_KNOB_TRAVEL:
            assert weakest >= TARGET_EFFECT_DB  # strong enough as it was
        else:
            widened += 1
            assert probe.end_to_end_db(default, k, snaps).min() < TARGET_EFFECT_DB  # widened because it was weak
            if travel[k] < KNOB_TRAVEL_RANGE[1]:
                assert weakest >= TARGET_EFFECT_DB  # ... just enough to reach the target
            narrower = travel.copy()
            narrower[k] -= 0.1  # a narrower travel falls short: the widening is no wider than it must be
            shy = KnobMap(kmap.center, kmap.directions, kmap.scale, narrower)
            assert probe.end_to_end_db(shy, k, snaps).min() < TARGET_EFFECT_DB
    assert widened >= 1  # the fake decoder's knobs differ in strength: the test exercises the widening


def test_held_frames_are_one_row_per_latent(preset: Path) -> None:
    probe = KnobProbe(preset)
    z = np.stack([s.z for s in preset.snapshots])
    frames = probe.held_frames(z)
    assert frames.shape[:2] == (len(z), 4) and np.all(frames >= 0)
    assert probe.distance_db(frames[0], frames[0]) == 0.0 and probe.distance_db(frames[0], frames[1]) > 0.0
