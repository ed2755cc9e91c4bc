"""The timbre β-VAE: a whole-note encoder and a frame-wise harmonic decoder.

Decoder contract "framewise-v1" (see ARCHITECTURE.md): ``(z, pitch, velocity, time_on,
time_off) -> log_mag (B, F)``. The MLP predicts amplitudes and (optionally) a small, bounded
inharmonicity B >= 0 per frame; the harmonic head puts partial k at k*f0*sqrt(1 + B k^2)
(stiff-string stretching, as measured on sampled pianos), so the fundamental moves by at most
866*B_max cents and every point of the latent space plays in tune.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synth.contract import ENCODER_INPUT, ENCODER_PITCH, SpectrogramParams

TIME_TAUS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # seconds; exp(-t/tau) features for onset and release
N_TIME_FEATURES = 2 * len(TIME_TAUS) + 3


@dataclass
class VAEConfig:
    """Model sizes and loss weights (the ``[model]`` table of a training config)."""

    latent_size: int = 16
    beta: float = 0.02
    kl_warmup_steps: int = 1000
    enc_channels: int = 128
    enc_layers: int = 3
    dec_hidden: int = 512
    dec_layers: int = 3
    n_harmonics: int = 128
    n_noise_bands: int = 64
    grad_weight: float = 0.5
    residual: bool = True
    time_on_max: float = 2.9  # filled from params at train time (hold_seconds - 0.1)
    max_inharmonicity: float = 0.0  # B_max of f_k = k f0 sqrt(1 + B k^2); 0 = exact harmonics
    free_bits: float = 0.0  # nats per latent dim under which KL is not penalised (batch mean)
    pool_weight: float = 0.0  # weight of L1 between max-pooled (+-pool_bins) pred and target
    pool_bins: int = 2
    # weight of the spectral convergence ||exp(pred) - exp(target)|| / ||exp(target)|| per note
    # (linear magnitudes: the loud partials' amplitudes, which log-L1 weighs like the floor); 0 = off
    sc_weight: float = 0.0
    # weight of |log B - log B measured on the target| (training.inharmonicity_loss); 0 = off
    inharm_weight: float = 0.0
    # what the encoder reads (ENCODERS): "spectrum", the whole log-magnitude spectrum; "harmonic",
    # the spectrum at the note's partials plus a band envelope, so one instrument at another key
    # reads alike (README, Training: the encoder)
    encoder: str = "spectrum"
    enc_partials: int = 96  # "harmonic": partials read (k = 1..enc_partials; those above Nyquist read silence)
    enc_bands: int = 32  # "harmonic": mel bands of the envelope it reads beside them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown [model] option(s): {', '.join(sorted(unknown))}")
        cfg = cls(**dict(d))
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"[model] encoder = {cfg.encoder!r}: one of {', '.join(ENCODERS)}")
        return cfg


class _NoteEncoder(nn.Module):
    """The encoders' common end: frame features ``(B, C_in, T)`` -> ``mu, logvar (B, L)`` by strided
    convs over time, then the mean and the max over what is left of it (any T >= 1)."""

    def __init__(self, cfg: VAEConfig, in_channels: int) -> None:
        super().__init__()
        c = cfg.enc_channels
        layers: list[nn.Module] = [nn.Conv1d(in_channels, c, kernel_size=4, stride=4), nn.GELU()]
        for _ in range(cfg.enc_layers - 1):
            layers += [nn.Conv1d(c, c, kernel_size=5, stride=2, padding=2), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c, 2 * cfg.latent_size)

    def summarise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Always pad 3 frames (no shape-dependent branch: ONNX export would freeze it), so the
        # stride-4 conv gives ceil(T/4) >= 1 frames for any T.
        h = self.convs(F.pad(x, (0, 3), mode="replicate"))  # (B, C, T')
        mu, logvar = self.head(torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 6.0)


def _encoder_input(log_mag: Tensor, floor_ln: float) -> Tensor:
    # Silence (the log floor, most of every note) -> 0, a loud partial -> ~3: raw log-mags sit
    # near -11.5, which drove the first conv's pre-activations far negative and killed every
    # GELU within a few hundred steps (a constant mu: collapse by a dead encoder).
    return (log_mag - floor_ln) * 0.25


class SpectrumEncoder(_NoteEncoder):
    """Whole note ``log_mag (B, T, F)`` -> ``mu, logvar (B, L)``, reading every bin (``pitch`` unused).

    It reads a note's partials at the bins of its key, and on held-out notes it generalises
    worse than ``HarmonicEncoder`` (README, Training: the encoder)."""

    inputs = (ENCODER_INPUT,)

    def __init__(self, cfg: VAEConfig, params: SpectrogramParams) -> None:
        # The first conv is the expensive one (513 input channels): stride 4 keeps a step cheap.
        super().__init__(cfg, params.n_bins)
        self.floor_ln = math.log(params.log_floor)

    def forward(self, log_mag: Tensor, pitch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.summarise(_encoder_input(log_mag, self.floor_ln).transpose(1, 2))


class HarmonicEncoder(_NoteEncoder):
    """Whole note ``log_mag (B, T, F)`` at MIDI ``pitch (B,)`` -> ``mu, logvar (B, L)``.

    Each frame is read at its partials: partial k's level is the largest of the 5 bins around
    k*f0 (±2 bins, so a stretched or detuned partial is still found; 0, silence, above Nyquist),
    beside a mel-band envelope of the whole frame (noise, formants) and the pitch itself. One
    instrument then reads alike at every key, where the spectrum encoder sees other bins at
    every key and learns the training notes' keys (README, Training: the encoder)."""

    inputs = (ENCODER_INPUT, ENCODER_PITCH)

    def __init__(self, cfg: VAEConfig, params: SpectrogramParams) -> None:
        super().__init__(cfg, cfg.enc_partials + cfg.enc_bands + 1)
        self.floor_ln = math.log(params.log_floor)
        self.bins_per_hz = params.n_fft / params.sample_rate
        bands = noise_band_matrix(cfg.enc_bands, params.n_bins, params.sample_rate)
        self.register_buffer("band_mean", bands / bands.sum(dim=1, keepdim=True).clamp(min=1e-6))  # (bands, F)
        self.register_buffer("harm_k", torch.arange(1, cfg.enc_partials + 1, dtype=torch.float32))
        self.register_buffer("around", torch.arange(-2, 3, dtype=torch.float32))

    def forward(self, log_mag: Tensor, pitch: Tensor) -> tuple[Tensor, Tensor]:
        return self.summarise(self.frame_features(log_mag, pitch))

    def frame_features(self, log_mag: Tensor, pitch: Tensor) -> Tensor:
        """What the convs read: ``(B, K + bands + 1, T)``: the partials' levels, the band envelope and
        the pitch, per frame (levels as ``_encoder_input`` scales them)."""
        x = _encoder_input(log_mag, self.floor_ln)  # (B, T, F)
        b, t, f = x.shape
        k = self.harm_k.shape[0]
        f0 = 440.0 * torch.pow(2.0, (pitch.float() - 69.0) / 12.0)
        centre = f0[:, None] * self.harm_k * self.bins_per_hz  # (B, K) in bins
        audible = (centre < f - 3).to(x.dtype)
        idx = (torch.round(centre)[..., None] + self.around).clamp(0, f - 1).long()  # (B, K, 5)
        partials = torch.gather(x, 2, idx.reshape(b, 1, k * 5).expand(b, t, k * 5))
        partials = partials.reshape(b, t, k, 5).amax(dim=-1) * audible[:, None, :]  # (B, T, K)
        envelope = x @ self.band_mean.T  # (B, T, bands)
        key = ((pitch.float() - 64.0) / 24.0).to(x.dtype)[:, None, None].expand(b, t, 1)
        return torch.cat([partials, envelope, key], dim=-1).transpose(1, 2)


