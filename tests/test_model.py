"""Model unit tests: shapes, the Hann lobe, exact pitch placement, losses, latent ranking."""
from __future__ import annotations

import pytest
import torch

from synth.contract import SpectrogramParams
from training.model import (ENCODERS, FrameDecoder, HarmonicEncoder, TimbreVAE, VAEConfig, beta_at, frame_times,
                            hann_main_lobe, rank_latents, spectral_convergence, vae_loss)

PARAMS = SpectrogramParams()


def test_hann_main_lobe_known_values() -> None:
    w = hann_main_lobe(torch.tensor([[0.0], [0.5]]), torch.arange(-1, 3, dtype=torch.float32))
    assert torch.allclose(w[0], torch.tensor([0.5, 1.0, 0.5, 0.0]), atol=1e-4)
    # At half a bin the two nearest bins are equal and the shape is symmetric.
    assert torch.allclose(w[1, 1], w[1, 2]) and torch.allclose(w[1, 0], w[1, 3])
    assert 0.8 < float(w[1, 1]) < 0.9


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_shapes_and_variable_length_encoder(encoder: str) -> None:
    cfg = VAEConfig(latent_size=6, enc_channels=16, dec_hidden=32, n_harmonics=16, n_noise_bands=8, encoder=encoder)
    model = TimbreVAE(cfg, PARAMS)
    assert isinstance(model.encoder, ENCODERS[encoder])
    for t in (1, 7, 376):
        mu, logvar = model.encoder(torch.randn(2, t, PARAMS.n_bins), torch.tensor([21.0, 108.0]))
        assert mu.shape == logvar.shape == (2, 6) and torch.isfinite(mu).all()
    b, s = 3, 5
    pred, mu, _, inharm = model(torch.randn(b, 40, PARAMS.n_bins), torch.full((b,), 60.0), torch.full((b,), 90.0),
                                torch.rand(b, s), -torch.ones(b, s), torch.randn(b, 6))
    assert pred.shape == (b, s, PARAMS.n_bins) and torch.isfinite(pred).all()
    assert inharm.shape == (b, s)
    assert float(pred.min()) >= torch.log(torch.tensor(PARAMS.log_floor)) - 1e-5


def _partial_frames(pitch: float, levels: torch.Tensor, cents: float = 0.0) -> torch.Tensor:
    """Two frames of log-magnitudes with partial k of MIDI ``pitch`` at ln level ``levels[k-1]``
    (detuned by ``cents``) on the log floor -> ``(1, 2, F)``."""
    x = torch.full((1, 2, PARAMS.n_bins), torch.log(torch.tensor(PARAMS.log_floor)).item())
    f0 = 440.0 * 2.0 ** ((pitch - 69.0) / 12.0) * 2.0 ** (cents / 1200.0)
    for k, level in enumerate(levels.tolist(), start=1):
        b = round(k * f0 * PARAMS.n_fft / PARAMS.sample_rate)
        if b < PARAMS.n_bins:
            x[0, :, b] = level
    return x


def test_harmonic_encoder_reads_one_instrument_alike_at_every_key() -> None:
    """The harmonic encoder's input is partial k's level, wherever its key puts it: one set of
    partial levels at two keys (and 10 cents off) gives the same partials' inputs, where the spectrum
    encoder would see other bins; above Nyquist it reads silence."""
    cfg = VAEConfig(latent_size=4, enc_channels=8, enc_partials=24, enc_bands=8, encoder="harmonic")
    enc = HarmonicEncoder(cfg, PARAMS)
    levels = -2.0 - 0.3 * torch.arange(24, dtype=torch.float32)
    seen = {}
    for pitch, cents in ((48.0, 0.0), (55.0, 0.0), (55.0, 10.0)):
        feats = enc.frame_features(_partial_frames(pitch, levels, cents), torch.tensor([pitch]))  # (1, C, T)
        assert feats.shape == (1, 24 + 8 + 1, 2)
        seen[(pitch, cents)] = feats[0, :24, 0]
    floor = (levels - torch.log(torch.tensor(PARAMS.log_floor))) * 0.25  # what the encoder scales a level to
    torch.testing.assert_close(seen[(48.0, 0.0)], floor)
    torch.testing.assert_close(seen[(55.0, 0.0)], floor)
    torch.testing.assert_close(seen[(55.0, 10.0)], floor)  # partial 24 lies 1.2 bins off: still found
    high = enc.frame_features(_partial_frames(96.0, levels), torch.tensor([96.0]))[0, :24, 0]
    f0 = 440.0 * 2.0 ** ((96.0 - 69.0) / 12.0)
    audible = torch.arange(1, 25) * f0 * PARAMS.n_fft / PARAMS.sample_rate < PARAMS.n_bins - 3
    assert not audible.all() and torch.equal(high[~audible], torch.zeros(int((~audible).sum())))
    torch.testing.assert_close(high[audible], floor[audible])


