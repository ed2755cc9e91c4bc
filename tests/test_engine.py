"""Engine behaviour on the fake preset (real onnxruntime, real StreamingPhase, real numba)."""
from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from synth.engine import Engine
from synth.limiter import Limiter
from synth.preset import Preset, load_preset
from tests.fake_preset import HARMONICS, make_fake_preset, timbre_weights

REPO = Path(__file__).resolve().parents[1]
SR = 48000
BLOCK = 128
ON, OFF, CC, PC, BEND = 0x90, 0x80, 0xB0, 0xC0, 0xE0


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("engine") / "fake"))


def make(preset: Preset, rate: int = SR, **kw: object) -> Engine:
    eng = Engine(preset, device="cpu", **kw)  # type: ignore[arg-type]
    eng.prepare(rate, BLOCK)
    return eng


def render(eng: Engine, events: list[tuple[int, int, int, int]], n: int) -> np.ndarray:
    """Queue ``(t, status, d1, d2)`` events and render ``n`` samples; returns channel 0."""
    for t, st, d1, d2 in events:
        assert eng.push(t, st, d1, d2)
    out = np.zeros((n, 2), np.float32)
    for i in range(0, n, BLOCK):
        eng.process(out[i:i + BLOCK])
    assert np.array_equal(out[:, 0], out[:, 1])
    return out[:, 0].copy()


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def peak_freq(x: np.ndarray, rate: int, near: float) -> float:
    """Frequency of the strongest spectral peak within a semitone of ``near`` (parabolic interpolation)."""
    zp = 8 * len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), zp))
    df = rate / zp
    lo, hi = int(near * 2 ** (-1 / 12) / df), int(near * 2 ** (1 / 12) / df) + 1
    k = lo + int(np.argmax(spec[lo:hi]))
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * df


def cents(f: float, ref: float) -> float:
    return 1200 * np.log2(f / ref)


def midi_hz(key: float) -> float:
    return 440.0 * 2 ** ((key - 69) / 12)


