"""The user's snapshot library: named captured timbres, kept outside the shipped preset.

One TOML file, ``library.toml``, in ``platformdirs.user_data_dir("vaesynth")`` or ``--library DIR``::

    format_version = 1
    [[snapshot]]
    name = "bottle"          # unique per preset
    preset = "default"       # the preset it was captured with: a latent means nothing to another
    fingerprint = "3f2a..."  # of that preset's decoder.onnx: a retrained preset of the same name differs
    program = 0              # user program: Bank Select (CC 0) = 1, then Program Change 0 recalls it
    z = [...]                # the latent, preset.latent_size values
    pitch = 60.0             # the recorded note's pitch
    source = "bottle.wav"
    track_keys = [21, ...]   # optional: the capture's key tracking (synth.key_track), borrowed from
    track_z = [[...], ...]   # the instruments it sounds like, plus its own key's reading: its latent at each key
    tone_db = [...]          # optional: its tone curve (synth.tone), one gain per TONE_HZ point
    key_level_keys = [36, ...]  # optional: its level per key (synth.loudness), measured at capture:
    key_level_db = [...]        # dB at each key, so a capture plays as loud as the snapshots

Every write goes to a temp file in the same folder, is flushed to disk, then replaces the library
in one ``os.replace``: a crash mid-write leaves the previous library whole. User programs are
numbered per preset at capture time: the lowest number 0..127 no snapshot of that preset uses.
"""
from __future__ import annotations

import hashlib
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w
from numpy.typing import NDArray

from synth.errors import VaesynthError
from synth.key_track import offset_table, own_key_track_keys, valid_track_keys
from synth.loudness import KEY_LEVEL_RULE, KeyLevel, valid_key_level
from synth.preset import Preset
from synth.tone import TONE_RULE, valid_tone

LIBRARY_FILE = "library.toml"
LIBRARY_FORMAT = 1
MAX_LIBRARY_BYTES = 16 * 1024 * 1024  # a hostile file cannot make the loader read more
MAX_NAME = 64
USER_PROGRAMS = 128


class LibraryError(VaesynthError):
    """The library cannot be read or written, or a snapshot is missing or belongs to another preset."""


def default_dir() -> Path:
    """The platform's user data folder for vaesynth (e.g. ~/.local/share/vaesynth on Linux)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("vaesynth", appauthor=False))


def preset_fingerprint(preset: Preset) -> str:
    """First 16 hex digits of the SHA-256 of the preset's decoder.onnx (what gives a latent its sound)."""
    h = hashlib.sha256()
    with open(preset.decoder_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class UserSnapshot:
    name: str
    preset: str
    fingerprint: str
    program: int
    z: tuple[float, ...]
    pitch: float = 60.0
    source: str = ""
    track_keys: tuple[int, ...] = ()
    track_z: tuple[tuple[float, ...], ...] = ()  # the latent at each track key; () for none
    tone_db: tuple[float, ...] = ()  # its tone curve at TONE_HZ (synth.tone); () for flat
    key_level: KeyLevel | None = None  # its level per key (synth.loudness); None: as the decoder plays it

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"name": self.name, "preset": self.preset, "fingerprint": self.fingerprint,
                                  "program": self.program, "z": list(self.z), "pitch": self.pitch, "source": self.source}
        if self.track_keys:
            doc["track_keys"], doc["track_z"] = list(self.track_keys), [list(row) for row in self.track_z]
        if self.tone_db:
            doc["tone_db"] = list(self.tone_db)
        if self.key_level is not None:
            doc["key_level_keys"], doc["key_level_db"] = list(self.key_level.keys), list(self.key_level.db)
        return doc

    def key_gain(self) -> NDArray[np.float32] | None:
        """``(128,)`` the linear gain of each key's notes (synth.loudness); None: 1 (captured before levels)."""
        return None if self.key_level is None else self.key_level.gains()

    def tone(self) -> NDArray[np.float64] | None:
        """``(P,)`` its tone curve (synth.tone); None: flat."""
        return np.array(self.tone_db) if self.tone_db else None

    def track(self) -> NDArray[np.float32] | None:
        """``(128, L)``: what each key adds to ``z`` (synth.key_track); None without key tracking."""
        if not self.track_keys:
            return None
        return offset_table(self.track_keys, np.array(self.track_z), np.array(self.z))