@pytest.mark.parametrize("pitch", [33.0, 45.5, 60.0, 69.0, 81.25, 96.0])
def test_peaks_sit_on_harmonics_for_random_z(pitch: float) -> None:
    torch.manual_seed(int(pitch * 4))
    dec = FrameDecoder(VAEConfig(latent_size=8, dec_hidden=64), PARAMS).eval()
    with torch.no_grad():
        dec.noise.bias.fill_(-30.0)  # isolate the harmonic head
        n = 16
        out = dec(torch.randn(n, 8) * 2, torch.full((n,), pitch), torch.full((n,), 100.0),
                  torch.rand(n) * 2.9, torch.full((n,), -1.0))
    f0_bin = 440.0 * 2 ** ((pitch - 69) / 12) * PARAMS.n_fft / PARAMS.sample_rate
    peak = out.argmax(dim=1).float()
    k = torch.round(peak / f0_bin).clamp(min=1)
    # The strongest bin is within half a bin of some harmonic k*f0 for every random z.
    assert ((peak - k * f0_bin).abs() <= 0.5 + 1e-3).all(), (peak, f0_bin)


def test_fundamental_only_peaks_at_f0() -> None:
    dec = FrameDecoder(VAEConfig(n_harmonics=8), PARAMS)
    amp = torch.zeros(4, 8)
    amp[:, 0] = 1.0
    pitches = torch.tensor([40.0, 57.3, 69.0, 90.0])
    mag = dec.place_harmonics(amp, pitches)
    f0_bin = 440.0 * 2 ** ((pitches - 69) / 12) * PARAMS.n_fft / PARAMS.sample_rate
    assert ((mag.argmax(1).float() - f0_bin).abs() <= 0.5).all()
    assert torch.allclose(mag.max(1).values, torch.ones(4), atol=0.2)  # Hann main lobe peak ~1


def test_harmonics_above_nyquist_are_silent() -> None:
    dec = FrameDecoder(VAEConfig(n_harmonics=128), PARAMS)
    mag = dec.place_harmonics(torch.ones(1, 128), torch.tensor([100.0]))  # f0 ~ 2637 Hz: 4 harmonics fit
    assert int((mag > 0.4).sum()) <= 4 * 3


def test_frame_times_follow_contract() -> None:
    t_on, t_off = frame_times(PARAMS, torch.tensor([0, 10, 300, 375]), 2, 2.9)
    t = torch.tensor([0, 20, 600, 750]) * PARAMS.hop / PARAMS.sample_rate
    assert torch.allclose(t_on, t.clamp(max=2.9))
    assert t_off[0] == -1 and t_off[1] == -1
    assert torch.allclose(t_off[2:], t[2:] - PARAMS.hold_seconds)


def test_loss_parts_and_warmup() -> None:
    x = torch.zeros(2, 3, 10)
    parts = vae_loss(x + 1.0, x, torch.zeros(2, 4), torch.zeros(2, 4), beta=0.5, grad_weight=1.0)
    assert float(parts["recon"]) == pytest.approx(1.0) and float(parts["grad"]) == 0.0
    assert float(parts["kl"]) == 0.0
    cfg = VAEConfig(beta=0.1, kl_warmup_steps=100)
    assert beta_at(0, cfg) == 0.0 and beta_at(50, cfg) == pytest.approx(0.05) and beta_at(500, cfg) == 0.1


