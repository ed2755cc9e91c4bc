"""synth.resample.StreamResampler: accuracy, aliasing, streaming, delay, no allocation."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import freqz

from synth.resample import StreamResampler

REPO = Path(__file__).resolve().parents[1]
RATE_PAIRS = [(48000, 44100), (96000, 88200), (48000, 32000), (24000, 22050), (44100, 48000)]


def one_shot(r: StreamResampler, x: np.ndarray) -> np.ndarray:
    """All the outputs ``x (n,)`` completes, pushed in ``max_in`` chunks through ``process``."""
    out = np.zeros(r.max_out(r.max_in), np.float32)
    parts = []
    for i in range(0, len(x), r.max_in):
        n = r.process(x[i:i + r.max_in], out)
        parts.append(out[:n].copy())
    return np.concatenate(parts)


def db(ratio: float) -> float:
    return 20.0 * float(np.log10(ratio))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_ratio_is_reduced() -> None:
    r = StreamResampler(48000, 44100, 256)
    assert (r.up, r.down) == (147, 160)
    assert r.table.shape == (147, r.taps) and r.table.dtype == np.float32


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
@pytest.mark.parametrize("freq", [1000.0, 15000.0])
def test_sine_lands_on_time_and_in_tune(rate_in: int, rate_out: int, freq: float) -> None:
    """Output m is the input signal at time (m - delay) / out_rate: error < -70 dB."""
    freq = min(freq, 0.42 * min(rate_in, rate_out))
    r = StreamResampler(rate_in, rate_out, 512)
    n = rate_in // 4
    x = np.sin(2 * np.pi * freq * np.arange(n) / rate_in).astype(np.float32)
    y = one_shot(r, x)
    m = np.arange(len(y))
    want = np.sin(2 * np.pi * freq * (m - r.delay_samples) / rate_out)
    steady = slice(2 * r.delay_samples + 10, len(y) - 10)
    err = db(rms(y[steady] - want[steady]) / rms(want[steady]))
    assert err < -70.0, f"{freq} Hz at {rate_in} -> {rate_out}: error {err:.1f} dB"


def test_passband_and_stopband_of_the_design() -> None:
    """48 -> 44.1 kHz: flat within 0.1 dB to 20 kHz, >= 80 dB down from 22.05 kHz (float32 taps)."""
    r = StreamResampler(48000, 44100, 256)
    h = r.table[:, ::-1].T.reshape(-1).astype(np.float64) / r.up  # phases back to the prototype
    f, resp = freqz(h, worN=1 << 18, fs=48000 * r.up)
    level = 20 * np.log10(np.abs(resp) + 1e-30)
    assert np.ptp(level[f <= 20000]) < 0.1
    assert level[f >= 22050].max() < -80.0


def test_aliasing_rejected() -> None:
    """A 23 kHz tone at 48 kHz (it would fold to 21.1 kHz) is >= 70 dB down at 44.1 kHz."""
    r = StreamResampler(48000, 44100, 512)
    x = np.sin(2 * np.pi * 23000 * np.arange(24000) / 48000).astype(np.float32)
    y = one_shot(r, x)[2 * r.delay_samples:-10]
    assert db(rms(y) / rms(x)) < -70.0


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS[:3])
def test_chunked_streaming_is_bit_identical(rate_in: int, rate_out: int) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(20000).astype(np.float32)
    ref = one_shot(StreamResampler(rate_in, rate_out, 20000), x)
    # process(): random chunk sizes into a caller buffer
    r = StreamResampler(rate_in, rate_out, 300)
    out = np.zeros(r.max_out(300), np.float32)
    parts, i = [], 0
    while i < len(x):
        c = int(rng.integers(0, 301))
        n = r.process(x[i:i + c], out)
        parts.append(out[:n].copy())
        i += c
    assert np.concatenate(parts).tobytes() == ref.tobytes()
    # push()/read(): the engine's form, random input chunks and random output blocks
    r.reset()
    got, i = [], 0
    while i < len(x):
        block = np.zeros(int(rng.integers(1, 200)), np.float32)
        while r.available < len(block) and i < len(x):
            c = int(rng.integers(1, 301))
            r.push(x[i:i + c])
            i += c
        if r.available >= len(block):
            r.read(block)
            got.append(block)
    got = np.concatenate(got)
    assert got.tobytes() == ref[:len(got)].tobytes()


def test_reset_forgets_history() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000).astype(np.float32)
    r = StreamResampler(48000, 44100, 1000)
    first = one_shot(r, x)
    r.push(x[:777])
    r.reset()
    assert r.available == 0
    assert one_shot(r, x).tobytes() == first.tobytes()


@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
def test_delay_is_the_impulse_peak(rate_in: int, rate_out: int) -> None:
    r = StreamResampler(rate_in, rate_out, 4096)
    x = np.zeros(4096, np.float32)
    x[0] = 1.0
    assert int(np.argmax(np.abs(one_shot(r, x)))) == r.delay_samples  # input 0 is on the output grid
    for at in (1, 37, 1000):  # elsewhere the peak is the nearest output sample, within 1
        r.reset()
        x[:] = 0.0
        x[at] = 1.0
        peak = int(np.argmax(np.abs(one_shot(r, x))))
        assert abs(peak - (at * rate_out / rate_in + r.delay_samples)) <= 1.0


def test_bad_use_raises() -> None:
    r = StreamResampler(48000, 44100, 64)
    with pytest.raises(ValueError):
        r.push(np.zeros(65, np.float32))
    with pytest.raises(ValueError):
        r.read(np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        r.process(np.zeros(64, np.float32), np.zeros(10, np.float32))
    with pytest.raises(ValueError):
        StreamResampler(48000, 44100, 64, passband=0.6)


def test_push_read_allocate_nothing_in_python() -> None:
    """tracemalloc sees numpy's allocations (not numba's: see the NRT test below)."""
    r = StreamResampler(48000, 44100, 140)
    x = np.random.default_rng(0).standard_normal(140).astype(np.float32)
    block = np.zeros(128, np.float32)
    for _ in range(50):
        while r.available < 128:
            r.push(x)
        r.read(block)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            while r.available < 128:
                r.push(x)
            r.read(block)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < 1024, f"push/read allocated up to {peak - base} bytes at once"
    assert current - base < 256


NRT_PROBE = textwrap.dedent("""
    import resource
    import numpy as np
    from numba.core.runtime import rtsys
    from synth.resample import StreamResampler, _dequeue, _resample
    r = StreamResampler(48000, 44100, 140)
    x = np.random.default_rng(0).standard_normal(140).astype(np.float32)
    block = np.zeros(128, np.float32)
    out = np.zeros(r.max_out(140), np.float32)

    def count(call, n=10000):
        call()  # compile / load from numba's cache
        before = rtsys.get_allocation_stats().alloc
        for _ in range(n):
            call()
        return (rtsys.get_allocation_stats().alloc - before) / n

    def engine_form():
        while r.available < 128:
            r.push(x)
        r.read(block)

    # one allocation per array argument per call: numba's MemInfo wrapper of each numpy argument
    print(count(lambda: _resample(x, r.table, r.down, r._hist, r._state, out, 0)))  # 5 arrays
    r.reset()
    print(count(lambda: _dequeue(r._fifo, r._state, block[:0])))  # 3 arrays
    count(engine_form, 1000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count(engine_form, 10000)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss)