def check_name(name: str) -> str:
    """A snapshot name: 1..64 printable characters, no comma (``--morph A,B`` splits on it)."""
    name = name.strip()
    if not name or len(name) > MAX_NAME or "," in name or not name.isprintable():
        raise LibraryError(f"snapshot name {name!r}: use 1..{MAX_NAME} printable characters without commas")
    if name.lower().startswith("random"):
        raise LibraryError(f"snapshot name {name!r}: names starting with 'random' are reserved for random timbres")
    return name


@dataclass
class Library:
    """The library file's snapshots (every preset's); ``path`` the file."""

    path: Path
    snapshots: list[UserSnapshot] = field(default_factory=list)

    @classmethod
    def open(cls, folder: str | Path | None = None) -> "Library":
        """Read ``folder/library.toml`` (the default folder when None); an absent file is an empty library."""
        path = Path(folder if folder is not None else default_dir()) / LIBRARY_FILE
        if not path.exists():
            return cls(path)
        try:
            if path.stat().st_size > MAX_LIBRARY_BYTES:
                raise LibraryError(f"{path}: larger than {MAX_LIBRARY_BYTES >> 20} MB; not a snapshot library")
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise LibraryError(f"{path}: unreadable snapshot library ({str(exc).splitlines()[0][:120]})") from None
        if doc.get("format_version") != LIBRARY_FORMAT:
            raise LibraryError(f"{path}: format_version {doc.get('format_version')!r}, this vaesynth reads "
                               f"{LIBRARY_FORMAT}")
        raw = doc.get("snapshot", [])
        if not isinstance(raw, list):
            raise LibraryError(f"{path}: 'snapshot' must be an array of tables")
        return cls(path, [_snapshot(entry, path, i) for i, entry in enumerate(raw)])

    def for_preset(self, preset: Preset) -> list[UserSnapshot]:
        """This preset's snapshots (by name and latent size), in program order."""
        return sorted((s for s in self.snapshots if s.preset == preset.name and len(s.z) == preset.latent_size),
                      key=lambda s: s.program)

    def find(self, preset: Preset, name: str) -> UserSnapshot | None:
        """The snapshot ``name`` captured with ``preset``; LibraryError when it exists only for another
        preset (its latent would mean nothing here); None when there is none."""
        others = []
        for s in self.snapshots:
            if s.name != name:
                continue
            if s.preset == preset.name and len(s.z) == preset.latent_size:
                return s
            others.append(s)
        if others:
            o = others[0]
            raise LibraryError(f"snapshot {name!r} was captured with preset {o.preset!r} ({len(o.z)} latent dims), "
                               f"not {preset.name!r} ({preset.latent_size}); capture it again with this preset")
        return None

    def store(self, preset: Preset, name: str, z: NDArray[np.floating], pitch: float, source: str = "",
              track: NDArray[np.floating] | None = None, tone_db: NDArray[np.floating] | None = None,
              key_level: KeyLevel | None = None) -> UserSnapshot:
        """Add (or replace, keeping its program) ``name`` for ``preset`` and write the library atomically.
        ``track (128, L)``: its key tracking, kept as its latent at ``own_key_track_keys(pitch)``; ``tone_db (P,)``:
        its tone curve (synth.tone); ``key_level``: its level per key (synth.loudness)."""
        name = check_name(name)
        z = np.asarray(z, np.float64)
        if z.shape != (preset.latent_size,) or not np.isfinite(z).all():
            raise LibraryError(f"snapshot {name!r}: latent must be {preset.latent_size} finite values")
        if tone_db is not None and not valid_tone(tone_db):
            raise LibraryError(f"snapshot {name!r}: tone curve must be {TONE_RULE}")
        mine = self.for_preset(preset)
        old = next((s for s in mine if s.name == name), None)
        if old is not None:
            program = old.program
        else:
            used = {s.program for s in mine}
            free = [p for p in range(USER_PROGRAMS) if p not in used]
            if not free:
                raise LibraryError(f"{self.path}: all {USER_PROGRAMS} user programs of preset {preset.name!r} are "
                                   "taken")
            program = free[0]
        keys: tuple[int, ...] = ()
        rows: tuple[tuple[float, ...], ...] = ()
        if track is not None:
            keys = own_key_track_keys(pitch)  # exact for a capture's table, its own key's fade included
            rows = tuple(tuple(float(v) for v in z + np.asarray(track, np.float64)[k]) for k in keys)
        snap = UserSnapshot(name, preset.name, preset_fingerprint(preset), program, tuple(float(v) for v in z),
                            float(pitch), source, keys, rows,
                            () if tone_db is None else tuple(float(v) for v in tone_db), key_level)
        kept = [s for s in self.snapshots if not (s.name == name and s.preset == preset.name)]
        self.write(kept + [snap])
        return snap

    def write(self, snapshots: list[UserSnapshot]) -> None:
        """Replace the library file with ``snapshots`` atomically (temp file, fsync, ``os.replace``)."""
        doc = {"format_version": LIBRARY_FORMAT, "snapshot": [s.to_dict() for s in snapshots]}
        data = tomli_w.dumps(doc).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data)
        except OSError as exc:
            raise LibraryError(f"{self.path}: cannot write the snapshot library ({exc.strerror or exc})") from None
        self.snapshots = list(snapshots)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any point leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _snapshot(entry: object, path: Path, i: int) -> UserSnapshot:
    where = f"{path}: snapshot #{i + 1}"
    if not isinstance(entry, dict):
        raise LibraryError(f"{where} is not a table")
    try:
        name, preset, program = entry["name"], entry["preset"], entry["program"]
        z = entry["z"]
        if not (isinstance(name, str) and isinstance(preset, str) and isinstance(program, int)
                and isinstance(z, list) and 1 <= len(z) <= 256 and all(isinstance(v, (int, float)) for v in z)):
            raise TypeError
        pitch = float(entry.get("pitch", 60.0))
        values = tuple(float(v) for v in z)
    except (KeyError, TypeError, ValueError):
        raise LibraryError(f"{where}: needs name, preset, program and z (a list of numbers)") from None
    if not (0 <= program < USER_PROGRAMS and all(math.isfinite(v) for v in values) and math.isfinite(pitch)):
        raise LibraryError(f"{where}: program must be 0..127 and z finite")
    keys, rows = _track(entry, len(values), where)
    tone = entry.get("tone_db", [])
    if not (isinstance(tone, list) and (not tone or valid_tone(tone))):
        raise LibraryError(f"{where}: tone_db must be {TONE_RULE}")
    return UserSnapshot(name, preset, str(entry.get("fingerprint", "")), program, values, pitch,
                        str(entry.get("source", "")), keys, rows, tuple(float(v) for v in tone),
                        _key_level(entry, where))


