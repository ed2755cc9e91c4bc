"""The live state file: written atomically, read back into the engine, corrupt -> warning + defaults."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from synth import state
from synth.engine import Engine
from synth.events import CONTROL_CHANGE, KNOB_CCS, PROGRAM_CHANGE
from synth.preset import load_preset
from tests.fake_preset import PROGRAMS, make_fake_preset


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("state") / "fake"))


def _played(preset) -> Engine:  # noqa: ANN001
    """An engine after a program change and two knob moves (through its queue, as live)."""
    engine = Engine(preset)
    engine.prepare(48000, 128, warm=False)
    engine.push(0, PROGRAM_CHANGE, PROGRAMS[1])
    engine.push(1, CONTROL_CHANGE, KNOB_CCS[0], 120)
    engine.push(2, CONTROL_CHANGE, KNOB_CCS[2], 5)
    engine.process(np.zeros((128, 2), np.float32))
    return engine


def test_state_round_trip_restores_timbre_and_knobs(preset, tmp_path: Path) -> None:  # noqa: ANN001
    engine = _played(preset)
    args = argparse.Namespace(output="BlackHole", midi_in=None)
    path = tmp_path / "sub" / "state.toml"
    state.save_state(path, state.capture(engine, args))
    assert not list(path.parent.glob("*.tmp"))

    fresh = Engine(preset)
    assert not np.allclose(fresh.knob_values, engine.knob_values)
    saved = state.load_state(path)
    said = state.restore_timbre(fresh, saved)
    assert said is not None and f"program {PROGRAMS[1]}" in said
    np.testing.assert_allclose(fresh.knob_values, engine.knob_values, atol=1e-5)
    np.testing.assert_allclose(fresh.z_target, engine.z_target, atol=1e-6)
    assert fresh.program == PROGRAMS[1]
    assert not fresh.knob_pickup.any()  # hardware knobs unknown after a restart: pick-up
    assert fresh.level_target == engine.level_target  # the snapshot's level trim comes back with it

    restored_args = argparse.Namespace(output=None, midi_in="Keystation")
    assert state.restore_options(restored_args, saved) == ["output 'BlackHole'"]
    assert restored_args.output == "BlackHole" and restored_args.midi_in == "Keystation"  # command line wins


def test_restored_random_timbre_plays_at_unity_level(preset, tmp_path: Path) -> None:  # noqa: ANN001
    """A capture/random/morph timbre has no level trim: restoring it must not borrow the last
    program's snapshot level."""
    trimmed = dataclasses.replace(preset, snapshots=[dataclasses.replace(s, level=2.0) for s in preset.snapshots])
    engine = _played(trimmed)
    assert engine.level_target == 2.0  # every snapshot here has a +6 dB trim
    path = tmp_path / "state.toml"
    saved_state = state.capture(engine, argparse.Namespace(output=None, midi_in=None))
    saved_state.timbre["kind"] = "random"
    state.save_state(path, saved_state)
    fresh = Engine(trimmed)
    state.restore_timbre(fresh, state.load_state(path))
    assert fresh.level_target == 1.0 and fresh.level == 1.0


@pytest.mark.parametrize("text", ["[state\nversion = 1", "[state]\nversion = 99\n",
                                  "[state]\nversion = 1\n[knobs]\nvalues = ['a']\n", "\xff\xfe"])
