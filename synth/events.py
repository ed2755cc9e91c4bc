"""Timed MIDI events and the bounded single-producer/single-consumer queue into the engine.

An event is ``(sample_time, status, data1, data2)``: ``sample_time`` in output samples of the
engine's clock, ``status`` the full MIDI status byte (type | channel). The queue is a
preallocated ring; the producer (MIDI thread or file reader) only writes slots and then
advances ``_tail``, the consumer (render thread) only reads and advances ``_head``. Each index
is written by one thread alone and a Python attribute store is atomic, so no lock is needed.
A full queue drops the new event and counts it, except that the last ``RELEASE_RESERVE`` slots
are kept for messages that end sound (note-offs, velocity-0 note-ons, sustain up, all notes or
sound off): a flood of notes and knobs must never leave a note stuck.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOTE_OFF = 0x80
NOTE_ON = 0x90
POLY_AFTERTOUCH = 0xA0
CONTROL_CHANGE = 0xB0
PROGRAM_CHANGE = 0xC0
PITCH_BEND = 0xE0

CC_SUSTAIN = 64
CC_ALL_SOUND_OFF = 120
CC_RESET_ALL_CONTROLLERS = 121
CC_ALL_NOTES_OFF = 123
KNOB_CCS = tuple(range(70, 78))
"""Default CCs for timbre knobs 0..7 (the preset's ``[knobs]`` directions, most varied first)."""
ENGINE_EVENT = 0x100
"""Statuses from here up are the engine's own events (``synth.timbre``: select a timbre slot, set
morph endpoints), pushed by ``push``; no MIDI byte reaches them and no channel filter applies."""


@dataclass(frozen=True)
class MidiEvent:
    """One timed channel message (used by file reading and tests)."""

    sample_time: int
    status: int
    data1: int = 0
    data2: int = 0

    @property
    def kind(self) -> int:
        return self.status & 0xF0

    @property
    def channel(self) -> int:
        return self.status & 0x0F


RELEASE_RESERVE = 64


def ends_sound(status: int, d1: int, d2: int) -> bool:
    """Note-off, velocity-0 note-on, sustain pedal up, all sound off or all notes off."""
    kind = status & 0xF0
    if kind == NOTE_OFF or (kind == NOTE_ON and d2 == 0):
        return True
    return kind == CONTROL_CHANGE and ((d1 == CC_SUSTAIN and d2 < 64) or d1 in (CC_ALL_SOUND_OFF, CC_ALL_NOTES_OFF))


class EventQueue:
    """Bounded lock-free SPSC ring of ``(sample_time, status, d1, d2)`` int64 rows."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = int(capacity)
        self._buf = np.zeros((self.capacity, 4), dtype=np.int64)
        self._head = 0  # next slot to read (consumer only)
        self._tail = 0  # next slot to write (producer only)
        self._reserve = min(RELEASE_RESERVE, self.capacity // 4)
        self.dropped = 0

    def push(self, sample_time: int, status: int, d1: int = 0, d2: int = 0) -> bool:
        """Producer side: append an event; False (and counted) when the queue is full."""
        tail = self._tail
        used = tail - self._head
        if used >= self.capacity or (used >= self.capacity - self._reserve and not ends_sound(status, d1, d2)):
            self.dropped += 1
            return False
        row = self._buf[tail % self.capacity]
        row[0] = sample_time
        row[1] = status
        row[2] = d1
        row[3] = d2
        self._tail = tail + 1  # publish after the slot is complete
        return True

    def push_bytes(self, sample_time: int, message: bytes) -> bool:
        """Producer side: a raw MIDI message; system messages and sysex are ignored."""
        if not message or message[0] < 0x80 or message[0] >= 0xF0:
            return False
        d1 = message[1] if len(message) > 1 else 0
        d2 = message[2] if len(message) > 2 else 0
        return self.push(sample_time, message[0], d1 & 0x7F, d2 & 0x7F)

    def __len__(self) -> int:
        return self._tail - self._head

    def drain_until(self, end_time: int, out: np.ndarray) -> int:
        """Consumer side: move events with ``sample_time < end_time`` (in order) into ``out (M, 4)``.

        Stops at the first later event (events are expected in time order per producer) or
        when ``out`` is full; returns how many rows were written.
        """
        head = self._head
        tail = self._tail
        n = 0
        cap = self.capacity
        limit = out.shape[0]
        while head < tail and n < limit:
            row = self._buf[head % cap]
            if row[0] >= end_time:
                break
            out[n] = row
            n += 1
            head += 1
        self._head = head
        return n

    def clear(self) -> None:
        """Consumer side: forget everything queued."""
        self._head = self._tail
