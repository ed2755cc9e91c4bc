"""Reconstruction quality of held-out notes: encode the true log-mag, decode every frame.

    python -m benchmarks.model_quality --preset presets/default --data data/gm4 \
        [--features data/fluidr3_features] [--run runs/default] [--max-notes 48]

Two groups: the validation split training used (seen instruments, unseen pitch/velocity;
FeatureCache.split with the run's val_fraction and seed) and 2-3 GM programs the dataset
does not hold, rendered from FluidR3 into a temporary NSynth folder. Measured on magnitudes
(no phase): spectral convergence 20 log10(||S - Ŝ|| / ||S||) and log-spectral distance.
Prints a markdown table of medians. ``benchmarks.timbre_space`` scores the same on the feature
cache, with the release region and the held-out programs of the training run separately.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from numpy.typing import NDArray

from benchmarks.common import (DEFAULT_PRESET, BenchmarkError, PresetModels, log, magnitude_convergence_db,
                               markdown_table, open_preset, run_main, split_settings)
from synth.stft import log_spectral_distance_db, magnitude_from_log, stft

if TYPE_CHECKING:  # training.data is imported lazily: its import pulls soxr and friends
    from training.data import NoteRecord

# GM programs tried, in order, for the unseen-instrument group (first ones absent from the data).
UNSEEN_CANDIDATES = (11, 56, 71, 6, 40, 68)  # vibraphone, trumpet, clarinet, harpsichord, violin, oboe


@dataclass(frozen=True)
class NoteScore:
    sc_db: float
    lsd_db: float


def evaluate_note(models: PresetModels, audio: NDArray, pitch: float, velocity: float) -> NoteScore:
    """One note (mono at the model rate) -> its encode/decode reconstruction scores."""
    params = models.params
    n = params.note_samples
    audio = np.asarray(audio, np.float64)
    audio = audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))
    mag = np.abs(stft(audio, params))  # (T, F), every frame
    log_mag = np.log(mag + params.log_floor).astype(np.float32)
    mu = models.encode(log_mag[::models.preset.encoder_frame_stride], pitch)
    est = magnitude_from_log(models.decode_note(mu, pitch, velocity, len(mag)), params)
    return NoteScore(magnitude_convergence_db(mag, est), log_spectral_distance_db(mag, est, params.log_floor))


def evaluate_records(models: PresetModels, records: Sequence["NoteRecord"], label: str) -> list[NoteScore]:
    """Score NoteRecords (training.data) one by one, logging progress."""
    from training.data import read_audio

    scores = []
    for i, rec in enumerate(records):
        audio = read_audio(rec, models.params.sample_rate)
        scores.append(evaluate_note(models, audio, rec.pitch, rec.velocity))
        if (i + 1) % 8 == 0 or i + 1 == len(records):
            log(f"{label}: {i + 1}/{len(records)} notes")
    return scores


def validation_records(data: Path, features: Path, val_fraction: float, seed: int,
                       max_notes: int, holdout_programs: Sequence[int] = ()) -> tuple[list["NoteRecord"], list[str]]:
    """The training run's validation notes (at most ``max_notes``, fixed subsample) and the
    cache's instrument names."""
    from training.data import DatasetError, load_examples
    from training.features import FeatureCache

    try:
        cache = FeatureCache.open(features)
        by_name = {r.note_str: r for r in load_examples(data)}
    except DatasetError as exc:
        raise BenchmarkError(str(exc)) from None
    _, val = cache.split(val_fraction, seed=seed, holdout_programs=holdout_programs)
    if len(val) > max_notes:
        val = np.sort(np.random.default_rng(0).choice(val, max_notes, replace=False))
    missing = [cache.note_strs[i] for i in val if cache.note_strs[i] not in by_name]
    if missing:
        raise BenchmarkError(f"{data}: {len(missing)} validation notes are not in the dataset (e.g. {missing[0]})")
    return [by_name[cache.note_strs[i]] for i in val], list(cache.instruments)


