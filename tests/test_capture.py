"""Timbre capture: a recording -> a latent (fake preset whose encoder inverts its decoder, and the real
shipped encoder), and a one-line message for every kind of recording it cannot use."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from synth.capture import (
    CAPTURE_PEAK_DBFS,
    CaptureError,
    capture,
    capture_file,
    pull_toward_data,
    read_recording,
)
from synth.engine import Engine
from synth.key_track import OWN_KEY_SPAN
from synth.preset import Preset, load_preset
from synth.refine import Refiner
from tests.fake_preset import capture_subspace, make_fake_preset

SR = 48000
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("capture") / "fake"))


def engine_note(preset: Preset, z: np.ndarray | None = None, program: int | None = None, key: int = 60,
                hold_s: float = 3.6, seconds: float = 4.0, master_gain: float = 1.0,
                track: np.ndarray | None = None) -> np.ndarray:
    """One note rendered by the engine (offline) from latent ``z`` (played as its own timbre, with
    its key tracking ``track`` when given) or program ``program`` -> mono ``(n,)``."""
    eng = Engine(preset, device="cpu", knob_pickup=False, master_gain=master_gain)
    if z is not None:
        eng.restore_timbre(0, np.asarray(z, np.float32), snapshot_level=False, track=track)
    eng.prepare(SR, 1024, warm=False)
    if program is not None:
        eng.push(0, 0xC0, program, 0)
    eng.push(8, 0x90, key, 100)
    eng.push(8 + int(hold_s * SR), 0x80, key, 0)
    out = np.zeros((int(seconds * SR), 2), np.float32)
    for a in range(0, len(out), 1024):
        eng.process(out[a:a + 1024])
    return out[:, 0].copy()


def tone(pitch: float, seconds: float = 1.0, rate: int = SR, amp: float = 0.3, harmonics: int = 8) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    x = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, harmonics + 1) if h * f0 < rate / 2.2)
    env = np.minimum(1.0, t / 0.01) * np.exp(-0.5 * t)
    return (amp * x * env / np.abs(x).max()).astype(np.float32)


def test_encoder_recovers_the_latent_that_made_the_note(preset: Preset) -> None:
    """The encoder's point (``refine=False``); the refinement then also listens to the fake snapshots'
    other octaves, which the fake decoder does not tie to the note."""
    basis = capture_subspace()
    rng = np.random.default_rng(3)
    for _ in range(2):
        z = (rng.standard_normal(len(basis)) @ basis).astype(np.float32)
        cap = capture(preset, engine_note(preset, z), SR, refine=False)
        assert abs(cap.pitch - 60.0) < 0.1
        assert np.linalg.norm(cap.z - z) < 0.05 * np.linalg.norm(z), (cap.z, z)
        assert cap.distance is not None and cap.distance < 5.0  # the map's points lie in that subspace
        # another latent, another capture: the encoder is not returning a constant
        assert np.linalg.norm(cap.z - (rng.standard_normal(len(basis)) @ basis)) > 0.5


def test_level_stereo_rate_format_and_leading_silence_do_not_matter(preset: Preset, tmp_path: Path) -> None:
    """Same encoder point from the same note at another level, rate, format and place in the file (compared
    in the latent directions the fake decoder lets a recording determine; the refined point on the real
    preset: ``test_real_capture_is_stable_across_level_and_rate``)."""
    basis = capture_subspace()
    note = engine_note(preset, basis[0] * 1.5)
    ref = capture(preset, note, SR, refine=False)
    quiet_late = np.concatenate([np.zeros(SR // 2, np.float32), 0.05 * note])  # -26 dB, after 0.5 s of silence
    stereo = np.stack([quiet_late, quiet_late], axis=1)
    import soxr

    path = tmp_path / "take.flac"
    sf.write(path, soxr.resample(stereo, SR, 44100), 44100)
    cap = capture(preset, *read_recording(path), refine=False)
    assert -0.03 <= cap.onset_s - 0.5 <= 0.0  # the capture starts just before the attack
    assert np.linalg.norm(basis @ (cap.z - ref.z)) < 0.05 * np.linalg.norm(basis @ ref.z)
    ogg = tmp_path / "take.ogg"
    sf.write(ogg, stereo, SR)
    ogg_z = capture(preset, *read_recording(ogg), refine=False).z
    assert np.linalg.norm(basis @ (ogg_z - ref.z)) < 0.1 * np.linalg.norm(basis @ ref.z)
    assert -0.03 <= capture_file(preset, ogg).onset_s - 0.5 <= 0.0  # the file path, refined


def test_most_prominent_note_of_a_longer_recording(preset: Preset) -> None:
    soft, loud = tone(55, 1.0, amp=0.05), tone(67, 1.5, amp=0.4)
    x = np.concatenate([np.zeros(SR // 4, np.float32), soft, loud, 0.5 * tone(48, 1.0, amp=0.1)])
    cap = capture(preset, x, SR)
    assert abs(cap.pitch - 67) < 0.2 and -0.03 <= cap.onset_s - 1.25 <= 0.0


def _levelled_note(x: np.ndarray, seconds: float = 0.5) -> np.ndarray:
    """The first ``seconds`` of ``x`` at the fake preset's rate and capture's level, as capture hands it on."""
    import soxr

    note = soxr.resample(x[: int(seconds * SR)], SR, 24000).astype(np.float32)
    return note * np.float32(10 ** (CAPTURE_PEAK_DBFS / 20) / np.abs(note).max())


def test_capture_refines_and_never_ends_worse_than_the_encoder(preset: Preset) -> None:
    """A plain capture refines (what ``--timbre``/``--capture`` store): it keeps the best point it has seen,
    starting from the encoder's, so on its own loss it can only gain; and it moves the point (not a no-op)."""
    refiner = Refiner(preset)
    x = tone(60, 1.5)  # a sawtooth-like tone the fake decoder cannot reproduce exactly: room to improve
    plain = capture(preset, x, SR, refine=False)
    refined = capture(preset, x, SR, refiner=refiner)
    assert not np.allclose(refined.z, plain.z)
    refiner(plain.z, _levelled_note(x), refined.pitch)  # sets the loss's target
    loss = [float(refiner.loss_of(z)) for z in (plain.z, refined.z)]
    assert loss[1] < loss[0]


