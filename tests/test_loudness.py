"""A timbre's level per key (synth.loudness): measured through the real engine as export measures the
snapshots', so a capture plays in the snapshots' band."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synth.engine import Engine
from synth.contract import MAX_KEY_LEVEL_DB
from synth.loudness import (CAPTURE_LEVEL_KEYS, KEY_LEVEL_BAND_DBFS, MEASURE_HEADROOM, MIX_RENDER_RATE, KeyLevel, into_band,
                            measure_key_level, measured_peaks)
from synth.preset import Preset, load_preset
from synth.timbre import CAPTURE, TimbreInfo
from tests.fake_preset import make_fake_preset


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("loudness") / "fake"))


def heard_dbfs(preset: Preset, z: np.ndarray, key_gain: np.ndarray | None) -> np.ndarray:
    """v100 peaks (dBFS, the preset's [mix] gain, master gain 1) at CAPTURE_LEVEL_KEYS of ``z`` in a slot."""
    engine = Engine(preset, device="cpu", master_gain=MEASURE_HEADROOM)
    engine.set_timbre_now(engine.store_timbre(z, TimbreInfo(CAPTURE, "take"), key_gain=key_gain))
    engine.prepare(MIX_RENDER_RATE, 1024, warm=False)
    return 20.0 * np.log10(measured_peaks(engine, CAPTURE_LEVEL_KEYS))


def test_a_measured_level_brings_every_measured_key_into_the_band(preset: Preset) -> None:
    """Each measured key's note lands in the band (or within ±MAX_KEY_LEVEL_DB of where it was, when the
    band is farther: the fake decoder's loudest latents play above 0 dBFS)."""
    lo, hi = KEY_LEVEL_BAND_DBFS
    rng = np.random.default_rng(5)
    levelled = 0
    for scale in (0.5, 1.0, 2.5):
        z = rng.uniform(-scale, scale, preset.latent_size).astype(np.float32)
        before = heard_dbfs(preset, z, None)
        level = measure_key_level(preset, z)
        assert level.keys == CAPTURE_LEVEL_KEYS
        np.testing.assert_allclose(level.db, into_band(before), atol=0.02)
        after = heard_dbfs(preset, z, level.gains())
        np.testing.assert_allclose(after, before + np.array(level.db), atol=0.05)
        reachable = np.abs(np.clip(before, lo, hi) - before) <= MAX_KEY_LEVEL_DB
        assert np.all((after[reachable] >= lo - 0.05) & (after[reachable] <= hi + 0.05)), (before, after)
        levelled += int(np.sum(reachable & ((before < lo) | (before > hi))))
    assert levelled >= 5  # the fake decoder's notes needed levelling: the test can fail


def test_a_level_out_of_bounds_is_refused() -> None:
    for keys, db in (((60,), (13.0,)), ((60, 36), (0.0, 0.0)), ((60,), (float("nan"),)), ((36, 60), (0.0,))):
        with pytest.raises(ValueError, match="level per key"):
            KeyLevel(keys, db)


def test_the_slot_level_reaches_the_output(preset: Preset, tmp_path: Path) -> None:
    """Half the gain per key is 6 dB down at the output: the engine applies the slot's level to its notes."""
    z = np.asarray(preset.snapshots[0].z, np.float32)
    full = heard_dbfs(preset, z, None)
    half = heard_dbfs(preset, z, np.full(128, 0.5, np.float32))
    np.testing.assert_allclose(half - full, 20 * np.log10(0.5), atol=0.05)


def test_the_estimate_levels_random_draws_nearer_the_band(preset: Preset) -> None:
    """The decoder-only estimate (synth.loudness.LevelEstimate) brings random draws' measured notes
    nearer the band than level 1.0 does, and the random button plays a draw with it."""
    from synth.loudness import LevelEstimate
    from synth.timbre import CC_RANDOM, draw_random

    estimate = LevelEstimate(preset)
    assert np.isfinite(estimate.offset_db) and estimate.keys == CAPTURE_LEVEL_KEYS
    middle = np.mean(KEY_LEVEL_BAND_DBFS)
    plain_miss, levelled_miss = [], []
    for seed in range(6):
        z = draw_random(preset, seed)
        plain_miss.append(np.abs(heard_dbfs(preset, z, None) - middle))
        levelled_miss.append(np.abs(heard_dbfs(preset, z, estimate.key_level(z).gains()) - middle))
    assert np.median(levelled_miss) < np.median(plain_miss) - 1.0, (np.median(levelled_miss), np.median(plain_miss))

    engine = Engine(preset, device="cpu", random_seed=40)
    engine.timbre.level_random(estimate)
    engine.prepare(48000, 128, warm=False)
    engine.push(0, 0xB0, CC_RANDOM, 127)
    engine.process(np.zeros((128, 2), np.float32))
    assert engine.current_timbre.label == "random:40"
    np.testing.assert_allclose(engine.timbre_key_gain, estimate.key_level(draw_random(preset, 40)).gains(), rtol=1e-6)


def test_a_library_capture_from_before_levels_gets_an_estimated_level(preset: Preset, tmp_path: Path) -> None:
    """A library snapshot stored without a level (captured before this release) is levelled at load by the
    estimate; one stored with its measured level keeps it."""
    from synth.library import Library
    from synth.loudness import LevelEstimate
    from synth.timbre_cli import load_user_programs

    z = np.random.default_rng(2).uniform(-2, 2, preset.latent_size)
    library = Library.open(tmp_path)
    old = library.store(preset, "old take", z, 60.0)
    measured = KeyLevel((48, 72), (-3.0, 2.0))
    new = library.store(preset, "new take", z, 60.0, key_level=measured)
    engine = Engine(preset, device="cpu")
    load_user_programs(engine, Library.open(tmp_path), lambda text: None)
    expected = LevelEstimate(preset).key_level(np.asarray(z, np.float32)).gains()
    assert not np.allclose(expected, 1.0)
    np.testing.assert_allclose(engine.timbre.key_gain[old.program], expected, rtol=1e-5)
    np.testing.assert_allclose(engine.timbre.key_gain[new.program], measured.gains(), rtol=1e-6)