def test_rank_latents_orders_by_kl() -> None:
    mu = torch.zeros(100, 4)
    mu[:, 2] = torch.randn(100) * 3  # the most informative
    mu[:, 0] = torch.randn(100) * 1
    order, kl = rank_latents(mu, torch.zeros(100, 4))
    assert order[:2] == [2, 0] and sorted(order) == [0, 1, 2, 3]
    assert kl[2] > kl[0] > kl[1]


def test_inharmonic_partials_stretch_but_fundamental_stays_in_tune() -> None:
    cfg = VAEConfig(latent_size=2, dec_hidden=16, n_harmonics=40, n_noise_bands=4, max_inharmonicity=1e-3)
    dec = FrameDecoder(cfg, PARAMS)
    amp = torch.zeros(2, 40)
    pitch = torch.tensor([48.0, 48.0])
    f0 = 440.0 * 2 ** ((48 - 69) / 12)
    for k in (1, 20, 40):
        amp.zero_()
        amp[:, k - 1] = 1.0
        mag = dec.place_harmonics(amp, pitch, torch.tensor([0.0, 1e-3]))
        peaks = mag.argmax(-1).double()
        stretched = k * f0 * (1 + 1e-3 * k * k) ** 0.5 * PARAMS.n_fft / PARAMS.sample_rate
        assert abs(float(peaks[0]) - k * f0 * PARAMS.n_fft / PARAMS.sample_rate) <= 0.5
        assert abs(float(peaks[1]) - stretched) <= 0.5
    # the bound: B <= max_inharmonicity whatever the MLP says, so f1 moves by < 0.9 cent
    with torch.no_grad():
        dec.inharm.bias.fill_(50.0)
    b = cfg.max_inharmonicity * torch.sigmoid(dec.inharm(torch.zeros(1, 16)))
    assert float(b) <= 1e-3 * (1 + 1e-6) and 1200 * torch.log2(torch.sqrt(1 + b)).item() < 0.9


def test_pooled_loss_forgives_a_small_shift_and_free_bits_floor_kl() -> None:
    target = torch.full((1, 1, 64), -11.5)
    target[..., 30] = 0.0
    shifted = torch.roll(target, 1, dims=-1)
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    parts = vae_loss(shifted, target, mu, logvar, beta=1.0, grad_weight=0.0, pool_weight=1.0, pool_bins=2)
    assert float(parts["pool"]) < 0.05 * float(parts["recon"]) * 64  # pooled maxima coincide
    assert float(parts["pool"]) < float(vae_loss(torch.roll(target, 4, dims=-1), target, mu, logvar, 1.0, 0.0,
                                                 pool_weight=1.0)["pool"])
    free = vae_loss(target, target, mu, logvar, beta=1.0, grad_weight=0.0, free_bits=0.5)
    assert float(free["kl"]) == 0.0 and float(free["loss"]) == pytest.approx(3 * 0.5)


def test_spectral_convergence_weighs_the_loud_partial_not_the_floor() -> None:
    """The convergence term is ||exp(pred) - exp(target)|| / ||exp(target)|| per note: a loud partial
    half as loud costs about 0.5; the same log error on a floor bin costs next to nothing (where the
    log-L1 term charges both alike)."""
    target = torch.full((2, 3, 64), -11.5)
    target[..., 10] = 0.0
    quiet_peak, wrong_floor = target.clone(), target.clone()
    quiet_peak[..., 10] -= torch.log(torch.tensor(2.0))
    wrong_floor[..., 40] -= torch.log(torch.tensor(2.0))
    assert float(spectral_convergence(target, target)) == 0.0
    assert float(spectral_convergence(quiet_peak, target)) == pytest.approx(0.5, abs=1e-3)
    assert float(spectral_convergence(wrong_floor, target)) < 1e-4
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    with_sc = vae_loss(quiet_peak, target, mu, logvar, 0.0, 0.0, sc_weight=2.0)
    without = vae_loss(quiet_peak, target, mu, logvar, 0.0, 0.0)
    assert float(without["sc"]) == 0.0
    assert float(with_sc["loss"] - without["loss"]) == pytest.approx(2.0 * float(with_sc["sc"]), rel=1e-5)
