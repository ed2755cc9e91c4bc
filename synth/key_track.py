"""Key tracking of a snapshot: its latent as a function of the key played (torch-free).

A real instrument's spectrum changes across its keyboard (FluidR3's electric piano: a second
harmonic 10 dB over the fundamental at A2, 19 dB under it at C5), and one latent fitted to every
key is a compromise that suits none of them (measured, the 24 000-step default model: an
electric-piano snapshot whose octave was 4-11 dB too loud at keys 60-67, heard as ghost notes by
a transcriber). So training fits a snapshot's latent at a few keys (``SNAPSHOT_TRACK_KEYS``), the
preset stores them, and the engine plays key ``k`` at ``z_current + offset[k]``: the knobs,
morphs and captures move ``z_current`` (the latent at ``SNAPSHOT_HOME_KEY``) and every key
follows, each keeping its own distance from it.

Between two track keys the latent is interpolated linearly; below the first and above the last
it is held (the decoder was never asked for anything beyond the training keys).

A snapshot's level may follow the key too (``key_gain_table``): export measures a velocity-100
note of each snapshot at a few keys and stores a correction in dB for those that peak outside
the level band, interpolated in dB between its keys in the same way.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from synth.contract import SNAPSHOT_TRACK_KEYS

MAX_TRACK_KEYS = 32  # a preset asking for more is hostile or broken, not finer


def track_weights(keys: NDArray | tuple[float, ...], at: NDArray | list[float]) -> NDArray[np.float64]:
    """Interpolation weights of the latents at ``keys (A,)`` (strictly increasing) for the keys
    ``at (N,)`` -> ``(N, A)``: each row has at most two non-zero weights, summing to 1."""
    k = np.asarray(keys, np.float64)
    x = np.clip(np.asarray(at, np.float64), k[0], k[-1])
    w = np.zeros((len(x), len(k)))
    if len(k) == 1:
        w[:] = 1.0
        return w
    j = np.clip(np.searchsorted(k, x, side="right") - 1, 0, len(k) - 2)
    f = (x - k[j]) / (k[j + 1] - k[j])
    rows = np.arange(len(x))
    w[rows, j] = 1.0 - f
    w[rows, j + 1] = f
    return w


def latent_at(keys: NDArray | tuple[float, ...], track_z: NDArray, at: NDArray | list[float]) -> NDArray[np.float64]:
    """The latents ``track_z (A, L)`` given at ``keys (A,)``, interpolated to ``at (N,)`` -> ``(N, L)``."""
    return track_weights(keys, at) @ np.asarray(track_z, np.float64)


def offset_table(keys: NDArray | tuple[float, ...], track_z: NDArray, home: NDArray) -> NDArray[np.float32]:
    """``(128, L)``: what each MIDI key adds to the timbre's latent ``home (L,)`` (the engine's table)."""
    return (latent_at(keys, track_z, np.arange(128)) - np.asarray(home, np.float64)[None]).astype(np.float32)


def key_gain_table(keys: NDArray | tuple[float, ...], db: NDArray | list[float]) -> NDArray[np.float32]:
    """``(128,)`` linear gain of every MIDI key from the levels ``db (A,)`` given at ``keys (A,)``
    (interpolated in dB, held beyond the first and last)."""
    level_db = track_weights(keys, np.arange(128)) @ np.asarray(db, np.float64)
    return (10.0 ** (level_db / 20.0)).astype(np.float32)


OWN_KEY_SPAN = 12
"""Semitones over which a capture's own key fades from the note's own reading into the keyboard fit
(``synth.capture``): its offset table carries the difference there, fading linearly to nothing an
octave either side (measured: ``synth.capture.capture``, README's capture figures)."""


def with_own_key(track: NDArray | None, size: int, key: float, offset: NDArray) -> NDArray[np.float32]:
    """``(128, size)``: the offset table ``track`` (None: no tracking) plus ``offset (size,)`` at the
    row MIDI ``key`` plays, fading linearly to nothing ``OWN_KEY_SPAN`` keys away on either side."""
    base = np.zeros((128, size), np.float64) if track is None else np.asarray(track, np.float64)
    fade = np.clip(1.0 - np.abs(np.arange(128) - key_row(key)) / OWN_KEY_SPAN, 0.0, 1.0)
    return (base + fade[:, None] * np.asarray(offset, np.float64)[None]).astype(np.float32)


def own_key_track_keys(key: float) -> tuple[int, ...]:
    """The keys a capture's offset table is kept at (the library): the training track keys and, for
    :func:`with_own_key`'s fade, its own key's row, the rows an octave either side and the keyboard's
    ends (where a fade may be cut off). Linear interpolation between them gives the table back exactly."""
    row = key_row(key)
    own = {k for k in (0, row - OWN_KEY_SPAN, row, row + OWN_KEY_SPAN, 127) if 0 <= k <= 127}
    return tuple(sorted(set(SNAPSHOT_TRACK_KEYS) | own))


def valid_track_keys(keys: object) -> bool:
    """``keys`` is a list of 1..``MAX_TRACK_KEYS`` strictly increasing MIDI keys (ints in 0..127)."""
    return (isinstance(keys, list) and 1 <= len(keys) <= MAX_TRACK_KEYS
            and all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 127 for k in keys)
            and all(b > a for a, b in zip(keys, keys[1:])))


def checked_track(track: NDArray, size: int) -> NDArray[np.float32]:
    """``track`` as a float32 ``(128, size)`` offset table; ValueError unless it is one, all finite."""
    track = np.asarray(track, np.float32)
    if track.shape != (128, size) or not np.isfinite(track).all():
        raise ValueError(f"key tracking of shape {track.shape} (finite) expected {(128, size)}")
    return track


def key_row(key: float) -> int:
    """The row of an offset table that MIDI key ``key`` plays (rounded, within 0..127), as the engine looks it up."""
    return min(max(int(round(key)), 0), 127)


def latent_for_key(z: NDArray, track: NDArray | None, key: float) -> NDArray[np.float32]:
    """``(L,)``: the latent a timbre ``z (L,)`` with offset table ``track (128, L)`` (None: none) plays ``key`` at."""
    if track is None:
        return np.asarray(z, np.float32)
    return (np.asarray(z, np.float32) + track[key_row(key)]).astype(np.float32)