def test_keyboard_prior_shapes_the_other_octaves(preset: Preset, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit listens to the other octaves too: against what the nearest training instruments sound like
    there, the refined point does better than a fit to the recorded note alone."""
    import synth.refine

    note, pitch = _levelled_note(tone(60, 1.5)), 60.0
    refiner = Refiner(preset)
    z0 = capture(preset, tone(60, 1.5), SR, refine=False).z
    with_prior = refiner(z0, note, pitch)
    octaves = refiner._terms[1:]
    assert sorted(float(t.pitch[0]) for t in octaves) == [36.0, 48.0, 72.0, 84.0]
    monkeypatch.setattr(synth.refine, "KEYBOARD_OFFSETS", ())
    note_only = Refiner(preset)(z0, note, pitch)
    on_octaves = [float(refiner._loss(((z - preset.latent_mean) / preset.latent_std)[None], octaves)[0])
                  for z in (with_prior, note_only)]
    assert on_octaves[0] < on_octaves[1], on_octaves


def test_refinement_without_a_latent_map_fits_the_note_alone(tmp_path: Path) -> None:
    bare = load_preset(make_fake_preset(tmp_path / "bare", latent_map=False))
    refiner = Refiner(bare)
    x = tone(60, 1.5)
    plain = capture(bare, x, SR, refine=False)
    refined = capture(bare, x, SR, refiner=refiner)
    assert len(refiner._terms) == 1 and not np.allclose(refined.z, plain.z)


@pytest.mark.parametrize("pitch", [45.37, 60.13, 71.9])
def test_pitch_is_read_exactly_off_the_harmonics(preset: Preset, pitch: float) -> None:
    """The refinement matches partials bin by bin, so the pitch must be exact: a few cents, not YIN's tenth of
    a semitone; ``harmonic_pitch`` finds it from a coarse estimate 0.2 semitone off."""
    from synth.pitch import harmonic_pitch

    x = tone(pitch, 1.5)
    assert abs(capture(preset, x, SR, refine=False).pitch - pitch) < 0.02
    assert abs(harmonic_pitch(x[SR // 10: SR], SR, pitch + 0.2, 5000.0) - pitch) < 0.02


def test_given_pitch_skips_detection(preset: Preset) -> None:
    noise = (0.2 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    assert capture(preset, noise, SR, pitch=62).pitch == 62
    with pytest.raises(CaptureError, match="outside the preset's range"):
        capture(preset, tone(60), SR, pitch=130)


@pytest.mark.parametrize("case, message", [
    ("silent", "too quiet \\(silent"),
    ("quiet", "too quiet \\(peaks at -6[0-9] dBFS"),
    ("clipped", "clipped"),
    ("short", "too short"),
    ("noise", "no clear pitched note"),
    ("chord", "sounds polyphonic"),
])
def test_bad_recordings_get_their_message(preset: Preset, case: str, message: str) -> None:
    rng = np.random.default_rng(1)
    x = {
        "silent": lambda: np.zeros(SR, np.float32),
        "quiet": lambda: tone(60, amp=10 ** (-62 / 20)),
        "clipped": lambda: np.clip(tone(60, amp=3.0), -1.0, 1.0),
        "short": lambda: np.concatenate([tone(60, 0.04), np.zeros(SR // 2, np.float32)]),
        "noise": lambda: (0.2 * rng.standard_normal(SR)).astype(np.float32),
        "chord": lambda: tone(60) + tone(64) + tone(67),
    }[case]()
    with pytest.raises(CaptureError, match=message) as err:
        capture(preset, x, SR, where="take.wav")
    assert "\n" not in str(err.value) and str(err.value).startswith("take.wav: ")


def test_bad_files_get_one_line(preset: Preset, tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such file"):
        read_recording(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with pytest.raises(CaptureError, match="not a readable WAV"):
        read_recording(junk)
    nan = tmp_path / "nan.wav"
    x = tone(60)
    x[100] = np.nan
    sf.write(nan, x, SR, subtype="FLOAT")
    with pytest.raises(CaptureError, match="NaN"):
        read_recording(nan)


def test_level_is_normalised_and_pull_moves_toward_the_data(preset: Preset) -> None:
    cap = capture(preset, tone(60), SR)
    assert CAPTURE_PEAK_DBFS < 0
    far = cap.z + 50.0
    d_far, i = preset.latent_map.distance(far)
    pulled = pull_toward_data(preset, far, 0.5)
    assert np.allclose(pulled, far + 0.5 * (preset.latent_map.mu[i] - far), atol=1e-4)
    assert preset.latent_map.distance(pulled)[0] < d_far
    assert np.array_equal(pull_toward_data(preset, far, 0.0), far.astype(np.float32))
    with pytest.raises(CaptureError, match="--pull"):
        pull_toward_data(preset, far, 1.5)


def _held_mag(x: np.ndarray, preset: Preset, hold_s: float) -> np.ndarray:
    """``(T, F)`` STFT magnitudes of the held part (0.1 s .. the key's release) of a note rendered at ``SR``."""
    import soxr

    from synth.stft import stft

    mag = np.abs(stft(soxr.resample(x, SR, preset.params.sample_rate), preset.params))
    return mag[int(0.1 * preset.params.frame_rate): int(hold_s * preset.params.frame_rate)]


def _played_lsd(real: Preset, ref: np.ndarray, timbre, hold: float, seconds: float) -> float:  # noqa: ANN001
    """Level-matched LSD (dB) from ``ref`` (``_held_mag``) to ``timbre`` (a Capture or a Snapshot) played as
    users get it: its C4 held ``hold`` s, key tracking and all."""
    from synth.stft import log_spectral_distance_db

    played = _held_mag(engine_note(real, z=timbre.z, hold_s=hold, seconds=seconds, track=timbre.track), real, hold)
    return log_spectral_distance_db(ref, played * np.sqrt(np.mean(ref ** 2) / np.mean(played ** 2)))


def test_real_capture_of_a_snapshot_note_sounds_like_it() -> None:
    """The shipped preset: a note the engine plays from a snapshot, captured (refined, as users get it) and
    played back at its key, is closer to it (LSD over the held part, level-matched) than 0.7 times the
    median of 12 other snapshots' notes, and at most one of them is closer. (Closer than all 12 held for
    the one-latent preset on these four programs; with the key-tracked one a sibling sometimes sounds
    nearer: the rock organ's capture 6.36 dB, one other 6.35; over 16 programs the capture is the
    closest on 8, see ``benchmarks.capture_fidelity``'s self-capture table. In latent distance this
    does not hold: the snapshots are fitted to their instruments across the keyboard, not to one note.)"""
    real = load_preset(REPO / "presets" / "default")
    hold, seconds = 1.5, 2.0
    rng = np.random.default_rng(0)

    def lsd(ref: np.ndarray, timbre) -> float:  # noqa: ANN001
        return _played_lsd(real, ref, timbre, hold, seconds)

    for program in (19, 24, 56, 81):  # organ, guitar, brass, synth lead
        snap = real.snapshot_for_program(program)
        x = engine_note(real, program=program, hold_s=hold, seconds=seconds)
        ref = _held_mag(x, real, hold)
        mine = lsd(ref, capture(real, x, SR))
        others = [s for s in real.snapshots if s is not snap]
        theirs = [lsd(ref, others[i]) for i in rng.choice(len(others), 12, replace=False)]
        assert sum(t < mine for t in theirs) <= 1 and mine < 0.7 * np.median(theirs), (snap.name, mine, theirs)


def test_real_capture_is_stable_across_level_and_rate() -> None:
    """The shipped preset, a plain (refined) capture: a snapshot's note captured again 26 dB quieter, after
    0.5 s of silence, at 44.1 kHz sounds like the first capture: the two captures' notes differ by
    under 0.4 times the median distance from the note to 12 other snapshots' notes (LSD over the held
    part, level-matched; measured 0.21-0.35 on two presets), and lie within half the snapshots'
    median latent distance of each other. (Latent distance alone is a loose proxy: over programs 0,
    19, 24, 56 and 81 the two captures lay 1.0-2.7 std apart on each of the last two default presets,
    one program over 2 std on each, while their notes differed by 2.3-3.8 dB on both.)"""
    import soxr

    real = load_preset(REPO / "presets" / "default")
    zs = np.array([s.z for s in real.snapshots], np.float32)
    spread = np.median(np.linalg.norm((zs[:, None] - zs[None]) / real.latent_std, axis=2))
    hold, seconds = 1.5, 2.0
    rng = np.random.default_rng(0)

    def held(timbre) -> np.ndarray:  # noqa: ANN001 - a Capture or a Snapshot, played as users get it
        return _held_mag(engine_note(real, z=timbre.z, hold_s=hold, seconds=seconds, track=timbre.track), real, hold)

    for program in (19, 56):
        x = engine_note(real, program=program, hold_s=3.0)
        a = capture(real, x, SR)
        quiet = np.concatenate([np.zeros(SR // 2, np.float32), 0.05 * x])
        b = capture(real, soxr.resample(quiet, SR, 44100).astype(np.float32), 44100)
        apart = np.linalg.norm((a.z - b.z) / real.latent_std)
        snap = real.snapshot_for_program(program)
        note = held(snap)
        others = [s for s in real.snapshots if s is not snap]
        typical = np.median([_played_lsd(real, note, others[i], hold, seconds)
                             for i in rng.choice(len(others), 12, replace=False)])
        heard = _played_lsd(real, held(a), b, hold, seconds)
        assert heard < 0.4 * typical and apart < 0.5 * spread, (program, heard, typical, apart, spread)


def test_neighbours_are_judged_by_their_notes_at_the_captured_pitch(preset: Preset,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The keyboard prior picks the training instruments that sound like the note by their latent map notes
    near its pitch, not by their snapshots (fitted across the keyboard, they can sound unlike the instrument
    at one key): a note made from one program's map notes at C4 gets that program as its neighbour, although
    its snapshot (the fake preset's random latent) sounds like something else."""
    import dataclasses

    import synth.refine
    from synth.latent_map import LatentMap

    basis = capture_subspace()
    programs = [s.program for s in preset.snapshots]
    at_c4 = (np.random.default_rng(11).standard_normal((len(programs), len(basis))) @ basis * 1.5).astype(np.float32)
    heard = dataclasses.replace(preset, latent_map=LatentMap(
        mu=at_c4, sigma=np.full_like(at_c4, 0.2), family=np.zeros(len(programs), np.int16),
        program=np.array(programs, np.int16), pitch=np.full(len(programs), 60.0, np.float32), families=("piano",)))
    monkeypatch.setattr(synth.refine, "NEIGHBOURS", 1)
    refiner = Refiner(heard)
    for i in range(len(programs)):
        note = _levelled_note(engine_note(heard, at_c4[i]), seconds=1.0)
        refiner(at_c4[i], note, 60.0)
        octave = next(t for t in refiner._terms[1:] if float(t.pitch[0]) == 72.0)
        # no map note lies near key 72, so the prior plays each neighbour's snapshot there
        snaps = np.array([s.z for s in heard.snapshots], np.float32)
        sounds = refiner._decode(snaps, octave.pitch, octave.time_on)
        assert int(np.argmin(np.abs(np.maximum(sounds, octave.clip) - octave.target).mean(axis=(1, 2)))) == i


def test_capture_borrows_the_key_tracking_of_what_it_sounds_like(tmp_path: Path) -> None:
    """On a key-tracked preset a capture gets the tracking of the instruments it sounds like (weighted), and
    at its own key (an octave either side) the way to the note's own reading; the engine then plays it key
    by key, and the library keeps it exactly."""
    from synth.engine import Engine
    from synth.library import Library
    from synth.timbre import TimbreInfo

    tracked = load_preset(make_fake_preset(tmp_path / "tracked", key_track=True))
    cap = capture(tracked, engine_note(tracked, program=5, hold_s=1.0, seconds=1.2), SR)
    assert cap.track is not None and cap.track.shape == (128, tracked.latent_size)
    # an octave and more away: a weighted mean of the snapshots' tracking, each relative to the captured key
    relative = np.stack([s.track - s.track[60] for s in tracked.snapshots])
    far = np.abs(np.arange(128) - 60) >= OWN_KEY_SPAN
    assert np.all(cap.track[far] >= relative.min(axis=0)[far] - 1e-5)
    assert np.all(cap.track[far] <= relative.max(axis=0)[far] + 1e-5)
    assert np.abs(cap.track[36]).max() > 0.05
    eng = Engine(tracked, device="cpu")
    eng.prepare(SR, 1024, warm=False)
    eng.set_timbre_now(eng.store_timbre(cap.z, TimbreInfo("capture", "test"), cap.track))
    eng.push(0, 0x90, 36, 100)
    eng.process(np.zeros((1024, 2), np.float32))
    np.testing.assert_allclose(eng._bz[0], cap.z + cap.track[36], atol=1e-5)
    lib = Library.open(tmp_path / "lib")
    lib.store(tracked, "mine", cap.z, cap.pitch, track=cap.track)
    kept = Library.open(tmp_path / "lib").find(tracked, "mine")
    assert kept is not None and kept.track() is not None
    np.testing.assert_allclose(kept.track(), cap.track, atol=1e-5)  # every key, its own key's fade included
    # an untracked preset's capture tracks its own key only
    plain = capture(load_preset(make_fake_preset(tmp_path / "plain")), engine_note(tracked, program=5), SR)
    assert plain.track is not None and not np.any(plain.track[far]) and np.any(plain.track[60])


def test_valley_weight_counts_partials_more_than_the_valleys_between_them(preset: Preset) -> None:
    """``ValleyWeight`` (capture's note term): 1 at a partial, ``floor`` from
    ``depth_db`` under the nearest partial down; a refiner with it still fits a note."""
    from synth.refine import ValleyWeight

    target = np.full((1, 40), np.log(1e-5), np.float32)
    target[0, 10], target[0, 30] = np.log(0.1), np.log(0.01)  # two partials, 20 dB apart
    target[0, 12] = np.log(0.1 * 10 ** (-20 / 20))  # 20 dB under its partial
    w = ValleyWeight(radius=3, depth_db=40.0, floor=0.1).weights(target)
    assert w[0, 10] == w[0, 30] == 1.0  # each partial is its own peak, loud or soft
    assert w[0, 12] == pytest.approx(0.5, abs=1e-6)  # halfway down the 40 dB
    assert w[0, 13] == pytest.approx(0.1)  # the floor next to a partial: far under it
    assert w[0, 20] == 1.0  # beyond the radius of every partial the floor is its own peak
    x = engine_note(preset, capture_subspace()[0] * 1.5, hold_s=1.0, seconds=1.2)
    plain = capture(preset, x, SR, refine=False)
    weighted = capture(preset, x, SR, refiner=Refiner(preset, ValleyWeight(5, 40.0, 0.1)))
    assert np.isfinite(weighted.z).all() and np.linalg.norm(weighted.z - plain.z) < 5.0


def test_real_read_brings_the_decoder_to_a_whole_note() -> None:
    """The shipped preset: frames the decoder itself draws from a snapshot (its pitch, velocity and hold
    known, as the feature cache stores a training note) are read from the latent mean, far off: the read
    point reproduces them much more closely than its start, and from the true point it stays there
    (it keeps the best point it has seen); read as a recording (its level unknown), 12 dB hotter, it
    still comes close."""
    from synth.contract import DECODER_INPUTS, DECODER_OUTPUT
    from synth.model_file import cpu_session, read_model
    from synth.stft import frame_times, magnitude_from_log

    real = load_preset(REPO / "presets" / "default")
    decoder = cpu_session(read_model(real.decoder_path))  # the full decoder: not the parts the reader decodes
    frames_n = -(-real.params.frames_per_note // real.encoder_frame_stride)
    pitch, velocity, hold = 55.0, 90.0, 0.3
    on, off = frame_times(real.params, frames_n, real.encoder_frame_stride, real.time_on_max, hold)

    def frames_of(z: np.ndarray) -> np.ndarray:
        feeds = dict(zip(DECODER_INPUTS, (np.repeat(np.asarray(z, np.float32)[None], frames_n, 0),
                                          np.full(frames_n, pitch, np.float32), np.full(frames_n, velocity, np.float32),
                                          on, off)))
        return decoder.run([DECODER_OUTPUT], feeds)[0]

    def sc_db(z: np.ndarray, level_free: bool = False) -> float:
        ref, est = magnitude_from_log(note, real.params), magnitude_from_log(frames_of(z), real.params)
        if level_free:  # after the one gain that matches the energies
            est = est * np.linalg.norm(ref) / np.linalg.norm(est)
        return 20 * np.log10(max(float(np.linalg.norm(ref - est)), 1e-30) / np.linalg.norm(ref))

    reader = Refiner(real)
    for program in (19, 56):  # organ, brass
        z_true = real.snapshot_for_program(program).z_at(pitch)
        note = frames_of(z_true)
        start = real.latent_mean.astype(np.float32)
        read = reader.read(start, note, pitch, velocity, hold, level_known=True)
        assert sc_db(read) < sc_db(start) - 4.0, (program, sc_db(start), sc_db(read))
        again = reader.read(z_true, note, pitch, velocity, hold, level_known=True)
        assert sc_db(again) < -20.0, (program, sc_db(again))
        # a recording's level is its microphone's: 12 dB hotter, a level-free read lands where a plain one does
        hot = np.log(magnitude_from_log(note, real.params) * 10 ** (12 / 20) + real.params.log_floor)
        free = reader.read(start, hot.astype(np.float32), pitch, velocity, hold)
        assert sc_db(free, True) < sc_db(start, True) - 4.0, (program, sc_db(start, True), sc_db(free, True))


def test_the_captured_key_plays_the_notes_own_reading(preset: Preset) -> None:
    """A capture's own key plays ``Refiner.read``'s point (the reading of the whole note), the keys an
    octave and more away the keyboard fit's, and the tone curve is fitted to the reading."""

    class Reading(Refiner):
        def read(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - records what capture read
            self.reading = super().read(*args, **kwargs)
            return self.reading

    refiner = Reading(preset)
    cap = capture(preset, tone(60, 1.5), SR, refiner=refiner)
    reading = refiner.reading
    np.testing.assert_allclose(cap.z_at(cap.pitch), reading, atol=1e-5)
    assert not np.allclose(cap.z, reading, atol=1e-3)  # the keyboard fit moved on from it
    np.testing.assert_allclose(cap.z_at(cap.pitch + OWN_KEY_SPAN), cap.z, atol=1e-6)
    np.testing.assert_allclose(cap.z_at(cap.pitch - OWN_KEY_SPAN // 2), 0.5 * (cap.z + reading), atol=1e-5)
    np.testing.assert_allclose(cap.tone_db, refiner.tone_for(reading), atol=1e-6)  # the note term is still set


def test_describe_names_the_nearest_family_with_its_article() -> None:
    from synth.capture import Capture

    real = load_preset(REPO / "presets" / "default")
    m = real.latent_map
    assert m is not None
    seen = {}
    for i in range(m.size):
        family = m.families[m.family[i]]
        seen.setdefault(family[:1].lower() in "aeiou", (i, family))
    for vowel, (i, family) in seen.items():
        text = Capture(m.mu[i].astype(np.float32), 60.0, 0.0, 2.0, i, 0.1, None, None).describe(real)
        assert f", {'an' if vowel else 'a'} {family} note" in text, text
    assert True in seen and False in seen  # organ / brass: both articles are checked
