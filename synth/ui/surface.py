"""The control surface's model: every control as MIDI into the live synth, and the state to show.

The web page (``synth.ui.server``) and OSC (``synth.osc``) both drive the synth through a
:class:`ControlSurface`. Every control becomes MIDI bytes pushed through
``LiveSynth.push_control``, the producer path the MIDI inputs use (serialised by its producer
lock, into the engine's bounded lock-free queue): a knob is the CC that drives it (70..77 unless
MIDI learn moved it), a snapshot is the program change that recalls it, a note is a note-on/off.
State is read as plain numbers from the engine and the live statistics; nothing here calls
into the render path.

Knob values are knob coordinates (``synth.knobs``): -1..1 spans a knob's travel, and the CC
value ``round((u + 1) * 127 / 2)`` puts knob i at u. The map is the training-note sample
(``preset.latent_map``) in the coordinates of knobs 1 and 2.

Timbres (``synth.timbre``): a preset snapshot is Bank Select 0 + its program change, a user
snapshot Bank Select 1 + its user program, the random button a press of CC 80, the morph amount
the morph CC (the mod wheel unless ``--morph-cc``); choosing the morph endpoints stores them in
timbre slots and queues the engine's MORPH event on the same producer path. A capture (a dropped
recording) runs ``synth.capture`` off the event loop, is stored in the user's library
(``synth.library``, as ``--capture`` does) and becomes a user program at once.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from synth import events as ev
from synth.errors import VaesynthError, one_line
from synth.learn import LearnSession, bind, load_mapping, save_mapping
from synth.timbre import CC_BANK_SELECT, CC_RANDOM, MORPH, NO_SLOT, SNAPSHOT, USER, USER_BANK, USER_SLOTS, \
    TimbreInfo

PRESET_BANK = 0  # Bank Select value of the preset's snapshots (synth.timbre: USER_BANK for the user's)
BUTTON_DOWN, BUTTON_UP = 127, 0  # the random button's CC: a press is a rise past 64, then a release

MAP_DECIMALS = 3  # map coordinates sent to the page: a 1/1000 of the knob travel is below a pixel


class ControlError(VaesynthError, ValueError):
    """A control message that does not name a knob, program, snapshot or note of this synth."""


def cc_value(u: float) -> int:
    """The CC value 0..127 that puts a knob at coordinate ``u`` (clamped to the travel -1..1)."""
    return int(round((min(max(u, -1.0), 1.0) + 1.0) * 127.0 / 2.0))


def map_coordinates(preset: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x, y)`` ``(N,)`` float64: the latent map's points in knob 1 and 2 coordinates, or None
    when the preset ships no map (or has fewer than two knobs)."""
    lmap, kmap = preset.latent_map, preset.knobs
    if lmap is None or kmap.count < 2:
        return None
    xy = kmap.coordinates(lmap.mu)
    return xy[:, 0], xy[:, 1]


def snapshot_coordinates(preset: Any) -> list[tuple[float, float]]:
    """Each preset snapshot in knob 1 and 2 coordinates (where it sits on the map)."""
    kmap = preset.knobs
    if kmap.count < 2:
        return []
    return [tuple(float(c) for c in kmap.coordinates(s.z)[:2]) for s in preset.snapshots]


