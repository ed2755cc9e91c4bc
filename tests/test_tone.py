"""Tone curves (synth.tone): the fit, and the engine playing a snapshot's, a slot's and a capture's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synth.contract import MAX_TONE_DB, TONE_HZ, SpectrogramParams
from synth.engine import Engine
from synth.preset import Preset, load_preset
from synth.timbre import CAPTURE, TimbreInfo
from synth.tone import LN_PER_DB, band_of_bins, fit_tone_db, note_energy, tone_ln, tone_weights
from tests.fake_preset import HARMONICS, PROGRAMS, make_fake_preset

PARAMS = SpectrogramParams()
SR = 48000
BLOCK = 128
KEY = 60
BRIGHT = [0.0, 0.0, 0.0, 12.0, 12.0, 12.0, 12.0]  # +12 dB from 1 kHz up: harmonics 4-6 of C4, not 1-2


def test_curve_passes_through_its_points_and_holds_beyond() -> None:
    tone = np.array([-6.0, 0.0, 3.0, 6.0, -3.0, 9.0, 12.0])
    gain_db = tone_ln(tone, PARAMS) / LN_PER_DB
    hz = np.arange(PARAMS.n_bins) * PARAMS.sample_rate / PARAMS.n_fft
    for point, db in zip(TONE_HZ, tone):
        b = int(np.argmin(np.abs(hz - point)))
        assert gain_db[b] == pytest.approx(db, abs=1.0)  # bins are 23 Hz apart: near the point, not on it
    assert gain_db[1] == pytest.approx(-6.0) and gain_db[-1] == pytest.approx(12.0)
    rising = gain_db[int(2000 / 23.4) + 1:int(4000 / 23.4)]  # 2 to 4 kHz: from -3 to 9 dB, straight on log f
    assert np.all(np.diff(rising) > 0)
    mid = int(np.argmin(np.abs(hz - 2000 * np.sqrt(2))))
    assert gain_db[mid] == pytest.approx(3.0, abs=0.2)
    assert tone_weights(PARAMS).shape == (PARAMS.n_bins, len(TONE_HZ))


def test_fit_finds_the_curve_that_made_a_spectrum() -> None:
    rng = np.random.default_rng(0)
    decoded = rng.uniform(0.5, 1.5, PARAMS.n_bins) * np.exp(-np.arange(PARAMS.n_bins) / 80.0)
    true = np.array([2.0, -1.0, 0.0, 3.0, -2.0, 6.0, 8.0])
    real = decoded * np.exp(2.0 * (tone_weights(PARAMS) @ true))
    fitted = fit_tone_db(real, decoded, PARAMS)
    shaped = decoded * np.exp(2.0 * (tone_weights(PARAMS) @ fitted))
    band = band_of_bins(PARAMS)
    ratio = np.bincount(band, real) / np.bincount(band, real).sum() / (np.bincount(band, shaped) / shaped.sum())
    assert np.abs(10 * np.log10(ratio)).max() < 0.2  # every band's share as in the real spectrum
    assert shaped.sum() == pytest.approx(decoded.sum(), rel=1e-6)  # the level is the trims' job
    np.testing.assert_allclose(fitted - fitted.mean(), true - true.mean(), atol=0.3)


def test_fit_stays_within_bounds_on_an_empty_band() -> None:
    decoded = np.zeros(PARAMS.n_bins)
    decoded[:100] = 1.0  # nothing above 2.3 kHz: the highs cannot be brought up, only clipped
    real = np.ones(PARAMS.n_bins)
    fitted = fit_tone_db(real, decoded, PARAMS)
    assert np.all(np.isfinite(fitted)) and np.abs(fitted).max() <= MAX_TONE_DB
    assert note_energy(np.log(np.full((3, 4), 2.0) + 1e-5), 1e-5) == pytest.approx(np.full(4, 12.0))


def _levels_db(x: np.ndarray) -> np.ndarray:
    """dB of each harmonic of KEY in ``x`` (strongest bin within a quarter tone)."""
    zp = 4 * len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), zp))
    df = SR / zp
    f0 = 440.0 * 2 ** ((KEY - 69) / 12)
    return 20 * np.log10([spec[int(h * f0 * 2 ** (-1 / 24) / df):int(h * f0 * 2 ** (1 / 24) / df) + 1].max()
                          for h in range(1, HARMONICS + 1)])


def _note(eng: Engine, program: int | None = None, seconds: float = 0.6) -> np.ndarray:
    """A held C4 (after an optional program change and the timbre's glide), its steady part."""
    eng.prepare(SR, BLOCK)
    start = SR // 5
    if program is not None:
        eng.push(0, 0xC0, program, 0)
    eng.push(start, 0x90, KEY, 100)
    out = np.zeros((start + int(seconds * SR), 2), np.float32)
    for i in range(0, len(out), BLOCK):
        eng.process(out[i:i + BLOCK])
    return out[start + SR // 10:, 0]


@pytest.fixture(scope="module")
def presets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Preset, Preset]:
    """The same fake preset twice: flat, and with a bright tone curve on its second program's snapshot."""
    root = tmp_path_factory.mktemp("tone")
    return (load_preset(make_fake_preset(root / "flat")),
            load_preset(make_fake_preset(root / "toned", tones={PROGRAMS[1]: BRIGHT})))


def test_a_snapshot_s_tone_curve_shapes_what_it_plays(presets: tuple[Preset, Preset]) -> None:
    flat, toned = presets
    assert toned.snapshots[1].tone_db is not None and toned.snapshots[0].tone_db is None
    gap = _levels_db(_note(Engine(toned, device="cpu"), PROGRAMS[1])) - _levels_db(_note(Engine(flat, device="cpu"), PROGRAMS[1]))
    gap -= gap[0]  # the level trims are another matter: compare the balance
    assert gap[1] == pytest.approx(0.0, abs=1.5)  # 523 Hz: under the curve's 1 kHz point, close to 0 dB
    assert np.all(gap[3:] > 9.0) and np.all(gap[3:] < 14.0)  # 1 kHz and up: +12 dB
    # a program change to a snapshot without a curve plays flat again
    back = _levels_db(_note(Engine(toned, device="cpu"), PROGRAMS[0])) - _levels_db(_note(Engine(flat, device="cpu"), PROGRAMS[0]))
    assert np.abs(back - back[0]).max() < 1.0


def test_a_slot_timbre_plays_its_own_tone_curve(presets: tuple[Preset, Preset]) -> None:
    flat, _ = presets
    z = np.asarray(flat.snapshots[2].z, np.float32)
    plain, bright = Engine(flat, device="cpu"), Engine(flat, device="cpu")
    plain.set_timbre_now(plain.store_timbre(z, TimbreInfo(CAPTURE, "plain")))
    bright.set_timbre_now(bright.store_timbre(z, TimbreInfo(CAPTURE, "bright"), tone_db=np.array(BRIGHT)))
    np.testing.assert_allclose(bright.timbre_tone_db, BRIGHT)
    gap = _levels_db(_note(bright)) - _levels_db(_note(plain))
    assert np.all(gap[3:] - gap[0] > 9.0)
    with pytest.raises(ValueError, match="tone curve"):
        plain.store_timbre(z, TimbreInfo(CAPTURE, "hostile"), tone_db=np.full(len(TONE_HZ), 40.0))


def test_a_capture_fits_the_recorded_note_s_balance(presets: tuple[Preset, Preset], tmp_path: Path) -> None:
    """A capture of a note brightened beyond what its latent plays gets a curve that brings the engine's
    note closer to the recording than its latent alone does."""
    from synth.capture import capture

    flat, _ = presets
    z = np.asarray(flat.snapshots[2].z, np.float32)
    eng = Engine(flat, device="cpu", knob_pickup=False)
    eng.set_timbre_now(eng.store_timbre(z, TimbreInfo(CAPTURE, "recorded"), tone_db=np.array(BRIGHT)))
    eng.prepare(PARAMS.sample_rate, BLOCK)
    eng.push(0, 0x90, KEY, 100)
    eng.push(int(1.0 * PARAMS.sample_rate), 0x80, KEY, 0)
    rec = np.zeros((int(1.3 * PARAMS.sample_rate), 2), np.float32)
    for i in range(0, len(rec), BLOCK):
        eng.process(rec[i:i + BLOCK])
    cap = capture(flat, rec[:, 0], PARAMS.sample_rate)
    assert cap.tone_db is not None and np.abs(cap.tone_db).max() <= MAX_TONE_DB
    real = _levels_db(rec[int(0.2 * PARAMS.sample_rate):int(0.9 * PARAMS.sample_rate), 0])

    def played(tone: np.ndarray | None) -> np.ndarray:
        e = Engine(flat, device="cpu")
        e.set_timbre_now(e.store_timbre(cap.z, TimbreInfo(CAPTURE, "take"), cap.track, tone))
        levels = _levels_db(_note(e))
        return np.abs((levels - levels[0]) - (real - real[0]))

    assert played(cap.tone_db).mean() < played(None).mean()
