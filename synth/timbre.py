"""Timbre slots, user snapshots, morphing and random timbres inside the engine (torch-free).

The engine owns one :class:`TimbreBank`: ``SLOTS`` preallocated latents ``z (SLOTS, L)`` float32.
A non-audio thread writes a latent into a slot and only then pushes an event that names the slot
(publish after write); the audio thread only reads slots and its own few integers, so the two need
no lock and the callback allocates nothing.

Slot layout:
- ``0..127``: user programs (slot n = user program n, from the library, ``synth.library``);
- ``RANDOM_BASE ..``: a ring of ``RANDOM_RING`` random timbres drawn ahead of time from the
  aggregate posterior (seeds ``seed, seed + 1, ...``), refilled by :meth:`TimbreBank.refill_random`;
- ``SCRATCH_BASE ..``: captures, morph endpoints and anything else a caller stores.

MIDI (standard messages, so every front end drives it the same way):
- **Bank Select** (CC 0) = 1 then **Program Change N**: user program N; bank 0 (the default) keeps
  program changes on the preset's snapshots.
- **CC 1** (mod wheel, ``CC_MORPH``; another CC with ``morph_cc``): the position between the morph
  endpoints A (0) and B (127), smoothed by the engine's one-pole glide like the knobs.
- **CC 80** (``CC_RANDOM``) rising to 64 or more: the next random timbre.

A timbre change behaves like a program change for the knobs: they take the new point's coordinates
and wait for pick-up (``synth.knobs``), so nothing jumps. Moving the morph wheel moves the point
along the A -> B line; knobs whose coordinate moved wait for pick-up again.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import NDArray

from synth.contract import TONE_HZ
from synth.events import ENGINE_EVENT
from synth.key_track import checked_track
from synth.knobs import TimbreKnobs
from synth.loudness import KEY_GAIN_RULE, LevelEstimate, valid_key_gains
from synth.preset import Preset
from synth.tone import TONE_RULE, valid_tone

CC_BANK_SELECT = 0
USER_BANK = 1
"""Bank Select value whose program changes recall user snapshots."""
CC_MORPH = 1
"""The mod wheel: the default morph control."""
CC_RANDOM = 80
"""General purpose button 5: a press (value rising to >= 64) draws the next random timbre."""
BUTTON_ON = 64
SELECT_SLOT = ENGINE_EVENT + 1  # d1: slot
MORPH = ENGINE_EVENT + 2  # d1, d2: slots A and B
SLOTS = 256
USER_SLOTS = 128
RANDOM_BASE = USER_SLOTS
RANDOM_RING = 16
SCRATCH_BASE = RANDOM_BASE + RANDOM_RING
NO_SLOT = -1

USER, CAPTURE, RANDOM, SNAPSHOT, LATENT, MORPHED = "user", "capture", "random", "snapshot", "latent", "morph"


@dataclass(frozen=True)
class TimbreInfo:
    """What a timbre is, for the status line and state saving: ``kind`` (USER, CAPTURE, RANDOM,
    SNAPSHOT, LATENT or MORPHED), ``name``, and the ``seed`` of a random one (recall it with
    ``--timbre random:SEED``); ``program`` of a snapshot or user program."""

    kind: str
    name: str
    seed: int | None = None
    program: int | None = None

    @property
    def label(self) -> str:
        return f"random:{self.seed}" if self.kind == RANDOM else self.name


def draw_random(preset: Preset, seed: int) -> NDArray[np.float32]:
    """A latent from the aggregate posterior, deterministic in ``seed``: the latent map's draw; a preset
    without a map falls back to a Gaussian with the aggregate's per-dim mean and std."""
    if preset.latent_map is not None:
        return preset.latent_map.draw(seed)
    rng = np.random.default_rng(seed)
    return (preset.latent_mean + preset.latent_std * rng.standard_normal(preset.latent_size)).astype(np.float32)


@njit(nogil=True, cache=True)
def _lerp(a, b, t, out) -> None:
    for i in range(out.shape[0]):
        out[i] = a[i] + t * (b[i] - a[i])


