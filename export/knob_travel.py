"""How far each timbre knob reaches: ``[knobs] travel``, measured on the exported decoder (torch-free).

A knob moves the timbre along one principal direction of the training notes' posterior, by
default over center ± ``DEFAULT_KNOB_TRAVEL`` std of that direction. The last directions carry
the least variance, and the decoder answers them least: on the shipped preset's celesta (a
decaying sound) knob 8 moved a held C4 by only 1.5 dB over that travel, knob 7 by 2.3 dB, where a
player hears a knob that does nothing. So export measures each knob's effect (log-spectral
distance between CC 0 and CC 127) at every family snapshot, and widens a knob whose weakest
effect is under ``TARGET_EFFECT_DB`` just enough to reach it, never past ``KNOB_TRAVEL_RANGE``'s
top (further out the decoder extrapolates). Knobs that reach the target keep the default travel.

Far out along a direction the decoder may stop playing in tune: on the shipped preset's 12 000-step
model, knob 2 at CC 0 (3 std) put a partial at 186 Hz under a C4 (261.6 Hz), as loud as its
fundamental, and a pitch tracker heard keys 60-62 more than an octave low, where 2.9 std was in
tune. So export then plays both ends of every knob through the engine at every other key from
29 to 95 (``TUNE_KEYS``) and narrows a knob whose end plays more than ``TUNE_CENTS`` off (or
unpitched) step by step until both ends are in tune, down to ``TUNE_MIN_TRAVEL``. In tune comes
first: a knob narrowed under the effect target keeps the narrower travel.

A sweep may also jump: one CC step that carries many steps' worth of the change (``CLIFF_RATIO``)
is heard as a switch, not a knob. On the 32 000-step default model knob 1's sweep did so near an
end at ± 3 std, so export then narrows a knob whose jump lies near an end (``cliff_guard``, the
same 3 % steps and floor), and leaves one whose jump sits inside its travel as it is.

``benchmarks.timbre_space`` reports the same figures (through :class:`KnobProbe` and
:func:`cents_at`). ``python -m export.knob_travel presets/NAME`` re-measures a preset's travel in
place, as its export command would.
"""
from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from synth.loudness import play_in_turn
from synth.contract import DECODER_INPUTS, DECODER_OUTPUT, DEFAULT_KNOB_TRAVEL, HELD_TIME_OFF, KNOB_TRAVEL_RANGE, gm_group
from synth.knobs import CC_COORDINATES
from synth.model_file import cpu_session, read_model
from synth.pitch import estimate_pitch
from synth.preset import KnobMap, Preset, Snapshot
from synth.stft import log_spectral_distance_db, magnitude_from_log

EFFECT_KEY, EFFECT_VELOCITY = 60, 100  # a held C4 at velocity 100
HELD_TIMES = (0.25, 0.5, 1.0, 2.0)
"""Seconds after note-on of the frames compared: the body of a held note, not only its attack."""
TARGET_EFFECT_DB = 3.3
"""A knob's weakest end-to-end effect over the family snapshots is widened to this: the 3 dB a
player clearly hears, plus a margin for the decoder's non-linearity between the bisection's points."""
BISECTION_STEPS = 6  # travel found to (6 - 3) / 2**6 ~ 0.05 std
CLIFF_RATIO = 5.0
"""A sweep's largest single-CC step may carry at most this many mean steps (the sweep's path / 127):
more is a cliff a player hears as a jump. (The median step is no yardstick when a knob's change
gathers in part of its travel, a decay that sets in over CC 10-50.)"""
TUNE_KEYS = tuple(range(29, 96, 2))
"""Keys at which both ends of every knob must play in tune (odd: benchmarks.timbre_space checks
28, 32 ... 96, none of them)."""
TUNE_CENTS = 20.0  # the pitch goal of a knob's ends
TUNE_NARROWING = 0.97  # a knob out of tune at an end is narrowed by 3 % at a time
TUNE_MIN_TRAVEL = 2.0  # ... but not under 2 std: a knob that narrow is a decoder to retrain, not to hide
NOTE_RATE, NOTE_BLOCK, NOTE_SECONDS = 48000, 512, 0.9
PITCH_FROM_S = 0.2  # the pitch is read after the attack


