"""Voice bookkeeping: allocation, stealing, release, fades, and the per-sample voice mixer.

Every state change carries the exact sample time of the MIDI event that caused it
(``onset``, ``release_t``, ``fade_start``), so the engine can apply all events of a block
at the block's start and still be sample-accurate: the numba mixer below starts a voice at
``onset`` and begins a fade at ``fade_start`` to the sample.

Slots: ``polyphony`` sounding voices plus spare slots for voices fading out after being
stolen, so a steal never cuts a voice dead (the 5 ms fade runs in the old slot while the new
note starts in a free one).
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

# Voice states (numba reads these module constants as compile-time values).
FREE = 0  # slot unused
HELD = 1  # key down
SUSTAINED = 2  # key up, sustain pedal down
RELEASED = 3  # key (and pedal) up: the decoder's release is playing
FADING = 4  # stolen, shed, muted or past its release: a short fade to silence, then FREE
NEVER = np.iinfo(np.int64).max // 4
NO_VOICE = -1
STEAL_FADE_S = 0.005
RELEASE_END_FADE_S = 0.030


class VoiceBank:
    """Struct-of-arrays voice state for ``slots`` voices (``polyphony`` may sound at once)."""

    def __init__(self, polyphony: int, sample_rate: int, grid_lead: int = 0) -> None:
        """``grid_lead``: samples a voice's frame grid starts before its note-on (the engine's
        skipped head, ``synth.engine.START_SKIP_DB``)."""
        if polyphony < 1:
            raise ValueError(f"polyphony must be >= 1, got {polyphony}")
        self.polyphony = int(polyphony)
        self.slots = self.polyphony + max(4, self.polyphony // 2)
        self.sample_rate = int(sample_rate)
        self.grid_lead = int(grid_lead)
        s = self.slots
        self.state = np.zeros(s, np.int32)
        self.key = np.zeros(s, np.int32)
        self.channel = np.zeros(s, np.int32)
        self.velocity = np.zeros(s, np.float32)
        self.onset = np.zeros(s, np.int64)  # where the voice's frame grid starts: grid_lead before its note-on
        self.release_t = np.full(s, -1, np.int64)
        self.next_frame = np.zeros(s, np.int64)
        self.fade_start = np.full(s, NEVER, np.int64)
        self.fade_step = np.zeros(s, np.float32)
        self.gain = np.zeros(s, np.float32)  # the fade gain: 1 until a fade takes it to 0 (the voice is then freed)
        self.level = np.ones(s, np.float32)  # the note's own level (its snapshot's level at its key), fixed at note-on
        self.order = np.zeros(s, np.int64)
        self.muted = np.zeros(s, np.bool_)
        self.quiet = np.zeros(s, np.int32)  # frames in a row below audibility while released
        self._counter = 0
        self.steal_step = np.float32(1.0 / max(1.0, STEAL_FADE_S * sample_rate))
        self.stolen = 0
        self.cap = self.polyphony  # sounding voices allowed now (the engine lowers it under overload)
        self.pedal_down = False

    def active_count(self) -> int:
        return int(np.count_nonzero(self.state))

    def sounding_count(self) -> int:
        """Voices that count against the polyphony limit (not fading out)."""
        return int(_count_sounding(self.state))

    def fade(self, v: int, t: int, step: float) -> None:
        """Start (or speed up) a fade to silence of voice ``v`` at sample ``t``."""
        if self.fade_start[v] > t:
            self.fade_start[v] = t
        if step > self.fade_step[v]:
            self.fade_step[v] = step
        self.state[v] = FADING

    def steal_one(self, t: int) -> int:
        """Fade out the voice ``find_voice_to_steal`` picks (5 ms, from sample ``t``); returns it or NO_VOICE.

        The voice also stops decoding frames at once: its ring already holds far more than the
        5 ms the fade needs, and a stolen voice should cost nothing from now on."""
        v = int(find_voice_to_steal(self.state, self.key, self.order, self.release_t))
        if v != NO_VOICE:
            self.fade(v, t, float(self.steal_step))
            self.muted[v] = True
        return v

    def allocate(self, t: int, key: int, channel: int, velocity: int, level: float = 1.0) -> tuple[int, bool]:
        """Take a slot for a note starting at sample ``t`` at linear ``level``; returns (slot, slot_was_busy).

        At the polyphony limit (``cap``: the user's polyphony, lowered while the engine sheds
        load) a sounding voice is stolen first. ``slot_was_busy`` is True when every slot was
        fading and the quietest one was taken over (its ring must be cleared by the caller).
        """
        if self.sounding_count() >= self.cap and self.steal_one(t) != NO_VOICE:
            self.stolen += 1
        slot, busy = -1, False
        for v in range(self.slots):
            if self.state[v] == FREE:
                slot = v
                break
        if slot < 0:  # every slot fading: take the quietest
            quietest = np.inf
            for v in range(self.slots):
                if self.gain[v] < quietest:
                    slot, quietest = v, float(self.gain[v])
            busy = True
        self._counter += 1
        self.state[slot] = HELD
        self.key[slot] = key
        self.channel[slot] = channel
        self.velocity[slot] = velocity
        self.onset[slot] = t - self.grid_lead
        self.release_t[slot] = -1
        self.next_frame[slot] = 0
        self.fade_start[slot] = NEVER
        self.fade_step[slot] = 0.0
        self.gain[slot] = 1.0
        self.level[slot] = level
        self.order[slot] = self._counter
        self.muted[slot] = False
        self.quiet[slot] = 0
        return slot, busy

    def note_on(self, t: int, key: int, channel: int, velocity: int, level: float = 1.0) -> tuple[int, bool]:
        """A key goes down at sample ``t``: a re-struck key first releases its sounding voice (a
        piano's damper lifts and strikes again), then a slot is allocated (see ``allocate``)."""
        for v in range(self.slots):
            if self.key[v] == key and self.channel[v] == channel and (self.state[v] == HELD or self.state[v] == SUSTAINED):
                self.release(v, t)
        return self.allocate(t, key, channel, velocity, level)

    def release(self, v: int, t: int) -> None:
        """Key (or pedal) up at sample ``t``: the decoder's time_off starts counting here."""
        if self.state[v] in (HELD, SUSTAINED):
            self.state[v] = RELEASED
            self.release_t[v] = t

    def note_off(self, t: int, key: int, channel: int) -> None:
        """A key comes up: its voice releases, or waits in SUSTAINED while the pedal is down."""
        for v in range(self.slots):
            if self.state[v] == HELD and self.key[v] == key and self.channel[v] == channel:
                if self.pedal_down:
                    self.state[v] = SUSTAINED
                else:
                    self.release(v, t)

    def sustain_pedal(self, t: int, down: bool) -> None:
        """CC 64: lifting the pedal releases every voice it was holding."""
        if self.pedal_down and not down:
            for v in range(self.slots):
                if self.state[v] == SUSTAINED:
                    self.release(v, t)
        self.pedal_down = down

    def release_all(self, t: int) -> None:
        for v in range(self.slots):
            self.release(v, t)

    def fade_all(self, t: int) -> None:
        for v in range(self.slots):
            if self.state[v] != FREE:
                self.fade(v, t, float(self.steal_step))


@njit(nogil=True, cache=True)
def _count_sounding(state: NDArray) -> int:
    n = 0
    for v in range(state.shape[0]):
        if state[v] == HELD or state[v] == SUSTAINED or state[v] == RELEASED:
            n += 1
    return n


@njit(nogil=True, cache=True)
def find_voice_to_steal(state: NDArray, key: NDArray, order: NDArray, release_t: NDArray) -> int:
    """The sounding voice a new note (or an overloaded block) should take, as JUCE's
    ``Synthesiser::findVoiceToSteal`` chooses: the earliest-released voice (the quietest, most
    likely), else the oldest held voice that is neither the lowest nor the highest held note (a
    player hears a lost bass or top line at once), else the oldest held voice. NO_VOICE if none.
    """
    best, best_key = NO_VOICE, NEVER
    for v in range(state.shape[0]):
        if state[v] == RELEASED and release_t[v] < best_key:
            best, best_key = v, release_t[v]
    if best != NO_VOICE:
        return best
    low, high = 1 << 30, -1
    for v in range(state.shape[0]):
        if state[v] == HELD or state[v] == SUSTAINED:
            low = min(low, key[v])
            high = max(high, key[v])
    oldest = NO_VOICE
    oldest_key = NEVER
    for v in range(state.shape[0]):
        if state[v] == HELD or state[v] == SUSTAINED:
            if order[v] < oldest_key:
                oldest, oldest_key = v, order[v]
            if key[v] != low and key[v] != high and order[v] < best_key:
                best, best_key = v, order[v]
    return best if best != NO_VOICE else oldest


@njit(nogil=True, cache=True)
def mix_voices(state: NDArray, onset: NDArray, release_t: NDArray, fade_start: NDArray, fade_step: NDArray,
               gain: NDArray, level: NDArray, ring: NDArray, startnorm: NDArray, steady_norm: float, release_samples: int,
               release_fade_step: float, t0: int, out: NDArray) -> int:
    """Sum every voice's finished samples for ``[t0, t0 + len(out))`` into ``out (n,)``.

    Reads (and clears) each voice's OLA ring ``ring (S, R)`` at ``(t - onset) % R``, applies
    the start-up normalisation (few overlapping frames at a note's start; 0 over the head a
    voice's grid starts before its note-on, which is cleared unheard), the release-end
    fade, the fade gain and the note's ``level``. A voice whose gain reaches 0 is freed and its ring cleared.
    Returns the number of voices still active.
    """
    n = out.shape[0]
    r = ring.shape[1]
    nstart = startnorm.shape[0]
    skip = 0  # the head a voice's grid starts before its note-on (startnorm 0 there): never heard
    while skip < nstart and startnorm[skip] == 0.0:
        skip += 1
    for i in range(n):
        out[i] = 0.0
    active = 0
    for v in range(state.shape[0]):
        if state[v] == FREE:
            continue
        g = gain[v]
        note_level = level[v]
        s0 = t0 - onset[v]
        if 0 < s0 <= skip:  # head samples before this block (before the note-on): cleared unheard
            for s in range(s0):
                ring[v, s] = 0.0
        for i in range(n):
            t = t0 + i
            s = t - onset[v]
            if s < 0:
                continue
            if state[v] == RELEASED and t >= release_t[v] + release_samples and fade_start[v] > t:
                fade_start[v] = t
                fade_step[v] = release_fade_step
                state[v] = FADING
            idx = s % r
            y = ring[v, idx]
            ring[v, idx] = 0.0
            y *= startnorm[s] if s < nstart else steady_norm
            if t >= fade_start[v]:
                g -= fade_step[v]
                if g <= 0.0:
                    g = 0.0
                    state[v] = FREE
                    ring[v, :] = 0.0
                    break
            out[i] += g * note_level * y
        gain[v] = g
        if state[v] != FREE:
            active += 1
    return active