def run_holdout_programs(run_dir: str | None) -> list[int]:
    """``[train] holdout_programs`` of the run's config.toml (they shape the validation split)."""
    if run_dir is None:
        return []
    import tomllib

    try:
        return [int(p) for p in tomllib.loads((Path(run_dir) / "config.toml").read_text())
                .get("train", {}).get("holdout_programs", [])]
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BenchmarkError(f"{run_dir}: cannot read config.toml ({exc})") from None


def programs_of(instruments: Sequence[str]) -> set[int]:
    """GM programs of instrument names written by training.data (``keyboard_acoustic_004``)."""
    out = set()
    for name in instruments:
        m = re.search(r"_(\d{3})$", name)
        if m:
            out.add(int(m.group(1)))
    return out


def unseen_records(programs: Sequence[int], pitches: Sequence[int], sample_rate: int,
                   tmp: Path) -> list["NoteRecord"]:
    """Render ``programs`` x ``pitches`` (velocity 100) from FluidR3 into ``tmp`` (NSynth layout)."""
    from training.data import DatasetError, load_examples, render_soundfont

    try:
        render_soundfont(tmp, programs=programs, pitches=pitches, velocities=(100,),
                         sample_rate=sample_rate, jobs=1, progress=False, holds=(3.0,))
        return load_examples(tmp)
    except DatasetError as exc:
        raise BenchmarkError(str(exc)) from None


def _row(group: str, scores: list[NoteScore]) -> list[object]:
    sc = np.median([s.sc_db for s in scores])
    lsd = np.median([s.lsd_db for s in scores])
    return [group, len(scores), f"{sc:.1f}", f"{lsd:.1f}"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.model_quality", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--data", default="data/gm4", help="the NSynth-layout folder training used")
    ap.add_argument("--features", default=None, help="its feature cache (default: DATA_features)")
    ap.add_argument("--run", default=None, help="run folder whose config.toml gives val_fraction and seed")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-notes", type=int, default=48, help="validation notes scored (random subset)")
    ap.add_argument("--unseen-programs", default=None, help="comma list of GM programs (default: 3 not in the data)")
    ap.add_argument("--unseen-pitches", default="40,52,64,76")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)

    def body() -> int:
        preset = open_preset(args.preset)
        models = PresetModels(preset)
        data = Path(args.data)
        features = Path(args.features) if args.features else data.parent / f"{data.name}_features"
        rows, seen_programs = [], set()
        if (features / "meta.json").is_file():
            frac, seed = split_settings(args.run, args.val_fraction, args.seed)
            log(f"validation split: val_fraction {frac}, seed {seed} ({features})")
            holdout = run_holdout_programs(args.run)
            records, instruments = validation_records(data, features, frac, seed, args.max_notes, holdout)
            seen_programs = programs_of(instruments) - set(holdout)
            rows.append(_row("seen instruments, unseen pitch/velocity (val split)",
                             evaluate_records(models, records, "val")))
        else:
            log(f"no feature cache at {features}: skipping the validation-split group")
        if args.unseen_programs:
            programs = [int(p) for p in args.unseen_programs.split(",")]
        else:
            programs = [p for p in UNSEEN_CANDIDATES if p not in seen_programs][:3]
        pitches = [int(p) for p in args.unseen_pitches.split(",")]
        with tempfile.TemporaryDirectory() as tmp:
            log(f"rendering unseen programs {programs} at pitches {pitches} from FluidR3")
            records = unseen_records(programs, pitches, preset.params.sample_rate, Path(tmp))
            rows.append(_row(f"unseen instruments (GM {', '.join(map(str, programs))})",
                             evaluate_records(models, records, "unseen")))
        print(f"preset: {preset.root} ({preset.name}); every frame decoded at the true framewise-v1 times\n")
        print(markdown_table(["group", "notes", "median spectral convergence (dB)",
                              "median log-spectral distance (dB)"], rows))
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