def family_snapshots(preset: Preset) -> list[Snapshot]:
    """One snapshot per General MIDI group: the lowest-numbered program of the group that has one
    (presets with at most 16 snapshots: every snapshot, as they name their own families)."""
    by_group: dict[object, Snapshot] = {}
    for s in sorted(preset.snapshots, key=lambda s: s.program):
        if s.name.startswith("knob"):
            continue
        by_group.setdefault(gm_group(s.program) if len(preset.snapshots) > 16 else s.name, s)
    return list(by_group.values())


class KnobProbe:
    """The preset's decoder on held-C4 frames, for knob effects (CPU onnxruntime)."""

    def __init__(self, preset: Preset, threads: int = 2) -> None:
        self.preset = preset
        self._session = cpu_session(read_model(preset.decoder_path), threads)

    def held_frames(self, z: NDArray) -> NDArray[np.float64]:
        """Magnitudes of a held C4 at ``HELD_TIMES`` for each latent: ``z (n, L)`` -> ``(n, T, F)``."""
        z = np.asarray(z, np.float32)
        n, t = z.shape[0], len(HELD_TIMES)
        feeds = dict(zip(DECODER_INPUTS, (
            np.repeat(z, t, axis=0),
            np.full(n * t, EFFECT_KEY, np.float32),
            np.full(n * t, EFFECT_VELOCITY, np.float32),
            np.tile(np.asarray(HELD_TIMES, np.float32), n),
            np.full(n * t, HELD_TIME_OFF, np.float32))))
        log_mag = self._session.run([DECODER_OUTPUT], feeds)[0]
        return magnitude_from_log(log_mag, self.preset.params).reshape(n, t, -1)

    def distance_db(self, a: NDArray, b: NDArray) -> float:
        """Log-spectral distance (dB) between two ``(T, F)`` frame sets from :meth:`held_frames`."""
        return log_spectral_distance_db(a, b, self.preset.params.log_floor)

    def sweep_steps_db(self, kmap: KnobMap, knob: int, z: NDArray) -> NDArray[np.float64]:
        """Log-spectral distance (dB) of each single-CC step of ``knob``'s sweep (CC 0..127) from the
        latent ``z (L,)`` -> ``(127,)`` (``cliff_ratio`` judges it)."""
        frames = self.held_frames(kmap.move(z, knob, CC_COORDINATES))  # (128, T, F)
        return np.array([self.distance_db(frames[i], frames[i + 1]) for i in range(len(frames) - 1)])

    def end_to_end_db(self, kmap: KnobMap, knob: int, snapshots: list[Snapshot]) -> NDArray[np.float64]:
        """Effect of ``knob`` between CC 0 and CC 127 at each snapshot -> ``(S,)`` dB."""
        z = np.concatenate([kmap.move(s.z, knob, np.array([-1.0, 1.0])) for s in snapshots])
        frames = self.held_frames(z).reshape(len(snapshots), 2, len(HELD_TIMES), -1)
        return np.array([self.distance_db(f[0], f[1]) for f in frames])


def cliff_ratio(steps: NDArray[np.float64]) -> float:
    """A sweep's largest step over its mean step (``steps (127,)`` from ``KnobProbe.sweep_steps_db``)."""
    return float(steps.max() / max(float(steps.mean()), 1e-9))


