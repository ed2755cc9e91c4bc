"""The live session's state: saved on a clean exit, restored at the next start.

One TOML file, by default ``platformdirs.user_state_dir("vaesynth")/state.toml``
(``$VAESYNTH_CONFIG_DIR/state.toml`` when that variable is set, as for the MIDI-learn mapping),
or ``--state FILE``::

    [state]
    version = 1
    preset = "default"          # the preset it was saved with; a timbre means nothing to another
    latent_size = 16
    [timbre]                    # what the engine describes as its current timbre
    program = 24                # the last program change (the snapshot it recalled)
    snapshot = "guitar_acoustic_fluidr3_024"
    z = [ ... ]                 # the exact latent, knob moves included
    track = [[ ... ], ...]      # a capture's or morph's key tracking (128 rows of L), when it has one
    tone_db = [ ... ]           # its tone curve (synth.tone), one gain per TONE_HZ point, when not flat
    key_level_db = [ ... ]      # its level per MIDI key (128 values, dB; synth.loudness), when not 0
    [knobs]
    values = [ ... ]            # knob coordinates, -1..1 over each knob's travel
    [options]
    output = "BlackHole"        # the audio output and MIDI choice of that session
    midi-in = "Keystation"

Rules: the command line, then ``--config``, then this file, then the defaults. The MIDI-learn
mapping has its own file (``synth.learn``), written when a CC is learned. ``--reset`` starts
fresh: the state file and the mapping file are moved aside (``*.old``) and nothing is restored.
The file is written atomically (temporary file, then ``os.replace``); a file that cannot be read
or makes no sense gets one warning line and the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from synth.contract import MAX_KEY_LEVEL_DB
from synth.learn import CONFIG_DIR_ENV

STATE_FILE_NAME = "state.toml"
STATE_VERSION = 1
APP_NAME = "vaesynth"
# Options a session remembers: (namespace dest, key in [options]).
REMEMBERED_OPTIONS = (("output", "output"), ("midi_in", "midi-in"))


def default_state_path() -> Path:
    """``$VAESYNTH_CONFIG_DIR/state.toml`` or the platform's user state folder."""
    root = os.environ.get(CONFIG_DIR_ENV)
    if root:
        return Path(root) / STATE_FILE_NAME
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME)) / STATE_FILE_NAME


def add_state_options(group: argparse._ActionsContainer) -> None:
    group.add_argument("--state", metavar="FILE", type=Path, default=None,
                       help="the live session's state file (default: the user state folder; "
                            "knobs, timbre, output and MIDI choices are restored from it and saved on exit)")
    group.add_argument("--reset", action="store_true",
                       help="start fresh: restore nothing and forget the MIDI-learn mapping (old files kept as *.old)")


def state_path(args: argparse.Namespace) -> Path:
    explicit = getattr(args, "state", None)
    return Path(explicit) if explicit else default_state_path()


