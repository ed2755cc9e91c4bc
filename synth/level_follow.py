"""Knobs that move the timbre, not the volume: the loudness follower (torch-free, never real-time).

Turning a knob moves the latent, and the decoder's loudness moves with it: measured on the shipped
preset (a v100 C4 of one program per GM group, each knob at CC 0 and CC 127), by a median of
2-9 dB per knob and up to 30 dB (knob 4 at 0 nearly silences a note). A musician expects velocity
and volume to set the loudness, and a timbre knob to change the sound at about the same level.

So a :class:`LevelFollower` watches the engine's latent from a thread of its own (or from the
offline render loop): when the knobs have moved it since the last timbre change, it estimates
both latents' levels from the decoder alone (``synth.loudness.LevelEstimate``: the loudest frame
at C3, C4 and C5, about 5 ms) and hands the engine the gain that keeps the level where the timbre
change put it (within +-MAX_FOLLOW_DB). The engine glides to it with the knobs and drops it at
the next timbre change (``Engine.set_level_follow``), so sounding notes follow too.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from synth.contract import MAX_KEY_LEVEL_DB
from synth.loudness import LevelEstimate

FOLLOW_KEYS = (48, 60, 72)
FOLLOW_FRAME_STEP = 4
"""Every 4th frame of the note's first second, 24 a key, about 5 ms for the three keys. Measured on
the shipped preset (``benchmarks.loudness``'s knob table, seven programs): every 8th frame misses
attack peaks (90th percentile of a knob end's change 5.6 dB), every 4th does as well as every
frame (4.4 dB)."""
MAX_FOLLOW_DB = MAX_KEY_LEVEL_DB
"""A knob's loudness change is made up to +-12 dB, the bound of every level trim: a knob end that
silences a note stays quieter (a +-12 dB trim cannot turn a near-silent decode into a burst)."""
FOLLOW_PERIOD_S = 0.03
"""How often the live follower looks at the latent: a knob turn's level settles within about
this plus the knobs' glide. Only a moved latent costs a decode."""


class LevelFollower:
    """The gain that keeps ``engine``'s loudness where its last timbre change put it, as the knobs move."""

    def __init__(self, engine: Any, estimate: LevelEstimate | None = None) -> None:
        self.engine = engine
        shared = getattr(engine.timbre.estimate, "session", None)  # the random draws' decoder session, when open
        self.estimate = estimate or LevelEstimate(engine.preset, FOLLOW_KEYS, FOLLOW_FRAME_STEP, session=shared)
        self._serial = -1
        self._reference_db = 0.0
        self._last_z: np.ndarray | None = None
        self.updates = 0  # gains handed to the engine (for tests and the benchmark)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._looking = threading.Lock()  # the thread and a freewheeling renderer never look at once

    def _level_db(self, z: np.ndarray) -> float:
        engine = self.engine
        return float(np.mean(self.estimate.frame_db(z, engine.timbre_track, engine.timbre_tone_db)))

    def update(self) -> bool:
        """Look once: when the latent moved since the last look, hand the engine a new gain. True when
        it did. Safe against a timbre change meanwhile (the engine drops a gain of an older change)."""
        with self._looking:
            return self._look()

    def _look(self) -> bool:
        engine = self.engine
        serial, recalled = engine.recalled
        if serial != self._serial:
            self._serial, self._last_z = serial, None
            self._reference_db = self._level_db(recalled)
        z = np.array(engine.z_target, np.float32)
        if self._last_z is not None and np.array_equal(z, self._last_z):
            return False
        self._last_z = z
        gain_db = 0.0 if np.array_equal(z, recalled) else self._reference_db - self._level_db(z)
        if not np.isfinite(gain_db):  # a NaN decode: no gain (the engine mutes NaN voices itself)
            gain_db = 0.0
        engine.set_level_follow(serial, 10.0 ** (float(np.clip(gain_db, -MAX_FOLLOW_DB, MAX_FOLLOW_DB)) / 20.0))
        self.updates += 1
        return True

    def start(self, period: float = FOLLOW_PERIOD_S, on_error: Any = None, paused: Any = None) -> None:
        """Look every ``period`` seconds on a thread of its own until :meth:`stop`, skipping looks while
        ``paused()`` (JACK freewheel: the renderer looks then); a failed look is reported once through
        ``on_error(exc)`` and the follower stops (the level stays as it is)."""

        def loop() -> None:
            while not self._stop.wait(period):
                if paused is not None and paused():
                    continue
                try:
                    self.update()
                except Exception as exc:  # noqa: BLE001 - never the stream: the level just stops following
                    if on_error is not None:
                        on_error(exc)
                    return

        self._thread = threading.Thread(target=loop, name="vaesynth-level-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
