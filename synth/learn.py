"""MIDI learn: bind a controller (CC) to a latent knob and remember it across starts.

The mapping file is TOML, by default ``~/.config/vaesynth/mappings.toml``
(``$VAESYNTH_CONFIG_DIR/mappings.toml`` when that variable is set)::

    [cc_to_knob]
    "74" = 0     # CC 74 drives knob 0 (the preset's first knob direction)

Knob numbers are positions in the preset's knob list (most varied direction first), not raw
latent dims, so a mapping keeps meaning "the most useful knob" across presets.
"""
from __future__ import annotations

import os
import threading
import tomllib
from pathlib import Path

import tomli_w

from synth.errors import VaesynthError

MAPPING_FILE_NAME = "mappings.toml"
CONFIG_DIR_ENV = "VAESYNTH_CONFIG_DIR"


class MappingError(VaesynthError, ValueError):
    """The mapping file or a learn request is invalid (one-line message)."""


def default_mapping_path() -> Path:
    """``$VAESYNTH_CONFIG_DIR/mappings.toml`` or ``~/.config/vaesynth/mappings.toml``."""
    root = os.environ.get(CONFIG_DIR_ENV)
    base = Path(root) if root else Path.home() / ".config" / "vaesynth"
    return base / MAPPING_FILE_NAME


def load_mapping(path: Path) -> dict[int, int]:
    """CC number -> knob index from ``path``; an absent file is an empty mapping."""
    if not path.exists():
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"mapping file {path}: {exc}") from None
    table = doc.get("cc_to_knob", {})
    if not isinstance(table, dict):
        raise MappingError(f"mapping file {path}: [cc_to_knob] must be a table")
    mapping: dict[int, int] = {}
    for key, value in table.items():
        if not (str(key).isdigit() and 0 <= int(key) <= 127):
            raise MappingError(f"mapping file {path}: CC {key!r} is not 0..127")
        if not isinstance(value, int) or value < 0:
            raise MappingError(f"mapping file {path}: knob for CC {key} must be an integer >= 0")
        mapping[int(key)] = value
    return mapping


def save_mapping(path: Path, mapping: dict[int, int]) -> None:
    """Write ``mapping`` (CC -> knob) to ``path``, creating its folder; atomic replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"cc_to_knob": {str(cc): knob for cc, knob in sorted(mapping.items())}}
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(doc))
    tmp.replace(path)


def bind(mapping: dict[int, int], cc: int, knob: int) -> dict[int, int]:
    """New mapping with ``cc`` -> ``knob``; a knob has one CC, so older CCs for it go."""
    out = {c: k for c, k in mapping.items() if k != knob and c != cc}
    out[cc] = knob
    return out


def parse_cc(message: bytes | list[int] | tuple[int, ...]) -> tuple[int, int] | None:
    """``(cc, value)`` if ``message`` is a control change, else None."""
    if len(message) >= 3 and (message[0] & 0xF0) == 0xB0:
        return int(message[1]), int(message[2])
    return None


class LearnSession:
    """Waits for the next CC on the MIDI thread and reports it to the main thread.

    ``offer`` is cheap and lock-free on the MIDI thread (a bool check, then an
    ``Event.set`` once); the main thread calls ``wait`` / ``learned_cc`` and does
    the file IO, which must never happen on the MIDI or audio threads.
    """

    def __init__(self, knob: int, n_knobs: int) -> None:
        if not 0 <= knob < n_knobs:
            raise MappingError(f"--learn {knob}: knob must be in 0..{n_knobs - 1}")
        self.knob = knob
        self._cc: int | None = None
        self._done = threading.Event()

    def offer(self, message: bytes | list[int] | tuple[int, ...]) -> None:
        """Feed one incoming MIDI message (MIDI thread)."""
        if self._cc is not None:
            return
        parsed = parse_cc(message)
        if parsed is not None:
            self._cc = parsed[0]
            self._done.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The learned CC number, or None if none arrived within ``timeout`` seconds."""
        self._done.wait(timeout)
        return self._cc

    @property
    def learned_cc(self) -> int | None:
        return self._cc