class TimbreBank:
    """The engine's timbre slots and the audio-thread state that selects among them.

    Writer side (any non-audio thread, serialised by an internal lock): :meth:`store`,
    :meth:`store_user`, :meth:`refill_random`, :meth:`start_random` (before the stream starts).
    Audio side (the engine's event handling): :meth:`control_change`, :meth:`program_change`,
    :meth:`handle`; these write only ``z_target``, the knobs and a few integers."""

    def __init__(self, preset: Preset, knobs: TimbreKnobs, seed: int | None = None) -> None:
        self.preset = preset
        self.knobs = knobs
        self.z = np.zeros((SLOTS, preset.latent_size), np.float32)
        # each slot's key tracking (synth.key_track), flat (128 * L) rows as the engine reads them; zeros: none
        self.track = np.zeros((SLOTS, 128 * preset.latent_size), np.float32)
        # each slot's tone curve at TONE_HZ (synth.tone); zeros: flat (random draws, old library entries)
        self.tone = np.zeros((SLOTS, len(TONE_HZ)), np.float32)
        # each slot's linear gain per key (synth.loudness: a capture's measured level, a preset snapshot's
        # trims); ones: as the decoder plays it (random draws, library entries from before levels)
        self.key_gain = np.ones((SLOTS, 128), np.float32)
        self.info: list[TimbreInfo | None] = [None] * SLOTS
        self.filled = np.zeros(SLOTS, np.bool_)
        self.knob_pickup = True  # False: a timbre change leaves every knob picked up (offline automation)
        self.morph_cc = CC_MORPH
        self._lock = threading.Lock()
        self._scratch_next = 0
        self._estimate: LevelEstimate | None = None  # levels the random draws (level_random); None: 1.0
        # audio-thread state (plain ints: one writer, atomic reads under the GIL)
        self.current_slot = NO_SLOT  # NO_SLOT: a preset snapshot, ``current_program``
        self.current_program = 0
        self.bank = 0
        self.morph_a = self.morph_b = NO_SLOT
        self.morph_value = 0
        self.random_used = 0
        self.random_misses = 0  # button presses with no random timbre drawn yet
        self._button = 0
        # writer-side random state
        self.random_drawn = 0
        self.random_seed = 0
        self.start_random(int(np.random.SeedSequence().entropy % (1 << 31)) if seed is None else seed)
        scratch = np.zeros(preset.latent_size, np.float32)
        _lerp(scratch, scratch, 0.5, scratch)  # compile before any stream starts

    # ------------------------------------------------------------------ writers (not the audio thread)
    def store(self, z: NDArray[np.floating], info: TimbreInfo, track: NDArray[np.floating] | None = None,
              tone_db: NDArray[np.floating] | None = None, key_gain: NDArray[np.floating] | None = None) -> int:
        """Write ``z (L,)`` (and its key tracking ``track (128, L)``, tone curve ``tone_db (P,)`` and gain
        per key ``key_gain (128,)``, a capture's) into the next scratch slot
        (never the sounding one or a morph endpoint); returns the slot, to select with
        ``Engine.select_timbre`` or morph with ``Engine.morph_endpoints``."""
        with self._lock:
            for _ in range(SLOTS - SCRATCH_BASE):
                slot = SCRATCH_BASE + self._scratch_next
                self._scratch_next = (self._scratch_next + 1) % (SLOTS - SCRATCH_BASE)
                if slot not in (self.current_slot, self.morph_a, self.morph_b):
                    self._write(slot, z, info, track, tone_db, key_gain)
                    return slot
        raise RuntimeError("no free timbre slot")  # unreachable: three slots are busy at most

    def store_user(self, program: int, z: NDArray[np.floating], info: TimbreInfo,
                   track: NDArray[np.floating] | None = None, tone_db: NDArray[np.floating] | None = None,
                   key_gain: NDArray[np.floating] | None = None) -> int:
        """User program ``program`` (0..127) recalls ``z``, its ``track``, ``tone_db`` and ``key_gain``
        (Bank Select 1, then Program Change)."""
        if not 0 <= program < USER_SLOTS:
            raise ValueError(f"user program {program} outside 0..{USER_SLOTS - 1}")
        with self._lock:
            self._write(program, z, info, track, tone_db, key_gain)
        return program

    def _write(self, slot: int, z: NDArray[np.floating], info: TimbreInfo,
               track: NDArray[np.floating] | None = None, tone_db: NDArray[np.floating] | None = None,
               key_gain: NDArray[np.floating] | None = None) -> None:
        z = np.asarray(z, np.float32)
        if z.shape != (self.z.shape[1],) or not np.isfinite(z).all():
            raise ValueError(f"a timbre needs {self.z.shape[1]} finite latent values")
        if tone_db is not None and not valid_tone(tone_db):
            raise ValueError(f"a tone curve needs {TONE_RULE}")
        if key_gain is not None and not valid_key_gains(key_gain):
            raise ValueError(f"a gain per key needs {KEY_GAIN_RULE}")
        self.key_gain[slot] = 1.0 if key_gain is None else np.asarray(key_gain, np.float32)
        self.tone[slot] = 0.0 if tone_db is None else np.asarray(tone_db, np.float32)
        self.track[slot] = 0.0 if track is None else checked_track(track, self.z.shape[1]).reshape(-1)
        self.z[slot] = z
        self.info[slot] = info
        self.filled[slot] = True

    def level_random(self, estimate: LevelEstimate | None) -> None:
        """Give every random draw the level per key ``estimate`` reads off its latent (synth.loudness;
        None: level 1.0), and draw the ring again with it. Before the stream starts, as :meth:`start_random`."""
        self._estimate = estimate
        self.start_random(self.random_seed)

    @property
    def estimate(self) -> LevelEstimate | None:
        """The level estimate random draws get (``level_random``); None: none opened."""
        return self._estimate

    def draw(self, seed: int) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
        """The random timbre ``seed``: its latent (``draw_random``) and gain per key (None: 1.0, no estimate)."""
        z = draw_random(self.preset, seed)
        return z, None if self._estimate is None else self._estimate.key_level(z).gains()

    def start_random(self, seed: int) -> None:
        """Restart the random sequence at ``seed`` (the next draws are ``seed``, ``seed + 1``, ...).
        Before the stream starts: it rewrites slots the audio thread may be reading."""
        with self._lock:
            self.random_seed = int(seed)
            self.random_drawn = self.random_used = 0
        self.refill_random()

    def refill_random(self) -> None:
        """Draw ahead until the ring is full, keeping the sounding random timbre (call it now and then
        from a non-audio thread: the live status loop does)."""
        with self._lock:
            while self.random_drawn < self.random_used + RANDOM_RING - 1:
                k = self.random_drawn
                seed = self.random_seed + k
                z, gain = self.draw(seed)
                self._write(RANDOM_BASE + k % RANDOM_RING, z, TimbreInfo(RANDOM, f"random:{seed}", seed=seed),
                            key_gain=gain)
                self.random_drawn = k + 1  # publish after the slot is written

    def take_random(self) -> int:
        """The slot of the next random timbre, consumed as a button press would (before the stream
        starts: ``--timbre random:SEED`` plays draw ``SEED``, the button then ``SEED + 1``, ...)."""
        with self._lock:
            k = self.random_used
            self.random_used = k + 1
        self.refill_random()
        return RANDOM_BASE + k % RANDOM_RING

    # ------------------------------------------------------------------ audio thread
    def select(self, slot: int, z_target: NDArray[np.float32]) -> bool:
        """Make slot ``slot`` the timbre (recall semantics for the knobs); False when it is empty."""
        if not (0 <= slot < SLOTS and self.filled[slot]):
            return False
        self.morph_a = self.morph_b = NO_SLOT
        self._recall(self.z[slot], z_target)
        self.current_slot = slot
        return True

    def next_random(self, z_target: NDArray[np.float32]) -> bool:
        """The next drawn random timbre; False (counted in ``random_misses``) when none is drawn yet."""
        k = self.random_used
        if k >= self.random_drawn:
            self.random_misses += 1
            return False
        self.random_used = k + 1
        return self.select(RANDOM_BASE + k % RANDOM_RING, z_target)

    def morph(self, a: int, b: int, z_target: NDArray[np.float32]) -> bool:
        """Morph between slots ``a`` and ``b``; the timbre moves to the wheel's current position."""
        if not (0 <= a < SLOTS and 0 <= b < SLOTS and self.filled[a] and self.filled[b]):
            return False
        self.morph_a, self.morph_b = a, b
        self.current_slot = NO_SLOT
        _lerp(self.z[a], self.z[b], self.morph_value / 127.0, z_target)
        self._recall(z_target, z_target)
        return True

    def handle(self, status: int, d1: int, d2: int, z_target: NDArray[np.float32]) -> bool:
        """An engine event (``SELECT_SLOT``, ``MORPH``); others are ignored. True when the timbre changed."""
        if status == SELECT_SLOT:
            return self.select(d1, z_target)
        if status == MORPH:
            return self.morph(d1, d2, z_target)
        return False

    def control_change(self, cc: int, value: int, z_target: NDArray[np.float32]) -> bool:
        """Bank Select, the morph CC and the random button (other CCs: nothing). True when the timbre
        changed (a morph moved, a random timbre was drawn)."""
        changed = False
        if cc == CC_BANK_SELECT:
            self.bank = value
        if cc == self.morph_cc:
            self.morph_value = value
            if self.morph_a != NO_SLOT:
                _lerp(self.z[self.morph_a], self.z[self.morph_b], value / 127.0, z_target)
                self.knobs.derive(z_target)
                self._pickup_all_offline()
                changed = True
        if cc == CC_RANDOM:
            pressed = value >= BUTTON_ON and self._button < BUTTON_ON
            self._button = value
            if pressed:
                changed = self.next_random(z_target) or changed
        return changed

    def program_change(self, program: int, z_target: NDArray[np.float32]) -> bool:
        """True when the program change was for a user program (bank ``USER_BANK``) and handled here;
        False leaves it to the preset's snapshots (call :meth:`snapshot_recalled` after)."""
        if self.bank != USER_BANK:
            return False
        self.select(program & 0x7F, z_target)  # an empty user program changes nothing
        return True

    def track_into(self, out: NDArray[np.float32]) -> None:
        """The sounding slot's key tracking into ``out (128 * L,)``: a morph's, between its endpoints' at the
        wheel's position; zeros while a preset snapshot sounds (the engine has those)."""
        self._sounding_into(self.track, out)

    def tone_into(self, out: NDArray[np.float32]) -> None:
        """The sounding slot's tone curve into ``out (P,)``, as :meth:`track_into` does its key tracking."""
        self._sounding_into(self.tone, out)

    def key_gain_into(self, out: NDArray[np.float32]) -> None:
        """The sounding slot's gain per key into ``out (128,)`` (a morph's: its endpoints' interpolated);
        ones while a preset snapshot sounds (the engine has those)."""
        if self.morph_a == NO_SLOT and self.current_slot == NO_SLOT:
            out.fill(1.0)
        else:
            self._sounding_into(self.key_gain, out)

    def _sounding_into(self, table: NDArray[np.float32], out: NDArray[np.float32]) -> None:
        """Row of ``table (SLOTS, N)`` for the sounding slot (a morph: its endpoints' rows interpolated) into ``out``."""
        if self.morph_a != NO_SLOT:
            _lerp(table[self.morph_a], table[self.morph_b], self.morph_value / 127.0, out)
        elif self.current_slot != NO_SLOT:
            out[:] = table[self.current_slot]
        else:
            out.fill(0.0)

    def snapshot_recalled(self, program: int) -> None:
        """The engine recalled the preset snapshot of ``program``: no slot or morph is sounding."""
        self.current_slot = NO_SLOT
        self.morph_a = self.morph_b = NO_SLOT
        self.current_program = program & 0x7F

    def _recall(self, z_new: NDArray[np.float32], z_target: NDArray[np.float32]) -> None:
        self.knobs.recall(z_new, z_target)
        self._pickup_all_offline()

    def _pickup_all_offline(self) -> None:
        if not self.knob_pickup:
            self.knobs.pickup[:] = True

    # ------------------------------------------------------------------ description (any thread)
    def describe(self) -> TimbreInfo:
        """The sounding timbre (a snapshot, a slot's timbre, or a morph and its position)."""
        a, b, slot = self.morph_a, self.morph_b, self.current_slot
        if a != NO_SLOT and b != NO_SLOT:
            ia, ib = self.info[a], self.info[b]
            name = f"{ia.label if ia else a}->{ib.label if ib else b} {100 * self.morph_value / 127:.0f}%"
            return TimbreInfo(MORPHED, name)
        if slot != NO_SLOT and self.info[slot] is not None:
            return self.info[slot]  # type: ignore[return-value]
        snap = self.preset.snapshot_for_program(self.current_program)
        name = snap.name if snap is not None else "latent mean"
        return TimbreInfo(SNAPSHOT, name, program=self.current_program)