ENCODERS = {"spectrum": SpectrumEncoder, "harmonic": HarmonicEncoder}


def hann_main_lobe(delta_frac: Tensor, offsets: Tensor) -> Tensor:
    """Normalised Hann main-lobe magnitude W(m - frac) for integer offsets m.

    ``delta_frac (..., 1)`` in [0, 1), ``offsets (4,)`` -> ``(..., 4)``.
    W(d) = |sin(pi d) / (pi d (1 - d^2))|; |sin(pi (m - f))| = sin(pi f), and each factor is
    written as (integer ± f) so it stays exact near the removable singularities (f -> 0).
    """
    f = delta_frac.clamp(1e-5, 1.0 - 1e-5)
    d = offsets - f
    den = math.pi * (d * (1.0 - offsets + f) * (1.0 + offsets - f)).abs()
    # sin(pi f) = sin(pi (1 - f)): take the small argument so f -> 1 stays exact too.
    return torch.sin(math.pi * torch.minimum(f, 1.0 - f)) / den


def noise_band_matrix(n_bands: int, n_bins: int, sample_rate: int) -> Tensor:
    """Linear interpolation from mel-spaced band centres to bins -> ``(n_bands, F)``."""
    mel = lambda hz: 2595.0 * math.log10(1.0 + hz / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    centres = torch.tensor([hz(m) for m in torch.linspace(0.0, mel(sample_rate / 2), n_bands).tolist()])
    bins = torch.linspace(0.0, sample_rate / 2, n_bins)
    idx = torch.searchsorted(centres, bins).clamp(1, n_bands - 1)
    lo, hi = centres[idx - 1], centres[idx]
    w_hi = ((bins - lo) / (hi - lo)).clamp(0.0, 1.0)
    m = torch.zeros(n_bands, n_bins)
    cols = torch.arange(n_bins)
    m[idx - 1, cols] += 1.0 - w_hi
    m[idx, cols] += w_hi
    return m


def time_features(time_on: Tensor, time_off: Tensor, time_on_max: float) -> Tensor:
    """``(B,)`` times in seconds -> ``(B, N_TIME_FEATURES)``."""
    t_on = time_on.clamp(0.0, time_on_max)
    released = (time_off >= 0).to(time_on.dtype)
    t_off = time_off.clamp(min=0.0)
    feats = [torch.exp(-t_on / tau) for tau in TIME_TAUS]
    feats += [released * torch.exp(-t_off / tau) for tau in TIME_TAUS]
    feats += [released, t_on / time_on_max, t_off]
    return torch.stack(feats, dim=-1)


class FrameDecoder(nn.Module):
    """framewise-v1: ``z (B, L), pitch, velocity, time_on, time_off (B,)`` -> ``log_mag (B, F)``."""

    def __init__(self, cfg: VAEConfig, params: SpectrogramParams) -> None:
        super().__init__()
        self.cfg, self.n_bins = cfg, params.n_bins
        self.bins_per_hz = params.n_fft / params.sample_rate
        self.nyquist_hz, self.log_floor = params.sample_rate / 2, params.log_floor
        h = cfg.dec_hidden
        self.inp = nn.Linear(cfg.latent_size + 2 + N_TIME_FEATURES, h)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.SiLU()) for _ in range(cfg.dec_layers - 1))
        self.harm = nn.Linear(h, cfg.n_harmonics)
        self.noise = nn.Linear(h, cfg.n_noise_bands)
        if cfg.max_inharmonicity > 0:
            self.inharm = nn.Linear(h, 1)
            nn.init.zeros_(self.inharm.weight)
            nn.init.constant_(self.inharm.bias, -4.0)  # B starts near 2 % of B_max
        # Start quiet: a silent frame is ln(log_floor) ~ -11.5, most of a note is near silence.
        nn.init.constant_(self.harm.bias, -6.0)
        nn.init.constant_(self.noise.bias, -9.0)
        self.register_buffer("harm_k", torch.arange(1, cfg.n_harmonics + 1, dtype=torch.float32))
        self.register_buffer("offsets", torch.arange(-1, 3, dtype=torch.float32))
        self.register_buffer("band_matrix", noise_band_matrix(cfg.n_noise_bands, self.n_bins, params.sample_rate))

    def parts(self, z: Tensor, pitch: Tensor, velocity: Tensor, time_on: Tensor,
              time_off: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The network before its geometry: ``harm_amp (B, K)``, ``inharm (B,)`` (the stretching
        B, zeros for exact harmonics) and ``noise_mag (B, F)``. ``forward`` places the partials;
        the engine may do that itself (``synth.partials``, from an exported ``decoder_parts.onnx``)."""
        cond = torch.cat([z, ((pitch - 64.0) / 24.0)[:, None], (velocity / 127.0)[:, None],
                          time_features(time_on, time_off, self.cfg.time_on_max)], dim=-1)
        h = F.silu(self.inp(cond.to(self.inp.weight.dtype)))  # the MLP may run in float16
        for block in self.blocks:
            h = h + block(h) if self.cfg.residual else block(h)
        # Magnitudes are summed and logged in float32 whatever the MLP's precision.
        harm_amp = torch.exp(self.harm(h).float().clamp(max=5.0))  # (B, K)
        noise = torch.exp(self.noise(h).float().clamp(max=5.0)) @ self.band_matrix.float()  # (B, F)
        if self.cfg.max_inharmonicity > 0:
            inharm = self.cfg.max_inharmonicity * torch.sigmoid(self.inharm(h).float())[:, 0]  # (B,)
        else:
            inharm = torch.zeros_like(pitch, dtype=torch.float32)
        return harm_amp, inharm, noise

    def forward(self, z: Tensor, pitch: Tensor, velocity: Tensor, time_on: Tensor, time_off: Tensor) -> Tensor:
        return self.decode(z, pitch, velocity, time_on, time_off)[0]

    def decode(self, z: Tensor, pitch: Tensor, velocity: Tensor, time_on: Tensor,
               time_off: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` plus the inharmonicity it used: ``log_mag (B, F), inharm (B,)``."""
        harm_amp, inharm, noise = self.parts(z, pitch, velocity, time_on, time_off)
        stretch = inharm if self.cfg.max_inharmonicity > 0 else None
        mag = self.place_harmonics(harm_amp, pitch, stretch) + noise
        return torch.log(mag + self.log_floor), inharm

    def place_harmonics(self, amp: Tensor, pitch: Tensor, inharm: Tensor | None = None) -> Tensor:
        """Scatter K Hann main lobes at k*f0*sqrt(1 + B k^2) into bins:
        ``amp (B, K), pitch (B,), inharm B (B,) or None (exact harmonics)`` -> ``(B, F)``."""
        # float64 geometry: float32 pow/floor/sin differ by an ulp between runtimes, and a bin
        # position near 500 has an ulp of 3e-5 bins; in float64 both agree to ~1e-12.
        f0 = 440.0 * torch.pow(2.0, (pitch.double() - 69.0) / 12.0)
        k = self.harm_k.double()
        freqs = f0[:, None] * k  # (B, K)
        if inharm is not None:
            freqs = freqs * torch.sqrt(1.0 + inharm.double()[:, None] * k * k)
        amp = amp * (freqs < self.nyquist_hz).to(amp.dtype)
        centre = freqs * self.bins_per_hz
        base = torch.floor(centre)
        offsets = self.offsets.double()
        shape = hann_main_lobe((centre - base)[..., None], offsets).to(amp.dtype)  # (B, K, 4)
        idx = base[..., None] + offsets  # (B, K, 4)
        valid = (idx >= 0) & (idx < self.n_bins)
        contrib = amp[..., None] * shape * valid.to(amp.dtype)
        idx = idx.clamp(0, self.n_bins - 1).long().flatten(1)
        out = torch.zeros(amp.shape[0], self.n_bins, dtype=amp.dtype, device=amp.device)
        return out.scatter_add(1, idx, contrib.flatten(1))


class TimbreVAE(nn.Module):
    """Encoder + frame decoder; ``forward`` is the training pass on sampled frames."""

    def __init__(self, cfg: VAEConfig, params: SpectrogramParams, encoder: str | None = None) -> None:
        """``encoder``: the encoder kind, when not ``cfg.encoder`` (a run's joint phase before its
        encoder refit: ``training.train.encoder_at``)."""
        super().__init__()
        self.cfg, self.params = cfg, params
        self.encoder = ENCODERS[encoder or cfg.encoder](cfg, params)
        self.decoder = FrameDecoder(cfg, params)

    def forward(self, log_mag: Tensor, pitch: Tensor, velocity: Tensor, time_on: Tensor,
                time_off: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``log_mag (B, T, F)``, note pitch/velocity ``(B,)``, frame times ``(B, S)``.

        Returns ``pred (B, S, F), mu (B, L), logvar (B, L), inharm (B, S)`` (the decoder's
        stretching B per frame); ``noise (B, L)`` is the reparameterisation noise (None -> use
        mu, for validation).
        """
        mu, logvar = self.encoder(log_mag, pitch)
        z = mu if noise is None else mu + noise * torch.exp(0.5 * logvar)
        b, s = time_on.shape
        rep = lambda x: x[:, None].expand(b, s).reshape(-1)  # noqa: E731
        pred, inharm = self.decoder.decode(z.repeat_interleave(s, dim=0), rep(pitch), rep(velocity),
                                           time_on.reshape(-1), time_off.reshape(-1))
        return pred.view(b, s, -1), mu, logvar, inharm.view(b, s)


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, 1)) per latent dimension -> ``(B, L)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def max_pool_bins(x: Tensor, radius: int) -> Tensor:
    """Max over ``±radius`` bins of the last axis (same shape): ``(..., F)`` -> ``(..., F)``."""
    shape = x.shape
    pooled = F.max_pool1d(x.reshape(-1, 1, shape[-1]), 2 * radius + 1, stride=1, padding=radius)
    return pooled.reshape(shape)


def vae_loss(pred: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, beta: float,
             grad_weight: float, free_bits: float = 0.0, pool_weight: float = 0.0,
             pool_bins: int = 2, sc_weight: float = 0.0) -> dict[str, Tensor]:
    """L1 log-mag + L1 of the frequency-axis gradient difference + L1 of max-pooled log-mags
    + spectral convergence per note (``spectral_convergence``, when ``sc_weight > 0``) + beta * KL.

    The pooled term compares ``max over ±pool_bins bins`` of prediction and target: a partial
    a bin or two away from the real (inharmonic, vibrato, detuned) peak still counts, so
    turning the highs down is no longer the cheapest answer to a misplaced peak. KL is summed
    over dims of ``max(free_bits, batch-mean KL of the dim)``: dims under ``free_bits`` nats
    cost nothing, so the encoder can use them (against posterior collapse).
    ``pred, target (..., F)``, notes on the first axis. Returns ``loss, recon, grad, pool, sc, kl``
    (kl unclamped).
    """
    recon = (pred - target).abs().mean()
    grad = (torch.diff(pred, dim=-1) - torch.diff(target, dim=-1)).abs().mean()
    kl_dims = kl_per_dim(mu, logvar).mean(0)
    kl = kl_dims.sum()
    kl_term = kl_dims.clamp(min=free_bits).sum() if free_bits > 0 else kl
    pool = (max_pool_bins(pred, pool_bins) - max_pool_bins(target, pool_bins)).abs().mean() \
        if pool_weight > 0 else torch.zeros((), device=pred.device)
    sc = spectral_convergence(pred, target) if sc_weight > 0 else torch.zeros((), device=pred.device)
    loss = recon + grad_weight * grad + pool_weight * pool + sc_weight * sc + beta * kl_term
    return {"loss": loss, "recon": recon, "grad": grad, "pool": pool, "sc": sc, "kl": kl}


def spectral_convergence(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over the leading axis of ``||exp(pred) - exp(target)|| / ||exp(target)||`` on linear
    magnitudes (the log floor cancels in the difference): ``pred, target (B, ..., F)`` -> scalar."""
    diff = (torch.exp(pred) - torch.exp(target)).flatten(1)
    return (diff.norm(dim=1) / torch.exp(target).flatten(1).norm(dim=1).clamp(min=1e-8)).mean()


def beta_at(step: int, cfg: VAEConfig) -> float:
    """Linear KL warm-up from 0 to ``cfg.beta`` over ``kl_warmup_steps``."""
    if cfg.kl_warmup_steps <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, step / cfg.kl_warmup_steps)


def rank_latents(mu: Tensor, logvar: Tensor) -> tuple[list[int], list[float]]:
    """Order latent dims by mean KL over notes ``mu, logvar (N, L)``, most informative first.

    Returns ``(order, mean_kl)`` where ``mean_kl[d]`` is dim d's KL in nats.
    """
    kl = kl_per_dim(mu.float(), logvar.float()).mean(0)
    order = torch.argsort(kl, descending=True, stable=True)
    return [int(i) for i in order], [float(v) for v in kl]


def frame_times(params: SpectrogramParams, frame_idx: Tensor, frame_stride: int,
                time_on_max: float, hold_seconds: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """Stored frame indices ``(...)`` -> ``time_on, time_off (...)`` in seconds (framewise-v1).

    time_on is clamped to time_on_max as the engine does; time_off = t - hold once the key is
    up, else -1. ``hold_seconds``: the note's key-down length, a float or a tensor that
    broadcasts against ``frame_idx`` (e.g. ``(B, 1)`` per note); None -> ``params.hold_seconds``.
    """
    t = frame_idx.float() * (frame_stride * params.hop / params.sample_rate)
    hold = params.hold_seconds if hold_seconds is None else hold_seconds
    hold = torch.as_tensor(hold, dtype=t.dtype)
    time_off = torch.where(t >= hold, t - hold, torch.full_like(t, -1.0))
    return t.clamp(max=time_on_max), time_off
