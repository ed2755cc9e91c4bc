"""Smoke tests of the benchmark scripts' core functions on tiny inputs (fake preset, real
basic-pitch, real FluidR3 and music21): they run and give finite, sensible numbers."""
from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pytest

from benchmarks import chorale, common, model_quality, pitch_accuracy
from synth.contract import SpectrogramParams
from synth.preset import load_preset
from tests.fake_preset import make_fake_preset

P = SpectrogramParams()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> common.PresetModels:
    root = make_fake_preset(tmp_path_factory.mktemp("bench") / "preset")
    return common.PresetModels(load_preset(root))


def _tone(pitch: float, seconds: float, rate: int = P.sample_rate) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    x = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 8))
    return (x * np.minimum(t / 0.01, 1.0) * np.exp(-t)).astype(np.float32)


def test_frame_times_match_training_contract() -> None:
    import torch
    from training.model import frame_times as torch_frame_times

    from synth.stft import frame_times

    on, off = frame_times(P, (P.frames_per_note + 1) // 2, 2, 2.9)  # the stored frames
    t_on, t_off = torch_frame_times(P, torch.arange(len(on)), 2, 2.9)
    np.testing.assert_allclose(on, t_on.numpy(), atol=1e-6)
    np.testing.assert_allclose(off, t_off.numpy(), atol=1e-6)
    assert on.max() == pytest.approx(2.9, abs=1e-6) and off[0] == -1.0 and off[-1] == pytest.approx(1.0)


def test_markdown_table_and_row_check() -> None:
    text = common.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | y |"]
    with pytest.raises(ValueError):
        common.markdown_table(["a", "b"], [[1]])


def test_strongest_note_and_classification() -> None:
    notes = [common.Note(0.0, 1.0, 60, 0.5), common.Note(0.1, 0.3, 72, 0.9), common.Note(2.0, 3.0, 40, 1.0)]
    assert common.strongest_note(notes, -0.1, 1.0).pitch == 60  # 0.5 x 1.0 beats 0.9 x 0.2
    assert common.strongest_note(notes, 1.5, 2.5).pitch == 40
    assert common.strongest_note(notes, 5.0, 6.0) is None
    assert [common.classify_pitch(60, g) for g in (60, 72, 48, 61, None)] == \
        ["exact", "octave", "octave", "other", "missed"]


def test_magnitude_convergence_reference_points() -> None:
    s = np.abs(np.random.default_rng(0).standard_normal((10, 5)))
    assert common.magnitude_convergence_db(s, np.zeros_like(s)) == pytest.approx(0.0, abs=1e-9)
    assert common.magnitude_convergence_db(s, 0.9 * s) == pytest.approx(-20.0, abs=1e-9)


def test_model_quality_note_scores_are_finite(fake: common.PresetModels) -> None:
    audio = _tone(60, P.note_seconds)
    good = model_quality.evaluate_note(fake, audio, 60, 100)
    assert np.isfinite(good.sc_db) and np.isfinite(good.lsd_db) and good.lsd_db > 0
    # the fake decoder plays pitch 60 whatever we ask, so asking for the wrong pitch must score worse
    wrong = model_quality.evaluate_note(fake, audio, 67, 100)
    assert wrong.sc_db > good.sc_db
    assert model_quality.programs_of(["keyboard_acoustic_004", "bass_electronic_033", "odd"]) == {4, 33}


def test_decoded_note_has_the_requested_pitch(fake: common.PresetModels) -> None:
    log_mag = fake.decode_note(fake.preset.snapshots[0].z, 57, 100, 200, hold_seconds=1.0)
    assert log_mag.shape == (200, P.n_bins) and np.all(np.isfinite(log_mag))
    peak_bin = int(np.argmax(log_mag[50]))
    assert peak_bin == round(440 * 2 ** ((57 - 69) / 12) / (P.sample_rate / P.n_fft))


def test_basic_pitch_transcribes_a_tone() -> None:
    notes = common.transcribe(np.concatenate([_tone(57, 1.0), np.zeros(P.sample_rate // 4, np.float32)]),
                              P.sample_rate)
    best = common.strongest_note(notes)
    assert best is not None and best.pitch == 57 and best.start < 0.1


def test_pitch_accuracy_pipeline_on_fake_preset(fake: common.PresetModels) -> None:
    trials = pitch_accuracy.make_trials(fake.preset, 5, [np.zeros(fake.preset.latent_size, np.float32)])
    assert [t.source for t in trials] == ["snapshot"] * 3 + ["encoder", "random"]
    assert sorted(t.pitch for t in trials) == [28, 46, 64, 82, 100]
    audio, rate, starts = pitch_accuracy.render_decoded(fake, trials)
    assert np.all(np.isfinite(audio)) and np.max(np.abs(audio)) > 0.01
    outcomes = pitch_accuracy.score(trials, common.transcribe(audio, rate), starts)
    rows = pitch_accuracy.table_rows("decoder", trials, outcomes)
    assert rows[-1][1] == "all" and rows[-1][2] == 5
    assert float(rows[-1][3]) == pytest.approx(100 * outcomes.count("exact") / 5)
    assert outcomes.count("exact") >= 3  # the fake decoder is in tune by construction


def test_pitch_accuracy_references_stay_aligned(tmp_path: Path) -> None:
    trials = [pitch_accuracy.Trial(p, np.zeros(1, np.float32), "random") for p in (48, 60, 72)]
    audio, rate, starts = pitch_accuracy.render_reference(trials, 0, tmp_path)
    assert rate == common.RENDER_RATE and len(audio) >= starts[-1] * rate
    assert pitch_accuracy.score(trials, common.transcribe(audio, rate), starts) == ["exact"] * 3
    res, res_rate, res_starts = pitch_accuracy.resynthesize(audio, rate, starts, P)
    slot = int((pitch_accuracy.HOLD_SECONDS + pitch_accuracy.TAIL_SECONDS + pitch_accuracy.GAP_SECONDS) * P.sample_rate)
    assert res_rate == P.sample_rate and len(res) == 3 * slot  # every slot padded back to full length
    assert pitch_accuracy.score(trials, common.transcribe(res, res_rate), res_starts) == ["exact"] * 3


def test_onset_f1_against_the_score(tmp_path: Path) -> None:
    path = tmp_path / "score.mid"
    chorale.write_score_midi(path, 4)
    mid = mido.MidiFile(str(path))
    programs = {(m.channel, m.program) for t in mid.tracks for m in t if m.type == "program_change"}
    assert programs == {(c, 4) for c in range(4)}
    ref = chorale.score_notes(path)
    assert 100 < len(ref.pitches) and np.all(np.diff(ref.intervals[:, 0]) >= 0)
    exact = [common.Note(a, b, int(p), 0.5) for (a, b), p in zip(ref.intervals, ref.pitches)]
    assert chorale.onset_f1(ref, exact)[0] == pytest.approx(1.0)
    late = [common.Note(n.start + 0.1, n.end + 0.1, n.pitch, 0.5) for n in exact]
    assert chorale.onset_f1(ref, late)[0] == pytest.approx(0.0)
    assert chorale.onset_f1(ref, [])[0] == 0.0


def test_fluidsynth_render_is_audible(tmp_path: Path) -> None:
    path = tmp_path / "one.mid"
    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    mid.tracks.append(mido.MidiTrack([mido.Message("program_change", program=0, time=0),
                                      mido.Message("note_on", note=60, velocity=100, time=0),
                                      mido.Message("note_off", note=60, time=480)]))
    mid.save(str(path))
    audio = common.render_fluidsynth(path, tail_seconds=0.2)
    assert len(audio) == pytest.approx(0.7 * common.RENDER_RATE, abs=10) and np.max(np.abs(audio)) > 0.01


def test_snapshot_choice(fake: common.PresetModels) -> None:
    pick = lambda prog: chorale.choose_snapshot(fake.preset, prog).name  # noqa: E731  snapshots: 0, 5, 9
    assert pick(9) == "snap2"
    assert pick(4) == "snap0"  # same GM family (keyboard) as program 0
    assert pick(100) == "snap2"  # no family match: nearest program number
    with pytest.raises(common.BenchmarkError):
        chorale.choose_snapshot(fake.preset, 0, "nope")


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for mod in (model_quality, pitch_accuracy, chorale):
        assert mod.main(["--preset", str(tmp_path / "missing")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert chorale.main(["--program", "x"]) == 2


def test_capture_fidelity_runs_on_the_fake_preset(tmp_path: Path) -> None:
    """Real FluidR3 notes captured with the fake preset: every section runs and gives finite figures."""
    from benchmarks import capture_fidelity as cf

    preset = load_preset(make_fake_preset(tmp_path / "fake"))
    table = cf.fidelity_table(preset, [56], (72,), hold=0.5)
    cells = next(line for line in table.splitlines() if line.startswith("| 56 ")).strip("|").split("|")
    figures = [float(c) for c in cells[4:8]] + [float(c) for c in cells[8].split("/")]
    assert all(np.isfinite(figures) & (np.array(figures) > 0)), cells
    assert cells[9].strip() == cells[10].strip() == "-"  # one snapshot is nearest: no tie to check
    assert "only 1 programs" in table and "equally near" in table
    assert "<= 1 s" in cf.speed_table(preset, 56, repeats=1)
    own = cf.self_capture_table(preset)  # the fake snapshots' own notes, captured
    summary = own.splitlines()[-1]
    assert summary.startswith("self-capture: the capture is the closest on ") and f"of {len(cf.SELF_PROGRAMS)}" in summary
    assert all(np.isfinite(float(line.split("|")[3])) for line in own.splitlines()[2:-2])
    times = [float(c) for c in cf.change_table(preset, repeats=1).splitlines()[2].strip("|").split("|")[1:4]]
    assert all(0 < t < 40 for t in times)


def test_loudness_of_a_capture_on_the_fake_preset(tmp_path: Path) -> None:
    """A real FluidR3 C4 captured with the fake preset plays audibly at every key, the limiter keeping it
    at or below 0 dBFS; with its measured level it plays in the snapshots' band."""
    from benchmarks import loudness

    NOTE_BAND = loudness.NOTE_RANGE_DBFS
    preset = load_preset(make_fake_preset(tmp_path / "fake"))
    (levelled,), (plain,) = loudness.capture_rows(preset, [56])
    assert levelled[0] == plain[0] == 56 and len(levelled) == len(plain) == 1 + len(loudness.KEYS)
    for row in (levelled, plain):
        peaks = np.array(row[1:], np.float64)
        assert np.all(np.isfinite(peaks)) and np.all(peaks <= 0.0) and np.all(peaks > -60.0), peaks
    # the keys played lie between the measured ones (synth.loudness.CAPTURE_LEVEL_KEYS): nearer the
    # band's middle on the whole, not each one in it (the fake decoder's level is rough across keys)
    middle = np.mean(NOTE_BAND)
    assert np.mean(np.abs(np.array(levelled[1:]) - middle)) < np.mean(np.abs(np.array(plain[1:]) - middle)), (levelled, plain)


def test_loudness_of_random_timbres_on_the_fake_preset(tmp_path: Path) -> None:
    """The random table plays each draw with the synth's estimated level and without: with it nearer the band."""
    from benchmarks import loudness

    preset = load_preset(make_fake_preset(tmp_path / "fake"))
    levelled, plain = loudness.random_rows(preset, range(3))
    assert [r[0] for r in levelled] == [r[0] for r in plain] == [0, 1, 2]
    middle = np.mean(loudness.NOTE_RANGE_DBFS)
    miss = [np.mean(np.abs(np.array([r[1:] for r in rows]) - middle)) for rows in (levelled, plain)]
    assert miss[0] < miss[1], miss
    assert "notes inside" in loudness.band_table(levelled, "random", "seed")


def test_loudness_knob_table_on_the_fake_preset(tmp_path: Path) -> None:
    from benchmarks import loudness

    preset = load_preset(make_fake_preset(tmp_path / "fake"))
    lines = loudness.knob_table(preset, range(0, 1)).splitlines()
    assert len(lines) == 2 + preset.knobs.count + 1 and lines[-1].startswith("| all |")
    followed, plain = ([float(v) for v in cell.split(" / ")] for cell in lines[-1].strip("|").split("|")[1:3])
    assert followed[0] < plain[0], (followed, plain)  # the median change is smaller with the follower


def test_timbre_space_knobs_and_engine_tuning_on_the_fake_preset(fake: common.PresetModels) -> None:
    from benchmarks import timbre_space
    from export.knob_travel import KnobProbe, cents_at, held_notes

    rows = timbre_space.knob_section(fake.preset, KnobProbe(fake.preset))
    assert len(rows) == fake.preset.knobs.count
    assert all(np.isfinite(float(r[2])) and float(r[3]) >= 0 for r in rows)
    keys = (31, 69)  # a low key, where only the engine's pitch hint keeps the phase in tune
    assert all(np.abs(note).max() > 1e-3 for note in held_notes(fake.preset, fake.preset.knobs.center, keys))
    assert all(c is not None and abs(c) < 20 for c in cents_at(fake.preset, fake.preset.knobs.center, keys))


def test_equally_near_family_snapshots_are_the_ties_program_change_breaks(tmp_path: Path) -> None:
    """The fairness check compares capture with every family snapshot as near (in program number) as
    the one a program change recalls; program_map takes the lowest of them."""
    from benchmarks.capture_fidelity import equally_near_family_snapshots

    preset = load_preset(make_fake_preset(tmp_path / "fake", programs=(0, 2, 4, 9)))
    assert equally_near_family_snapshots(preset, 1) == [0, 1]  # 0 and 2 both one away
    assert preset.programs[1] == 0
    assert equally_near_family_snapshots(preset, 3) == [1, 2]
    assert equally_near_family_snapshots(preset, 4) == [2]  # its own program: no tie
    assert equally_near_family_snapshots(preset, 12) == [3]  # GM group 1 holds program 9 alone
    assert equally_near_family_snapshots(preset, 20) == [preset.programs[20]]  # no snapshot in group 2


def test_attack_table_on_the_fake_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks.attack`` renders FluidR3's notes and the engine's, and prints one row per
    (floor, skip) plus the real notes; a real piano note sounds its head, a clean highs figure."""
    import sys

    import synth.engine
    from benchmarks import attack

    for name in ("START_NORM_FLOOR", "START_SKIP_DB"):  # the benchmark sets them: restored after the test
        monkeypatch.setattr(synth.engine, name, getattr(synth.engine, name))
    monkeypatch.setattr(attack, "PROGRAMS", (0,))
    monkeypatch.setattr(attack, "KEYS", (48, 60))
    real = attack.fluidsynth_notes()
    assert set(real) == {(0, 48), (0, 60)} and all(0.0 <= rise < 20.0 and -30 < head < 12 for rise, head in real.values())
    preset = make_fake_preset(tmp_path / "fake")
    monkeypatch.setattr(sys, "argv", ["attack", "--preset", str(preset), "--skips=-22,-inf"])
    assert attack.main() == 0
    out = capsys.readouterr().out
    assert "skip -22 dB" in out and "skip -inf dB" in out and "FluidR3 (the real notes)" in out
    x, first = attack.engine_notes(str(preset), 0.01)[0][2:]
    assert -120.0 < attack.head_highs_db(x, first) < -10.0
