"""Does every latent point play in tune? basic-pitch judges single rendered notes.

    python -m benchmarks.pitch_accuracy --preset presets/default [--n 120] [--data data/fluidr3]

(pitch, latent) pairs: pitches spread over 28..100; latents from the preset's snapshots, the
encoder's mu of held-out (validation-split) notes when the feature cache is there, and
uniform draws within mean ± 2 std. Each note is rendered by the engine (synth.engine) when it
is importable, else by decoding its frames and running synth.phase's streaming RTPGHI; the
notes are concatenated with silence between them and transcribed in one basic-pitch pass.
The strongest transcribed note (amplitude × duration) of each slot is compared with the
requested MIDI pitch. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from benchmarks.common import (DEFAULT_PRESET, RENDER_RATE, BenchmarkError, PresetModels, classify_pitch,
                               latent_draws, log, markdown_table, open_preset, reconstruct_audio, render_fluidsynth,
                               run_main, split_settings, strongest_note, transcribe, write_note_sequence)
from synth.contract import SpectrogramParams
from synth.preset import Preset

HOLD_SECONDS = 1.0
TAIL_SECONDS = 0.5  # after note-off: the release, then silence before the next slot
GAP_SECONDS = 0.3
VELOCITY = 100


@dataclass(frozen=True)
class Trial:
    pitch: int
    z: NDArray[np.float32]  # (L,)
    source: str  # "snapshot", "encoder", "random"


def heldout_latents(models: PresetModels, features: Path, count: int, val_fraction: float,
                    seed: int) -> list[NDArray[np.float32]]:
    """Encoder mu of up to ``count`` validation-split notes of the feature cache."""
    from training.data import DatasetError
    from training.features import FeatureCache

    try:
        cache = FeatureCache.open(features)
    except DatasetError as exc:
        raise BenchmarkError(str(exc)) from None
    if cache.frame_stride != models.preset.encoder_frame_stride:
        raise BenchmarkError(f"{features}: frame stride {cache.frame_stride}, the encoder wants "
                             f"{models.preset.encoder_frame_stride}")
    _, val = cache.split(val_fraction, seed=seed)
    pick = np.random.default_rng(1).choice(val, min(count, len(val)), replace=False)
    return [models.encode(np.asarray(cache.logmag[i], np.float32), float(cache.pitch[i])) for i in pick]


def make_trials(preset: Preset, n: int, encoded: list[NDArray[np.float32]], seed: int = 0) -> list[Trial]:
    """``n`` trials: snapshots, then encoder latents, then random draws; pitches 28..100 shuffled."""
    rng = np.random.default_rng(seed)
    snaps = preset.snapshots
    cap = max(n // 3, 16)  # format-2 presets carry ~100 snapshots: take an even spread of them
    if len(snaps) > cap:
        snaps = [snaps[i] for i in np.round(np.linspace(0, len(snaps) - 1, cap)).astype(int)]
    latents: list = [(s, "snapshot") for s in snaps] + [(z, "encoder") for z in encoded]
    latents = latents[:n]
    latents += [(z, "random") for z in latent_draws(preset, n - len(latents), rng)]
    lo, hi = max(28, int(np.ceil(preset.pitch_min))), min(100, int(preset.pitch_max))
    pitches = rng.permutation(np.round(np.linspace(lo, hi, n)).astype(int))
    # a snapshot plays each key at its key-tracked latent, as a program change recalls it
    return [Trial(int(p), np.asarray(z.z_at(p) if src == "snapshot" else z, np.float32), src)
            for p, (z, src) in zip(pitches, latents)]


def render_decoded(models: PresetModels, trials: list[Trial]) -> tuple[NDArray, int, list[float]]:
    """Decode + streaming RTPGHI per note, concatenated -> (audio, rate, slot start seconds)."""
    params = models.params
    n_frames = 1 + int((HOLD_SECONDS + TAIL_SECONDS) * params.sample_rate) // params.hop
    gap = np.zeros(int(GAP_SECONDS * params.sample_rate))
    pieces, starts, at = [], [], 0
    for i, trial in enumerate(trials):
        log_mag = models.decode_note(trial.z, trial.pitch, VELOCITY, n_frames, HOLD_SECONDS)
        audio = reconstruct_audio(log_mag, params)
        starts.append(at / params.sample_rate)
        pieces += [audio, gap]
        at += len(audio) + len(gap)
        if (i + 1) % 20 == 0:
            log(f"rendered {i + 1}/{len(trials)} notes (decoder + streaming phase)")
    return np.concatenate(pieces), params.sample_rate, starts


def render_engine(preset: Preset, trials: list[Trial], sample_rate: int) -> tuple[NDArray, int, list[float]]:
    """Render every trial through synth.engine.Engine (one engine, notes in sequence)."""
    from synth.engine import Engine

    engine = Engine(preset)
    block = 256
    engine.prepare(sample_rate, block)
    slot = int((HOLD_SECONDS + TAIL_SECONDS + GAP_SECONDS) * sample_rate) // block * block
    out = np.zeros((slot * len(trials), 2), np.float32)
    for i, trial in enumerate(trials):
        at = i * slot
        # the whole latent, absolute, as its own timbre: no snapshot's key tracking on top (a snapshot
        # trial's latent is already the snapshot's at that key)
        engine.restore_timbre(0, trial.z, snapshot_level=False)
        engine.push_event(at, bytes([0x90, trial.pitch, VELOCITY]))
        engine.push_event(at + int(HOLD_SECONDS * sample_rate), bytes([0x80, trial.pitch, 0]))
        for a in range(at, at + slot, block):
            engine.process(out[a:a + block])
        if (i + 1) % 20 == 0:
            log(f"rendered {i + 1}/{len(trials)} notes (engine)")
    return out.mean(axis=1), sample_rate, [i * slot / sample_rate for i in range(len(trials))]


def render_reference(trials: list[Trial], program: int, tmp: Path) -> tuple[NDArray, int, list[float]]:
    """The same pitches and slots played by FluidR3 on ``program``: the transcriber's own ceiling."""
    slot = HOLD_SECONDS + TAIL_SECONDS + GAP_SECONDS
    starts = [i * slot for i in range(len(trials))]
    write_note_sequence(tmp / "reference.mid",
                        [(s, s + HOLD_SECONDS, t.pitch, VELOCITY) for s, t in zip(starts, trials)], program)
    return render_fluidsynth(tmp / "reference.mid"), RENDER_RATE, starts


