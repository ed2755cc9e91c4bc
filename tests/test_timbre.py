"""Timbres in the engine: user programs by Bank Select + Program Change, the morph wheel between two
endpoints, random timbres (deterministic seeds, drawn ahead, never in the callback), knobs that do not
jump, the CLI options end to end, and no allocation in the render path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from synth.engine import Engine
from synth.library import Library
from synth.preset import Preset, load_preset
from synth.timbre import CC_MORPH, CC_RANDOM, RANDOM, RANDOM_RING, USER, TimbreInfo, draw_random
from tests.fake_preset import make_fake_preset

SR, BLOCK = 48000, 128
CC, PC = 0xB0, 0xC0
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("timbre") / "fake"))


def _engine(preset: Preset, seed: int = 5, pickup: bool = True) -> Engine:
    eng = Engine(preset, polyphony=4, device="cpu", random_seed=seed, knob_pickup=pickup)
    eng.prepare(SR, BLOCK, warm=False)
    return eng


def _run(eng: Engine, blocks: int = 2) -> None:
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(blocks):
        eng.process(out)


def test_user_programs_by_bank_select_and_program_change(preset: Preset) -> None:
    eng = _engine(preset)
    z = np.linspace(-1, 1, 8).astype(np.float32)
    eng.timbre.store_user(3, z, TimbreInfo(USER, "bottle", program=3))
    eng.push(0, CC, 0, 1)
    eng.push(0, PC, 3)
    _run(eng)
    assert np.array_equal(eng.z_target, z) and eng.current_timbre.name == "bottle"
    before = eng.z_target.copy()
    eng.push(eng.sample_time, PC, 4)  # an empty user program changes nothing
    _run(eng)
    assert np.array_equal(eng.z_target, before)
    eng.push(eng.sample_time, CC, 0, 0)  # bank 0: the preset's snapshots again
    eng.push(eng.sample_time, PC, 5)
    _run(eng)
    assert np.allclose(eng.z_target, preset.snapshot_for_program(5).z)
    assert eng.current_timbre.name == preset.snapshot_for_program(5).name


def test_morph_endpoints_equal_the_two_snapshots(preset: Preset) -> None:
    eng = _engine(preset)
    za, zb = (np.asarray(s.z, np.float32) for s in preset.snapshots[:2])
    a = eng.store_timbre(za, TimbreInfo("snapshot", "A"))
    b = eng.store_timbre(zb, TimbreInfo("snapshot", "B"))
    eng.morph_endpoints(a, b)
    _run(eng)
    assert np.allclose(eng.z_target, za)
    eng.push(eng.sample_time, CC, CC_MORPH, 127)
    _run(eng)
    assert np.allclose(eng.z_target, zb, atol=1e-6)
    _run(eng, 60)  # ~160 ms: the glide has arrived
    assert np.allclose(eng.z_current, zb, atol=1e-4)
    eng.push(eng.sample_time, CC, CC_MORPH, 64)
    _run(eng, 1)
    assert np.allclose(eng.z_target, za + 64 / 127 * (zb - za), atol=1e-5)
    assert not np.allclose(eng.z_current, eng.z_target, atol=1e-3)  # smoothed, not stepped
    assert eng.current_timbre.name == "A->B 50%"


def test_morph_moves_key_tracking_between_the_endpoints(tmp_path: Path) -> None:
    """Endpoints with key tracking (captures, key-tracked snapshots): the morph wheel moves it too."""
    tracked = load_preset(make_fake_preset(tmp_path / "tracked", key_track=True))
    eng = _engine(tracked)
    sa, sb = tracked.snapshots[:2]
    a = eng.store_timbre(sa.z, TimbreInfo("snapshot", "A"), sa.track)
    b = eng.store_timbre(sb.z, TimbreInfo("snapshot", "B"), sb.track)
    eng.morph_endpoints(a, b)
    eng.push(eng.sample_time, CC, CC_MORPH, 64)
    _run(eng)
    expected = sa.track + 64 / 127 * (sb.track - sa.track)
    np.testing.assert_allclose(eng._track_target.reshape(128, -1), expected, atol=1e-5)
    eng.push(eng.sample_time, PC, 0, 0)  # a preset snapshot again: its own tracking
    _run(eng)
    np.testing.assert_allclose(eng._track_target.reshape(128, -1), tracked.snapshot_for_program(0).track, atol=1e-6)


def test_a_slot_plays_at_its_own_gain_per_key_and_the_morph_moves_it(preset: Preset) -> None:
    """A capture's measured level (synth.loudness) comes with its slot, a morph interpolates it, a preset
    snapshot's own level returns with its program change, and a hostile gain is refused."""
    eng = _engine(preset)
    za, zb = (np.asarray(s.z, np.float32) for s in preset.snapshots[:2])
    ga = np.full(128, 0.5, np.float32)
    gb = np.linspace(0.3, 3.0, 128).astype(np.float32)
    a = eng.store_timbre(za, TimbreInfo("capture", "A"), key_gain=ga)
    b = eng.store_timbre(zb, TimbreInfo("capture", "B"), key_gain=gb)
    eng.select_timbre(a, eng.sample_time)
    _run(eng)
    np.testing.assert_array_equal(eng.timbre_key_gain, ga)
    eng.morph_endpoints(a, b, eng.sample_time)
    eng.push(eng.sample_time, CC, CC_MORPH, 64)
    _run(eng)
    np.testing.assert_allclose(eng.timbre_key_gain, ga + 64 / 127 * (gb - ga), rtol=1e-6)
    snap = preset.snapshot_for_program(0)
    eng.push(eng.sample_time, PC, 0, 0)
    _run(eng)
    np.testing.assert_allclose(eng.timbre_key_gain * eng.level_target, snap.key_gain(), rtol=1e-6)
    for bad in (np.full(128, 100.0), np.full(128, np.nan), np.ones(7)):
        with pytest.raises(ValueError, match="gain per key"):
            eng.store_timbre(za, TimbreInfo("capture", "loud"), key_gain=bad)


