"""How far each timbre knob reaches: ``[knobs] travel``, measured on the exported decoder (torch-free).

A knob moves the timbre along one principal direction of the training notes' posterior, by
default over center ± ``DEFAULT_KNOB_TRAVEL`` std of that direction. The last directions carry
the least variance, and the decoder answers them least: on the shipped preset's celesta (a
decaying sound) knob 8 moved a held C4 by only 1.5 dB over that travel, knob 7 by 2.3 dB, where a
player hears a knob that does nothing. So export measures each knob's effect (log-spectral
distance between CC 0 and CC 127) at every family snapshot, and widens a knob whose weakest
effect is under ``TARGET_EFFECT_DB`` just enough to reach it, never past ``KNOB_TRAVEL_RANGE``'s
top (further out the decoder extrapolates). Knobs that reach the target keep the default travel.

``benchmarks.timbre_space`` reports the same figure through :class:`KnobProbe`.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from synth.contract import DECODER_INPUTS, DECODER_OUTPUT, DEFAULT_KNOB_TRAVEL, HELD_TIME_OFF, KNOB_TRAVEL_RANGE, gm_group
from synth.model_file import cpu_session, read_model
from synth.preset import KnobMap, Preset, Snapshot
from synth.stft import log_spectral_distance_db, magnitude_from_log

EFFECT_KEY, EFFECT_VELOCITY = 60, 100  # a held C4 at velocity 100
HELD_TIMES = (0.25, 0.5, 1.0, 2.0)
"""Seconds after note-on of the frames compared: the body of a held note, not only its attack."""
TARGET_EFFECT_DB = 3.3
"""A knob's weakest end-to-end effect over the family snapshots is widened to this: the 3 dB a
player clearly hears, plus a margin for the decoder's non-linearity between the bisection's points."""
BISECTION_STEPS = 6  # travel found to (6 - 3) / 2**6 ~ 0.05 std


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

    def end_to_end_db(self, kmap: KnobMap, knob: int, snapshots: list[Snapshot]) -> NDArray[np.float64]:
        """Effect of ``knob`` between CC 0 and CC 127 at each snapshot -> ``(S,)`` dB."""
        z = np.concatenate([kmap.move(s.z, knob, np.array([-1.0, 1.0])) for s in snapshots])
        frames = self.held_frames(z).reshape(len(snapshots), 2, len(HELD_TIMES), -1)
        return np.array([self.distance_db(f[0], f[1]) for f in frames])


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