def resynthesize(audio: NDArray, rate: int, starts: list[float], params: SpectrogramParams) -> tuple[NDArray, int, list[float]]:
    """Each slot's log-magnitude (model rate) back to audio by streaming RTPGHI: what the
    representation and phase reconstruction alone cost, with no model in the loop."""
    import soxr

    from synth.stft import log_magnitude

    x = soxr.resample(np.asarray(audio, np.float32), rate, params.sample_rate)
    slot = int((HOLD_SECONDS + TAIL_SECONDS + GAP_SECONDS) * params.sample_rate)
    pieces = []
    for start in starts:
        a = int(round(start * params.sample_rate))
        seg = x[a:a + slot]
        y = reconstruct_audio(log_magnitude(np.pad(seg, (0, slot - len(seg))), params), params)[:slot]
        pieces.append(np.pad(y, (0, slot - len(y))))  # istft drops the last hop: keep slots aligned
    return np.concatenate(pieces), params.sample_rate, [i * slot / params.sample_rate for i in range(len(starts))]


def score(trials: list[Trial], notes: list, starts: list[float]) -> list[str]:
    """Outcome per trial ('exact', 'octave', 'other', 'missed'); misses logged to stderr."""
    outcomes = []
    for trial, start in zip(trials, starts):
        best = strongest_note(notes, start - 0.1, start + HOLD_SECONDS)
        outcome = classify_pitch(trial.pitch, None if best is None else best.pitch)
        if outcome != "exact":
            log(f"pitch {trial.pitch} ({trial.source}): {outcome}, got {None if best is None else best.pitch}")
        outcomes.append(outcome)
    return outcomes


GOAL_EXACT = 98.0  # % of (pitch, latent) pairs transcribed at the requested pitch


def _count_row(renderer: str, label: str, picked: list[str], goal: bool = True) -> list[object]:
    exact = 100 * picked.count('exact') / len(picked)
    return [renderer, label, len(picked), f"{exact:.1f}", picked.count("octave"), picked.count("other"),
            picked.count("missed"), f"≥ {GOAL_EXACT:g} %" if goal else "—",
            ("met" if exact >= GOAL_EXACT else "NOT met") if goal else ""]


