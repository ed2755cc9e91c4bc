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


def test_tune_guard_keeps_an_in_tune_decoder_as_it_is(preset) -> None:
    """The fake decoder places its partials at exact multiples of f0: every knob end plays in tune
    through the engine, so no knob is narrowed."""
    from export.knob_travel import cents_at, tune_guard

    travel = np.array([3.0] * (preset.knobs.count - 1) + [5.0])
    keys = (31, 57, 83)
    far = KnobMap(preset.knobs.center, preset.knobs.directions, preset.knobs.scale, travel)
    assert all(abs(c) < 20 for c in cents_at(preset, far.move(far.center, far.count - 1, 1.0), keys))
    np.testing.assert_array_equal(tune_guard(preset, travel, keys), travel)


def test_tune_guard_narrows_a_knob_until_its_ends_are_in_tune(preset, monkeypatch) -> None:
    """Knob 2 plays an octave off beyond 2.5 std from the center (the pitch reading is mocked);
    the guard narrows it, and only it, step by step to the first travel inside; the other knobs
    and keys where the center itself is out of tune are left alone."""
    from export import knob_travel

    knobs = preset.knobs

    def fake_cents(p, z, keys):  # noqa: ANN001, ANN202
        along = float(np.dot(np.asarray(z, np.float64) - knobs.center, knobs.directions[1])) / knobs.scale[1]
        # key 40 is unpitched even at the center: no travel can help there
        return [None if key == 40 else 1200.0 if abs(along) > 2.5 else 3.0 for key in keys]

    monkeypatch.setattr(knob_travel, "cents_at", fake_cents)
    travel = knob_travel.tune_guard(preset, np.full(knobs.count, 3.0), keys=(40, 60))
    expected = 3.0
    while expected > 2.5:
        expected = round(expected * knob_travel.TUNE_NARROWING, 3)
    assert travel[1] == pytest.approx(expected) and np.all(np.delete(travel, 1) == 3.0)
    assert knob_travel.tune_guard(preset, np.full(knobs.count, 6.0), keys=(40,))[1] == 6.0  # no key to judge by


class _CliffProbe:
    """A probe whose sweeps are mocked: every CC step moves the sound 0.1 dB, except a 5 dB step
    wherever the sweep crosses ``cliff_std`` std from the center along knob ``knob`` (a cliff of
    the decoder far out along a direction, or, at 0.5 std, inside the travel)."""

    def __init__(self, knobs: KnobMap, cliffs: dict[int, float]) -> None:
        self.knobs, self.cliffs = knobs, cliffs

    def sweep_steps_db(self, kmap: KnobMap, knob: int, z) -> np.ndarray:  # noqa: ANN001
        from synth.knobs import CC_COORDINATES

        along = CC_COORDINATES * kmap.travel[knob]  # std from the center at each CC
        steps = np.full(127, 0.1)
        if knob in self.cliffs:
            edge = self.cliffs[knob]
            steps[(np.abs(along[:-1]) < edge) != (np.abs(along[1:]) < edge)] = 5.0
        return steps


def test_cliff_guard_narrows_only_a_knob_whose_cliff_lies_near_an_end(preset) -> None:
    from export.knob_travel import CLIFF_RATIO, TUNE_MIN_TRAVEL, TUNE_NARROWING, cliff_guard, cliff_ratio

    knobs = preset.knobs
    probe = _CliffProbe(knobs, {0: 2.6, 2: 0.5, 3: 1.5})  # knob 1 near its end, 3 inside, 4 under the floor
    travel = cliff_guard(preset, np.full(knobs.count, 3.0), probe)
    expected = 3.0
    while expected >= 2.6:  # the first narrowing that leaves the cliff out
        expected = round(expected * TUNE_NARROWING, 3)
    assert travel[0] == pytest.approx(expected)
    kmap = KnobMap(knobs.center, knobs.directions, knobs.scale, travel)
    assert cliff_ratio(probe.sweep_steps_db(kmap, 0, knobs.center)) <= CLIFF_RATIO
    assert travel[2] == 3.0 and travel[3] == 3.0  # no narrowing down to TUNE_MIN_TRAVEL removes theirs
    assert 1.5 < TUNE_MIN_TRAVEL
    assert np.all(np.delete(travel, 0) == 3.0)
    wide = KnobMap(knobs.center, knobs.directions, knobs.scale, np.full(knobs.count, 3.0))
    assert cliff_ratio(probe.sweep_steps_db(wide, 0, knobs.center)) > CLIFF_RATIO  # it had one to remove


def test_sweep_steps_are_the_decoders_own(preset) -> None:
    from export.knob_travel import cliff_ratio
    from synth.knobs import CC_COORDINATES

    probe = KnobProbe(preset)
    s = family_snapshots(preset)[0]
    steps = probe.sweep_steps_db(preset.knobs, 0, s.z)
    frames = probe.held_frames(preset.knobs.move(s.z, 0, CC_COORDINATES[[5, 6]]))
    assert steps.shape == (127,) and steps[5] == pytest.approx(probe.distance_db(frames[0], frames[1]))
    assert 1.0 <= cliff_ratio(steps) < 127.0
