"""The numpy placement of a parts decoder's partials (capture's refinement) against the engine's numba loop."""
from __future__ import annotations

import numpy as np

from synth.partials import place_partials, place_partials_batch


def test_numpy_placement_equals_the_numba_loop() -> None:
    rng = np.random.default_rng(0)
    rows, harmonics, bins = 64, 128, 513
    amp = (0.01 * np.abs(rng.standard_normal((rows, harmonics)))).astype(np.float32)
    inharm = np.where(rng.random(rows) < 0.5, 0.0, 1e-3 * rng.random(rows)).astype(np.float32)
    noise = (1e-6 * np.abs(rng.standard_normal((rows, bins)))).astype(np.float32)
    pitch = rng.uniform(21, 108, rows).astype(np.float32)  # high notes put partials past Nyquist
    geometry = (1024 / 24000, 12000.0, 1e-5)
    loop = np.zeros((rows, bins), np.float32)
    place_partials(amp, inharm, noise, pitch, rows, *geometry, loop)
    batch = place_partials_batch(amp, inharm, noise, pitch, *geometry)
    assert batch.shape == loop.shape and batch.dtype == np.float32
    assert np.abs(batch - loop).max() < 1e-5
    assert np.ptp(loop) > 5.0  # partials and floor both present: the comparison covers both
