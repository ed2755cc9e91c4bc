"""The preset's latent map: round trip, deterministic draws, distance, hostile files refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synth.latent_map import LatentMap, LatentMapError, load_latent_map


def _map(n: int = 50, size: int = 4) -> LatentMap:
    rng = np.random.default_rng(1)
    return LatentMap(mu=rng.standard_normal((n, size)).astype(np.float32),
                     sigma=np.full((n, size), 0.1, np.float32),
                     family=(np.arange(n) % 3).astype(np.int16), program=np.arange(n, dtype=np.int16),
                     pitch=np.full(n, 60.0, np.float32), families=("bass", "organ", "string"))


def test_round_trip_and_draws(tmp_path: Path) -> None:
    m = _map()
    m.save(tmp_path / "m.npz")
    back = load_latent_map(tmp_path / "m.npz", 4)
    assert np.array_equal(back.mu, m.mu) and back.families == m.families
    a, b, c = back.draw(7), back.draw(7), back.draw(8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    d, i = back.distance(a)
    assert d < 5.0  # a draw lies near one of the points it was drawn around
    far, _ = back.distance(np.full(4, 100.0))
    assert far > 100.0


@pytest.mark.parametrize("case", ["wrong_size", "nan", "pickle", "garbage", "bad_family"])
def test_hostile_maps_are_refused(tmp_path: Path, case: str) -> None:
    path = tmp_path / "m.npz"
    m = _map()
    if case == "wrong_size":
        m.save(path)
        with pytest.raises(LatentMapError, match=r"\(N, 5\)"):
            load_latent_map(path, 5)
        return
    if case == "nan":
        m.mu[3, 1] = np.nan
        m.save(path)
    elif case == "pickle":
        np.savez(path, mu=np.array([object()], dtype=object), sigma=m.sigma, family=m.family, program=m.program,
                 pitch=m.pitch, families=np.asarray(m.families))
    elif case == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip")
    elif case == "bad_family":
        m.family[0] = 9
        m.save(path)
    with pytest.raises(LatentMapError):
        load_latent_map(path, 4)
