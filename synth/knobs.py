"""Timbre knobs along a preset's principal directions, with pick-up, and program -> snapshot recall.

The timbre is ``z = base + sum_i c_i * step_i * d_i`` (``synth.preset.KnobMap``: step = travel x scale): ``c`` holds
the K knob coordinates (-1..1 spans the knob's travel, a recalled snapshot may lie outside) and
``base`` the part of z outside the knob subspace (plus ``center``'s part inside it). A recall
(program change, ``--latent``) sets z and derives ``c`` and ``base`` from it; a knob CC sets one
coordinate and recomposes z.

Pick-up (soft takeover): after a recall the hardware knobs no longer sit where the coordinates
are, so a knob's CC is ignored until its value reaches (within one CC step) or crosses the
current coordinate; from then on it follows. At start-up every knob is picked up (no recall
has happened: the first move is heard, as before pick-up existed).

Everything the audio thread calls (:meth:`TimbreKnobs.recall_program`, :meth:`TimbreKnobs.control`)
works in preallocated arrays through numba kernels: no allocation.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from synth.preset import Preset

PICKUP_TOLERANCE = 1.0 / 127.0 + 1e-9
"""Half a CC step in coordinate units: a CC value this close to the coordinate has reached it."""


@njit(nogil=True, cache=True)
def _compose(base, coords, step, directions, z) -> None:
    """``z = base + sum_i coords[i] * step[i] * directions[i]``."""
    for j in range(z.shape[0]):
        acc = base[j]
        for i in range(coords.shape[0]):
            acc += coords[i] * step[i] * directions[i, j]
        z[j] = acc


@njit(nogil=True, cache=True)
def _decompose(z, center, step, directions, coords, base) -> None:
    """Coordinates of ``z - center`` along the (orthonormal) directions; ``base`` = z minus the knob part."""
    for i in range(coords.shape[0]):
        acc = 0.0
        for j in range(z.shape[0]):
            acc += directions[i, j] * (z[j] - center[j])
        coords[i] = acc / step[i]
    for j in range(z.shape[0]):
        acc = z[j]
        for i in range(coords.shape[0]):
            acc -= coords[i] * step[i] * directions[i, j]
        base[j] = acc


@njit(nogil=True, cache=True)
def _cc_coordinate(value) -> float:
    return value * (2.0 / 127.0) - 1.0


CC_COORDINATES = _cc_coordinate.py_func(np.arange(128, dtype=np.float64))  # the kernel's own formula, not compiled at import
"""A knob's coordinate at each CC value 0..127 (``(128,)``: -1..1 spans its travel), for sweeps."""


@njit(nogil=True, cache=True)
def _unpick(coords, last_cc, pickup, only_moved, before) -> None:
    """After a recall: a knob stays picked up only where its last CC value sits on its coordinate.
    ``only_moved``: knobs whose coordinate did not change (vs ``before``) keep their state."""
    for i in range(coords.shape[0]):
        if only_moved and abs(coords[i] - before[i]) <= 1e-9:
            continue
        c = min(max(coords[i], -1.0), 1.0)
        pickup[i] = last_cc[i] >= 0 and abs(_cc_coordinate(last_cc[i]) - c) <= PICKUP_TOLERANCE


@njit(nogil=True, cache=True)
def _take_cc(knob, value, coords, pickup, last_cc) -> bool:
    """Apply CC ``value`` 0..127 to ``knob`` with pick-up; True when the coordinate changed."""
    u = _cc_coordinate(value)
    if not pickup[knob]:
        c = min(max(coords[knob], -1.0), 1.0)  # a coordinate beyond the travel is reached at its end
        if abs(u - c) <= PICKUP_TOLERANCE:
            pickup[knob] = True
        elif last_cc[knob] >= 0 and (_cc_coordinate(last_cc[knob]) - c) * (u - c) < 0.0:
            pickup[knob] = True  # crossed it between two messages
    last_cc[knob] = value
    if not pickup[knob]:
        return False
    coords[knob] = u
    return True


class TimbreKnobs:
    """Knob coordinates, pick-up state and the program table of one preset (one engine's worth)."""

    def __init__(self, preset: Preset) -> None:
        kmap = preset.knobs
        f64 = np.float64
        self.center = np.ascontiguousarray(kmap.center, f64)
        self.directions = np.ascontiguousarray(kmap.directions, f64)
        self.step = np.ascontiguousarray(kmap.step, f64)
        k, size = self.directions.shape
        self.count = k
        self.coords = np.zeros(k, f64)
        self.base = self.center.copy()
        self.pickup = np.ones(k, np.bool_)
        self.last_cc = np.full(k, -1, np.int64)
        self._before = np.zeros(k, f64)
        self.programs = np.asarray(preset.programs or [-1] * 128, np.int64)
        snaps = preset.snapshots
        self._snap_z = np.array([s.z for s in snaps], np.float32).reshape(len(snaps), size)
        self._snap_coords = np.zeros((len(snaps), k), f64)
        self._snap_base = np.zeros((len(snaps), size), f64)
        for i in range(len(snaps)):
            _decompose(self._snap_z[i], self.center, self.step, self.directions, self._snap_coords[i],
                       self._snap_base[i])
        self._warm_up(size)

    def _warm_up(self, size: int) -> None:
        """Compile (or load) every kernel the audio thread calls, on scratch state, with its real types."""
        coords, pickup, last = self.coords.copy(), self.pickup.copy(), self.last_cc.copy()
        z = np.zeros(size, np.float32)
        _take_cc(np.int64(0), 0, coords, pickup, last)
        _compose(self.base, coords, self.step, self.directions, z)
        _unpick(coords, last, pickup, False, coords)
        _decompose(z, self.center, self.step, self.directions, coords, self.base.copy())

    def derive(self, z: NDArray[np.float32], unpick_moved: bool = True) -> None:
        """Set coordinates and base from ``z`` (``--latent``; the audio thread for the morph wheel: it
        allocates nothing); knobs whose coordinate moved lose their pick-up."""
        self._before[:] = self.coords
        _decompose(z, self.center, self.step, self.directions, self.coords, self.base)
        if unpick_moved:
            _unpick(self.coords, self.last_cc, self.pickup, True, self._before)

    def recall_program(self, program: int, z: NDArray[np.float32]) -> int:
        """Program change (audio thread): write the resolved snapshot into ``z``, take its coordinates,
        drop pick-up. Returns the snapshot index, -1 (nothing changed) when the preset has none."""
        i = self.programs[program & 0x7F]
        if i < 0:
            return -1
        z[:] = self._snap_z[i]
        self.coords[:] = self._snap_coords[i]
        self.base[:] = self._snap_base[i]
        _unpick(self.coords, self.last_cc, self.pickup, False, self.coords)
        return int(i)

    def recall(self, z_new: NDArray[np.float32], z: NDArray[np.float32]) -> None:
        """A timbre change to any point (audio thread; ``synth.timbre``): write ``z_new`` into ``z``, take
        its coordinates, drop pick-up as a program change does."""
        z[:] = z_new
        _decompose(z, self.center, self.step, self.directions, self.coords, self.base)
        _unpick(self.coords, self.last_cc, self.pickup, False, self.coords)

    def control(self, knob: int, value: int, z: NDArray[np.float32]) -> None:
        """Knob CC (audio thread): pick-up, then recompose ``z`` when the coordinate moved."""
        if _take_cc(knob, value, self.coords, self.pickup, self.last_cc):
            _compose(self.base, self.coords, self.step, self.directions, z)