def _key_level(entry: dict, where: str) -> KeyLevel | None:
    """A snapshot's optional level per key: ``key_level_keys`` and ``key_level_db``, or None."""
    if "key_level_keys" not in entry and "key_level_db" not in entry:
        return None
    keys, db = entry.get("key_level_keys"), entry.get("key_level_db")
    if not valid_key_level(keys, db):
        raise LibraryError(f"{where}: key_level_keys and key_level_db must be {KEY_LEVEL_RULE}")
    return KeyLevel(tuple(keys), tuple(float(v) for v in db))  # type: ignore[arg-type]


def _track(entry: dict, size: int, where: str) -> tuple[tuple[int, ...], tuple[tuple[float, ...], ...]]:
    """A snapshot's optional key tracking: ``track_keys`` and ``track_z`` (one latent per key), or ()."""
    if "track_keys" not in entry and "track_z" not in entry:
        return (), ()
    keys, rows = entry.get("track_keys"), entry.get("track_z")
    ok = (valid_track_keys(keys) and isinstance(rows, list) and len(rows) == len(keys)
          and all(isinstance(r, list) and len(r) == size and all(isinstance(v, (int, float)) and math.isfinite(v) for v in r)
                  for r in rows))
    if not ok:
        raise LibraryError(f"{where}: track_keys must be increasing keys 0..127 and track_z one finite latent per key")
    return tuple(keys), tuple(tuple(float(v) for v in r) for r in rows)
