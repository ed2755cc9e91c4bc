"""The snapshot fit's optional terms (training.snapshots): brightness (``[train] snapshot_band_weight``)
and spectral convergence (``[train] snapshot_sc_weight``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synth.contract import BRIGHT_BAND_HZ, SNAPSHOT_TRACK_KEYS, SpectrogramParams
from training.data import make_synthetic_dataset
from training.features import build_feature_cache
from training.model import frame_times, spectral_convergence
from training.snapshots import band_energies, band_share_gap_grad, fit_snapshot_latents
from training.train import Trainer, fit, load_config, note_holds

TINY = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.toml"


def test_bright_band_bins_are_the_centre_frequencies_in_the_band() -> None:
    params = SpectrogramParams()
    hz = np.arange(params.n_bins) * params.sample_rate / params.n_fft
    inside = np.nonzero((hz >= BRIGHT_BAND_HZ[0]) & (hz < BRIGHT_BAND_HZ[1]))[0]
    band = params.bins_between(*BRIGHT_BAND_HZ)
    assert (band.start, band.stop) == (inside[0], inside[-1] + 1)
    assert params.bins_between(0.0, 1e9) == slice(0, params.n_bins)


def test_band_gap_gradient_is_the_terms_own() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = [torch.rand(5, generator=gen, dtype=torch.float64).add(0.1).requires_grad_(True) for _ in range(2)]
    target = (torch.rand(5, generator=gen, dtype=torch.float64) + 0.1, torch.rand(5, generator=gen, dtype=torch.float64) + 1.0)
    pred_total = pred[1] + pred[0]  # the band is part of the total
    term, d_band, d_total = band_share_gap_grad((pred[0], pred_total), target, 0.3, margin_db=2.0)
    gap = 10 * torch.log10(pred[0] / pred_total + 1e-4) - 10 * torch.log10(target[0] / target[1] + 1e-4)
    assert 0 < int((gap.abs() < 2.0).sum()) < len(gap)  # some groups inside the margin, some outside
    direct = 0.3 * (gap.abs() - 2.0).clamp(min=0.0).mean()
    assert float(term) == pytest.approx(float(direct), rel=1e-9)
    direct.backward()
    # chain rule through (band, total): d/d pred[0] = d_band + d_total; d/d pred[1] = d_total
    np.testing.assert_allclose(pred[0].grad.numpy(), (d_band + d_total).detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(pred[1].grad.numpy(), d_total.detach().numpy(), rtol=1e-6)
    same, _, _ = band_share_gap_grad(target, target, 1.0)
    assert float(same) == 0.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    root = tmp_path_factory.mktemp("band") / "syn"
    make_synthetic_dataset(root, n_instruments=3, pitches=(48, 60, 72), velocities=(60, 110))
    cache = build_feature_cache(root, SpectrogramParams(), root.parent / "syn_features", frame_stride=2, jobs=1)
    run = load_config(TINY)
    run.train.steps = 60
    out = root.parent / "run"
    out.mkdir()
    trainer = Trainer(run, cache, out, torch.device("cpu"))
    fit(trainer, progress=False)
    return trainer


def _decoded(trainer: Trainer, notes: np.ndarray, track_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The notes decoded on ``track_z`` (every stored frame, each at its key) and the notes
    themselves: ``(notes * frames, F)`` log-mags each."""
    from synth.key_track import latent_at

    cache, run = trainer.cache, trainer.run
    t = cache.logmag.shape[1]
    on, off = frame_times(run.audio, torch.arange(t)[None].expand(len(notes), t), run.train.frame_stride,
                          run.model.time_on_max, note_holds(cache, notes)[:, None])
    z = torch.from_numpy(latent_at(SNAPSHOT_TRACK_KEYS, track_z.numpy(), cache.pitch[notes])).float()
    rep = lambda v: torch.as_tensor(np.repeat(np.asarray(v, np.float32), t))  # noqa: E731
    with torch.no_grad():
        pred = trainer.model.eval().decoder(z.repeat_interleave(t, 0), rep(cache.pitch[notes]), rep(cache.velocity[notes]),
                                            on.reshape(-1), off.reshape(-1))
    target = torch.from_numpy(np.asarray(cache.logmag[notes], np.float32)).reshape(-1, pred.shape[-1])
    return pred, target


def _band_gap_db(trainer: Trainer, notes: np.ndarray, track_z: torch.Tensor) -> float:
    """|4-12 kHz share of the decoded notes - of the notes| in dB."""
    pred, target = _decoded(trainer, notes, track_z)
    band = trainer.run.audio.bins_between(*BRIGHT_BAND_HZ)
    (pb, pt), (tb, tt) = (band_energies(x, trainer.run.audio.log_floor, band) for x in (pred, target))
    return abs(10 * float(torch.log10(pb.sum() / pt.sum()) - torch.log10(tb.sum() / tt.sum())))


def _fit_per_family(trained: Trainer, **terms: float) -> tuple[dict[int, torch.Tensor], dict[int, np.ndarray]]:
    """Each family's snapshot fitted from the origin for 60 steps with ``terms``, and its notes."""
    cache, idx = trained.cache, trained.train_idx
    labels = np.asarray(cache.family[idx])
    start = {int(i): torch.zeros(trained.run.model.latent_size) for i in np.unique(labels)}
    fitted = fit_snapshot_latents(trained.model, cache, idx, labels, trained.run, torch.device("cpu"), start, 60, **terms)
    return fitted, {i: idx[labels == i] for i in sorted(start)}


def test_brightness_term_brings_each_snapshots_band_share_toward_its_notes(trained: Trainer) -> None:
    gaps = {}
    for name, terms in (("plain", {}), ("bright", {"band_weight": 0.5})):
        fitted, notes = _fit_per_family(trained, **terms)
        gaps[name] = [_band_gap_db(trained, notes[i], fitted[i]) for i in notes]
    assert np.mean(gaps["bright"]) < 0.5 * np.mean(gaps["plain"]), gaps


def test_convergence_term_lowers_each_snapshots_spectral_convergence(trained: Trainer) -> None:
    def convergence(**terms: float) -> float:
        fitted, notes = _fit_per_family(trained, **terms)
        return float(np.mean([float(spectral_convergence(*(x[None] for x in _decoded(trained, notes[i], fitted[i]))))
                              for i in notes]))

    assert convergence(sc_weight=5.0) < convergence()


def test_run_config_passes_the_snapshot_sc_weight_to_the_fit(trained: Trainer, monkeypatch) -> None:
    import training.train as train_module

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(train_module, "fit_snapshot_latents", spy)
    monkeypatch.setattr(trained.run.train, "snapshot_sc_weight", 0.75)
    train_module.fit_snapshots(trained, {"families": {}, "instruments": {}, "std": [1.0] * trained.run.model.latent_size})
    assert seen["sc_weight"] == 0.75
