"""Offset tables (synth.key_track): a capture's own-key fade, and the keys that keep it exactly."""
from __future__ import annotations

import numpy as np
import pytest

from synth.contract import SNAPSHOT_TRACK_KEYS
from synth.key_track import OWN_KEY_SPAN, key_row, offset_table, own_key_track_keys, with_own_key


@pytest.mark.parametrize("pitch", [60.0, 64.3, 5.0, 121.6, 0.0, 127.0])
def test_own_key_fade_is_kept_exactly_at_its_track_keys(pitch: float) -> None:
    rng = np.random.default_rng(int(pitch * 10))
    size = 4
    z = rng.standard_normal(size)
    keys = np.array(SNAPSHOT_TRACK_KEYS)
    borrowed = offset_table(keys, z + rng.standard_normal((len(keys), size)), z)  # a neighbour's tracking
    offset = rng.standard_normal(size)
    table = with_own_key(borrowed, size, pitch, offset)
    row = key_row(pitch)
    np.testing.assert_allclose(table[row] - borrowed[row], offset, atol=1e-6)  # all of it at its own key
    far = np.abs(np.arange(128) - row) >= OWN_KEY_SPAN
    np.testing.assert_allclose(table[far], borrowed[far], atol=1e-6)  # none an octave away
    kept = own_key_track_keys(pitch)
    assert list(kept) == sorted(set(kept)) and set(SNAPSHOT_TRACK_KEYS) <= set(kept) and row in kept
    # what the library stores (the latent at those keys) gives the whole table back
    again = offset_table(np.array(kept), z + table[list(kept)], z)
    np.testing.assert_allclose(again, table, atol=1e-5)


def test_no_tracking_plus_an_own_key_is_the_fade_alone() -> None:
    table = with_own_key(None, 2, 60.0, np.array([1.0, -2.0]))
    assert table.shape == (128, 2)
    np.testing.assert_allclose(table[60 + OWN_KEY_SPAN // 2], [0.5, -1.0], atol=1e-6)
    assert not np.any(table[:60 - OWN_KEY_SPAN + 1]) and not np.any(table[60 + OWN_KEY_SPAN:])
