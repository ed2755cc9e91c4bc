"""Where a dull program's missing highs are: in time (attack or body) and along the keyboard.

For each GM program given (default: acoustic and bright piano, glockenspiel, music box,
tubular bells... see ``--programs``), every FluidR3 note of it in the feature cache (held at
least 0.9 s) is decoded with its own encoder latent (what the decoder can do at best, no snapshot
involved) and compared with the real note:
- the 4-12 kHz energy share per time segment after the note-on, real and decoded (dB);
- per key: that share over the whole note, and the highest frequency of the time-averaged
  spectrum within 40 dB of its strongest bin (where the partials stop), real and decoded.

Run: ``python -m benchmarks.brightness_time --features data/gm4_features [--run runs/default]
[--programs 0,1,9]``. A diagnostic for issue 8's "no program shows the high partials cut off":
``timbre_space``'s bright section gives the goal's figure.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from benchmarks.common import DEFAULT_PRESET, PresetModels, log, markdown_table, open_preset, run_main
from benchmarks.timbre_space import decode_frames, open_data
from synth.contract import BRIGHT_BAND_HZ
from synth.stft import frame_times, magnitude_from_log

SEGMENTS_S = ((0.0, 0.03), (0.03, 0.1), (0.1, 0.5), (0.5, 3.0))
TOP_DB = -40.0  # "where the partials stop": the time-averaged spectrum's last bin within this of its peak


def share_db(power: NDArray, band: slice) -> float:
    return float(10 * np.log10(max(power[:, band].sum(), 1e-30) / max(power.sum(), 1e-30)))


def top_hz(power: NDArray, hz: NDArray) -> float:
    mean = power.mean(0)
    above = np.nonzero(mean > mean.max() * 10 ** (TOP_DB / 10))[0]
    return float(hz[above.max()]) if len(above) else 0.0


def main() -> int:
    from training.data import parse_instrument

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--features", default="data/gm4_features")
    ap.add_argument("--run", default="runs/default", help="training run folder (its config.toml: the split)")
    ap.add_argument("--programs", default="0,1,9,10,15")
    args = ap.parse_args()
    preset = open_preset(args.preset)
    models = PresetModels(preset)
    config = Path(args.run) / "config.toml"
    data = open_data(Path(args.features), config if config.exists() else None, None)
    cache, params = data.cache, models.params
    hz = np.arange(params.n_bins) * params.sample_rate / params.n_fft  # bin centres, for the top partial
    band = params.bins_between(*BRIGHT_BAND_HZ)
    seg_rows, key_rows = [], []
    for program in (int(p) for p in args.programs.split(",")):
        log(f"program {program}...")
        segs: dict[tuple[float, float], list[tuple[float, float]]] = {s: [] for s in SEGMENTS_S}
        for i in np.nonzero((cache.pitch >= 24) & (cache.pitch <= 96))[0]:
            parsed = parse_instrument(cache.instruments[int(cache.instrument[i])])
            if parsed is None or parsed[1] != program or "fluid" not in parsed[0].lower() or cache.hold[i] < 0.9:
                continue
            log_mag = np.asarray(cache.logmag[i], np.float32)
            real = magnitude_from_log(log_mag, params).astype(np.float64) ** 2
            on, off = frame_times(params, len(log_mag), cache.frame_stride, preset.time_on_max, float(cache.hold[i]))
            ours = magnitude_from_log(decode_frames(models, models.encode(log_mag, float(cache.pitch[i])), float(cache.pitch[i]),
                                                    float(cache.velocity[i]), on, off), params).astype(np.float64) ** 2
            t = np.array([params.frame_time(j * cache.frame_stride) for j in range(len(log_mag))])
            for a, b in SEGMENTS_S:
                m = (t >= a) & (t < b)
                if m.any():
                    segs[(a, b)].append((share_db(real[m], band), share_db(ours[m], band)))
            key_rows.append([program, int(cache.pitch[i]), f"{share_db(real, band):.1f}", f"{share_db(ours, band):.1f}",
                             f"{share_db(ours, band) - share_db(real, band):+.1f}",
                             f"{top_hz(real, hz) / 1000:.1f}", f"{top_hz(ours, hz) / 1000:.1f}"])
        for (a, b), pairs in segs.items():
            if pairs:
                r = np.array(pairs)
                seg_rows.append([program, f"{a:g}–{b:g} s", len(r), f"{np.median(r[:, 0]):.1f}", f"{np.median(r[:, 1]):.1f}",
                                 f"{np.median(r[:, 1] - r[:, 0]):+.1f}"])
    print(markdown_table(["GM program", "after the note-on", "notes", "4–12 kHz share, real (dB)",
                          "decoded from its own latent", "gap (median)"], seg_rows))
    print()
    key_rows.sort(key=lambda r: (r[0], r[1]))
    print(markdown_table(["GM program", "key", "share, real", "decoded", "gap", f"partials stop ({TOP_DB:g} dB), real kHz",
                          "decoded kHz"], key_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
