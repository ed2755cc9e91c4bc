"""Training loop on real (synthetic) NSynth-layout data: loss drops, resume, checkpoint, DDP, CLI."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synth.contract import SNAPSHOT_HOME_KEY, SNAPSHOT_TRACK_KEYS, SpectrogramParams
from synth.key_track import latent_at
from training.data import make_synthetic_dataset
from training.features import FeatureCache, build_feature_cache
from training.model import HarmonicEncoder, SpectrumEncoder
from training.train import Trainer, encoder_at, finish, fit, load_config, main

TINY = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FeatureCache]:
    root = tmp_path_factory.mktemp("syn") / "syn"
    make_synthetic_dataset(root, n_instruments=3, pitches=(48, 60, 72), velocities=(60, 110))
    cache = build_feature_cache(root, SpectrogramParams(), root.parent / "syn_features", frame_stride=2, jobs=1)
    return root, cache


def _trainer(cache: FeatureCache, out: Path, steps: int = 20) -> Trainer:
    run = load_config(TINY)
    run.train.steps = steps
    out.mkdir(parents=True, exist_ok=True)
    return Trainer(run, cache, out, torch.device("cpu"))


def test_tiny_training_lowers_val_loss(data, tmp_path: Path) -> None:
    trainer = _trainer(data[1], tmp_path / "run", steps=30)
    before = trainer.validate()
    fit(trainer, progress=False)
    assert trainer.validate() < before - 0.1
    stats = finish(trainer)
    assert sorted(stats["knob_order"]) == list(range(trainer.run.model.latent_size))
    assert set(stats["families"]) == {"keyboard", "organ", "brass"}
    _check_snapshot_fit(trainer, stats)
    assert (tmp_path / "run" / "report.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows][-1] == 30 + trainer.run.train.encoder_refit_steps
    assert float(rows[-1]["notes_per_s"]) > 0
    # the synthetic tones are exact harmonics: the measured B is ~0 and the decoder's follows it
    assert all(r["inharm"] != "" for r in rows) and float(rows[-1]["inharm"]) < float(rows[0]["inharm"])
    # the spectral convergence term is logged and falls with the rest
    assert all(r["sc"] != "" for r in rows) and float(rows[-1]["sc"]) < float(rows[0]["sc"])


def test_tiny_model_has_more_than_one_live_dim(data, tmp_path: Path) -> None:
    """The encoder must not die (constant mu) and free bits keep several dims in use."""
    trainer = _trainer(data[1], tmp_path / "run", steps=60)
    fit(trainer, progress=False)
    stats = finish(trainer)
    std = np.array(stats["std"])
    assert (std > 0.1).sum() >= 2, std
    k = stats["knobs"]
    dirs = np.array(k["directions"])
    assert dirs.shape == (trainer.run.model.latent_size, trainer.run.model.latent_size)  # min(8, L) rows
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(len(dirs)), atol=1e-5)
    assert k["scale"] == sorted(k["scale"], reverse=True) and k["scale"][0] > 0.1


@pytest.mark.parametrize("killed_at", [10, 20, 35])  # in the joint phase, at its end, in the encoder refit
def test_resume_matches_uninterrupted_run(data, tmp_path: Path, killed_at: int) -> None:
    full = _trainer(data[1], tmp_path / "full")
    fit(full, progress=False)
    part = _trainer(data[1], tmp_path / "part")
    part.run.train.ckpt_every = 5
    fit(part, progress=False, until=killed_at)  # "killed" right after that step's checkpoint
    resumed = _trainer(data[1], tmp_path / "part")
    resumed.load(tmp_path / "part" / "checkpoint.pt")
    assert resumed.step == killed_at
    fit(resumed, progress=False)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["loss"] for r in full.rows] == [r["loss"] for r in resumed.rows]
    assert [r["val_loss"] for r in full.rows] == [r["val_loss"] for r in resumed.rows]


def test_encoder_refit_trains_a_fresh_encoder_against_the_frozen_decoder(data, tmp_path: Path) -> None:
    """After ``steps`` the joint phase's spectrum encoder is replaced by a fresh harmonic one and only it
    trains: the decoder ends exactly as the joint phase left it, the new encoder moves, and the run's
    loss on the validation notes comes back down from the fresh encoder's."""
    trainer = _trainer(data[1], tmp_path / "run")
    tc = trainer.run.train
    assert tc.encoder_refit_steps > 0 and tc.joint_encoder == "spectrum" and trainer.run.model.encoder == "harmonic"
    fit(trainer, progress=False, until=tc.steps)
    assert isinstance(trainer.model.encoder, SpectrumEncoder)
    decoder = {k: v.clone() for k, v in trainer.model.decoder.state_dict().items()}
    joint_val = trainer.validate()
    trainer.begin_refit()
    fresh = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    fresh_val = trainer.validate()
    fit(trainer, progress=False)
    assert trainer.step == tc.steps + tc.encoder_refit_steps and isinstance(trainer.model.encoder, HarmonicEncoder)
    for k, v in trainer.model.decoder.state_dict().items():
        assert torch.equal(v, decoder[k]), k
    assert any(not torch.equal(v, fresh[k]) for k, v in trainer.model.encoder.state_dict().items())
    assert trainer.validate() < fresh_val and fresh_val != joint_val
    # the checkpoint and its config say what it holds, and export reads it as one model
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == tc.steps + tc.encoder_refit_steps
    assert encoder_at(trainer.run, ckpt["step"]) == "harmonic" and encoder_at(trainer.run, tc.steps) == "spectrum"


