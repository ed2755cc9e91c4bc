"""Notes played one after another by one engine: export's measurements of what a player hears (torch-free).

Building an engine costs about twice a 1.7 s note's render, so export plays every note it
measures on one timbre in one engine, each faded out (All Sound Off, 5 ms) before the next begins.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from synth.events import CC_ALL_SOUND_OFF


def play_in_turn(engine: object, keys: Sequence[int], velocity: int, first: int, hold: int, window: int,
                 gap: int, block: int | None = None) -> tuple[NDArray[np.float32], list[int]]:
    """Play ``keys`` on ``engine`` (prepared; its timbre already queued or set) one after another:
    key i goes down at ``first + i * (window + gap)`` samples, up ``hold`` later (never, when
    ``hold >= window``) and is faded out at the end of its ``window``. Rendered in ``block``-sample
    calls (one call when None) -> ``(out (n, 2), starts)``."""
    starts = [first + i * (window + gap) for i in range(len(keys))]
    for start, key in zip(starts, keys):
        engine.push(start, 0x90, key, velocity)
        if hold < window:
            engine.push(start + hold, 0x80, key, 0)
        engine.push(start + window, 0xB0, CC_ALL_SOUND_OFF, 0)
    out = np.zeros((starts[-1] + window + gap if starts else 0, 2), np.float32)
    step = block or max(len(out), 1)
    for a in range(0, len(out), step):
        engine.process(out[a:a + step])
    return out, starts