def test_a_preset_snapshot_as_a_morph_endpoint_keeps_its_level(tmp_path: Path) -> None:
    """``--morph NAME,...`` stores a preset snapshot in a slot: it plays at its level trim and level per
    key there, as its program change plays it (before, at 1.0)."""
    from synth.timbre_cli import resolve

    levelled = load_preset(make_fake_preset(tmp_path / "levelled", key_level=True))
    eng = _engine(levelled)
    snap = levelled.snapshots[1]
    assert not np.allclose(snap.key_gain(), 1.0)
    slot = resolve(eng, snap.name, None, None, lambda text: None, sequence=False)  # type: ignore[arg-type]
    eng.set_timbre_now(slot)
    np.testing.assert_allclose(eng.timbre_key_gain, snap.key_gain(), rtol=1e-6)


def test_random_seed_is_deterministic_and_from_the_posterior(preset: Preset) -> None:
    assert np.array_equal(draw_random(preset, 7), draw_random(preset, 7))
    assert not np.array_equal(draw_random(preset, 7), draw_random(preset, 8))
    assert np.array_equal(draw_random(preset, 7), preset.latent_map.draw(7))
    d, _ = preset.latent_map.distance(draw_random(preset, 7))
    assert d < 3.0  # a draw around one of the training notes, not from the prior
    e1, e2 = _engine(preset, seed=11), _engine(preset, seed=11)
    for eng in (e1, e2):
        for i in range(3):
            eng.push(eng.sample_time, CC, CC_RANDOM, 127)
            eng.push(eng.sample_time, CC, CC_RANDOM, 0)
            _run(eng)
    assert np.array_equal(e1.z_target, e2.z_target)
    assert e1.current_timbre == TimbreInfo(RANDOM, "random:13", seed=13)  # presses 1, 2, 3: seeds 11, 12, 13
    assert np.array_equal(e1.z_target, draw_random(preset, 13))


def test_random_button_runs_ahead_of_the_draws_only_as_far_as_drawn(preset: Preset) -> None:
    eng = _engine(preset, seed=0)
    for _ in range(RANDOM_RING + 3):  # more presses than the ring holds, with no refill in between
        eng.push(eng.sample_time, CC, CC_RANDOM, 127)
        eng.push(eng.sample_time, CC, CC_RANDOM, 0)
        _run(eng, 1)
    assert eng.timbre.random_misses == 4 and eng.current_timbre.seed == RANDOM_RING - 2
    eng.timbre.refill_random()  # what the live status loop does
    eng.push(eng.sample_time, CC, CC_RANDOM, 127)
    _run(eng, 1)
    assert eng.current_timbre.seed == RANDOM_RING - 1


def test_knobs_do_not_jump_after_a_timbre_change(preset: Preset) -> None:
    eng = _engine(preset)
    eng.push(0, CC, 70, 0)  # knob 1 at its bottom, followed (no recall yet)
    _run(eng)
    slot = eng.store_timbre(np.full(8, 0.0, np.float32), TimbreInfo("capture", "x"))  # knob coordinates 0
    eng.select_timbre(slot, eng.sample_time)
    _run(eng)
    z = eng.z_target.copy()
    assert np.allclose(z, 0.0) and np.allclose(eng.knob_values, 0.0)
    eng.push(eng.sample_time, CC, 70, 30)  # short of the new point's coordinate (0, CC 63.5): waits for pick-up
    _run(eng)
    assert np.array_equal(eng.z_target, z) and not eng.knob_pickup[0]
    offline = _engine(preset, pickup=False)  # a MIDI file's automation applies at once
    offline.select_timbre(offline.store_timbre(np.full(8, 0.5, np.float32), TimbreInfo("capture", "x")))
    offline.push(0, CC, 70, 127)
    _run(offline)
    assert not np.allclose(offline.z_target, 0.5)


