"""training.inharmonicity: B read off target frames, and the loss that teaches it to the decoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synth.contract import SpectrogramParams
from training.inharmonicity import b_grid, inharmonicity_loss, measured_inharmonicity
from training.model import FrameDecoder, VAEConfig

PARAMS = SpectrogramParams()
MAX_B = 0.001


def stretched_frames(pitch: list[float], b: list[float], n_harmonics: int = 128) -> torch.Tensor:
    """Log-magnitude frames of partials at k f0 sqrt(1 + B k^2), amplitudes falling with k."""
    dec = FrameDecoder(VAEConfig(max_inharmonicity=MAX_B, n_harmonics=n_harmonics), PARAMS)
    amp = torch.exp(-0.05 * torch.arange(1, n_harmonics + 1.0))[None].repeat(len(pitch), 1)
    mag = dec.place_harmonics(amp, torch.tensor(pitch), torch.tensor(b)) + PARAMS.log_floor
    return torch.log(mag)


def measure(frames: torch.Tensor, pitch: list[float]) -> tuple[np.ndarray, np.ndarray]:
    b, voiced = measured_inharmonicity(frames, torch.tensor(pitch), MAX_B, 128, PARAMS.sample_rate, PARAMS.n_fft)
    return b.numpy(), voiced.numpy()


@pytest.mark.parametrize("pitch, b", [(48.0, 2e-4), (60.0, 3e-4), (60.0, 5e-5), (72.0, 5e-4), (84.0, 8e-4)])
def test_recovers_the_stretch_of_a_stiff_string(pitch: float, b: float) -> None:
    got, voiced = measure(stretched_frames([pitch], [b]), [pitch])
    assert voiced[0]
    # the grid steps by about 30 % between candidates
    assert got[0] == pytest.approx(b, rel=0.3)


@pytest.mark.parametrize("pitch", [48.0, 60.0, 69.0, 79.0])
def test_exact_harmonics_measure_near_zero(pitch: float) -> None:
    got, voiced = measure(stretched_frames([pitch], [0.0]), [pitch])
    assert voiced[0] and got[0] <= 2e-6


def test_noise_and_silence_are_not_voiced() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.log(torch.rand(1, PARAMS.n_bins, generator=gen) + 0.5)
    silence = torch.full((1, PARAMS.n_bins), float(np.log(PARAMS.log_floor)))
    _, voiced = measure(torch.cat([noise, silence]), [60.0, 60.0])
    assert not voiced.any()


def test_grid_starts_at_zero_and_ends_at_the_bound() -> None:
    g = b_grid(MAX_B).numpy()
    assert g[0] == 0.0 and g[-1] == pytest.approx(MAX_B) and np.all(np.diff(g) > 0)


def test_loss_teaches_the_decoder_the_measured_stretch() -> None:
    """A decoder whose B starts near zero learns a piano-like B from the loss alone."""
    torch.manual_seed(0)
    dec = FrameDecoder(VAEConfig(latent_size=4, dec_hidden=32, n_harmonics=32, n_noise_bands=8,
                                 max_inharmonicity=MAX_B), PARAMS)
    n = 64
    pitch = torch.full((n,), 60.0)
    target_frames = stretched_frames([60.0] * n, [3e-4] * n)
    measured, voiced = measured_inharmonicity(target_frames, pitch, MAX_B, 128, PARAMS.sample_rate, PARAMS.n_fft)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-2)
    z = torch.randn(n, 4)
    args = (z, pitch, torch.full((n,), 100.0), torch.rand(n), -torch.ones(n))
    before = float(dec.decode(*args)[1].detach().mean())
    for _ in range(60):
        _, inharm = dec.decode(*args)
        loss = inharmonicity_loss(inharm, measured, voiced, MAX_B)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(dec.decode(*args)[1].detach().mean())
    assert before < 5e-5
    assert after == pytest.approx(3e-4, rel=0.35)


def test_loss_is_zero_without_voiced_frames() -> None:
    pred = torch.full((4,), 5e-4, requires_grad=True)
    loss = inharmonicity_loss(pred, torch.zeros(4), torch.zeros(4, dtype=torch.bool), MAX_B)
    assert float(loss) == 0.0