def test_corrupt_state_is_one_warning_line(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state.toml"
    path.write_bytes(text.encode("latin-1"))
    assert state.load_state(path) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: state file") and "defaults" in err[0]


def test_state_of_another_preset_is_not_applied(preset, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    engine = _played(preset)
    saved = state.capture(engine, argparse.Namespace(output=None, midi_in=None))
    saved.preset = "another"
    fresh = Engine(preset)
    before = fresh.z_target.copy()
    assert state.restore_timbre(fresh, saved) is None
    np.testing.assert_array_equal(fresh.z_target, before)
    assert "not restored" in capsys.readouterr().err


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    path = tmp_path / "state.toml"
    state.save_state(path, state.LiveState(preset="p", latent_size=2, knobs=[0.5, -0.5]))
    old = path.read_text()

    def broken(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(state.os, "fsync", broken)
    with pytest.raises(OSError):
        state.save_state(path, state.LiveState(preset="q", latent_size=2, knobs=[0.0, 0.0]))
    assert path.read_text() == old and not list(tmp_path.glob(".*tmp"))


def test_set_aside_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.toml"
    assert not state.set_aside(path)
    path.write_text("x")
    assert state.set_aside(path) and not path.exists() and (tmp_path / "state.toml.old").read_text() == "x"


def test_default_path_follows_the_config_dir_variable(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("VAESYNTH_CONFIG_DIR", str(tmp_path))
    assert state.default_state_path() == tmp_path / "state.toml"
    monkeypatch.delenv("VAESYNTH_CONFIG_DIR")
    assert "vaesynth" in str(state.default_state_path())


def test_the_engine_s_own_timbre_description_is_saved(preset) -> None:  # noqa: ANN001
    """Whatever ``engine.current_timbre`` describes (a dataclass or a dict) lands in [timbre]."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Described:
        kind: str
        name: str
        seed: int | None = None

    engine = _played(preset)
    described = SimpleNamespace(program=engine.program, preset=engine.preset, z_target=engine.z_target,
                                knob_values=engine.knob_values, current_timbre=Described("random", "random:7", seed=7))
    table = state.capture(described, argparse.Namespace(output=None, midi_in=None)).timbre
    assert (table["kind"], table["name"], table["seed"], table["program"]) == ("random", "random:7", 7, PROGRAMS[1])


def test_restored_capture_keeps_its_key_tracking(preset, tmp_path: Path) -> None:  # noqa: ANN001
    """A capture's key tracking (borrowed from its neighbours) and tone curve live only in the engine:
    a restart must bring them back with the latent, or the capture sounds different."""
    from synth.timbre import CAPTURE, TimbreInfo

    engine = _played(preset)
    rng = np.random.default_rng(3)
    track = rng.normal(0.0, 0.3, (128, preset.latent_size)).astype(np.float32)
    z = rng.normal(0.0, 1.0, preset.latent_size).astype(np.float32)
    tone = np.array([1.0, -2.0, 0.5, 3.0, -4.0, 6.0, 9.5])
    gain = np.linspace(0.4, 2.5, 128).astype(np.float32)  # its level per key, measured at capture
    engine.set_timbre_now(engine.store_timbre(z, TimbreInfo(CAPTURE, "take 1"), track, tone, gain))
    path = tmp_path / "state.toml"
    state.save_state(path, state.capture(engine, argparse.Namespace(output=None, midi_in=None)))

    fresh = Engine(preset)
    assert not np.any(fresh.timbre_track) and not np.any(fresh.timbre_tone_db)
    assert not np.allclose(fresh.timbre_key_gain, gain)
    assert state.restore_timbre(fresh, state.load_state(path)) is not None
    np.testing.assert_allclose(fresh.timbre_track, track, atol=1e-6)
    np.testing.assert_allclose(fresh.timbre_tone_db, tone, atol=1e-5)
    np.testing.assert_allclose(fresh.timbre_key_gain, gain, rtol=1e-4)
    np.testing.assert_allclose(fresh.z_target, z, atol=1e-6)
    assert fresh.level_target == 1.0


@pytest.mark.parametrize("field, value", [
    ("track", [[1.0, "a"]]), ("track", [[float("nan")] * 4] * 128), ("track", [[0.0] * 3] * 5), ("track", "x"),
    ("tone_db", [1.0, "a"]), ("tone_db", [float("nan")] * 7), ("tone_db", [0.0] * 3), ("tone_db", [40.0] * 7),
    ("tone_db", "x"), ("key_level_db", [0.0] * 127), ("key_level_db", [40.0] * 128),
    ("key_level_db", [float("nan")] * 128), ("key_level_db", "x")])
def test_broken_saved_tracking_or_tone_is_one_warning(preset, tmp_path: Path, field, value, capsys) -> None:  # noqa: ANN001
    engine = _played(preset)
    saved = state.capture(engine, argparse.Namespace(output=None, midi_in=None))
    saved.timbre.update(kind="capture", **{field: value})
    fresh = Engine(preset)
    assert state.restore_timbre(fresh, saved) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved timbre not restored" in err[0]

