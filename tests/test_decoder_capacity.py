"""benchmarks.decoder_capacity: the head's per-frame ceiling and the memorisation fit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import decoder_capacity as dc
from benchmarks.common import magnitude_convergence_db
from synth.contract import SpectrogramParams
from synth.stft import magnitude_from_log
from training.data import make_synthetic_dataset
from training.features import build_feature_cache
from training.model import FrameDecoder
from training.train import load_config

TINY = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.toml"


def test_oracle_recovers_a_frame_the_head_drew_and_not_a_foreign_one() -> None:
    """A frame made by the head itself (stretched partials plus noise) is fitted almost exactly; the
    same frame offered at a pitch a tritone away, whose partials fall between the head's lobes, is not."""
    run = load_config(TINY)
    params = run.audio
    head = FrameDecoder(run.model, params)
    amp = torch.exp(-0.15 * torch.arange(run.model.n_harmonics, dtype=torch.float32))[None]
    mag = head.place_harmonics(amp, torch.tensor([52.0]), torch.tensor([3e-4]))[0].numpy().astype(np.float64)
    bands = head.band_matrix.double().numpy().T
    mag = mag + bands @ np.full(run.model.n_noise_bands, 1e-3)
    ref = np.stack([mag, 0.5 * mag])  # (T=2, F)
    fitted = dc.oracle_frames(ref, 52.0, head)
    assert magnitude_convergence_db(ref, fitted) < -40.0
    foreign = dc.oracle_frames(ref, 58.0, head)
    assert magnitude_convergence_db(ref, foreign) > -10.0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cap") / "syn"
    make_synthetic_dataset(root, n_instruments=2, pitches=(60,), velocities=(100,))
    return build_feature_cache(root, SpectrogramParams(), root.parent / "syn_features", frame_stride=2, jobs=1)


def test_memorising_longer_fits_the_notes_closer(synthetic) -> None:
    run = load_config(TINY)
    run.model.dec_hidden = 64
    idx = np.arange(len(synthetic))
    refs = [magnitude_from_log(np.asarray(synthetic.logmag[i], np.float32), run.audio) for i in idx]
    sc = {}
    for passes in (1, 400):
        decoder, z = dc.memorise(run, synthetic, idx, passes, sc_weight=1.0)
        assert z.shape == (len(idx), run.model.latent_size)
        sc[passes] = dc.scores(refs, dc.memorised_frames(run, synthetic, idx, decoder, z), run.audio)[0]
    assert sc[400] < sc[1] - 6.0, sc


def test_pick_notes_takes_one_note_per_instrument(synthetic) -> None:
    idx = dc.pick_notes(synthetic, np.arange(len(synthetic)), 2)
    assert len(set(synthetic.instrument[idx].tolist())) == 2
    with pytest.raises(dc.BenchmarkError):
        dc.pick_notes(synthetic, np.arange(len(synthetic)), 3)