@dataclass
class LiveState:
    """One session's state, as saved."""

    preset: str = ""
    latent_size: int = 0
    timbre: dict[str, Any] = field(default_factory=dict)
    knobs: list[float] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)

    def to_toml(self) -> str:
        doc: dict[str, Any] = {"state": {"version": STATE_VERSION, "preset": self.preset,
                                         "latent_size": self.latent_size}}
        if self.timbre:
            doc["timbre"] = self.timbre
        if self.knobs:
            doc["knobs"] = {"values": self.knobs}
        if self.options:
            doc["options"] = self.options
        return tomli_w.dumps(doc)


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def _parse(doc: dict[str, Any]) -> LiveState:
    """A LiveState from a TOML document; ValueError with a short reason when it makes no sense."""
    head = doc.get("state")
    if not isinstance(head, dict) or head.get("version") != STATE_VERSION:
        raise ValueError(f"no [state] version = {STATE_VERSION}")
    preset, size = head.get("preset", ""), head.get("latent_size", 0)
    if not isinstance(preset, str) or not isinstance(size, int) or isinstance(size, bool):
        raise ValueError("[state] preset must be a string and latent_size an integer")
    timbre = doc.get("timbre", {})
    knobs = doc.get("knobs", {}).get("values", []) if isinstance(doc.get("knobs", {}), dict) else None
    options = doc.get("options", {})
    if not isinstance(timbre, dict):
        raise ValueError("[timbre] must be a table")
    if not isinstance(knobs, list) or not all(_finite(v) for v in knobs):
        raise ValueError("[knobs] values must be a list of finite numbers")
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise ValueError("[options] must be a table of strings")
    return LiveState(preset, size, timbre, [float(v) for v in knobs], dict(options))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_state(path: Path) -> LiveState | None:
    """The saved state, or None: absent (silently) or unusable (one warning line, defaults)."""
    if not path.exists():
        return None
    try:
        return _parse(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        warn(f"state file {path} is unusable ({reason}); starting from the defaults")
        return None


def save_state(path: Path, state: LiveState) -> None:
    """Write ``state`` to ``path`` atomically (a crash leaves the old file or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(state.to_toml())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def set_aside(path: Path) -> bool:
    """``--reset``: move ``path`` to ``path.old`` (kept, not deleted); True when there was one."""
    if not path.exists():
        return False
    os.replace(path, path.with_name(path.name + ".old"))
    return True


def describe_timbre(engine: Any) -> dict[str, Any]:
    """The engine's current timbre as a TOML table: the last program, its snapshot's name and the
    exact latent; plus whatever ``engine.current_timbre`` describes where the engine has one
    (user timbres, morph endpoints, random seeds)."""
    program = int(getattr(engine, "program", 0))
    table: dict[str, Any] = {"program": program}
    preset = engine.preset
    programs = getattr(preset, "programs", None)
    if programs:
        index = programs[program & 0x7F]
        if index >= 0:
            table["snapshot"] = preset.snapshots[index].name
    table["z"] = [float(v) for v in np.asarray(engine.z_target, np.float64)]
    extra = getattr(engine, "current_timbre", None)
    if dataclasses.is_dataclass(extra) and not isinstance(extra, type):
        extra = dataclasses.asdict(extra)
    if isinstance(extra, dict):
        table.update({k: v for k, v in extra.items() if k not in table and v is not None})
    track = getattr(engine, "timbre_track", None)
    # A snapshot's own tracking comes back with its program; another timbre's (a capture's, borrowed
    # from its neighbours, or a morph's) lives only in the engine, so it is saved with the latent.
    if table.get("kind", "snapshot") != "snapshot" and track is not None and np.any(track):
        table["track"] = [[float(v) for v in row] for row in np.asarray(track, np.float64)]
    tone = getattr(engine, "timbre_tone_db", None)  # the same for its tone curve (synth.tone)
    if table.get("kind", "snapshot") != "snapshot" and tone is not None and np.any(tone):
        table["tone_db"] = [float(v) for v in np.asarray(tone, np.float64)]
    gain = getattr(engine, "timbre_key_gain", None)  # and its level per key (synth.loudness)
    if table.get("kind", "snapshot") != "snapshot" and gain is not None and np.any(np.asarray(gain) != 1.0):
        table["key_level_db"] = [round(float(v), 4) for v in 20.0 * np.log10(np.asarray(gain, np.float64))]
    return table


def capture(engine: Any, args: argparse.Namespace) -> LiveState:
    """The state to save at the end of a live session."""
    options = {key: str(getattr(args, dest)) for dest, key in REMEMBERED_OPTIONS if getattr(args, dest, None)}
    return LiveState(preset=engine.preset.name, latent_size=int(engine.preset.latent_size),
                     timbre=describe_timbre(engine), knobs=[float(v) for v in engine.knob_values],
                     options=options)


def restore_options(args: argparse.Namespace, state: LiveState | None) -> list[str]:
    """Fill the remembered options the command line and the config left unset; returns
    ``["output 'X'", ...]`` for the start-up line."""
    restored = []
    for dest, key in REMEMBERED_OPTIONS:
        value = state.options.get(key) if state is not None else None
        if value and getattr(args, dest, None) is None:
            setattr(args, dest, value)
            restored.append(f"{key} {value!r}")
    return restored


def restore_timbre(engine: Any, state: LiveState | None) -> str | None:
    """Put the saved timbre back into ``engine`` (before its stream starts); returns what was
    restored, for the start-up line, or None. A state saved with another preset is not applied."""
    if state is None or not state.timbre:
        return None
    preset = engine.preset
    if state.preset != preset.name or state.latent_size != preset.latent_size:
        warn(f"saved timbre belongs to preset {state.preset!r} (latent {state.latent_size}), "
             f"not {preset.name!r}; not restored")
        return None
    program = state.timbre.get("program", 0)
    z = state.timbre.get("z")
    try:
        if not isinstance(program, int) or isinstance(program, bool):
            raise ValueError(f"program {program!r} is not an integer")
        if z is not None and not (isinstance(z, list) and all(_finite(v) for v in z)):
            raise ValueError("z is not a list of finite numbers")
        track = state.timbre.get("track")
        if track is not None and not (isinstance(track, list) and all(
                isinstance(row, list) and all(_finite(v) for v in row) for row in track)):
            raise ValueError("track is not a list of rows of finite numbers")
        tone = state.timbre.get("tone_db")
        if tone is not None and not (isinstance(tone, list) and all(_finite(v) for v in tone)):
            raise ValueError("tone_db is not a list of finite numbers")
        level = state.timbre.get("key_level_db")
        if level is not None and not (isinstance(level, list) and len(level) == 128 and all(
                _finite(v) and abs(v) <= MAX_KEY_LEVEL_DB for v in level)):
            raise ValueError(f"key_level_db is not 128 levels within ±{MAX_KEY_LEVEL_DB:g} dB")
        # A snapshot (with or without knob moves) comes back with its program's trims; other
        # timbres with the level, tracking and tone curve they had.
        snapshot_level = state.timbre.get("kind", "snapshot") == "snapshot"
        engine.restore_timbre(program, None if z is None else np.asarray(z, np.float32), snapshot_level,
                              None if track is None or snapshot_level else np.asarray(track, np.float32),
                              None if tone is None or snapshot_level else np.asarray(tone, np.float64),
                              None if level is None or snapshot_level
                              else (10.0 ** (np.asarray(level, np.float64) / 20.0)).astype(np.float32))
    except ValueError as exc:
        warn(f"saved timbre not restored ({exc})")
        return None
    name = state.timbre.get("snapshot")
    return f"program {program}" + (f" ({name})" if isinstance(name, str) else "") + ", knobs"
