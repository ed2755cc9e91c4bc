"""Export: ONNX parity with PyTorch, preset.toml readable by the engine, every config exports."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tomli_w
import torch

from export.onnx import (
    DECODER_INPUTS,
    INHARMONIC_TOLERANCE,
    TOLERANCE,
    ExportError,
    export_preset,
    main,
    random_decoder_inputs,
    validate_doc,
)
from synth.contract import (MAX_TONE_DB, PRESET_FORMAT_VERSION, SNAPSHOT_HOME_KEY, SNAPSHOT_TRACK_KEYS, TONE_HZ,
                            SpectrogramParams, encoder_feeds)
from synth.capture import Encoder
from synth.preset import load_preset
from training.data import make_synthetic_dataset
from training.features import FeatureCache, build_feature_cache
from training.train import Trainer, finish, fit, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "training" / "configs").glob("*.toml"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    root = tmp_path_factory.mktemp("syn") / "syn"
    make_synthetic_dataset(root, n_instruments=2, pitches=(50, 64), velocities=(80, 120))
    return build_feature_cache(root, SpectrogramParams(), root.parent / "syn_features", frame_stride=2, jobs=1)


def read_v2(folder: Path) -> dict:
    """preset.toml of an exported folder, checked against the version-6 layout (version 2 plus key tracking, levels
    per key, tone curves and an encoder that may take the pitch)."""
    doc = tomllib.loads((folder / "preset.toml").read_text())
    assert doc["preset"]["format_version"] == PRESET_FORMAT_VERSION == 6
    assert "knob_order" not in doc["latent"]
    validate_doc(doc)
    size = doc["latent"]["size"]
    dirs = np.array(doc["knobs"]["directions"])
    assert dirs.shape == (min(8, size), size)
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(len(dirs)), atol=1e-4)
    scale = np.array(doc["knobs"]["scale"])
    assert np.all(np.diff(scale) <= 1e-9) and np.all(scale >= 0)
    assert doc["decoder"]["contract"] == "framewise-v1" and doc["decoder"]["file"] == "decoder.onnx"
    assert doc["encoder"]["file"] == "encoder.onnx" and 0 < doc["mix"]["gain"] <= 1e3
    for name in ("decoder.onnx", "encoder.onnx"):
        assert (folder / name).stat().st_size > 1000
    return doc


def _train_run(config: Path, cache: FeatureCache, out: Path) -> Trainer:
    """Build the config's model as is, but train it only 2 tiny steps."""
    run = load_config(config)
    run.model.time_on_max = run.audio.hold_seconds - 0.1
    run.train.steps, run.train.batch_notes, run.train.frames_per_note = 2, 2, 4
    run.train.encoder_refit_steps = min(run.train.encoder_refit_steps, 2)  # a refit still runs, shortly
    run.train.val_notes, run.train.report_notes = 2, 1
    run.data = {"command": f"python -m training.train --config {config}"}
    out.mkdir(parents=True)
    trainer = Trainer(run, cache, out, torch.device("cpu"))
    fit(trainer, progress=False)
    finish(trainer)
    return trainer


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_trains_and_exports(config: Path, cache: FeatureCache, tmp_path: Path) -> None:
    trainer = _train_run(config, cache, tmp_path / "run")
    errors = export_preset(tmp_path / "run" / "checkpoint.pt", tmp_path / "preset", name=config.stem)
    dec_tol = INHARMONIC_TOLERANCE if trainer.run.model.max_inharmonicity > 0 else TOLERANCE
    assert errors["decoder"] <= dec_tol and errors["encoder"] <= TOLERANCE
    doc = read_v2(tmp_path / "preset")
    assert doc["latent"]["size"] == trainer.run.model.latent_size and doc["preset"]["name"] == config.stem
    snaps = doc["snapshots"]
    assert len(snaps) >= 8 and len({s["program"] for s in snaps}) == len(snaps)
    assert {s["name"] for s in snaps} >= {"keyboard", "organ"}
    assert all(0.25 <= s["level"] <= 4.0 for s in snaps)  # measured per snapshot through the engine
    travel = doc["knobs"]["travel"]  # measured per knob on the exported decoder (export.knob_travel)
    assert len(travel) == min(8, doc["latent"]["size"]) and all(3.0 <= t <= 6.0 for t in travel)
    # the encoder the run ended with, in the engine's capture as in PyTorch (the harmonic one reads the pitch)
    assert doc["preset"]["format_version"] == PRESET_FORMAT_VERSION
    preset = load_preset(tmp_path / "preset")
    note, pitch = np.asarray(cache.logmag[0], np.float32), float(cache.pitch[0])
    with torch.no_grad():
        ref_mu, _ = trainer.model.encoder(torch.from_numpy(note[None]), torch.tensor([pitch]))
    np.testing.assert_allclose(Encoder(preset)(note, pitch), ref_mu[0].numpy(), atol=1e-4)
    kept = tomllib.loads((tmp_path / "preset" / "train_config.toml").read_text())  # the run's resolved config
    assert kept["model"]["latent_size"] == trainer.run.model.latent_size
    assert not any(str(v).startswith("/") for v in kept.get("data", {}).values())  # no machine's folders
    assert doc["decoder"]["time_on_max"] == pytest.approx(2.9)
    assert doc["decoder"]["release_seconds"] == pytest.approx(1.0)
    assert (doc["pitch"]["min"], doc["pitch"]["max"]) == (50.0, 64.0)
    assert "python -m training.train" in doc["preset"]["reproduce"]
    # The latent map travels with the preset and loads with it: points are the trained notes' posteriors.
    assert doc["map"]["file"] == "latent_map.npz"
    lmap = load_preset(tmp_path / "preset").latent_map
    assert lmap is not None and lmap.mu.shape[1] == trainer.run.model.latent_size
    assert 1 <= lmap.size <= len(trainer.train_idx) and set(lmap.families) == set(cache.families)
    assert lmap.distance(lmap.mu[0])[0] == pytest.approx(0.0, abs=1e-6)
    # with snapshot_tone every fitted snapshot carries a fitted tone curve (training.snapshots.fit_snapshot_tones)
    toned = [s for s in snaps if "tone_db" in s]
    assert bool(toned) == trainer.run.train.snapshot_tone
    loaded_tones = [s.tone_db for s in load_preset(tmp_path / "preset").snapshots if s.tone_db is not None]
    assert len(loaded_tones) == len(toned)
    assert all(len(t) == len(TONE_HZ) and np.abs(t).max() <= MAX_TONE_DB for t in loaded_tones)
    assert not toned or max(np.abs(t).max() for t in loaded_tones) > 0.5  # fitted, not left flat
    # with snapshot_key_track every fitted snapshot is key-tracked (training.snapshots), z its latent at the home key
    fitted = [s for s in snaps if "track_z" in s]
    if not trainer.run.train.snapshot_key_track:
        assert not fitted
        return
    assert len(fitted) >= 2 and all(s["track_keys"] == list(SNAPSHOT_TRACK_KEYS) for s in fitted)
    loaded = {s.name: s for s in load_preset(tmp_path / "preset").snapshots}
    for s in fitted:
        track_z = np.array(s["track_z"])
        assert track_z.shape == (len(SNAPSHOT_TRACK_KEYS), doc["latent"]["size"])
        np.testing.assert_allclose(loaded[s["name"]].z_at(SNAPSHOT_HOME_KEY), s["z"], atol=1e-5)
        np.testing.assert_allclose(loaded[s["name"]].z_at(SNAPSHOT_TRACK_KEYS[0]), track_z[0], atol=1e-5)


