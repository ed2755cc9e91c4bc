"""Datasets: soundfont rendering, NSynth and WAV-folder readers, bad data, feature cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from synth.contract import SpectrogramParams
from synth.stft import log_magnitude
from training import data, features
from training.data import DatasetError, load_examples, load_wav_folder, make_synthetic_dataset, read_audio
from training.features import FeatureCache, build_feature_cache

PARAMS = SpectrogramParams()


def midi_hz(p: float) -> float:
    return 440.0 * 2 ** ((p - 69) / 12)


def strongest_hz(x: np.ndarray, rate: int) -> float:
    seg = x[: rate]  # first second: the key is held
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    return float(np.argmax(spec) * rate / len(seg))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("render")
    # program 33 (bass) has no sample at pitch 100 in FluidR3: it must be skipped as silent;
    # program 89 (pad) has a DC offset in its samples that the renderer must remove
    stats = data.render_soundfont(out, programs=(80, 33, 89), pitches=(48, 60, 100), velocities=(100,),
                                  sample_rate=24000, jobs=1, progress=False, holds=(3.0,))
    return out, stats


def test_render_layout_levels_and_pitch(rendered) -> None:
    out, stats = rendered
    assert stats["silent_skipped"] == [("fluidr3", 33, 100, 100)] and stats["clipped_skipped"] == []
    index = json.loads((out / "examples.json").read_text())
    assert len(index) == 8 == stats["notes"]
    for key, e in index.items():
        assert e["note_str"] == key and key == f"{e['instrument_str']}-{e['pitch']:03d}-{e['velocity']:03d}"
        info = sf.info(str(out / "audio" / f"{key}.wav"))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (24000, 96000, 1, "PCM_16")
        x, rate = sf.read(str(out / "audio" / f"{key}.wav"))
        assert 0.02 < np.max(np.abs(x)) < 0.99, f"{key} level {np.max(np.abs(x))}"
        assert abs(np.mean(x[:24000])) < 0.01 * np.sqrt(np.mean(x[:24000] ** 2)), f"{key} DC offset"
        f0 = midi_hz(e["pitch"])
        assert abs(12 * np.log2(strongest_hz(x, rate) / f0)) < 0.5, key
        # the key is released at 3 s: the last 0.5 s is quieter than the held part
        assert np.sqrt(np.mean(x[-12000:] ** 2)) < 0.5 * np.sqrt(np.mean(x[:72000] ** 2))
    assert index["synth_lead_synthetic_fluidr3_080-060-100"]["instrument_family_str"] == "synth_lead"
    assert index["bass_electronic_fluidr3_033-048-100"]["instrument_family"] == 0
    assert {e["hold_seconds"] for e in index.values()} == {3.0}
    assert len(load_examples(out)) == 8


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2)))


def test_render_two_soundfonts_with_hold_lengths(tmp_path) -> None:
    fonts = ["/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/TimGM6mb.sf2"]
    stats = data.render_soundfont(tmp_path, fonts, programs=(0, 56), pitches=(60, 63, 66, 69),
                                  velocities=(60, 100), holds=(0.3, 1.0), jobs=2, progress=False)
    assert stats["soundfonts"] == ["fluidr3", "timgm6mb"] and stats["notes"] == 16
    recs = load_examples(tmp_path)
    assert {r.instrument for r in recs} == {"keyboard_acoustic_fluidr3_000", "brass_acoustic_fluidr3_056",
                                            "keyboard_acoustic_timgm6mb_000", "brass_acoustic_timgm6mb_056"}
    assert data.parse_instrument("brass_acoustic_timgm6mb_056") == ("timgm6mb", 56)
    assert data.parse_instrument("bass_electronic_000") is None
    for inst in {r.instrument for r in recs}:  # every velocity and every hold on each instrument
        mine = [r for r in recs if r.instrument == inst]
        assert {r.velocity for r in mine} == {60, 100} and {r.hold_seconds for r in mine} == {0.3, 1.0}
    # the same program of two soundfonts differs; within a note the key-up is where the hold says
    a = read_audio(next(r for r in recs if r.note_str.startswith("keyboard_acoustic_fluidr3_000-060")), 24000)
    b = read_audio(next(r for r in recs if r.note_str.startswith("keyboard_acoustic_timgm6mb_000-060")), 24000)
    assert np.abs(a - b).max() > 0.01
    for r in recs:
        if r.instrument.startswith("brass"):  # sustained: loud while held, quiet 0.4 s after key-up
            x = read_audio(r, 24000)
            up = int(r.hold_seconds * 24000)
            assert _rms(x[up + 9600:up + 12000]) < 0.3 * _rms(x[up - 4800:up]), r.note_str


def test_render_plan_cycles_velocity_and_hold() -> None:
    plan = data.render_plan(2, [0, 5], list(range(40, 56)), [60, 100], [0.1, 0.3, 1.0, 3.0])
    assert len(plan) == 2 * 2 * 16 and len({(j[0], j[1], j[2]) for j in plan}) == len(plan)
    for s in range(2):
        for g in (0, 5):
            pairs = {(j[3], j[4]) for j in plan if j[:2] == (s, g)}
            assert len(pairs) == 8  # every (velocity, hold) pair on every instrument
    every = data.render_plan(1, [0], [60, 61], [60, 100], [3.0], every_velocity=True)
    assert [(j[2], j[3]) for j in every] == [(60, 60), (60, 100), (61, 60), (61, 100)]


def test_hold_lengths_flow_from_examples_to_time_off(tmp_path) -> None:
    import torch

    from training.model import frame_times
    from training.train import load_config, make_batch, note_holds

    make_synthetic_dataset(tmp_path / "ds", n_instruments=1, pitches=(48, 60, 72), velocities=(100,),
                           hold=(0.3, 1.0, 3.0))
    index = json.loads((tmp_path / "ds" / "examples.json").read_text())
    holds = {k: e["hold_seconds"] for k, e in index.items()}
    assert sorted(holds.values()) == [0.3, 1.0, 3.0]
    del index[sorted(index)[0]]["hold_seconds"]  # an NSynth entry: no field -> 3.0
    (tmp_path / "ds" / "examples.json").write_text(json.dumps(index))
    holds[sorted(index)[0]] = 3.0
    recs = load_examples(tmp_path / "ds")
    assert [r.hold_seconds for r in recs] == [holds[r.note_str] for r in recs]
    cache = build_feature_cache(tmp_path / "ds", PARAMS, tmp_path / "f", frame_stride=2, jobs=1)
    again = FeatureCache.open(tmp_path / "f")
    assert again.hold.dtype == np.float32
    assert [float(h) for h in again.hold] == [holds[n] for n in cache.note_strs]
    run = load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.toml")
    run.model.time_on_max = 2.9
    batch = make_batch(again, np.arange(len(again)), run, torch.Generator().manual_seed(0), len(again),
                       sample_notes=False)
    # recover each sampled frame's time from time_on where it is not clamped, then check time_off
    hop_s = 2 * PARAMS.hop / PARAMS.sample_rate
    for n in range(len(again)):
        hold = float(again.hold[n])
        t = batch["time_on"][n]
        off = batch["time_off"][n]
        exact = t < 2.9  # time_on is the frame time below the clamp
        assert torch.equal(off[exact] == -1.0, t[exact] < hold)
        up = exact & (t >= hold)
        torch.testing.assert_close(off[up], t[up] - hold)
    on, off = frame_times(PARAMS, torch.arange(376), 2, 2.9, note_holds(again, np.array([0, 1, 2]))[:, None])
    for n in range(3):
        first = int(torch.nonzero(off[n] >= 0)[0])
        assert abs(first * hop_s - float(again.hold[n])) <= hop_s
    bad = json.loads((tmp_path / "ds" / "examples.json").read_text())
    bad[sorted(bad)[1]]["hold_seconds"] = 9.0
    (tmp_path / "ds" / "examples.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="hold_seconds"):
        load_examples(tmp_path / "ds")


def test_render_cli_bad_soundfont_is_one_line(tmp_path, capsys) -> None:
    rc = data.main(["render-soundfont", "--out", str(tmp_path / "x"), "--soundfont", str(tmp_path / "no.sf2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "no.sf2" in err and "\n" not in err


def test_gm_family_table() -> None:
    assert data.gm_family(0) == ("keyboard", "acoustic")
    assert data.gm_family(4) == ("keyboard", "electronic")
    assert data.gm_family(89) == ("synth_lead", "synthetic")
    assert data.gm_family(52)[0] == "vocal"
    with pytest.raises(ValueError):
        data.gm_family(128)


def test_nsynth_16k_layout_loads_and_resamples(tmp_path) -> None:
    make_synthetic_dataset(tmp_path, n_instruments=2, pitches=(60,), velocities=(75,), sample_rate=16000)
    recs = load_examples(tmp_path)
    assert [r.note_str for r in recs] == ["keyboard_synthetic_000-060-075", "organ_synthetic_001-060-075"]
    r = recs[1]
    assert (r.pitch, r.velocity, r.instrument, r.family, r.sample_rate) == (60, 75, "organ_synthetic_001", "organ", 16000)
    assert sf.info(str(r.path)).frames == 64000
    native, up = read_audio(r, 16000), read_audio(r, 24000)
    assert native.dtype == up.dtype == np.float32 and len(native) == 64000 and len(up) == 96000
    assert abs(12 * np.log2(strongest_hz(up, 24000) / midi_hz(60))) < 0.5


def _tone(path: Path, pitch: float, rate: int = 24000, seconds: float = 1.0) -> None:
    t = np.arange(int(rate * seconds)) / rate
    x = sum(0.3 / k * np.sin(2 * np.pi * k * midi_hz(pitch) * t) for k in range(1, 6))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, rate, subtype="PCM_16")


def test_wav_folder_pitch_from_name_or_estimate(tmp_path) -> None:
    _tone(tmp_path / "piano" / "piano_C4.wav", 60)
    _tone(tmp_path / "piano" / "F#3.wav", 54)
    _tone(tmp_path / "piano" / "note_067.wav", 67)
    _tone(tmp_path / "piano" / "mystery.wav", 45, rate=44100)
    recs = {r.path.name: r for r in load_wav_folder(tmp_path)}
    assert {k: r.pitch for k, r in recs.items()} == {
        "piano_C4.wav": 60, "F#3.wav": 54, "note_067.wav": 67, "mystery.wav": 45}
    assert recs["mystery.wav"].sample_rate == 44100 and recs["mystery.wav"].instrument == "piano"
    assert len(read_audio(recs["mystery.wav"], 24000)) == 24000
    custom = load_wav_folder(tmp_path, pattern=r"note_(\d+)", on_error="skip")
    assert [r.pitch for r in custom if r.path.name == "note_067.wav"] == [67]


@pytest.mark.parametrize("pitch", [28.0, 45.0, 69.3, 96.0])
def test_estimate_pitch(pitch: float) -> None:
    t = np.arange(24000) / 24000
    x = np.sin(2 * np.pi * midi_hz(pitch) * t) + 0.5 * np.sin(4 * np.pi * midi_hz(pitch) * t)
    assert abs(data.estimate_pitch(x, 24000) - pitch) < 0.2
    assert data.estimate_pitch(np.random.default_rng(0).normal(size=24000), 24000) is None


def _break(root: Path, case: str) -> str:
    """Damage one note of a synthetic dataset in one way; returns the file name to expect."""
    index = json.loads((root / "examples.json").read_text())
    key = sorted(index)[1]
    wav = root / "audio" / f"{key}.wav"
    if case == "unreadable":
        wav.write_bytes(b"RIFF not a wave file at all")
    elif case == "missing_file":
        wav.unlink()
    elif case == "wrong_rate":
        index[key]["sample_rate"] = 16000
    elif case == "missing_key":
        del index[key]["instrument_family_str"]
    elif case == "wrong_length":
        x, rate = sf.read(str(wav))
        sf.write(str(wav), x[:1000], rate, subtype="PCM_16")
    (root / "examples.json").write_text(json.dumps(index))
    return "examples.json" if case == "missing_key" else wav.name


@pytest.mark.parametrize("case", ["unreadable", "missing_file", "wrong_rate", "missing_key", "wrong_length"])
def test_bad_data_stops_or_skips(tmp_path, capsys, case: str) -> None:
    make_synthetic_dataset(tmp_path, n_instruments=1, pitches=(60, 62), velocities=(100,))
    name = _break(tmp_path, case)
    with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
        load_examples(tmp_path)
    capsys.readouterr()
    recs = load_examples(tmp_path, on_error="skip")
    assert len(recs) == 1
    err = capsys.readouterr().err
    assert name in err and "skipped 1" in err


def test_bad_json_and_empty_folder(tmp_path) -> None:
    (tmp_path / "examples.json").write_text("{not json")
    with pytest.raises(DatasetError, match="examples.json"):
        load_examples(tmp_path)
    (tmp_path / "wavs").mkdir()
    with pytest.raises(DatasetError, match="no usable WAV"):
        load_wav_folder(tmp_path / "wavs")


def test_wav_folder_bad_file(tmp_path) -> None:
    _tone(tmp_path / "C4.wav", 60)
    (tmp_path / "D4.wav").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"D4\.wav"):
        load_wav_folder(tmp_path)
    assert [r.pitch for r in load_wav_folder(tmp_path, on_error="skip")] == [60]


def test_feature_cache_round_trip_and_split(tmp_path) -> None:
    make_synthetic_dataset(tmp_path / "ds", n_instruments=3, pitches=(48, 60, 72), velocities=(50, 100))
    cache = build_feature_cache(tmp_path / "ds", PARAMS, tmp_path / "f", frame_stride=2, jobs=1)
    again = FeatureCache.open(tmp_path / "f")
    t = features.frames_stored(PARAMS, 2)
    assert t == 376 and len(again) == 18
    assert again.logmag.shape == (18, 376, 513) and again.logmag.dtype == np.float16
    assert (again.pitch.dtype, again.velocity.dtype, again.family.dtype, again.instrument.dtype) == (
        np.float32, np.float32, np.int16, np.int32)
    assert again.params == PARAMS and again.frame_stride == 2 and again.note_strs == cache.note_strs
    recs = load_examples(tmp_path / "ds")
    i = again.note_strs.index(recs[4].note_str)
    assert again.pitch[i] == recs[4].pitch and again.instruments[again.instrument[i]] == recs[4].instrument
    assert again.families[again.family[i]] == recs[4].family
    ref = log_magnitude(read_audio(recs[4], PARAMS.sample_rate), PARAMS)[::2]
    np.testing.assert_allclose(again.logmag[i].astype(np.float32), ref, atol=0.01)

    train, val = again.split(0.34, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 18 and len(val) == 6
    assert set(again.instrument[val]) <= set(again.instrument[train])
    tr2, va2 = again.split(0.34, seed=1, holdout_instruments=["organ_synthetic_001"])
    held = again.instrument_indices(["organ_synthetic_001"])
    assert len(held) == 6 and not np.isin(held, np.concatenate([tr2, va2])).any()


def test_feature_cache_pads_short_notes_and_skips_bad(tmp_path, capsys) -> None:
    _tone(tmp_path / "wavs" / "C4.wav", 60, seconds=1.0)
    _tone(tmp_path / "wavs" / "E4.wav", 64, rate=16000, seconds=5.0)
    _tone(tmp_path / "wavs" / "G4.wav", 67)
    recs = load_wav_folder(tmp_path / "wavs")
    (tmp_path / "wavs" / "E4.wav").write_bytes(b"broken after loading")  # fails during the build
    with pytest.raises(DatasetError, match=r"E4\.wav"):
        build_feature_cache(recs, PARAMS, tmp_path / "f", jobs=1)
    with pytest.raises(DatasetError):
        FeatureCache.open(tmp_path / "f")  # the failed build left no meta.json
    cache = build_feature_cache(recs, PARAMS, tmp_path / "f", on_error="skip", jobs=1)
    assert "E4.wav" in capsys.readouterr().err
    assert len(cache) == 2 and cache.logmag.shape == (2, 376, 513) and list(cache.pitch) == [60.0, 67.0]
    # 1 s note padded to 4 s: frames after 1.1 s sit at the log floor
    assert np.all(cache.logmag[0, 210:] <= np.log(PARAMS.log_floor) + 0.01)
    assert cache.logmag[0, 50].max() > -3
