"""Standard MIDI files -> channel events with sample times at the output rate.

mido merges the tracks and applies tempo changes; each message's time is accumulated in
seconds and converted to samples once (``round(seconds * rate)``), so there is no drift.
"""
from __future__ import annotations

from pathlib import Path

from synth.errors import VaesynthError
from synth.events import MidiEvent

_CHANNEL_TYPES = {"note_on", "note_off", "control_change", "program_change", "pitchwheel", "polytouch", "aftertouch"}


class MidiFileError(VaesynthError):
    """A MIDI file that cannot be read; one-line message."""


def read_midi_events(path: str | Path, sample_rate: int) -> list[MidiEvent]:
    """All channel messages of ``path`` in time order, timed in samples at ``sample_rate``."""
    import mido

    p = Path(path)
    if not p.is_file():
        raise MidiFileError(f"{p}: MIDI file not found")
    try:
        mid = mido.MidiFile(str(p))
        messages = list(mid)  # merged tracks, delta times in seconds (tempo map applied)
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise MidiFileError(f"{p}: not a readable MIDI file ({str(exc).strip()[:120] or type(exc).__name__})") from None
    events: list[MidiEvent] = []
    seconds = 0.0
    for msg in messages:
        seconds += msg.time
        if msg.type not in _CHANNEL_TYPES:
            continue
        raw = msg.bytes()
        d1 = raw[1] if len(raw) > 1 else 0
        d2 = raw[2] if len(raw) > 2 else 0
        events.append(MidiEvent(int(round(seconds * sample_rate)), raw[0], d1, d2))
    return events


def events_end(events: list[MidiEvent]) -> int:
    """Sample time of the last event (0 for none)."""
    return max((e.sample_time for e in events), default=0)
