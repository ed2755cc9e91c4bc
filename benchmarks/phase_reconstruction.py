"""Phase reconstruction benchmark on FluidR3 notes: median spectral convergence and cost.

Notes: 10 programs x pitches 48 and 72 at velocity 100, read from ``data/fluidr3`` (NSynth
layout) when present, otherwise rendered with pyfluidsynth at 48 kHz and resampled with soxr.
Every method starts from the true magnitudes. Prints a markdown table.

    python -m benchmarks.phase_reconstruction [--data data/fluidr3] [--notes 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from synth.contract import DEFAULT_PARAMS, SpectrogramParams
from synth.phase import StreamingPhase, pghi_spectrum, streaming_spectrum
from synth.stft import istft, log_magnitude, spectral_convergence_db, stft

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
PROGRAMS = (0, 4, 19, 24, 33, 48, 61, 73, 80, 89)  # ten GM programs across the families
PITCHES = (48, 72)
VELOCITY = 100


def load_notes(data: Path, params: SpectrogramParams) -> list[tuple[str, NDArray]]:
    """``(name, audio)`` pairs from the NSynth folder, else rendered from the soundfont."""
    if (data / "examples.json").is_file():
        meta = json.loads((data / "examples.json").read_text())
        chosen = [k for k, v in sorted(meta.items())
                  if v["instrument"] in PROGRAMS and v["pitch"] in PITCHES and v["velocity"] == VELOCITY]
        if len(chosen) < len(PROGRAMS) * len(PITCHES) or not all(
                (data / "audio" / f"{name}.wav").is_file() for name in chosen):
            return render_notes(params)  # folder incomplete (still being rendered?)
        notes = []
        for name in chosen:
            audio, sr = sf.read(data / "audio" / f"{name}.wav", dtype="float64")
            if sr != params.sample_rate:
                raise SystemExit(f"{name}: sample rate {sr}, expected {params.sample_rate}")
            if np.abs(audio).max() > 0:
                notes.append((name, audio))
        print(f"notes from {data}", file=sys.stderr)
        return notes
    return render_notes(params)


def render_notes(params: SpectrogramParams) -> list[tuple[str, NDArray]]:
    """Render the notes with pyfluidsynth at 48 kHz (dry, gain 1) and soxr down to the model rate."""
    import fluidsynth
    import soxr

    rate = 48000
    fs = fluidsynth.Synth(samplerate=float(rate), gain=1.0)
    fs.setting("synth.reverb.active", 0)
    fs.setting("synth.chorus.active", 0)
    sfid = fs.sfload(str(SOUNDFONT))
    notes = []
    for prog in PROGRAMS:
        for pitch in PITCHES:
            fs.program_select(0, sfid, 0, prog)
            fs.noteon(0, pitch, VELOCITY)
            held = np.asarray(fs.get_samples(int(rate * params.hold_seconds)), dtype=np.float64)
            fs.noteoff(0, pitch)
            tail = np.asarray(fs.get_samples(int(rate * (params.note_seconds - params.hold_seconds))),
                              dtype=np.float64)
            audio = np.concatenate([held, tail]).reshape(-1, 2).mean(axis=1) / 32768.0
            audio = soxr.resample(audio, rate, params.sample_rate)[: params.note_samples]
            if np.abs(audio).max() > 0:
                notes.append((f"program{prog:03d}-{pitch:03d}", audio))
            fs.all_sounds_off(0)
    fs.delete()
    print(f"notes rendered from {SOUNDFONT}", file=sys.stderr)
    return notes


def griffin_lim(mag: NDArray, params: SpectrogramParams, iterations: int) -> NDArray:
    """Fast Griffin-Lim (momentum 0.99) from seeded random phase (zero phase is a poor, symmetric
    start), numpy with ``synth.stft``."""
    length = (len(mag) - 1) * params.hop
    angles = np.exp(2j * np.pi * np.random.default_rng(0).random(mag.shape))
    prev = np.zeros_like(angles)
    for _ in range(iterations):
        rebuilt = stft(istft(mag * angles, params, length), params)[: len(mag)]
        # Perraudin et al.'s accelerated update, c = t_n + a (t_n - t_n-1), normalised: the
        # same direction as rebuilt - a / (1 + a) * t_n-1
        angles = rebuilt - (0.99 / 1.99) * prev
        prev = rebuilt
        angles /= np.maximum(np.abs(angles), 1e-16)
    return istft(mag * angles, params, length)


def batched_cost_ms(log_mags: list[NDArray], params: SpectrogramParams, voices: int,
                    **options: object) -> float:
    """ms per frame per voice of ``StreamingPhase.push`` with ``voices`` voices in one call."""
    sp = StreamingPhase(params, voices, **options)  # type: ignore[arg-type]
    ids = np.arange(voices, dtype=np.int32)
    frames = np.stack([lm.astype(np.float32) for lm in (log_mags * voices)[:voices]], axis=1)
    out = np.zeros((voices, params.n_bins), dtype=np.complex64)
    sp.push(ids, frames[0], out)  # compile/warm
    t0 = time.perf_counter()
    for j in range(1, len(frames)):
        sp.push(ids, frames[j], out)
    return (time.perf_counter() - t0) * 1e3 / ((len(frames) - 1) * voices)


def methods(params: SpectrogramParams) -> dict[str, tuple[Callable[[NDArray, NDArray], NDArray], dict | None]]:
    """name -> (audio from (log_mag, mag), StreamingPhase options for the batched cost or None)."""
    def stream(**o: object) -> Callable[[NDArray, NDArray], NDArray]:
        return lambda lm, mag: istft(streaming_spectrum(lm, params, **o), params)
    return {
        "zero phase": (lambda lm, mag: istft(mag.astype(np.complex128), params), None),
        "streaming RTPGHI, no look-ahead": (stream(lookahead=False), {"lookahead": False}),
        "streaming RTPGHI, 1-frame look-ahead": (stream(), {}),
        "offline PGHI (whole note)": (lambda lm, mag: istft(pghi_spectrum(lm, params), params), None),
        "offline fast Griffin-Lim, 32 it.": (lambda lm, mag: griffin_lim(mag, params, 32), None),
        "offline fast Griffin-Lim, 100 it.": (lambda lm, mag: griffin_lim(mag, params, 100), None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/fluidr3"))
    ap.add_argument("--notes", type=int, default=20, help="use at most this many notes")
    ap.add_argument("--voices", type=int, default=16, help="voices per push for the batched cost")
    args = ap.parse_args()
    params = DEFAULT_PARAMS
    notes = load_notes(args.data, params)[: args.notes]
    log_mags = [log_magnitude(a, params) for _, a in notes]
    mags = [np.abs(stft(a, params)) for _, a in notes]
    print(f"{len(notes)} notes, {params.sample_rate} Hz, n_fft {params.n_fft}, hop {params.hop}\n")
    print("| method | median SC dB | worst SC dB | ms per frame per voice |")
    print("|---|---|---|---|")
    for name, (fn, opts) in methods(params).items():
        fn(log_mags[0], mags[0])  # warm up numba
        scs, secs = [], 0.0
        for lm, mag in zip(log_mags, mags):
            t0 = time.perf_counter()
            audio = fn(lm, mag)
            secs += time.perf_counter() - t0
            scs.append(spectral_convergence_db(mag, audio, params))
        frames = sum(len(lm) for lm in log_mags)
        cost = (f"{batched_cost_ms(log_mags, params, args.voices, **opts):.4f} (push, {args.voices} voices)"
                if opts is not None else f"{secs * 1e3 / frames:.3f} (incl. iSTFT)")
        print(f"| {name} | {np.median(scs):.1f} | {max(scs):.1f} | {cost} |")


if __name__ == "__main__":
    main()