def table_rows(renderer: str, trials: list[Trial], outcomes: list[str]) -> list[list[object]]:
    """One row per latent source present, then 'all'."""
    rows = []
    for source in ("snapshot", "encoder", "random", "all"):
        picked = [o for t, o in zip(trials, outcomes) if source in ("all", t.source)]
        if picked:
            rows.append(_count_row(renderer, source, picked))
    return rows


def reference_rows(trials: list[Trial], program: int, params: SpectrogramParams) -> list[list[object]]:
    """FluidR3 on the same pitches (the transcriber's ceiling), and its log-mag through RTPGHI."""
    log(f"reference: the same pitches on FluidR3 program {program}")
    with tempfile.TemporaryDirectory() as tmp:
        audio, rate, starts = render_reference(trials, program, Path(tmp))
    rows = [_count_row(f"FluidR3 program {program} (ceiling)", "-",
                       score(trials, transcribe(audio, rate), starts), goal=False)]
    log("reference: FluidR3's log-magnitudes through streaming RTPGHI (no model)")
    res, res_rate, res_starts = resynthesize(audio, rate, starts, params)
    rows.append(_count_row(f"FluidR3 program {program} log-mag + streaming RTPGHI", "-",
                           score(trials, transcribe(res, res_rate), res_starts), goal=False))
    return rows


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pitch_accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--n", type=int, default=120, help="number of (pitch, latent) pairs")
    ap.add_argument("--data", default="data/gm4", help="dataset whose feature cache gives held-out notes")
    ap.add_argument("--features", default=None, help="feature cache (default: DATA_features)")
    ap.add_argument("--run", default=None, help="run folder whose config.toml gives val_fraction and seed")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--renderer", choices=("auto", "engine", "decoder"), default="auto",
                    help="engine = synth.engine; decoder = ONNX frames + synth.phase.reconstruct")
    ap.add_argument("--samplerate", type=int, default=48000, help="engine output rate")
    ap.add_argument("--reference-program", type=int, default=0,
                    help="GM program FluidR3 plays the same pitches on (transcriber ceiling); -1 skips it")
    return ap.parse_args(argv)


def _render(args: argparse.Namespace, preset: Preset, models: PresetModels,
            trials: list[Trial]) -> tuple[str, NDArray, int, list[float]]:
    if args.renderer in ("auto", "engine"):
        try:
            audio, rate, starts = render_engine(preset, trials, args.samplerate)
            return f"engine (synth.engine, {rate} Hz)", audio, rate, starts
        except (ImportError, AttributeError, TypeError) as exc:  # engine missing or its API changed
            if args.renderer == "engine":
                raise BenchmarkError(f"engine render failed: {exc}") from None
            log(f"engine not usable ({exc}); rendering with decoder + synth.phase.reconstruct")
    audio, rate, starts = render_decoded(models, trials)
    return f"decoder.onnx + synth.phase.reconstruct, {rate} Hz", audio, rate, starts


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)

    def body() -> int:
        if args.n < 1:
            raise BenchmarkError(f"--n must be at least 1, got {args.n}")
        preset = open_preset(args.preset)
        models = PresetModels(preset)
        data = Path(args.data)
        features = Path(args.features) if args.features else data.parent / f"{data.name}_features"
        encoded = []
        if (features / "meta.json").is_file():
            frac, seed = split_settings(args.run, args.val_fraction, args.seed)
            encoded = heldout_latents(models, features, args.n // 3, frac, seed)
        else:
            log(f"no feature cache at {features}: no encoder latents, snapshots and random draws only")
        trials = make_trials(preset, args.n, encoded)
        renderer, audio, rate, starts = _render(args, preset, models, trials)
        log(f"transcribing {len(audio) / rate:.0f} s of audio with basic-pitch")
        rows = table_rows(renderer, trials, score(trials, transcribe(audio, rate), starts))
        if args.reference_program >= 0:
            rows += reference_rows(trials, args.reference_program, preset.params)
        print(f"preset: {preset.root} ({preset.name}); velocity {VELOCITY}, held {HOLD_SECONDS} s; "
              f"pitches {min(t.pitch for t in trials)}..{max(t.pitch for t in trials)}\n")
        print(markdown_table(["renderer", "latents", "n", "exact %", "octave errors", "other", "missed", "goal", ""],
                             rows))
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
