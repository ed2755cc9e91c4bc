"""Command-line options for captured, stored, morphed and random timbres (live mode and ``--render``).

    run_synth.py --capture PATH.wav --name NAME [--pitch N] [--pull F] [--library DIR]
    run_synth.py [--render IN.mid --out OUT.wav] --timbre PATH.wav|NAME|random[:SEED]
    run_synth.py ... --morph A,B [--morph-cc N]

``NAME`` is a snapshot of the user's library (``synth.library``) or of the preset. Every start loads
the library's snapshots for the preset as user programs (Bank Select 1 + Program Change N).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from synth.capture import Capture, capture_file, is_audio_path, pull_toward_data
from synth.errors import VaesynthError
from synth.library import Library, LibraryError, preset_fingerprint
from synth.loudness import KeyLevel, LevelEstimate, measure_key_level
from synth.partials import load_compiled
from synth.preset import Preset
from synth.timbre import CAPTURE, CC_BANK_SELECT, CC_MORPH, CC_RANDOM, RANDOM, SNAPSHOT, USER, TimbreInfo

RANDOM_WORD = "random"


class RefineIsDefault(argparse._StoreTrueAction):
    """``--refine`` of the last release, kept for this one: every capture refines now, so it only says so
    (one line). A store-true action, so a config file's ``refine = true`` is read like the option."""

    replacement = "nothing (every capture refines now)"  # the config reader's deprecation notice names it

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated and goes in the next release; every capture refines now",
              file=sys.stderr)


class TimbreOptionError(VaesynthError):
    """A --timbre / --morph / --capture option the user can correct (one line)."""


def add_timbre_options(ap: argparse.ArgumentParser) -> None:
    """The options of this module, as one argument group of ``run_synth.py``."""
    g = ap.add_argument_group("timbres: capture, morph, random")
    g.add_argument("--timbre", metavar="PATH.wav|NAME|random[:SEED]", default=None,
                   help="start with the timbre captured from a recording, a library or preset snapshot, "
                        "or a random one (the same SEED gives the same timbre)")
    g.add_argument("--capture", metavar="PATH.wav", default=None,
                   help="capture the most prominent note of a WAV/FLAC/OGG recording into the library as --name, "
                        "then exit")
    g.add_argument("--name", default=None, help="snapshot name for --capture")
    g.add_argument("--pitch", type=float, default=None,
                   help="MIDI pitch of the recorded note (default: estimated; giving it skips the pitch checks)")
    g.add_argument("--pull", type=float, default=0.0, metavar="F",
                   help="move a capture F (0..1) of the way toward the nearest training note (the nearest snapshot "
                        "when the preset has no latent map; default 0)")
    g.add_argument("--refine", action=RefineIsDefault)
    g.add_argument("--library", type=Path, default=None, metavar="DIR",
                   help="snapshot library folder (default: the platform's user data folder)")
    g.add_argument("--morph", metavar="A,B", default=None,
                   help=f"morph between two timbres (each PATH.wav, NAME or random:SEED) with CC {CC_MORPH} "
                        "(mod wheel): 0 plays A, 127 plays B")
    g.add_argument("--morph-cc", type=int, default=CC_MORPH, metavar="CC",
                   help=f"the CC that moves the morph (default {CC_MORPH}, the mod wheel; e.g. 2 breath, "
                        "4 foot, 11 expression)")


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda text: None) if quiet else (lambda text: print(f"vaesynth: {text}", file=sys.stderr, flush=True))


def _capture(preset: Preset, path: str, args: argparse.Namespace) -> tuple[Capture, Any, KeyLevel]:
    """The capture of ``path``, its latent (pulled toward the data when asked) and that latent's level
    per key (synth.loudness: the capture plays as loud as the snapshots)."""
    load_compiled(preset.params.n_bins)  # the level's engine loads numba anyway: the refinement then uses it
    cap = capture_file(preset, path, args.pitch)
    z = pull_toward_data(preset, cap.z, args.pull) if args.pull else cap.z
    return cap, z, measure_key_level(preset, z, cap.track, cap.tone_db, cap.pitch)


def run_capture(args: argparse.Namespace) -> int:
    """``--capture PATH --name NAME``: capture, store in the library (atomically), report in one line."""
    from synth.preset import load_preset

    if not args.name:
        raise TimbreOptionError("--capture needs --name NAME (the snapshot's name in your library)")
    preset = load_preset(args.preset)
    library = Library.open(args.library)
    cap, z, level = _capture(preset, args.capture, args)
    snap = library.store(preset, args.name, z, cap.pitch, source=str(Path(args.capture).name), track=cap.track,
                         tone_db=cap.tone_db, key_level=level)
    pulled = f", pulled {args.pull:g} toward the data" if args.pull else ""
    print(f"captured {snap.name!r} from {args.capture} in {cap.seconds:.2f} s: {cap.describe(preset)}{pulled}",
          file=sys.stderr)
    print(f"stored in {library.path} as user program {snap.program} (Bank Select CC {CC_BANK_SELECT} = 1, then "
          f"Program Change {snap.program}; or --timbre {snap.name!r})", file=sys.stderr)
    return 0


def _open_library(args: argparse.Namespace, say: Callable[[str], None], needed: bool) -> Library | None:
    try:
        return Library.open(getattr(args, "library", None))
    except LibraryError as exc:
        if needed:
            raise
        say(f"warning: {exc}; playing without user programs")
        return None