def calibrate_travel(preset: Preset, probe: KnobProbe | None = None) -> NDArray[np.float64]:
    """Per-knob travel (std units, ``(K,)``): the default, or for a knob whose weakest effect over
    the family snapshots is under ``TARGET_EFFECT_DB``, the smallest travel (bisection) that
    reaches it, capped at ``KNOB_TRAVEL_RANGE[1]``."""
    probe = probe or KnobProbe(preset)
    snaps = family_snapshots(preset)
    base = KnobMap(preset.knobs.center, preset.knobs.directions, preset.knobs.scale,
                   np.full(preset.knobs.count, DEFAULT_KNOB_TRAVEL))
    travel = base.travel.copy()
    if not snaps:
        return travel

    def weakest(knob: int, t: float) -> float:
        trial = base.travel.copy()
        trial[knob] = t
        kmap = KnobMap(base.center, base.directions, base.scale, trial)
        return float(probe.end_to_end_db(kmap, knob, snaps).min())

    top = KNOB_TRAVEL_RANGE[1]
    for knob in range(base.count):
        if weakest(knob, DEFAULT_KNOB_TRAVEL) >= TARGET_EFFECT_DB:
            continue
        if weakest(knob, top) < TARGET_EFFECT_DB:
            travel[knob] = top
            continue
        low, high = DEFAULT_KNOB_TRAVEL, top
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (low + high)
            low, high = (low, mid) if weakest(knob, mid) >= TARGET_EFFECT_DB else (mid, high)
        travel[knob] = high
    return travel


def held_notes(preset: Preset, z: NDArray, keys: Sequence[int], seconds: float = NOTE_SECONDS) -> list[NDArray[np.float32]]:
    """Held velocity-100 notes of ``keys`` on the latent ``z (L,)`` (played as its own timbre: level
    1, no key tracking) through the engine, as a player hears them (the phase step's pitch hint,
    the resampler and all), in NOTE_BLOCK blocks at NOTE_RATE, one engine for all of them
    (synth.loudness) -> one mono ``(samples,)`` per key."""
    from synth.engine import Engine

    eng = Engine(preset, device="cpu")
    eng.prepare(NOTE_RATE, NOTE_BLOCK, warm=False)
    eng.restore_timbre(0, np.asarray(z, np.float32), snapshot_level=False)
    length = int(seconds * NOTE_RATE) // NOTE_BLOCK * NOTE_BLOCK
    out, starts = play_in_turn(eng, keys, 100, 0, length, length, NOTE_BLOCK * 4, NOTE_BLOCK)
    mono = out.mean(axis=1)
    return [mono[start:start + length] for start in starts]


def cents_at(preset: Preset, z: NDArray, keys: Sequence[int]) -> list[float | None]:
    """How far (cents) the engine's held note of each of ``keys`` on ``z`` sounds from its key (YIN,
    after the attack); None where it has no pitch."""
    found = []
    for key, note in zip(keys, held_notes(preset, z, keys)):
        est = estimate_pitch(note[int(PITCH_FROM_S * NOTE_RATE):], NOTE_RATE)
        found.append(None if est is None else 100.0 * (est - key))
    return found


def in_tune(cents: float | None) -> bool:
    return cents is not None and abs(cents) <= TUNE_CENTS


def first_out_of_tune(preset: Preset, kmap: KnobMap, knob: int, keys: tuple[int, ...]) -> tuple[float, int] | None:
    """``(end, key)`` of the first of ``keys`` at which an end (-1 or +1) of ``knob`` (from the
    knob map's center) plays more than TUNE_CENTS off or unpitched; None when all are in tune."""
    for end in (-1.0, 1.0):
        for key, cents in zip(keys, cents_at(preset, kmap.move(kmap.center, knob, end), keys)):
            if not in_tune(cents):
                return end, key
    return None


def tune_guard(preset: Preset, travel: NDArray[np.float64], keys: tuple[int, ...] = TUNE_KEYS,
               log: bool = False) -> NDArray[np.float64]:
    """``travel (K,)`` with every knob whose ends play out of tune narrowed (by TUNE_NARROWING at a
    time, not under TUNE_MIN_TRAVEL) until they are in tune, at those of ``keys`` inside the
    preset's trained pitch range where the knobs' center itself plays in tune (elsewhere no
    travel can help: an untrained decoder, a key the training notes never reached)."""
    travel = np.asarray(travel, np.float64).copy()
    knobs = preset.knobs
    keys = tuple(key for key in keys if preset.pitch_min <= key <= preset.pitch_max)  # the keys it was trained on
    keys = tuple(key for key, cents in zip(keys, cents_at(preset, knobs.center, keys)) if in_tune(cents))
    for knob in range(knobs.count):
        while travel[knob] > TUNE_MIN_TRAVEL:
            kmap = KnobMap(knobs.center, knobs.directions, knobs.scale, travel)
            miss = first_out_of_tune(preset, kmap, knob, keys)
            if miss is None:
                break
            travel[knob] = max(TUNE_MIN_TRAVEL, round(travel[knob] * TUNE_NARROWING, 3))
            if log:
                print(f"knob {knob + 1}: end {miss[0]:+g} out of tune at key {miss[1]}: travel -> {travel[knob]:g} std",
                      flush=True)
    return travel


