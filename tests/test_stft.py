"""The reference STFT: normalisation, perfect reconstruction, and the quality measures."""
import numpy as np
import pytest

from synth.contract import SpectrogramParams
from synth.stft import istft, log_magnitude, log_spectral_distance_db, spectral_convergence_db, stft

P = SpectrogramParams()


def test_full_scale_sine_peaks_at_one() -> None:
    f0 = 40 * P.sample_rate / P.n_fft  # exactly on bin 40
    t = np.arange(P.sample_rate) / P.sample_rate
    mag = np.abs(stft(np.sin(2 * np.pi * f0 * t), P))
    mid = mag[len(mag) // 2]
    assert int(np.argmax(mid)) == 40
    assert mid[40] == pytest.approx(1.0, abs=1e-6)


def test_shapes_follow_params() -> None:
    audio = np.zeros(P.note_samples)
    assert log_magnitude(audio, P).shape == (P.frames_per_note, P.n_bins)
    assert log_magnitude(audio, P).dtype == np.float32


def test_istft_inverts_stft() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000)
    y = istft(stft(x, P), P, length=len(x))
    assert np.max(np.abs(x - y)) < 1e-9


def test_quality_measures_order_good_and_bad_estimates() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(6000)
    ref = np.abs(stft(x, P))
    assert spectral_convergence_db(ref, x, P) < -200
    noisy = x + 0.1 * rng.standard_normal(len(x))
    assert -25 < spectral_convergence_db(ref, noisy, P) < -15
    assert log_spectral_distance_db(ref, ref) == 0.0
    assert log_spectral_distance_db(ref, 2 * ref) == pytest.approx(20 * np.log10(2), rel=0.05)


def test_params_validate_and_round_trip() -> None:
    assert SpectrogramParams.from_dict(P.to_dict()) == P
    with pytest.raises(ValueError):
        SpectrogramParams(hop=100).validate()
    with pytest.raises(ValueError):
        SpectrogramParams.from_dict({**P.to_dict(), "colour": 1})