def test_note_on_off_and_release_to_silence(preset: Preset) -> None:
    eng = make(preset)
    off = SR // 2
    x = render(eng, [(1000, ON, 60, 100), (off, OFF, 60, 0)], SR + SR // 2)
    assert rms(x[5000:off]) > 0.01
    end = off + int(preset.release_seconds * SR) + int(0.035 * SR)  # release, then the 30 ms fade
    assert rms(x[off:off + 2400]) > 0.001  # still sounding right after the key is up
    assert np.all(x[end:] == 0.0)
    assert eng.stats.active_voices == 0 and eng.idle


def test_velocity_zero_is_note_off_and_velocity_scales(preset: Preset) -> None:
    a = render(make(preset), [(0, ON, 64, 100), (9000, OFF, 64, 0)], 20000)
    b = render(make(preset), [(0, ON, 64, 100), (9000, ON, 64, 0)], 20000)
    np.testing.assert_array_equal(a, b)
    soft = render(make(preset), [(0, ON, 64, 30)], 9000)
    assert rms(soft[3000:]) < 0.5 * rms(a[3000:9000])


def test_sustain_pedal_holds_then_releases(preset: Preset) -> None:
    rel = int(preset.release_seconds * SR)
    eng = make(preset)
    x = render(eng, [(0, CC, 64, 127), (100, ON, 60, 100), (4800, OFF, 60, 0)], 4800 + rel + 9600)
    assert rms(x[-4800:]) > 0.01, "pedal down: the note must keep sounding after note-off"
    y = render(eng, [(eng.sample_time, CC, 64, 0)], rel + 4800)
    assert np.all(y[-1000:] == 0.0) and eng.idle


def test_pitch_in_tune_across_keyboard(preset: Preset) -> None:
    # From A2 up. Below that the 1024-sample window at 24 kHz barely resolves the partials and
    # StreamingPhase itself is 40-90 cents off on this preset (see the engine report).
    for key in (45, 50, 57, 64, 69, 76, 84, 93):
        x = render(make(preset), [(0, ON, key, 100)], SR)
        f = peak_freq(x[SR // 4:], SR, midi_hz(key))
        assert abs(cents(f, midi_hz(key))) < 20, (key, f)


def test_pitch_bend_moves_pitch(preset: Preset) -> None:
    x = render(make(preset, bend_range=2.0), [(0, BEND, 0x7F, 0x7F), (10, ON, 60, 100)], SR)
    target = midi_hz(60 + 2.0 * 8191 / 8192)
    assert abs(cents(peak_freq(x[SR // 4:], SR, target), target)) < 20
    y = render(make(preset, bend_range=12.0), [(0, BEND, 0, 0), (10, ON, 60, 100)], SR)
    assert abs(cents(peak_freq(y[SR // 4:], SR, midi_hz(48)), midi_hz(48))) < 20


def test_all_sound_off_and_all_notes_off(preset: Preset) -> None:
    notes = [(0, ON, k, 100) for k in (60, 64, 67)]
    eng = make(preset)
    x = render(eng, notes + [(12000, CC, 120, 0)], 12000 + 960)
    assert np.all(x[12000 + int(0.006 * SR):] == 0.0) and eng.stats.active_voices == 0
    eng = make(preset)
    rel = int(preset.release_seconds * SR)
    x = render(eng, notes + [(12000, CC, 123, 0)], 12000 + rel + 4800)
    assert rms(x[12000 + 2400:12000 + 4800]) > 0.001  # released, not cut
    assert np.all(x[-2000:] == 0.0) and eng.idle


def test_voice_stealing_is_click_free(preset: Preset) -> None:
    events = [(i * 4800 + 37, ON, 48 + 5 * i, 120) for i in range(6)]
    n = 6 * 4800 + 4800
    free = render(make(preset, polyphony=16), events, n)
    eng = make(preset, polyphony=4)
    stolen = render(eng, events, n)
    assert eng.stats.stolen_voices == 2
    assert eng.voices.sounding_count() == 4
    # a hard cut of a voice at this level would jump by ~0.1; the 5 ms fade keeps it smooth
    assert np.abs(np.diff(stolen)).max() <= 1.2 * np.abs(np.diff(free)).max() + 1e-3


def test_channel_filter(preset: Preset) -> None:
    eng = make(preset, channel=2)
    assert np.all(render(eng, [(0, ON, 60, 100)], 6000) == 0.0)  # channel 1
    assert rms(render(eng, [(eng.sample_time, ON | 1, 60, 100)], 6000)) > 0.01  # channel 2


def test_program_change_recalls_snapshot(preset: Preset) -> None:
    eng = make(preset)
    base = render(eng, [(0, ON, 60, 100)], 12000)
    eng2 = make(preset)
    prog = render(eng2, [(0, PC, 5, 0), (0, ON, 60, 100)], 12000)
    snap = preset.snapshot_for_program(5)
    assert snap is not None
    np.testing.assert_allclose(eng2.z_target, snap.z)
    np.testing.assert_allclose(eng2.z_current, snap.z, atol=1e-3)  # glided there by now
    assert rms(base[6000:] - prog[6000:]) > 0.05 * rms(base[6000:])


def test_snapshot_level_follows_program_changes(preset: Preset) -> None:
    """A snapshot's level trim scales its notes (gliding in), and leaves other snapshots alone."""
    trimmed = [dataclasses.replace(s, level=2.0 if s.program == 5 else 1.0) for s in preset.snapshots]
    loud = dataclasses.replace(preset, snapshots=trimmed)
    events = [(0, PC, 5, 0), (0, ON, 60, 40)]  # soft: the limiter stays out of the way
    plain, louder = render(make(preset), events, 12000), render(make(loud), events, 12000)
    assert rms(louder[6000:]) / rms(plain[6000:]) == pytest.approx(2.0, rel=0.02)
    other = [(0, PC, 0, 0), (0, ON, 60, 40)]
    assert np.array_equal(render(make(preset), other, 6000), render(make(loud), other, 6000))


def test_knob_smoothing_and_heard_within_20ms(preset: Preset) -> None:
    t_knob = 12000 + 50
    plain = render(make(preset), [(0, ON, 57, 100)], 24000)
    eng = make(preset)
    start = eng.z_target.copy()
    c0 = float(eng.knob_values[0])  # the start-up sound's (program 0's) coordinate on knob 1
    before = render(eng, [(0, ON, 57, 100), (t_knob, CC, 70, 127)], t_knob + 10)
    z0 = eng.z_current.copy()
    after = render(eng, [], 24000 - len(before))
    km = preset.knobs
    target = start + (1.0 - c0) * 3 * km.scale[0] * km.directions[0]  # knob 1 fully up, along its direction
    np.testing.assert_allclose(eng.z_target, target, atol=1e-5)
    assert np.linalg.norm(z0 - target) > 0.5 * np.linalg.norm(target - start), "jumped instead of gliding"
    np.testing.assert_allclose(eng.z_current, target, atol=1e-3)
    moved = np.concatenate([before, after])
    np.testing.assert_array_equal(moved[:t_knob - BLOCK], plain[:t_knob - BLOCK])
    diff = np.flatnonzero(np.abs(moved - plain) > 1e-3)
    assert diff.size and diff[0] - t_knob < 0.020 * SR


def test_limiter_holds_64_full_velocity_notes(preset: Preset) -> None:
    eng = make(preset, polyphony=64, master_gain=4.0)
    x = render(eng, [(i, ON, 30 + i, 127) for i in range(64)], 9600)
    assert eng.voices.sounding_count() == 64
    assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.8


def test_limiter_ceiling_and_nan() -> None:
    lim = Limiter(SR)
    x = np.concatenate([np.full(100, 1e6), [np.nan, np.inf, -np.inf], np.linspace(-50, 50, 1000)]).astype(np.float32)
    out = np.zeros((len(x), 2), np.float32)
    lim.process(x, out, 1.0)
    assert np.all(np.isfinite(out)) and np.abs(out).max() <= 1.0
    quiet = np.full(256, 0.1, np.float32)
    lim.reset()
    lim.process(quiet, out[:256], 1.0)
    np.testing.assert_allclose(out[:256, 0], 0.1, rtol=1e-6)  # below threshold: untouched


def test_nan_guard_mutes_voice(tmp_path: Path) -> None:
    bad = load_preset(make_fake_preset(tmp_path / "nan", nan_above_pitch=90.0))
    eng = make(bad)
    x = render(eng, [(0, ON, 60, 100), (0, ON, 100, 100)], 12000)
    assert eng.stats.nan_voices == 1 and np.all(np.isfinite(x))
    alone = render(make(bad), [(0, ON, 60, 100)], 12000)
    np.testing.assert_allclose(x, alone, atol=1e-5)


def test_deterministic(preset: Preset) -> None:
    ev = [(0, ON, 60, 90), (700, ON, 67, 80), (5000, CC, 71, 10), (9000, OFF, 60, 0), (9100, BEND, 0, 70)]
    a = render(make(preset), ev, 20000)
    b = render(make(preset), ev, 20000)
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("onset", [1000, 1037, 4095])
def test_latency_is_exact(preset: Preset, onset: int) -> None:
    eng = make(preset)
    x = render(eng, [(onset, ON, 60, 100)], onset + 4000)
    assert np.all(x[:onset] == 0.0)
    assert int(np.flatnonzero(x)[0]) == onset + eng.latency_samples


def test_resampled_rate_plays_in_tune(preset: Preset) -> None:
    eng = make(preset, rate=44100)
    assert eng.internal_rate == 48000
    x = render(eng, [(0, ON, 69, 100)], 44100)
    assert abs(cents(peak_freq(x[11025:], 44100, 440.0), 440.0)) < 20


def test_process_allocates_nothing(preset: Preset) -> None:
    eng = make(preset, polyphony=8)
    for k in range(8):
        eng.push(k * 300, ON, 50 + 3 * k, 100)
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(200):  # warm-up: numba dispatch, onnxruntime arenas, bindings
        eng.process(out)
    eng.push(eng.sample_time + 500, CC, 70, 100)
    eng.push(eng.sample_time + 700, PC, 9, 0)  # recall: knob coordinates, pick-up state
    eng.push(eng.sample_time + 800, CC, 71, 0)  # a knob waiting for pick-up
    eng.push(eng.sample_time + 850, CC, 71, 127)  # crossed: picked up, z recomposed
    eng.push(eng.sample_time + 900, OFF, 56, 0)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            eng.process(out)
        current, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if "tracemalloc" not in s.traceback[0].filename)
    assert grown <= 0 or grown < 512, f"process() kept {grown} bytes"
    # Python's own small objects (array views, argument tuples) peak at about 2 kB; any working
    # array of the render path for 8 voices (decoder rows 16 kB, spectra 32 kB, frames 64 kB) would
    # push the peak far above 4 kB.
    assert peak - base < 4096, f"process() allocated up to {peak - base} bytes at once"
    assert np.abs(out).max() > 0
    assert eng.knob_pickup.tolist() == [False, True] + [False] * (len(eng.knob_pickup) - 2)


class CountingDecoder:
    """The real FrameDecoder, recording the batch size of every call."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def decode(self, z, pitch, velocity, time_on, time_off, out, batch=None) -> None:  # type: ignore[no-untyped-def]
        self.batches.append(int(batch))
        self.inner.decode(z, pitch, velocity, time_on, time_off, out, batch)


class RecordingPhase:
    """The real StreamingPhase, recording the f0 hint of every pushed voice."""

    def __init__(self, params: object, slots: int) -> None:
        from synth.phase import StreamingPhase

        self.inner = StreamingPhase(params, slots)  # type: ignore[arg-type]
        self.f0: list[tuple[int, float]] = []

    def reset(self, voice: int) -> None:
        self.inner.reset(voice)

    def push(self, voices, log_mag_next, out, f0_hz=None) -> None:  # type: ignore[no-untyped-def]
        assert f0_hz is not None
        self.f0 += [(int(v), float(f)) for v, f in zip(voices, f0_hz)]
        self.inner.push(voices, log_mag_next, out, f0_hz)


def test_frames_balanced_across_blocks(preset: Preset) -> None:
    from synth.decoder import FrameDecoder

    spy = CountingDecoder(FrameDecoder(preset, "cpu"))
    eng = Engine(preset, polyphony=16, device="cpu", decoder=spy)  # type: ignore[arg-type]
    eng.prepare(SR, BLOCK)
    spy.batches.clear()  # the warm-up's performance
    x = render(eng, [(0, ON, 40 + k, 100) for k in range(16)], 60 * BLOCK)
    assert rms(x[SR // 100:]) > 0.01
    due = -(-(len(x) + eng._start_skip) // eng.hop_out)  # frames whose window starts inside the render, per voice
    starts = np.arange(due + 2) * eng.hop_out - eng._start_skip  # window starts (the grid begins before the note-on)
    in_last = np.any((starts >= len(x) - BLOCK) & (starts < len(x)))
    in_next = np.any((starts >= len(x)) & (starts < len(x) + BLOCK))
    early = max(0, (16 * in_next - 16 * in_last + 1) // 2)  # the last block makes half the next one's excess
    assert sum(spy.batches) == 16 * (due + 1) + early, "every frame decoded exactly once (+ log-mag 0)"
    steady = spy.batches[4:]
    assert len(steady) == 60 - 4, "a decode in every block, not every second one"
    assert max(steady) == 8 and min(steady) == 8, steady


def test_phase_gets_f0_with_bend(preset: Preset) -> None:
    eng = Engine(preset, device="cpu", bend_range=2.0, phase_factory=RecordingPhase)
    eng.prepare(SR, BLOCK)
    phase = eng.phase
    assert isinstance(phase, RecordingPhase)
    phase.f0.clear()  # the warm-up's performance
    render(eng, [(0, BEND, 0, 0x60), (0, ON, 57, 100)], 20 * BLOCK)  # bend +1 semitone
    hints = [f for _, f in phase.f0[1:]]  # the first push writes no frame
    assert len(hints) >= 9
    np.testing.assert_allclose(hints, midi_hz(57 + 2.0 * (0x60 * 128 - 8192) / 8192), rtol=1e-5)


# ---------------------------------------------------------------------------- knobs, programs, level (issue 8)
def harmonic_levels(x: np.ndarray, key: int) -> np.ndarray:
    """Magnitude of the strongest spectral peak within a quarter tone of each harmonic of ``key``."""
    zp = 4 * len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), zp))
    df = SR / zp
    f0 = midi_hz(key)
    return np.array([spec[int(h * f0 * 2 ** (-1 / 24) / df):int(h * f0 * 2 ** (1 / 24) / df) + 1].max()
                     for h in range(1, HARMONICS + 1)])


def test_knob_moves_along_preset_direction(preset: Preset) -> None:
    """Knob 1 of a version-2 preset moves z along directions[0] (not a latent axis), and the spectrum
    changes the way the decoder's timbre weights say a move along that direction does."""
    d = preset.knobs.directions
    assert np.abs(d[0]).max() < 0.9, "precondition: the fake preset's first direction is no latent axis"
    plain = render(make(preset), [(0, ON, 57, 60)], SR // 2)
    eng = make(preset)
    z0 = eng.z_current.astype(np.float64)
    coords0 = eng.knob_values.astype(np.float64)  # program 0's sound, where the engine starts
    moved = render(eng, [(0, CC, 70, 127), (0, ON, 57, 60)], SR // 2)
    dz = eng.z_current.astype(np.float64) - z0
    assert np.linalg.norm(dz) == pytest.approx((1.0 - coords0[0]) * 3 * preset.knobs.scale[0], rel=1e-3)
    np.testing.assert_allclose(dz / np.linalg.norm(dz), d[0], atol=1e-4)
    np.testing.assert_allclose(eng.knob_values, np.r_[1.0, coords0[1:]], atol=1e-5)
    expected = dz @ timbre_weights(preset.latent_size)  # change of each harmonic's log-amplitude
    got = np.log(harmonic_levels(moved[SR // 4:], 57) / harmonic_levels(plain[SR // 4:], 57))
    assert np.ptp(expected) > 0.5, "precondition: the move changes the harmonic balance"
    np.testing.assert_allclose(got - got.mean(), expected - expected.mean(), atol=0.05)
    axis = 3 * preset.knobs.scale[0] * timbre_weights(preset.latent_size)[int(np.argmax(np.abs(d[0])))]
    assert np.abs((got - got.mean()) - (axis - axis.mean())).max() > 0.2, "moved along a latent axis instead"


def test_program_change_then_knob_does_not_jump(preset: Preset) -> None:
    """After a recall the knobs hold the snapshot's coordinates; a knob elsewhere is ignored until
    it reaches or crosses its coordinate (pick-up), then it follows from there."""
    km = preset.knobs
    snap = preset.snapshot_for_program(5)
    eng = make(preset)
    render(eng, [(0, ON, 60, 100), (0, PC, 5, 0)], 4 * BLOCK)
    coords = km.directions @ (snap.z - km.center) / (3 * km.scale)
    np.testing.assert_allclose(eng.knob_values, coords, atol=1e-5)
    assert not eng.knob_pickup.any()
    c = float(coords[0])
    assert -0.9 < c < 0.9, "precondition: knob 1's coordinate lies inside its travel"
    on_coord = (c + 1) / 2 * 127  # CC value (fractional) at the coordinate
    far = 0 if on_coord > 63.5 else 127
    twin = make(preset)
    render(twin, [(0, ON, 60, 100), (0, PC, 5, 0)], 4 * BLOCK)
    t = eng.sample_time
    z_snap = eng.z_target.copy()
    x = render(eng, [(t + 10, CC, 70, far), (t + 300, CC, 70, far)], 20 * BLOCK)
    np.testing.assert_array_equal(x, render(twin, [], 20 * BLOCK))  # the knob far away changes nothing
    np.testing.assert_array_equal(eng.z_target, z_snap)
    # move the knob towards the coordinate in steps of 5: nothing until it crosses, then it follows
    step = 5 if far == 0 else -5
    values = list(range(far, 128 if step > 0 else -1, step))
    crossed = next(i for i, v in enumerate(values) if (v - on_coord) * step >= 0)
    for v in values[:crossed]:
        render(eng, [(eng.sample_time, CC, 70, v)], BLOCK)
        np.testing.assert_array_equal(eng.z_target, z_snap)
        assert not eng.knob_pickup[0]
    render(eng, [(eng.sample_time, CC, 70, values[crossed])], BLOCK)
    assert eng.knob_pickup[0] and not eng.knob_pickup[1:].any()
    from synth.live import _knob_text

    assert _knob_text(eng).count("*") == len(coords) - 1  # the status line marks knobs still waiting
    u = values[crossed] / 127 * 2 - 1
    assert abs(u - c) <= 5 / 127 + 1e-6, "picked up more than one step away from the coordinate"
    dz = eng.z_target.astype(np.float64) - z_snap
    np.testing.assert_allclose(dz, (u - c) * 3 * km.scale[0] * km.directions[0], atol=1e-5)
    render(eng, [(eng.sample_time, CC, 70, far)], BLOCK)  # now it follows all the way
    assert eng.knob_values[0] == pytest.approx(far / 127 * 2 - 1)


def test_fresh_engine_knobs_follow_at_once(preset: Preset) -> None:
    eng = make(preset)
    assert eng.knob_pickup.all()
    render(eng, [(0, CC, 71, 0)], BLOCK)
    assert eng.knob_values[1] == pytest.approx(-1.0)


def test_latent_option_moves_coordinates(preset: Preset) -> None:
    eng = make(preset)
    dim = int(np.argmax(np.abs(preset.knobs.directions[0])))
    eng.set_latent(dim, 1.5)
    km = preset.knobs
    z = eng.z_target.astype(np.float64)
    assert z[dim] == pytest.approx(preset.latent_mean[dim] + 1.5 * preset.latent_std[dim])
    np.testing.assert_allclose(eng.knob_values, km.directions @ (z - km.center) / (3 * km.scale), atol=1e-5)
    assert not eng.knob_pickup.any()  # every fake direction has a component along every dim


@pytest.fixture(scope="module")
def gm_preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    """A fake preset with the default preset's snapshot programs (keyboard, organ, guitar, ...)."""
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("gm") / "fake",
                                        programs=(0, 19, 24, 33, 48, 61, 65, 73, 80)))


def test_every_program_recalls_a_snapshot(gm_preset: Preset) -> None:
    eng = make(gm_preset)
    recalled = []
    for p in range(128):
        render(eng, [(eng.sample_time, PC, p, 0)], BLOCK)
        hits = [s.program for s in gm_preset.snapshots if np.array_equal(s.z, eng.z_target)]
        assert len(hits) == 1, p
        recalled.append(hits[0])
    for p in (0, 19, 24, 33, 48, 61, 65, 73, 80):
        assert recalled[p] == p
    assert recalled[41] == 48  # violin: no strings snapshot, nearest overall is the string ensemble
    assert recalled[23] == 19  # accordion: the organ group's snapshot, not the nearer guitar (24)
    assert recalled[31] == 24  # guitar harmonics: guitar, not the nearer bass (33)
    assert recalled[56] == 61 and recalled[64] == 65 and recalled[72] == 73  # trumpet, sax, piccolo
    assert recalled[81] == 80 and recalled[127] == 80
    for p in range(128):  # the group rule holds wherever p's group has a snapshot
        group = [s.program for s in gm_preset.snapshots if s.program // 8 == p // 8]
        if group:
            assert recalled[p] in group and abs(recalled[p] - p) == min(abs(g - p) for g in group), p


def test_version_1_preset_knobs_move_latent_axes(tmp_path: Path) -> None:
    old = load_preset(make_fake_preset(tmp_path / "v1", format_version=1))
    eng = make(old)
    start = eng.z_target.copy()
    render(eng, [(0, CC, 70, 127)], BLOCK)
    dim = old.knob_order[0]
    moved = np.flatnonzero(eng.z_target != start)
    assert moved.tolist() == [dim]
    assert eng.z_target[dim] == pytest.approx(old.latent_mean[dim] + 3 * old.latent_std[dim])


def test_mix_gain_scales_output(tmp_path: Path) -> None:
    loud = load_preset(make_fake_preset(tmp_path / "loud", mix_gain=0.2))
    quiet = load_preset(make_fake_preset(tmp_path / "quiet", mix_gain=0.1))
    a = render(make(loud), [(0, ON, 60, 60)], 8 * 1024)
    b = render(make(quiet), [(0, ON, 60, 60)], 8 * 1024)
    assert np.abs(a).max() < 0.8, "precondition: below the limiter"
    assert rms(a) / rms(b) == pytest.approx(2.0, rel=1e-3)
    c = render(make(quiet, master_gain=2.0), [(0, ON, 60, 60)], 8 * 1024)
    np.testing.assert_allclose(c, a, atol=1e-6)


@pytest.fixture(scope="module")
def default_preset() -> Preset:
    return load_preset(REPO / "presets" / "default")


def test_single_note_levels_on_default_preset(default_preset: Preset) -> None:
    """A velocity-100 C4 of the usual programs sits around -9 dBFS (median in -12..-6) and no
    single note comes near full scale; the spread itself is the instruments' (a plucked
    guitar's attack is the hottest)."""
    peaks = {}
    for program in (0, 24, 33, 40, 56, 61, 73, 81):  # piano, guitar, bass, violin, trumpet, brass, flute, saw
        # the note starts 0.1 s after the program change, once the timbre has glided to the snapshot
        x = render(make(default_preset), [(0, PC, program, 0), (SR // 10, ON, 60, 100)], SR // 2)
        peaks[program] = 20 * np.log10(np.abs(x).max())
    median = float(np.median(list(peaks.values())))
    assert -12.0 <= median <= -6.0, f"median {median:.1f} dBFS: {peaks}"
    assert max(peaks.values()) < -1.0, f"a single note near full scale: {peaks}"


def test_full_velocity_chord_stays_below_full_scale_on_default_preset(default_preset: Preset) -> None:
    x = render(make(default_preset), [(0, PC, 61, 0)] + [(0, ON, k, 127) for k in (48, 52, 55, 60, 64, 67, 72)],
               SR // 2)
    assert 0.8 < np.abs(x).max() <= 1.0


def test_pickup_by_reaching_and_beyond_the_travel(preset: Preset) -> None:
    """A CC within half a step of the coordinate picks up without crossing it; a coordinate beyond
    the knob's travel is picked up at the end of the travel."""
    from synth.knobs import TimbreKnobs

    knobs = TimbreKnobs(preset)
    z = np.zeros(preset.latent_size, np.float32)
    knobs.recall_program(0, z)
    knobs.coords[0], knobs.coords[1] = 0.5, 1.4  # as a recall would leave them
    knobs.control(0, 10, z)  # first message, far away: ignored
    knobs.control(0, round(1.5 / 2 * 127), z)  # 95: within half a step of 0.5, from below, no crossing
    assert knobs.pickup[0] and knobs.coords[0] == pytest.approx(95 / 127 * 2 - 1)
    for v in (0, 64, 126):
        knobs.control(1, v, z)
        assert not knobs.pickup[1] and knobs.coords[1] == 1.4
    knobs.control(1, 127, z)
    assert knobs.pickup[1] and knobs.coords[1] == pytest.approx(1.0)


def test_full_queue_still_takes_note_offs(preset: Preset) -> None:
    """A flood of note-ons and knob moves fills the queue; the note-offs behind it still get in,
    so no note is left stuck."""
    eng = Engine(preset, device="cpu", queue_capacity=256)
    eng.prepare(SR, BLOCK, warm=False)
    for i in range(256):
        eng.push(i, ON if i < 8 else CC, 50 + i if i < 8 else 70, 100 if i < 8 else i % 128)
    assert eng.stats.dropped_events > 0, "precondition: the queue overflowed"
    for i in range(8):
        assert eng.push(300 + i, OFF, 50 + i, 0), "a note-off was dropped from a full queue"
    render(eng, [], SR)
    assert eng.voices.sounding_count() == 0, "a note stuck"


def test_a_note_attacks_within_a_ms_of_its_first_sample_without_a_burst(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The start normalisation (``START_NORM_FLOOR``), the skipped head (``START_SKIP_DB``) and the
    phase step's history for a note's first frame set how soon a note reaches within 20 dB of its
    peak (key-to-sound plus this is the attack a player feels; issue 9's goal is 10 ms) and
    whether its first 5 ms burst above the note (a click). Here the rise takes a median 0.6 ms
    and the head stays within 0.2 dB of the note; without the skip the rise took 3.6 ms, with a
    silent phase history (the first frame's energy pushed to its edges) the head was 9-13 dB over
    the note, and a floor of 0.002 put it 1.8 dB over."""
    import benchmarks.attack as attack
    from synth.engine import START_NORM_FLOOR

    monkeypatch.setattr(attack, "PROGRAMS", (0,))
    notes = attack.engine_notes(str(make_fake_preset(tmp_path / "fake")), START_NORM_FLOOR)
    rises = [attack.rise_ms(x, first) for _, _, x, first in notes]
    heads = [attack.head_db(x, first) for _, _, x, first in notes]
    assert len(notes) == len(attack.KEYS) and all(first >= 1000 for _, _, _, first in notes)
    assert np.median(rises) <= 1.0, f"rises {np.round(rises, 2)} ms: the attack is slow"
    assert max(heads) <= 1.0, f"heads {np.round(heads, 1)} dB over the note: a burst"


def test_the_skipped_head_is_cleared_unheard() -> None:
    """A voice's grid starts its skipped head before the note-on; the mixer must clear that
    head also where it lies before the block (never read), or it would sound when the ring wraps
    around to it."""
    from synth.voices import HELD, mix_voices

    skip, ring_len = 40, 512
    startnorm = np.ones(256, np.float32)
    startnorm[:skip] = 0.0
    ring = np.ones((1, ring_len), np.float32)
    state, onset = np.array([HELD], np.int32), np.array([1000 - skip], np.int64)  # note-on at 1000
    out = np.zeros(128, np.float32)
    mix_voices(state, onset, np.full(1, -1, np.int64), np.full(1, 10 ** 12, np.int64), np.zeros(1, np.float32),
               np.ones(1, np.float32), np.ones(1, np.float32), ring, startnorm, 1.0, 10 ** 6, 0.0, 1000 - skip // 2, out)
    assert not ring[0, :skip + 128 - skip // 2].any(), "head or played samples left in the ring"
    assert not out[: skip // 2].any() and out[skip // 2:].all(), "the head was heard, or the note was not"
    assert ring[0, skip + 128 - skip // 2:].all()


@pytest.fixture(scope="module")
def tracked_preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("tracked") / "fake", key_track=True))


def test_key_tracked_snapshot_plays_each_key_at_its_latent(tracked_preset: Preset) -> None:
    """After a program change every key sounds as the snapshot's latent at that key (synth.key_track),
    not as its home latent; a timbre from a slot (capture, random, morph) has no key tracking."""
    from synth.timbre import TimbreInfo

    snap = tracked_preset.snapshot_for_program(5)
    assert snap is not None
    for key in (36, 84):
        tracked = render(make(tracked_preset), [(0, PC, 5, 0), (0, ON, key, 60)], 12000)
        as_latent, untracked = [], []
        for z, out in ((snap.z_at(key), as_latent), (snap.z, untracked)):
            eng = make(tracked_preset)
            eng.set_timbre_now(eng.store_timbre(z, TimbreInfo("latent", "test")))
            out.append(render(eng, [(0, ON, key, 60)], 12000))
        tail = slice(6000, None)  # after the program change's glide
        assert rms(tracked[tail] - as_latent[0][tail]) < 0.01 * rms(tracked[tail])
        assert rms(tracked[tail] - untracked[0][tail]) > 0.05 * rms(tracked[tail])


def test_knob_moves_carry_every_key_along(tracked_preset: Preset) -> None:
    """A knob moves the home latent; each key keeps its own distance from it (the decoder rows)."""
    eng = make(tracked_preset, knob_pickup=False)  # the CC applies at once
    snap = tracked_preset.snapshot_for_program(5)
    assert snap is not None and snap.track is not None
    render(eng, [(0, PC, 5, 0), (0, CC, 70, 0), (0, ON, 36, 60)], 24000)
    assert np.abs(eng.z_current - snap.z).max() > 0.1  # the knob moved it
    np.testing.assert_allclose(eng._bz[0], eng.z_current + snap.track[36], atol=1e-4)
    from synth.timbre import TimbreInfo

    eng.set_timbre_now(eng.store_timbre(snap.z, TimbreInfo("latent", "test")))
    render(eng, [(0, ON, 36, 60)], 2400)
    np.testing.assert_allclose(eng._bz[0], snap.z, atol=1e-6)


def test_snapshot_level_per_key_scales_only_its_keys(tracked_preset: Preset) -> None:
    """A snapshot's level per key (format 4) scales the notes of the keys it names, fixed at each
    note-on; a slot timbre (capture, random, morph) plays every key at level 1."""
    from synth.key_track import key_gain_table
    from synth.timbre import TimbreInfo

    snap = tracked_preset.snapshot_for_program(5)
    assert snap is not None
    table = key_gain_table((48, 60, 72), (0.0, 6.0, 0.0))
    levelled = dataclasses.replace(tracked_preset, snapshots=[
        dataclasses.replace(s, key_level=table) if s is snap else s for s in tracked_preset.snapshots])
    tail = slice(6000, None)  # after the program change's glide
    for key, expected in ((60, 10 ** (6 / 20)), (54, 10 ** (3 / 20)), (40, 1.0)):
        plain = render(make(tracked_preset), [(0, PC, 5, 0), (0, ON, key, 60)], 12000)[tail]
        louder = render(make(levelled), [(0, PC, 5, 0), (0, ON, key, 60)], 12000)[tail]
        assert rms(louder) == pytest.approx(expected * rms(plain), rel=1e-3), key
    eng = make(levelled)
    render(eng, [(0, PC, 5, 0)], 2400)
    eng.set_timbre_now(eng.store_timbre(snap.z_at(60), TimbreInfo("latent", "test")))
    as_slot = render(eng, [(0, ON, 60, 60)], 12000)
    other = make(tracked_preset)
    other.set_timbre_now(other.store_timbre(snap.z_at(60), TimbreInfo("latent", "test")))
    np.testing.assert_allclose(as_slot, render(other, [(0, ON, 60, 60)], 12000), atol=1e-6)
