"""Timbre capture: a recording -> a latent (fake preset whose encoder inverts its decoder, and the real
shipped encoder), and a one-line message for every kind of recording it cannot use."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from synth.capture import CAPTURE_PEAK_DBFS, CaptureError, capture, capture_file, pull_toward_data, read_recording
from synth.engine import Engine
from synth.preset import Preset, load_preset
from tests.fake_preset import capture_subspace, make_fake_preset

SR = 48000
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("capture") / "fake"))


def engine_note(preset: Preset, z: np.ndarray | None = None, program: int | None = None, key: int = 60,
                hold_s: float = 3.6, seconds: float = 4.0, master_gain: float = 1.0) -> np.ndarray:
    """One note rendered by the engine (offline) from latent ``z`` or program ``program`` -> mono ``(n,)``."""
    eng = Engine(preset, device="cpu", knob_pickup=False, master_gain=master_gain)
    if z is not None:
        for d, v in enumerate(z):
            eng.set_latent(d, float(v), absolute=True)
    eng.prepare(SR, 1024, warm=False)
    if program is not None:
        eng.push(0, 0xC0, program, 0)
    eng.push(8, 0x90, key, 100)
    eng.push(8 + int(hold_s * SR), 0x80, key, 0)
    out = np.zeros((int(seconds * SR), 2), np.float32)
    for a in range(0, len(out), 1024):
        eng.process(out[a:a + 1024])
    return out[:, 0].copy()


def tone(pitch: float, seconds: float = 1.0, rate: int = SR, amp: float = 0.3, harmonics: int = 8) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    x = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, harmonics + 1) if h * f0 < rate / 2.2)
    env = np.minimum(1.0, t / 0.01) * np.exp(-0.5 * t)
    return (amp * x * env / np.abs(x).max()).astype(np.float32)


def test_capture_recovers_the_latent_that_made_the_note(preset: Preset) -> None:
    basis = capture_subspace()
    rng = np.random.default_rng(3)
    for _ in range(2):
        z = (rng.standard_normal(len(basis)) @ basis).astype(np.float32)
        cap = capture(preset, engine_note(preset, z), SR)
        assert abs(cap.pitch - 60.0) < 0.1
        assert np.linalg.norm(cap.z - z) < 0.05 * np.linalg.norm(z), (cap.z, z)
        assert cap.distance is not None and cap.distance < 5.0  # the map's points lie in that subspace
        # another latent, another capture: the encoder is not returning a constant
        assert np.linalg.norm(cap.z - (rng.standard_normal(len(basis)) @ basis)) > 0.5


def test_level_stereo_rate_format_and_leading_silence_do_not_matter(preset: Preset, tmp_path: Path) -> None:
    """Same timbre from the same note at another level, rate, format and place in the file (compared in the
    latent directions the fake decoder lets a recording determine)."""
    basis = capture_subspace()
    note = engine_note(preset, basis[0] * 1.5)
    ref = capture(preset, note, SR)
    quiet_late = np.concatenate([np.zeros(SR // 2, np.float32), 0.05 * note])  # -26 dB, after 0.5 s of silence
    stereo = np.stack([quiet_late, quiet_late], axis=1)
    import soxr

    path = tmp_path / "take.flac"
    sf.write(path, soxr.resample(stereo, SR, 44100), 44100)
    cap = capture_file(preset, path)
    assert -0.03 <= cap.onset_s - 0.5 <= 0.0  # the capture starts just before the attack
    assert np.linalg.norm(basis @ (cap.z - ref.z)) < 0.05 * np.linalg.norm(basis @ ref.z)
    ogg = tmp_path / "take.ogg"
    sf.write(ogg, stereo, SR)
    assert np.linalg.norm(basis @ (capture_file(preset, ogg).z - ref.z)) < 0.1 * np.linalg.norm(basis @ ref.z)


def test_most_prominent_note_of_a_longer_recording(preset: Preset) -> None:
    soft, loud = tone(55, 1.0, amp=0.05), tone(67, 1.5, amp=0.4)
    x = np.concatenate([np.zeros(SR // 4, np.float32), soft, loud, 0.5 * tone(48, 1.0, amp=0.1)])
    cap = capture(preset, x, SR)
    assert abs(cap.pitch - 67) < 0.2 and -0.03 <= cap.onset_s - 1.25 <= 0.0


def test_refinement_never_ends_worse_than_the_encoder(preset: Preset) -> None:
    """``--refine`` keeps the best point it has seen, starting from the encoder's: on its own loss it can
    only gain; and it moves the point (it is not a no-op)."""
    from synth.capture import Refiner

    refiner = Refiner(preset)
    x = tone(60, 1.5)  # a sawtooth-like tone the fake decoder cannot reproduce exactly: room to improve
    plain = capture(preset, x, SR)
    refined = capture(preset, x, SR, refiner=refiner, refine=True)
    assert not np.allclose(refined.z, plain.z)
    note = x[: SR // 2]
    import soxr

    note = soxr.resample(note, SR, preset.params.sample_rate).astype(np.float32)
    note *= np.float32(10 ** (CAPTURE_PEAK_DBFS / 20) / np.abs(note).max())
    refiner(plain.z, note, 60.0)  # sets the loss's target
    loss = [float(refiner.loss_of(z)) for z in (plain.z, refined.z)]
    assert loss[1] < loss[0]


def test_given_pitch_skips_detection(preset: Preset) -> None:
    noise = (0.2 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    assert capture(preset, noise, SR, pitch=62).pitch == 62
    with pytest.raises(CaptureError, match="outside the preset's range"):
        capture(preset, tone(60), SR, pitch=130)


@pytest.mark.parametrize("case, message", [
    ("silent", "too quiet \\(silent"),
    ("quiet", "too quiet \\(peaks at -6[0-9] dBFS"),
    ("clipped", "clipped"),
    ("short", "too short"),
    ("noise", "no clear pitched note"),
    ("chord", "sounds polyphonic"),
])
def test_bad_recordings_get_their_message(preset: Preset, case: str, message: str) -> None:
    rng = np.random.default_rng(1)
    x = {
        "silent": lambda: np.zeros(SR, np.float32),
        "quiet": lambda: tone(60, amp=10 ** (-62 / 20)),
        "clipped": lambda: np.clip(tone(60, amp=3.0), -1.0, 1.0),
        "short": lambda: np.concatenate([tone(60, 0.04), np.zeros(SR // 2, np.float32)]),
        "noise": lambda: (0.2 * rng.standard_normal(SR)).astype(np.float32),
        "chord": lambda: tone(60) + tone(64) + tone(67),
    }[case]()
    with pytest.raises(CaptureError, match=message) as err:
        capture(preset, x, SR, where="take.wav")
    assert "\n" not in str(err.value) and str(err.value).startswith("take.wav: ")


def test_bad_files_get_one_line(preset: Preset, tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such file"):
        read_recording(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with pytest.raises(CaptureError, match="not a readable WAV"):
        read_recording(junk)
    nan = tmp_path / "nan.wav"
    x = tone(60)
    x[100] = np.nan
    sf.write(nan, x, SR, subtype="FLOAT")
    with pytest.raises(CaptureError, match="NaN"):
        read_recording(nan)


def test_level_is_normalised_and_pull_moves_toward_the_data(preset: Preset) -> None:
    cap = capture(preset, tone(60), SR)
    assert CAPTURE_PEAK_DBFS < 0
    far = cap.z + 50.0
    d_far, i = preset.latent_map.distance(far)
    pulled = pull_toward_data(preset, far, 0.5)
    assert np.allclose(pulled, far + 0.5 * (preset.latent_map.mu[i] - far), atol=1e-4)
    assert preset.latent_map.distance(pulled)[0] < d_far
    assert np.array_equal(pull_toward_data(preset, far, 0.0), far.astype(np.float32))
    with pytest.raises(CaptureError, match="--pull"):
        pull_toward_data(preset, far, 1.5)


def test_real_encoder_places_an_engine_note_near_its_snapshot() -> None:
    """The shipped encoder: a note the engine plays from a snapshot is captured among that snapshot's
    three nearest (of the preset's ~100), far closer than the median snapshot."""
    real = load_preset(REPO / "presets" / "default")
    zs = np.array([s.z for s in real.snapshots], np.float32)
    for program in (19, 24, 56, 81):  # organ, guitar, brass, synth lead
        snap = real.snapshot_for_program(program)
        cap = capture(real, engine_note(real, program=program, hold_s=3.0), SR)
        d = np.linalg.norm(zs - cap.z, axis=1)
        mine = d[real.snapshots.index(snap)]
        assert (d < mine).sum() <= 2, f"{snap.name}: {int((d < mine).sum())} snapshots nearer"
        assert mine < 0.7 * np.median(d)