def test_timbre_events_allocate_nothing(preset: Preset) -> None:
    from tests.test_realtime_alloc import _traced_blocks

    eng = Engine(preset, polyphony=4, device="cpu", shed_load=True, random_seed=1)
    eng.prepare(SR, BLOCK)
    a = eng.store_timbre(np.zeros(8, np.float32), TimbreInfo("capture", "a"))
    b = eng.store_timbre(np.ones(8, np.float32), TimbreInfo("capture", "b"))
    eng.timbre.store_user(0, np.full(8, 0.3, np.float32), TimbreInfo(USER, "u"))

    def performance(t: int) -> None:
        eng.push(t, 0x90, 60, 100)
        eng.morph_endpoints(a, b, t + 200)
        for i in range(8):
            eng.push(t + 300 + 100 * i, CC, CC_MORPH, 16 * i)
        eng.push(t + 1200, CC, CC_RANDOM, 127)
        eng.push(t + 1300, CC, CC_RANDOM, 0)
        eng.push(t + 1400, CC, 0, 1)
        eng.push(t + 1500, PC, 0)
        eng.push(t + 1600, CC, 0, 0)
        eng.select_timbre(a, t + 1700)
        eng.push(t + 2000, 0x80, 60, 0)

    out = np.zeros((BLOCK, 2), np.float32)
    performance(0)
    _traced_blocks(eng, out, 30)
    performance(eng.sample_time)
    worst, kept, where = _traced_blocks(eng, out, 30)
    assert eng.timbre.random_used == 2
    assert worst < 4096, f"one process() call allocated up to {worst} bytes at once"
    assert kept < 1024, f"process() kept {kept} bytes: {where}"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "run_synth.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_capture_store_recall_random_and_morph(preset: Preset, tmp_path: Path) -> None:
    from tests.test_capture import engine_note, tone

    wav = tmp_path / "take.wav"
    sf.write(wav, engine_note(preset, np.asarray(preset.snapshots[1].z, np.float32), seconds=2.0, hold_s=1.5), SR)
    lib = ["--preset", str(preset.root), "--library", str(tmp_path / "lib")]
    done = _cli("--capture", str(wav), "--name", "mine", *lib)
    assert done.returncode == 0, done.stderr
    assert "user program 0" in done.stderr and "posterior std" in done.stderr
    stored = Library.open(tmp_path / "lib").find(preset, "mine")
    assert stored is not None and stored.key_level is not None  # measured at capture (synth.loudness)
    mid = tmp_path / "one.mid"
    import mido

    track = mido.MidiTrack([mido.Message("note_on", note=60, velocity=100, time=0),
                            mido.Message("note_off", note=60, velocity=0, time=240)])
    mido.MidiFile(tracks=[track]).save(mid)
    renders = {}
    for key, extra in {"mine": ["--timbre", "mine"], "wav": ["--timbre", str(wav)],
                       "r7": ["--timbre", "random:7"], "r7b": ["--timbre", "random:7"], "r8": ["--timbre", "random:8"],
                       "morph": ["--morph", "mine,random:3"]}.items():
        out = tmp_path / f"{key}.wav"
        done = _cli("--render", str(mid), "--out", str(out), "--quiet", *lib, *extra)
        assert done.returncode == 0, done.stderr
        renders[key] = sf.read(out)[0]
    assert np.array_equal(renders["r7"], renders["r7b"])  # random:SEED is deterministic
    assert not np.array_equal(renders["r7"], renders["r8"])
    assert np.allclose(renders["mine"], renders["wav"], atol=1e-4)  # the stored capture is the capture
    assert np.array_equal(renders["morph"], renders["mine"])  # mod wheel at 0: endpoint A
    bad = tmp_path / "chord.wav"
    sf.write(bad, tone(60) + tone(64) + tone(67), SR)
    for args, message in (((("--capture", str(bad), "--name", "x")), "sounds polyphonic"),
                          (("--capture", str(wav)), "needs --name"),
                          (("--render", str(mid), "--out", str(tmp_path / "x.wav"), "--timbre", "nothing"),
                           "timbre 'nothing': not a recording"),
                          (("--render", str(mid), "--out", str(tmp_path / "x.wav"), "--morph", "mine"),
                           "expected A,B")):
        done = _cli(*args, *lib)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
        assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