def test_onnx_matches_pytorch_on_new_batch_sizes(cache: FeatureCache, tmp_path: Path) -> None:
    trainer = _train_run(CONFIGS[0], cache, tmp_path / "run")
    assert main([str(tmp_path / "run" / "checkpoint.pt"), "--out", str(tmp_path / "p")]) == 0
    dec = ort.InferenceSession(str(tmp_path / "p" / "decoder.onnx"), providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(str(tmp_path / "p" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    model = trainer.model.eval()
    for batch in (1, 5, 33):
        args = random_decoder_inputs(trainer.run, batch, seed=batch)
        got = dec.run(["log_mag"], {n: a.numpy() for n, a in zip(DECODER_INPUTS, args)})[0]
        with torch.no_grad():
            ref = model.decoder(*args).numpy()
        assert got.shape == (batch, 513) and np.abs(got - ref).max() < INHARMONIC_TOLERANCE
    x = np.asarray(cache.logmag[:2], dtype=np.float32)[:, :123]  # any number of frames
    pitch = np.asarray(cache.pitch[:2], np.float32)
    assert [a.name for a in enc.get_inputs()] == list(trainer.model.encoder.inputs)
    mu, logvar = enc.run(["mu", "logvar"], encoder_feeds(enc, x, pitch))
    with torch.no_grad():
        ref_mu, _ = model.encoder(torch.from_numpy(x), torch.from_numpy(pitch))
    assert mu.shape == logvar.shape == (2, trainer.run.model.latent_size)
    assert np.abs(mu - ref_mu.numpy()).max() < 1e-4


def test_parts_decoder_plays_the_same_notes(cache: FeatureCache, tmp_path: Path) -> None:
    """The CPU engine decodes through decoder_parts.onnx plus its own lobe placement; a render is
    the one the full decoder gives, and the export checked that parity itself."""
    import shutil

    from synth.engine import Engine
    from synth.preset import load_preset

    trainer = _train_run(CONFIGS[0], cache, tmp_path / "run")
    errors = export_preset(tmp_path / "run" / "checkpoint.pt", tmp_path / "p")
    tol = INHARMONIC_TOLERANCE if trainer.run.model.max_inharmonicity > 0 else TOLERANCE
    assert errors["decoder_parts"] <= tol
    with_parts = load_preset(tmp_path / "p")
    assert with_parts.decoder_parts_path is not None and with_parts.decoder_parts_path.is_file()
    shutil.copytree(tmp_path / "p", tmp_path / "full")
    doc = (tmp_path / "full" / "preset.toml").read_text().replace('parts_file = "decoder_parts.onnx"\n', "")
    (tmp_path / "full" / "preset.toml").write_text(doc)
    without = load_preset(tmp_path / "full")
    assert without.decoder_parts_path is None
    renders = []
    for preset in (with_parts, without):
        eng = Engine(preset, device="cpu")
        eng.prepare(48000, 256, warm=False)
        assert eng._decoder.uses_parts == (preset is with_parts)
        for i, key in enumerate((52, 57, 64)):
            eng.push(100 * i, 0x90, key, 100)
        out = np.zeros((24000, 2), np.float32)
        eng.process(out)
        renders.append(out)
    peak = np.abs(renders[1]).max()
    assert peak > 1e-4 and np.abs(renders[0] - renders[1]).max() < 1e-3 * peak


def test_fp16_export_loads_and_stays_close(cache: FeatureCache, tmp_path: Path) -> None:
    _train_run(CONFIGS[0], cache, tmp_path / "run")
    errors = export_preset(tmp_path / "run" / "checkpoint.pt", tmp_path / "p16", fp16=True)
    assert errors["decoder"] < 5e-2
    assert read_v2(tmp_path / "p16")["latent"]["size"] > 0


def test_export_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "p")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"junk")
    with pytest.raises(ExportError, match="config.toml"):
        export_preset(tmp_path / "run" / "checkpoint.pt", tmp_path / "p")


def test_relevel_puts_the_median_snapshot_c4_at_the_target_through_the_engine(tmp_path: Path) -> None:
    """``export.relevel`` re-measures ``[mix] gain`` and each snapshot's ``level`` through the current
    engine, as the export does: afterwards a v100 C4 of the median snapshot peaks at
    TARGET_PEAK_DBFS, whatever gain and levels the preset had (here 10x too loud, levels skewed)."""
    from export.onnx import MIX_GAIN_KEY, TARGET_PEAK_DBFS, engine_note_peaks
    from export.relevel import main as relevel_main
    from tests.fake_preset import make_fake_preset

    preset_dir = make_fake_preset(tmp_path / "fake", mix_gain=10.0)
    doc = tomllib.loads((preset_dir / "preset.toml").read_text())
    for i, snap in enumerate(doc["snapshots"]):
        snap["level"] = 0.5 + i
    (preset_dir / "preset.toml").write_text(tomli_w.dumps(doc))
    assert relevel_main([str(preset_dir)]) == 0
    after = tomllib.loads((preset_dir / "preset.toml").read_text())
    assert after["mix"]["gain"] != 10.0 and after["knobs"] == doc["knobs"], "only gain and levels change"
    preset = load_preset(preset_dir)
    snaps = after["snapshots"]
    # engine_note_peaks plays at unity overall gain; the preset's gain and each snapshot's level apply on top
    peaks = engine_note_peaks(preset_dir, snaps, pitches=(MIX_GAIN_KEY,))[0] * preset.mix_gain
    db = 20 * np.log10(np.median(peaks))
    assert abs(db - TARGET_PEAK_DBFS) < 0.5, f"median C4 at {db:.1f} dBFS"


def test_key_levels_bring_each_measured_note_into_the_band(tmp_path: Path) -> None:
    """``export.onnx.key_levels``: a snapshot whose v100 notes peak outside the band gets a level per
    key that brings each measured key to the band's nearer edge; one inside is left without (its
    registers kept as they are). The band is 4 dB wide here: the fake preset's registers spread over
    more than export's 2 dB (KEY_LEVEL_BAND_DBFS), so none of its snapshots would lie inside that."""
    from export.onnx import KEY_LEVEL_KEYS, _write_doc, engine_note_peaks, key_levels
    from tests.fake_preset import make_fake_preset

    preset_dir = make_fake_preset(tmp_path / "fake", mix_gain=1.0)
    doc = tomllib.loads((preset_dir / "preset.toml").read_text())
    doc["snapshots"][0]["level"], doc["snapshots"][1]["level"] = 1.4, 0.3  # +2.9 dB, -10.5 dB
    _write_doc(preset_dir, doc)
    unity = engine_note_peaks(preset_dir, doc["snapshots"], KEY_LEVEL_KEYS)
    lo, hi = band = (-11.0, -7.0)
    spread = 20 * np.log10(unity.max(0) / unity.min(0))  # each snapshot's registers, dB apart
    fits = next(j for j in range(2, unity.shape[1]) if spread[j] < hi - lo - 0.2)
    gain = 10 ** ((hi - 0.1) / 20) / unity[:, fits].max()  # that snapshot's notes just inside the band's top
    before = 20 * np.log10(unity * gain)
    assert before[:, 0].max() > hi and before[:, 1].max() < lo, "the test needs notes outside the band"
    keyed = key_levels(preset_dir, doc["snapshots"], gain, band)
    inside = [j for j in range(len(keyed)) if np.all((before[:, j] >= lo) & (before[:, j] <= hi))]
    assert inside and all(keyed[j] == {} for j in inside)
    doc["snapshots"] = [{**snap, **k} for snap, k in zip(doc["snapshots"], keyed)]
    _write_doc(preset_dir, doc)
    after = 20 * np.log10(engine_note_peaks(preset_dir, doc["snapshots"], KEY_LEVEL_KEYS) * gain)
    assert np.all(after >= lo - 0.05) and np.all(after <= hi + 0.05), np.round(after, 2)
    np.testing.assert_allclose(after[:, inside], before[:, inside], atol=1e-4)