class ControlSurface:
    """Turns controls into MIDI for ``synth`` (a ``synth.live.LiveSynth``) and reports its state.

    Thread-safe: the web server and OSC call it from their event loop, the MIDI thread never.
    ``mapping_path``: where MIDI learn saves its bindings (as ``--learn`` does).
    """

    def __init__(self, synth: Any, preset: Any, mapping_path: Path, library_dir: Path | None = None) -> None:
        self.synth = synth
        self.preset = preset
        self.mapping_path = Path(mapping_path)
        self.library_dir = library_dir  # None: the platform's user data folder (synth.library)
        self._capture_lock = threading.Lock()  # one capture at a time: the library is read-modify-write
        self.user_version = 0  # bumped when a capture adds a user snapshot: the page reloads its list
        self.knob_count = int(preset.knobs.count)
        self.ignored = 0  # malformed or refused control messages (web and OSC together)
        self._lock = threading.Lock()  # learn-session bookkeeping only
        self._learning: LearnSession | None = None
        self._learned: dict[str, Any] | None = None  # the last finished learn, for the page

    # ------------------------------------------------------------------ controls
    @property
    def channel(self) -> int:
        """The MIDI channel (0..15) controls are sent on: the engine's, else channel 1."""
        ch = getattr(self.synth.engine, "channel", None)
        return 0 if ch is None else int(ch)

    def _push(self, *message: int) -> None:
        if not self.synth.push_control(bytes(message)):
            raise ControlError("the synth's event queue is full; control dropped")

    def knob(self, knob: int, u: float) -> None:
        """Move knob ``knob`` (0-based) to coordinate ``u`` through its CC.

        A knob waiting for pick-up (after a recall) would ignore a CC away from its value, but
        the on-screen knob always sits at that value: its nearest CC is sent first to take it."""
        if isinstance(knob, bool) or not isinstance(knob, int) or not 0 <= knob < self.knob_count:
            raise ControlError(f"knob {knob!r}: must be 0..{self.knob_count - 1}")
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not math.isfinite(u):
            raise ControlError(f"knob value {u!r}: must be a finite number")
        engine = self.synth.engine
        cc = engine.knob_ccs[knob]
        if cc < 0:
            raise ControlError(f"knob {knob + 1} has no CC (MIDI learn gave its CC to another knob)")
        status = ev.CONTROL_CHANGE | self.channel
        if not bool(engine.knob_pickup[knob]):
            self._push(status, cc, cc_value(float(engine.knob_values[knob])))
        self._push(status, cc, cc_value(float(u)))

    def program(self, program: int) -> None:
        """Bank Select 0 + program change ``program`` 0..127: the preset snapshot ``preset.programs``
        names (after a user snapshot the bank would still point at the user's)."""
        if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program <= 127:
            raise ControlError(f"program {program!r}: must be 0..127")
        self._push(ev.CONTROL_CHANGE | self.channel, CC_BANK_SELECT, PRESET_BANK)
        self._push(ev.PROGRAM_CHANGE | self.channel, program)

    def user_snapshots(self) -> list[dict[str, Any]]:
        """The user programs loaded in the engine (the library's snapshots for this preset)."""
        bank = self.synth.engine.timbre
        return [{"name": bank.info[p].name, "program": p} for p in range(USER_SLOTS)
                if bank.filled[p] and bank.info[p] is not None and bank.info[p].kind == USER]

    def user(self, which: int | str) -> None:
        """Recall a user snapshot by user program 0..127 or name: Bank Select 1 + Program Change."""
        mine = self.user_snapshots()
        found = [u for u in mine if (u["name"] == which if isinstance(which, str) else u["program"] == which)]
        if isinstance(which, bool) or not found:
            raise ControlError(f"no user snapshot {which!r}")
        self._push(ev.CONTROL_CHANGE | self.channel, CC_BANK_SELECT, USER_BANK)
        self._push(ev.PROGRAM_CHANGE | self.channel, found[0]["program"])

    def random(self) -> None:
        """The random-timbre button: a press and release of CC 80."""
        self._push(ev.CONTROL_CHANGE | self.channel, CC_RANDOM, BUTTON_DOWN)
        self._push(ev.CONTROL_CHANGE | self.channel, CC_RANDOM, BUTTON_UP)

    def morph(self, amount: float) -> None:
        """The morph position 0 (endpoint A) .. 1 (B), as the morph CC."""
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount <= 1.0:
            raise ControlError(f"morph amount {amount!r}: must be 0..1")
        self._push(ev.CONTROL_CHANGE | self.channel, int(self.synth.engine.timbre.morph_cc), int(round(amount * 127)))

    def _slot_of(self, name: Any) -> int:
        """The timbre slot of a user snapshot (its program) or a preset snapshot (stored now), by name."""
        engine = self.synth.engine
        for u in self.user_snapshots():
            if u["name"] == name:
                return int(u["program"])
        for s in self.preset.snapshots:
            if s.name == name:
                return engine.store_timbre(s.z, TimbreInfo(SNAPSHOT, s.name, program=s.program), s.track, s.tone_db,
                                           s.key_gain())
        raise ControlError(f"morph endpoint {name!r}: not a user or preset snapshot")

    def morph_endpoints(self, a: str, b: str) -> None:
        """Morph between two snapshots (user snapshots first, then the preset's, by name)."""
        slots = (self._slot_of(a), self._slot_of(b))
        if not self.synth.push_engine_event(MORPH, *slots):
            raise ControlError("the synth's event queue is full; control dropped")

    def capture(self, path: Path, name: str, source: str) -> dict[str, Any]:
        """Capture the recording at ``path`` as user snapshot ``name`` (library + engine); raises
        VaesynthError subclasses (CaptureError, LibraryError) with one-line messages. Slow (about a
        second): never on the event loop."""
        from synth.capture import capture_file
        from synth.library import Library
        from synth.loudness import measure_key_level

        with self._capture_lock:
            cap = capture_file(self.preset, path)
            level = measure_key_level(self.preset, cap.z, cap.track, cap.tone_db, cap.pitch)
            library = Library.open(self.library_dir)
            snap = library.store(self.preset, name, cap.z, cap.pitch, source=source, track=cap.track, tone_db=cap.tone_db,
                                 key_level=level)
            self.synth.engine.timbre.store_user(snap.program, cap.z, TimbreInfo(USER, snap.name, program=snap.program),
                                                cap.track, cap.tone_db, level.gains())
            self.user_version += 1
        return {"name": snap.name, "program": snap.program, "summary": cap.describe(self.preset),
                "library": str(library.path)}

    def snapshot(self, which: int | str) -> None:
        """Recall a preset snapshot by index (0-based) or name, through its program change."""
        snaps = self.preset.snapshots
        if isinstance(which, str):
            found = [s for s in snaps if s.name == which]
            if not found:
                raise ControlError(f"no snapshot named {which!r}")
            self.program(found[0].program)
        elif isinstance(which, int) and not isinstance(which, bool) and 0 <= which < len(snaps):
            self.program(snaps[which].program)
        else:
            raise ControlError(f"snapshot {which!r}: must be a name or 0..{len(snaps) - 1}")

    def note(self, key: int, velocity: int) -> None:
        """Note-on ``key`` at ``velocity`` 1..127; velocity 0 is the note-off."""
        for name, v in (("key", key), ("velocity", velocity)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 127:
                raise ControlError(f"note {name} {v!r}: must be 0..127")
        if velocity == 0:
            self._push(ev.NOTE_OFF | self.channel, key, 0)
        else:
            self._push(ev.NOTE_ON | self.channel, key, velocity)

    def refuse(self) -> None:
        """Count one malformed or refused control message (they never raise to the sender)."""
        with self._lock:
            self.ignored += 1

    # ------------------------------------------------------------------ MIDI learn
    def learn(self, knob: int | None) -> None:
        """Bind the next hardware CC to ``knob`` (0-based); None cancels a pending learn."""
        if knob is not None and (isinstance(knob, bool) or not isinstance(knob, int)
                                 or not 0 <= knob < self.knob_count):
            raise ControlError(f"learn knob {knob!r}: must be 0..{self.knob_count - 1}")
        with self._lock:
            session = None if knob is None else LearnSession(knob, self.knob_count)
            self._learning = session
            self.synth.learn = session

    def poll_learn(self) -> None:
        """Finish a learn once a CC arrived: save the mapping as ``--learn`` does and apply it.
        Called on the server's thread (file IO never runs on the MIDI or audio thread)."""
        from synth.live import apply_mapping  # live imports this package lazily: no cycle at import

        with self._lock:
            session = self._learning
            if session is None or session.learned_cc is None:
                return
            self._learning = None
            if self.synth.learn is session:
                self.synth.learn = None
        cc, knob = session.learned_cc, session.knob
        try:
            mapping = bind(load_mapping(self.mapping_path), cc, knob)
            save_mapping(self.mapping_path, mapping)
            apply_mapping(self.synth.engine, mapping)
            result = {"knob": knob, "cc": cc, "saved": str(self.mapping_path), "error": None}
        except (OSError, VaesynthError) as exc:
            result = {"knob": knob, "cc": cc, "saved": None, "error": one_line(exc)}
        with self._lock:
            self._learned = result

    # ------------------------------------------------------------------ what the page shows
    def info(self) -> dict[str, Any]:
        """What does not change while playing: preset name, knob names, snapshots, the map."""
        preset = self.preset
        order = list(preset.knob_order)
        knobs = [f"{i + 1} · z{order[i]}" if i < len(order) else str(i + 1) for i in range(self.knob_count)]
        points = map_coordinates(preset)
        lmap = preset.latent_map
        where = snapshot_coordinates(preset)
        return {
            "preset": preset.name,
            "knobs": knobs,
            "snapshots": [{"name": s.name, "program": int(s.program), "x": where[i][0] if where else None,
                           "y": where[i][1] if where else None} for i, s in enumerate(preset.snapshots)],
            "user": self.user_snapshots(),
            "map": None if points is None else {
                "x": np.round(points[0], MAP_DECIMALS).tolist(),
                "y": np.round(points[1], MAP_DECIMALS).tolist(),
                "family": lmap.family.astype(int).tolist(),
                "families": list(lmap.families),
            },
        }

    def knob_snapshot(self) -> tuple[float, ...]:
        """The knob coordinates as a tuple (cheap to compare after each control)."""
        return tuple(float(v) for v in self.synth.engine.knob_values)

    def frames_rendered(self) -> int:
        """Output frames the audio callback has rendered: a control queued for output sample s
        (``LiveSynth.control_listener``) has been applied once this exceeds s."""
        return int(self.synth.stats.frames)

    def state(self) -> dict[str, Any]:
        """The live numbers: knobs, pick-up, CCs, voices, load, xruns, last MIDI event, learn."""
        synth, engine = self.synth, self.synth.engine
        st = synth.stats
        with self._lock:
            learning = None if self._learning is None else self._learning.knob
            learned = self._learned
        return {
            "knobs": [round(float(v), 4) for v in engine.knob_values],
            "pickup": [bool(p) for p in engine.knob_pickup],
            "ccs": list(engine.knob_ccs),
            "voices": int(engine.stats.active_voices),
            "load": round(float(st.load), 4),
            "load_peak": round(float(st.load_peak), 4),
            "xruns": int(synth.xruns),
            "dropped": int(engine.stats.dropped_events),
            "midi": " ".join(f"{b:02x}" for b in st.last_midi),
            "ignored": self.ignored,
            "learning": learning,
            "learned": learned,
            "timbre": engine.current_timbre.label,
            "morph": round(engine.timbre.morph_value / 127.0, 4),
            "morphing": engine.timbre.morph_a != NO_SLOT,
            "user_version": self.user_version,
        }
