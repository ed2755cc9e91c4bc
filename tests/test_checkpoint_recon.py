"""benchmarks.checkpoint_recon: a checkpoint scored in torch as its ONNX export scores."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks import checkpoint_recon as cr
from benchmarks.common import _session
from benchmarks.timbre_space import note_scores
from export.onnx import export_models
from synth.contract import SpectrogramParams
from training.data import make_synthetic_dataset
from training.features import build_feature_cache
from training.train import Trainer, fit, load_config

TINY = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic cache and two run folders of one tiny config: untrained (step 0) and 60 steps."""
    root = tmp_path_factory.mktemp("ckpt") / "syn"
    make_synthetic_dataset(root, n_instruments=3, pitches=(48, 60, 72), velocities=(100,))
    cache = build_feature_cache(root, SpectrogramParams(), root.parent / "syn_features", frame_stride=2, jobs=1)
    folders = {}
    for steps in (0, 60):
        run = load_config(TINY)
        run.model.time_on_max = run.audio.hold_seconds - 0.1
        run.train.steps, run.train.encoder_refit_steps = steps, 0  # untrained means untrained: no refit either
        out = root.parent / f"run{steps}"
        out.mkdir()
        trainer = Trainer(run, cache, out, torch.device("cpu"))
        fit(trainer, progress=False)
        trainer.save()
        folders[steps] = (out, trainer)
    return cache, folders


def test_torch_scores_match_the_onnx_export_and_training_shows(runs, tmp_path: Path) -> None:
    cache, folders = runs
    idx = np.arange(len(cache))
    out, trainer = folders[60]
    models, step, time_on_max = cr.checkpoint_models(out)
    assert step == 60
    torch_scores = np.array(note_scores(models, cache, idx, time_on_max))
    export_models(trainer.run, trainer.model, tmp_path)
    onnx = SimpleNamespace(params=trainer.run.audio, _enc=_session(tmp_path / "encoder.onnx", 1),
                           _dec=_session(tmp_path / "decoder.onnx", 1))
    onnx_scores = np.array(note_scores(onnx, cache, idx, time_on_max))
    np.testing.assert_allclose(torch_scores, onnx_scores, atol=0.05)
    untrained = cr.checkpoint_models(folders[0][0])[0]
    before = np.median(np.array(note_scores(untrained, cache, idx, time_on_max))[:, 0])
    assert np.median(torch_scores[:, 0]) < before - 1.5  # it read the trained weights (measured: -2.7 against -0.1 dB)


def test_cli_prints_a_row_per_run_and_one_line_for_a_bad_folder(runs, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cache, folders = runs
    features = str(folders[0][0].parent / "syn_features")
    assert cr.main([str(folders[0][0]), str(folders[60][0]), "--features", features, "--max-notes", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| /")]  # a row per run folder
    assert [r.split("|")[2].strip() for r in rows] == ["0", "60"]
    (tmp_path / "config.toml").write_text((folders[0][0] / "config.toml").read_text())
    assert cr.main([str(tmp_path), "--features", features]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "not a readable training run" in err


def test_fitted_latent_shows_what_the_decoder_can_draw(runs, capsys: pytest.CaptureFixture[str]) -> None:
    """--fit-latent: each note's latent fitted through the decoder reconstructs it at least as well as
    the encoder's latent, and the row says how far it moved."""
    cache, folders = runs
    features = str(folders[0][0].parent / "syn_features")
    run = str(folders[60][0])
    assert cr.main([run, "--features", features, "--max-notes", "4", "--fit-latent", "100"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {run} | seen")]
    assert len(rows) == 1
    encoder_sc, fitted_sc, moved = (float(rows[0][i]) for i in (4, 5, 6))
    assert fitted_sc <= encoder_sc - 0.2 and moved > 0.0  # measured: -4.2 against -3.8 dB, moved 4.2 std


class _Fake:
    """Sessions that 'decode' each note as its own stored frames, changed by ``alter``."""

    def __init__(self, cache, alter) -> None:
        self.cache, self.alter = cache, alter
        self.params = SpectrogramParams()
        self._enc, self._dec = self, self

    def get_inputs(self):
        return [SimpleNamespace(name="log_mag")]

    def run(self, names, feeds):
        if "log_mag" in feeds:  # encoder: the note's index as its latent
            return [np.zeros((len(feeds["log_mag"]), 1), np.float32), np.zeros((len(feeds["log_mag"]), 1), np.float32)]
        note = int(np.flatnonzero(self.cache.pitch == feeds["pitch"][0])[0])
        return [self.alter(np.asarray(self.cache.logmag[note], np.float32))]


def test_breakdown_tells_a_misplaced_partial_from_a_wrong_level(runs) -> None:
    cache = runs[0]
    idx = np.array([int(np.flatnonzero(cache.pitch == p)[0]) for p in np.unique(cache.pitch)])
    shifted = cr.breakdown_scores(_Fake(cache, lambda x: np.roll(x, 1, axis=1)), cache, idx, 2.9)
    quiet = cr.breakdown_scores(_Fake(cache, lambda x: x + np.log(0.5)), cache, idx, 2.9)
    # one bin off: far from the real spectrum, yet close once +-2 bins count as on it
    assert np.all(shifted[:, 0] > -3.0) and np.all(shifted[:, 1] < shifted[:, 0] - 4.0), shifted  # measured -1.9 vs -7.4
    # half the level (-6 dB SC): exact once each frame's level is matched
    assert np.allclose(quiet[:, 0], -6.0, atol=0.1) and np.all(quiet[:, 2] < -40.0), quiet