def worst_cliff(probe: KnobProbe, kmap: KnobMap, knob: int, snapshots: list[Snapshot]) -> float:
    """The largest :func:`cliff_ratio` of ``knob``'s sweep over ``snapshots``."""
    return max(cliff_ratio(probe.sweep_steps_db(kmap, knob, s.z)) for s in snapshots)


def cliff_guard(preset: Preset, travel: NDArray[np.float64], probe: KnobProbe | None = None,
                log: bool = False) -> NDArray[np.float64]:
    """``travel (K,)`` with a knob whose sweep has a cliff (``CLIFF_RATIO``) at some family snapshot
    narrowed (by TUNE_NARROWING at a time, not under TUNE_MIN_TRAVEL) to the widest travel without
    one. A cliff near an end is the decoder far out along the direction, which narrowing leaves
    out; a cliff that no narrowing removes sits inside the travel, and the knob keeps its travel
    (narrowing it would only weaken it)."""
    travel = np.asarray(travel, np.float64).copy()
    snaps = family_snapshots(preset)
    if not snaps:
        return travel
    probe = probe or KnobProbe(preset)
    knobs = preset.knobs
    for knob in range(knobs.count):
        trial = travel.copy()
        ratio = worst_cliff(probe, KnobMap(knobs.center, knobs.directions, knobs.scale, trial), knob, snaps)
        while ratio > CLIFF_RATIO and trial[knob] > TUNE_MIN_TRAVEL:
            trial[knob] = max(TUNE_MIN_TRAVEL, round(trial[knob] * TUNE_NARROWING, 3))
            ratio = worst_cliff(probe, KnobMap(knobs.center, knobs.directions, knobs.scale, trial), knob, snaps)
        if ratio <= CLIFF_RATIO and trial[knob] != travel[knob]:
            if log:
                print(f"knob {knob + 1}: a cliff beyond {trial[knob]:g} std: travel {travel[knob]:g} -> {trial[knob]:g} std",
                      flush=True)
            travel[knob] = trial[knob]
    return travel


def guarded_travel(preset: Preset, log: bool = False) -> NDArray[np.float64]:
    """Every knob's travel as export writes it: widened where weak (``calibrate_travel``), narrowed
    where an end plays out of tune (``tune_guard``), then where a cliff lies near an end
    (``cliff_guard``). In tune and without a cliff come before the effect target."""
    probe = KnobProbe(preset)
    return cliff_guard(preset, tune_guard(preset, calibrate_travel(preset, probe), log=log), probe, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    from export.onnx import _write_doc
    from synth.errors import VaesynthError
    from synth.preset import load_preset

    p = argparse.ArgumentParser(prog="python -m export.knob_travel", description=__doc__.split("\n\n")[0])
    p.add_argument("preset", help="preset folder (its [knobs] travel is rewritten)")
    args = p.parse_args(argv)
    folder = Path(args.preset)
    if not (folder / "preset.toml").is_file():
        raise VaesynthError(f"{folder}: no preset.toml")
    preset = load_preset(folder)
    travel = guarded_travel(preset, log=True)
    doc = tomllib.loads((folder / "preset.toml").read_text())
    doc["knobs"]["travel"] = [round(float(t), 3) for t in travel]  # as export writes it
    _write_doc(folder, doc)
    print("[knobs] travel " + " ".join(f"{t:g}" for t in doc["knobs"]["travel"]))
    return 0


if __name__ == "__main__":
    from synth.errors import run_command

    raise SystemExit(run_command(lambda: main()))
