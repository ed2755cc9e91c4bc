"""Resampler cost, delay and quality: synth.resample.StreamResampler against soxr (same run).

    python -m benchmarks.resample_speed [--blocks 20000] [--rates 48000:44100 96000:88200 48000:32000]

Both run the engine's form: the internal rate is rendered in chunks of ceil(128 * in/out) + 8
samples (``Engine.prepare``'s ``_chunk``), pushed until a 128-sample output block is queued,
then one block is read. soxr (HQ, float32, its ``ResampleStream``) gets the same FIFO in
numpy. Time: microseconds per 128-sample output block, mean and 99th percentile (the lower of
3 runs each), single thread. Delay: output samples from an input impulse at sample 0 to the
output's peak (measured for both; ours is also known exactly from the design). Max queued:
the most outputs waiting after a block is read, i.e. how far the engine must render ahead of
what is played (soxr releases its output in bursts of several hundred samples). Quality (ours): passband ripple to 20 kHz
scaled to the lower rate, worst stopband level from its Nyquist, and the error of a 1 kHz and
a 15 kHz sine (0.42 x the lower rate if less) against the ideal delayed sine. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import numpy as np
from scipy.signal import freqz

from benchmarks.common import markdown_table, run_main
from synth.resample import PASSBAND, StreamResampler

BLOCK = 128


def _engine_chunk(rate_in: int, rate_out: int) -> int:
    return int(math.ceil(BLOCK * rate_in / rate_out)) + 8


class _SoxrFifo:
    """soxr's stream behind the same push/available/read interface (it allocates per push)."""

    def __init__(self, rate_in: int, rate_out: int, capacity: int) -> None:
        import soxr

        self._stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")
        self._fifo = np.zeros(capacity, np.float32)
        self.available = 0

    def push(self, x: np.ndarray) -> None:
        y = self._stream.resample_chunk(x)
        self._fifo[self.available:self.available + len(y)] = y
        self.available += len(y)

    def read(self, out: np.ndarray) -> None:
        n = len(out)
        out[:] = self._fifo[:n]
        self._fifo[:self.available - n] = self._fifo[n:self.available]
        self.available -= n


def _time_blocks(make: Callable[[], object], x: np.ndarray, chunk: int, blocks: int) -> tuple[float, float, int]:
    """Engine's push/read form: mean and 99th-percentile microseconds per 128-sample output block
    (the lower of 3 runs each) and the most outputs ever queued after a read (render look-ahead)."""
    out = np.zeros(BLOCK, np.float32)
    times = np.zeros(blocks, np.int64)
    mean, p99, ahead = math.inf, math.inf, 0
    for _ in range(3):
        rs, i = make(), 0
        for b in range(blocks):
            t = time.perf_counter_ns()
            while rs.available < BLOCK:  # type: ignore[attr-defined]
                if i + chunk > len(x):
                    i = 0
                rs.push(x[i:i + chunk])  # type: ignore[attr-defined]
                i += chunk
            rs.read(out)  # type: ignore[attr-defined]
            times[b] = time.perf_counter_ns() - t
            ahead = max(ahead, rs.available)  # type: ignore[attr-defined]
        mean, p99 = min(mean, times.mean() / 1e3), min(p99, float(np.percentile(times, 99)) / 1e3)
    return mean, p99, ahead


def _impulse_peak(make: Callable[[], object], rate_in: int, chunk: int) -> int:
    x = np.zeros(rate_in // 10, np.float32)
    x[0] = 1.0
    rs, got = make(), []
    out = np.zeros(1, np.float32)
    for i in range(0, len(x) - chunk, chunk):
        rs.push(x[i:i + chunk])  # type: ignore[attr-defined]
        while rs.available:  # type: ignore[attr-defined]
            rs.read(out)  # type: ignore[attr-defined]
            got.append(float(out[0]))
    return int(np.argmax(np.abs(got)))


def _quality(rate_in: int, rate_out: int) -> tuple[float, float, float, float]:
    """Passband ripple (dB peak to peak), worst stopband level (dB), 1 kHz and 15 kHz sine error (dB)."""
    r = StreamResampler(rate_in, rate_out, 4096)
    low = min(rate_in, rate_out)
    h = r.table[:, ::-1].T.reshape(-1).astype(np.float64) / r.up
    f, resp = freqz(h, worN=1 << 18, fs=rate_in * r.up)
    level = 20 * np.log10(np.abs(resp) + 1e-30)
    ripple = float(np.ptp(level[f <= PASSBAND * low]))
    stop = float(level[f >= 0.5 * low].max())
    errors = []
    for freq in (1000.0, min(15000.0, 0.42 * low)):
        r.reset()
        x = np.sin(2 * np.pi * freq * np.arange(rate_in // 4) / rate_in).astype(np.float32)
        out = np.zeros(r.max_out(4096), np.float32)
        y = np.concatenate([out[:r.process(x[i:i + 4096], out)].copy() for i in range(0, len(x), 4096)])
        want = np.sin(2 * np.pi * freq * (np.arange(len(y)) - r.delay_samples) / rate_out)
        s = slice(2 * r.delay_samples + 10, len(y) - 10)
        errors.append(20 * np.log10(np.std(y[s] - want[s]) / np.std(want[s])))
    return ripple, stop, errors[0], errors[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=20000)
    ap.add_argument("--rates", nargs="+", default=["48000:44100", "96000:88200", "48000:32000"])
    args = ap.parse_args()
    x = (0.1 * np.random.default_rng(0).standard_normal(1 << 16)).astype(np.float32)
    speed, quality = [], []
    for pair in args.rates:
        rate_in, rate_out = (int(v) for v in pair.split(":"))
        chunk = _engine_chunk(rate_in, rate_out)
        ours = StreamResampler(rate_in, rate_out, chunk)
        make_ours = lambda: StreamResampler(rate_in, rate_out, chunk)  # noqa: E731
        make_soxr = lambda: _SoxrFifo(rate_in, rate_out, 4096)  # noqa: E731
        ours_mean, ours_p99, ours_ahead = _time_blocks(make_ours, x, chunk, args.blocks)
        sox_mean, sox_p99, sox_ahead = _time_blocks(make_soxr, x, chunk, args.blocks)
        speed.append([f"{rate_in} -> {rate_out}", ours.taps, f"{ours_mean:.1f} / {ours_p99:.1f}",
                      f"{sox_mean:.1f} / {sox_p99:.1f}", ours.delay_samples, _impulse_peak(make_ours, rate_in, chunk),
                      _impulse_peak(make_soxr, rate_in, chunk), ours_ahead, sox_ahead])
        ripple, stop, e1, e15 = _quality(rate_in, rate_out)
        quality.append([f"{rate_in} -> {rate_out}", f"{ripple:.4f}", f"{stop:.1f}", f"{e1:.1f}", f"{e15:.1f}"])
    print(markdown_table(["rates", "taps/phase", "ours us/block mean / p99", "soxr HQ us/block mean / p99",
                          "ours delay", "ours measured peak", "soxr measured peak", "ours max queued",
                          "soxr max queued"], speed))
    print()
    print(markdown_table(["rates", "passband ripple dB", "stopband max dB", "1 kHz sine error dB",
                          "15 kHz sine error dB"], quality))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