def load_user_programs(engine: Any, library: Library | None, say: Callable[[str], None]) -> None:
    """Every snapshot of ``engine.preset`` in ``library`` becomes its user program."""
    if library is None:
        return
    preset = engine.preset
    mine = library.for_preset(preset)
    stale = [s.name for s in mine if s.fingerprint and s.fingerprint != preset_fingerprint(preset)]
    if stale:
        say(f"warning: {', '.join(stale[:3])}{'...' if len(stale) > 3 else ''} captured with another version of "
            f"preset {preset.name!r}; they may sound different (capture them again)")
    # captured before captures were levelled: estimated as a random draw is (synth.loudness)
    unlevelled = [s for s in mine if s.key_level is None]
    estimate = (engine.timbre.estimate or LevelEstimate(preset)) if unlevelled else None
    for s in mine:
        gain = s.key_gain() if s.key_level is not None else estimate.key_level(s.z, s.track(), s.tone()).gains()
        engine.timbre.store_user(s.program, s.z, TimbreInfo(USER, s.name, program=s.program), s.track(), s.tone(), gain)


def _random_seed(text: str) -> int | None:
    """``random`` -> None (a fresh seed), ``random:SEED`` -> SEED."""
    _, sep, seed = text.partition(":")
    if not sep:
        return None
    try:
        value = int(seed)
    except ValueError:
        raise TimbreOptionError(f"{text!r}: expected random or random:SEED (an integer)") from None
    if not 0 <= value < 1 << 31:
        raise TimbreOptionError(f"{text!r}: SEED must be 0..{(1 << 31) - 1}")
    return value


def resolve(engine: Any, source: str, library: Library | None, args: argparse.Namespace,
            say: Callable[[str], None], sequence: bool) -> int:
    """The slot holding timbre ``source`` (a recording, ``random[:SEED]``, a library or preset snapshot).

    ``sequence``: a random source restarts the random button's sequence at its seed."""
    preset, bank = engine.preset, engine.timbre
    source = source.strip()
    if source == RANDOM_WORD or source.startswith(RANDOM_WORD + ":"):
        seed = _random_seed(source)
        if sequence:
            if seed is not None:
                bank.start_random(seed)
            return bank.take_random()
        seed = bank.random_seed + 10_000 if seed is None else seed  # an endpoint apart from the button's draws
        z, gain = bank.draw(seed)
        return bank.store(z, TimbreInfo(RANDOM, f"random:{seed}", seed=seed), key_gain=gain)
    if is_audio_path(source) or Path(source).is_file():
        cap, z, level = _capture(preset, source, args)
        say(f"captured {source} in {cap.seconds:.2f} s: {cap.describe(preset)}")
        return bank.store(z, TimbreInfo(CAPTURE, Path(source).stem), cap.track, cap.tone_db, level.gains())
    snap = library.find(preset, source) if library is not None else None
    if snap is not None:
        return snap.program  # loaded as its user program
    for i, s in enumerate(preset.snapshots):
        if s.name == source:
            return bank.store(s.z, TimbreInfo(SNAPSHOT, s.name, program=s.program), s.track, s.tone_db, s.key_gain())
    where = f"library {library.path}" if library is not None else "the library (unreadable)"
    raise TimbreOptionError(f"timbre {source!r}: not a recording, random[:SEED], a snapshot in {where}, "
                            f"or one of the preset's {len(preset.snapshots)} snapshots")


def _preset_snapshot(preset: Any, source: str, library: Any) -> Any:
    """The preset snapshot named ``source`` when no library snapshot has that name (see ``resolve``), else None."""
    name = source.strip()
    if library is not None and library.find(preset, name) is not None:
        return None
    return next((s for s in preset.snapshots if s.name == name), None)


def apply_timbre_options(args: argparse.Namespace, engine: Any, random_button: bool = True) -> None:
    """Load the user programs; apply ``--timbre``, ``--morph`` and ``--morph-cc`` to ``engine`` (before
    its stream starts or its render runs). Random draws get a level (``synth.loudness.LevelEstimate``,
    about 0.2 s to open) where they can sound: ``random_button`` (the performance may press the random
    button: live, or a MIDI file with CC 80 in it) or a random ``--timbre``/``--morph``."""
    say = _say(bool(getattr(args, "quiet", False)))
    timbre, morph = getattr(args, "timbre", None), getattr(args, "morph", None)
    if random_button or any(RANDOM_WORD in (option or "") for option in (timbre, morph)):
        engine.timbre.level_random(LevelEstimate(engine.preset))  # random draws about as loud as the snapshots
    cc = getattr(args, "morph_cc", CC_MORPH)
    if not 0 <= cc <= 127 or cc in (CC_BANK_SELECT, CC_RANDOM, 64, *range(70, 78), *range(120, 128)):
        raise TimbreOptionError(f"--morph-cc {cc}: must be 1..119 and not a CC the synth already uses "
                                f"(0 bank, 64 sustain, 70-77 knobs, {CC_RANDOM} random)")
    engine.timbre.morph_cc = cc
    library = _open_library(args, say, needed=False)
    load_user_programs(engine, library, say)
    if timbre is not None:
        snap = _preset_snapshot(engine.preset, timbre, library)
        if snap is not None:  # as its program change recalls it: its key tracking and level trim too
            engine.restore_timbre(snap.program)
        else:
            engine.set_timbre_now(resolve(engine, timbre, library, args, say, sequence=True))
    if morph is not None:
        parts = morph.split(",")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise TimbreOptionError(f"--morph {morph!r}: expected A,B (two timbres separated by a comma)")
        a, b = (resolve(engine, p, library, args, say, sequence=False) for p in parts)
        engine.set_morph_now(a, b)
    if timbre is not None or morph is not None:
        say(f"timbre {engine.current_timbre.label}")
