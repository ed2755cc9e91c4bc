"""Where a note's real partials sit: a stiff-string inharmonicity B read off target frames.

The decoder places partial k at ``k f0 sqrt(1 + B k^2)`` with a learned B, but its loss can only
move B through the 4-bin main lobe of each partial: a piano's 12th partial at C4 lies 3 bins
above 12 f0, outside the lobe, so B gets no gradient and stays near zero, and the cheapest
answer the spectral loss finds is to turn the misplaced highs down (a muffled piano). This
module measures B on the target itself, by the comb search a piano tuner's software does:
score a grid of B values by the mean target log-magnitude at the comb's partial positions and
take the best. The training loss then pulls the decoder's B toward it (``inharmonicity_loss``).

Shapes: ``log_mag (N, F)`` natural-log magnitudes of N frames, ``pitch (N,)`` MIDI keys.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

GRID_SIZE = 33  # B candidates: 0 and 32 log-spaced values from MIN_B to B_max
MIN_B = 1e-6  # below this no partial under the analysis ceiling moves by a tenth of a bin
ANALYSIS_CEILING_HZ = 11000.0  # partials above this are weak and noisy in most notes
MIN_PARTIALS = 8  # fewer partials under the ceiling: B cannot be told from a detuned note
VOICED_CONTRAST = 2.5  # nats (~22 dB) the comb must stand above the frame's median to count


def b_grid(max_b: float) -> Tensor:
    """The candidate B values ``(GRID_SIZE,)``, float64, 0 first (ties prefer harmonic)."""
    logs = torch.linspace(math.log(MIN_B), math.log(max_b), GRID_SIZE - 1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.exp(logs)])


@torch.no_grad()
def measured_inharmonicity(log_mag: Tensor, pitch: Tensor, max_b: float, n_harmonics: int,
                           sample_rate: int, n_fft: int) -> tuple[Tensor, Tensor]:
    """``log_mag (N, F), pitch (N,)`` -> ``b (N,)`` the best comb's B, ``voiced (N,)`` bool.

    A frame is voiced when its best comb stands VOICED_CONTRAST above the frame's median bin
    and at least MIN_PARTIALS partials of the stiffest comb fall under the analysis ceiling.
    """
    x = log_mag.float()
    n_bins = x.shape[-1]
    grid = b_grid(max_b).to(x.device)
    f0 = 440.0 * torch.pow(2.0, (pitch.reshape(-1).double().to(x.device) - 69.0) / 12.0)  # (N,)
    k = torch.arange(1, n_harmonics + 1, dtype=torch.float64, device=x.device)
    # Every candidate scores the same partials: those the stiffest comb keeps under the ceiling.
    stiffest = f0[:, None] * k * torch.sqrt(1.0 + max_b * k * k)  # (N, K)
    used = stiffest < min(ANALYSIS_CEILING_HZ, sample_rate / 2)  # (N, K)
    freqs = f0[:, None, None] * k * torch.sqrt(1.0 + grid[:, None] * k * k)  # (N, G, K)
    # Log-magnitude read between bins (linear interpolation): a partial between two bins
    # still scores, and combs that differ by a fraction of a bin are told apart.
    pos = (freqs * (n_fft / sample_rate)).clamp(0, n_bins - 1.001)
    lower = pos.floor()
    frac = (pos - lower).float()
    lower = lower.long().flatten(1)
    left = torch.gather(x, 1, lower).view(freqs.shape)
    right = torch.gather(x, 1, lower + 1).view(freqs.shape)
    values = left + frac * (right - left)  # (N, G, K)
    weight = used[:, None, :].to(values.dtype)
    count = used.sum(1)  # (N,)
    score = (values * weight).sum(-1) / count.clamp(min=1)[:, None]  # (N, G)
    best, idx = score.max(1)  # the first maximum: ties go to the smaller B
    ceiling_bin = int(min(ANALYSIS_CEILING_HZ, sample_rate / 2) * n_fft / sample_rate)
    median = x[:, :ceiling_bin].median(1).values
    voiced = (count >= MIN_PARTIALS) & (best - median > VOICED_CONTRAST)
    return grid[idx].float(), voiced


def inharmonicity_loss(predicted: Tensor, measured: Tensor, voiced: Tensor, max_b: float) -> Tensor:
    """Mean |log(B + MIN_B) - log(B* + MIN_B)| over voiced frames, over log(B_max / MIN_B) so
    that 1 spans the whole range (0 when no frame is voiced).

    On a log scale because the decoder's B is B_max * sigmoid(a): a loss linear (or square-root)
    in B has no gradient left once the spectral loss has pushed a to -7 (B ~ 1e-6, where the
    shipped decoder sat for every piano note), while d log(B)/da stays near 1 there.
    ``predicted, measured (N,)``, ``voiced (N,)`` bool."""
    if not bool(voiced.any()):
        return torch.zeros((), device=predicted.device)
    p = torch.log(predicted[voiced].clamp(min=0) + MIN_B)
    m = torch.log(measured[voiced].clamp(min=0) + MIN_B)
    return (p - m).abs().mean() / math.log(max_b / MIN_B)