def test_checkpoint_loads_with_weights_only(data, tmp_path: Path) -> None:
    trainer = _trainer(data[1], tmp_path / "run", steps=10)
    fit(trainer, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 10 + trainer.run.train.encoder_refit_steps and set(ckpt) >= {"model", "optimizer", "rng", "torch_rng"}
    cfg = load_config(tmp_path / "run" / "config.toml")
    assert cfg.audio == SpectrogramParams() and cfg.model.time_on_max == trainer.run.model.time_on_max
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_cli_trains_resumes_and_reports_errors(data, tmp_path: Path, capsys) -> None:
    root, cache = data
    out = tmp_path / "cli"
    assert main(["--config", str(TINY), "--data", str(root), "--out", str(out), "--steps", "10", "--quiet"]) == 0
    cfg = load_config(out / "config.toml")
    assert cfg.data["features"] == str(cache.root.resolve()) and cfg.train.steps == 10
    assert main(["--out", str(out), "--resume", "--steps", "15", "--quiet"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 15 + cfg.train.encoder_refit_steps
    assert json.loads((out / "latent_stats.json").read_text())["n_notes"] > 0
    assert main(["--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert main(["--config", str(TINY), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "no feature cache" in err


def test_ddp_two_processes(data, tmp_path: Path) -> None:
    root, cache = data
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "ddp"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "training.train",
                           "--config", str(TINY), "--features", str(cache.root), "--out", str(out),
                           "--steps", "6", "--quiet"], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6 + load_config(TINY).train.encoder_refit_steps and len(ckpt["rng"]) == 2  # the refit runs on both
    assert not torch.equal(ckpt["rng"][0], ckpt["rng"][1])  # each rank samples its own notes


@torch.no_grad()
def _l1_over_notes(trainer: Trainer, notes: np.ndarray, z: list[float] | np.ndarray) -> float:
    """Mean L1 log-mag error of every stored frame of ``notes`` decoded from one latent ``z (L,)``, or
    from each note's own ``z (len(notes), L)``."""
    from training.model import frame_times
    from training.train import load_notes, note_holds

    x = load_notes(trainer.cache, notes)
    n, t, f = x.shape
    run = trainer.run
    on, off = frame_times(run.audio, torch.arange(t)[None].expand(n, t), run.train.frame_stride,
                          run.model.time_on_max, note_holds(trainer.cache, notes)[:, None])
    rep = lambda a: torch.from_numpy(np.asarray(a, np.float32))[:, None].expand(n, t).reshape(-1)  # noqa: E731
    per_note = np.broadcast_to(np.asarray(z, np.float32), (n, np.shape(z)[-1]))
    zs = torch.from_numpy(np.repeat(per_note, t, axis=0))
    pred = trainer.model.eval().decoder(zs, rep(trainer.cache.pitch[notes]),
                                        rep(trainer.cache.velocity[notes]), on.reshape(-1), off.reshape(-1))
    return float((pred - x.reshape(-1, f)).abs().mean())


def _check_snapshot_fit(trainer: Trainer, stats: dict) -> None:
    """Each fitted snapshot plays its notes better than the mean latent it started from, and its
    key-tracked latents (``z`` at ``SNAPSHOT_HOME_KEY``, ``track_z`` at ``SNAPSHOT_TRACK_KEYS``) play
    them better than its one home latent would."""
    fitted = {name: e for name, e in stats["families"].items() if "mean_z" in e}
    assert len(fitted) == 3  # no soundfont tags in the synthetic set: one snapshot per family
    family = np.asarray(trainer.cache.family[trainer.train_idx])
    names = [str(n) for n in trainer.cache.families]
    for name, entry in fitted.items():
        notes = trainer.train_idx[family == names.index(name)]
        assert entry["z"] != entry["mean_z"]
        assert entry["track_keys"] == list(SNAPSHOT_TRACK_KEYS)
        track_z = np.array(entry["track_z"])
        np.testing.assert_allclose(latent_at(SNAPSHOT_TRACK_KEYS, track_z, [SNAPSHOT_HOME_KEY])[0], entry["z"], atol=1e-5)
        tracked = latent_at(SNAPSHOT_TRACK_KEYS, track_z, trainer.cache.pitch[notes])  # each note at its key
        assert _l1_over_notes(trainer, notes, tracked) < 0.99 * _l1_over_notes(trainer, notes, entry["mean_z"])
        # never worse than the home key's latent at every key (as good where one latent fits the family's keys)
        assert _l1_over_notes(trainer, notes, tracked) <= 1.001 * _l1_over_notes(trainer, notes, entry["z"])