""")


def test_kernels_allocate_nothing_in_numba() -> None:
    """numba's runtime counts every allocation (NUMBA_NRT_STATS=1, set before import).

    Each call allocates exactly one MemInfo per array argument (numba wraps the caller's numpy
    arrays; every njit call from Python does): a kernel creating any array of its own would
    count one more. The process's peak RSS must not grow over 10 000 engine-form blocks.
    """
    env = dict(os.environ, NUMBA_NRT_STATS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", NRT_PROBE], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    per_resample, per_dequeue, rss_growth_kb = (float(v) for v in done.stdout.split())
    assert (per_resample, per_dequeue) == (5.0, 3.0)
    assert rss_growth_kb == 0


@pytest.fixture(scope="module")
def fake_preset(tmp_path_factory: pytest.TempPathFactory) -> object:
    from synth.preset import load_preset
    from tests.fake_preset import make_fake_preset

    return load_preset(make_fake_preset(tmp_path_factory.mktemp("resample") / "fake"))


def engine_note(preset: object, rate: int, warm: bool = True) -> tuple[np.ndarray, object]:
    """A4 from sample 0 for a quarter second (quiet: the limiter stays identity) -> (channel 0, engine)."""
    from synth.engine import Engine

    eng = Engine(preset, device="cpu", master_gain=0.05)  # type: ignore[arg-type]
    eng.prepare(rate, 128, warm=warm)
    eng.push(0, 0x90, 69, 100)
    out = np.zeros((rate // 4, 2), np.float32)
    eng.process(out)
    return out[:, 0].copy(), eng


def test_engine_at_44k1_is_its_48k_render_resampled(fake_preset: object) -> None:
    """The engine renders 44.1 kHz at 48 kHz and converts: same audio, same timeline, and
    ``latency_samples`` adds exactly the resampler's delay."""
    x48, eng48 = engine_note(fake_preset, 48000)
    y, eng44 = engine_note(fake_preset, 44100)
    ref = one_shot(StreamResampler(48000, 44100, 4096), x48)
    n = min(len(ref), len(y))
    assert db(rms(y[:n] - ref[:n]) / rms(ref[:n])) < -70.0
    assert eng44.latency_samples == round(eng48.latency_samples * 44100 / 48000) + eng44._resampler.delay_samples


def test_engine_warm_up_leaves_no_trace_in_the_resampler(fake_preset: object) -> None:
    """prepare()'s warm-up performance goes through the resampler; _reset_performance clears it."""
    warm, eng = engine_note(fake_preset, 44100, warm=True)
    cold, _ = engine_note(fake_preset, 44100, warm=False)
    assert eng._resampler is not None
    assert warm.tobytes() == cold.tobytes()


def test_benchmark_runs() -> None:
    from benchmarks import resample_speed

    chunk = resample_speed._engine_chunk(48000, 44100)
    x = np.zeros(4096, np.float32)
    mean, p99, ahead = resample_speed._time_blocks(lambda: StreamResampler(48000, 44100, chunk), x, chunk, 20)
    assert 0 < mean < 1e4 and 0 < p99 and 0 < ahead < chunk
    assert resample_speed._impulse_peak(lambda: StreamResampler(48000, 44100, chunk), 48000, chunk) == 62
    ripple, stop, e1, e15 = resample_speed._quality(48000, 44100)
    assert ripple < 0.1 and stop < -80 and e1 < -70 and e15 < -70
