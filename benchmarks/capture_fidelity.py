"""Timbre capture on instruments the model never saw, capture speed, and morph/random change-to-sound.

Prints markdown tables:
- **fidelity**: for each held-out GM program (``[train] holdout_programs`` of the preset's
  ``train_config.toml``, or ``--programs``), a FluidR3 C4 (velocity 100, key held ``--hold`` s) is
  captured (pitch estimated, as a user's recording would be); the engine then plays ``--keys``
  (five other keys in 36-84) with the captured timbre, and with the family snapshot the program
  change would recall (``preset.snapshot_for_program``). Each is compared with the real FluidR3
  note at that key by the log-spectral distance (dB) of the preset's log-magnitude frames over the
  steady part (0.1 s after the onset to 0.05 s before the release), level-matched (one gain per
  note: a microphone's level is not the timbre), for capture as a user gets it (``--timbre``/``--capture``:
  the encoder's point refined, ``synth.refine``) and for the encoder's point alone.
  Goal: capture wins on at least 7 of 8 programs, by at least 2 dB in the median.
  Two checks beside it: the same distance at the captured key itself (C4: how well the capture fits
  the recording, against how well it carries to the other keys), and the comparison against the
  closest-sounding of the family snapshots *equally near* in program number (``program_map`` breaks
  such ties toward the lower number, which is a rule, not the instrument's nearest neighbour).
  ``--soundfont`` renders the held-out programs from another soundfont (the settings were chosen
  on FluidR3: another soundfont's notes check they are not fitted to it).
- **whole note**: the same recordings (C4, key up at ``--hold``) played back at their own key for
  their first 2.5 s, attack, held part and release alike: spectral convergence and LSD against the
  recording after one gain, for capture as a user gets it, capture without its reading of the whole
  note (``synth.refine.Refiner.read``), and the encoder's point alone.
- **self-capture**: the engine plays the C4 of a spread of the preset's snapshots (``SELF_PROGRAMS``);
  each is captured as a user would capture it, and the capture's C4 is compared with that note by
  the same distance, against every other snapshot's C4: on how many programs is the capture the
  closest? (A capture should find its way back to a sound the synth itself made.)
- **capture speed**: reading a 4 s recording (WAV) through to its latent, then its level per key
  (``synth.loudness``: seven notes played by the engine), the first capture of a process (model
  sessions started) and the median of later ones, as a user gets it and the encoder alone
  (``--python``: the fresh process's interpreter, e.g. a venv made by the README's Play command,
  which has no scipy). Goal: <= 1 s.
- **change-to-sound**: the engine's response to the morph wheel (CC 1, 0 -> 127 between two
  snapshots) and to the random button (CC 80) under a held chord, measured offline exactly as
  ``benchmarks.live_latency`` measures knob-to-sound: the first output sample that differs (by
  0.1 % of the peak) from the same chord rendered without the control. Goal: <= 20 ms (add the
  MIDI path under JACK, key-to-sound in ``live_latency``, for the figure a player meets).

Run: ``flock /work/rt-bench.lock python -m benchmarks.capture_fidelity --preset presets/default``
(about three minutes on 2 cores, two of them the self-capture table). Fidelity and change-to-sound are exact offline figures; only the
capture-speed table times anything, so only it needs the cores to itself.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from benchmarks.common import (DEFAULT_PRESET, SOUNDFONT, BenchmarkError, log, magnitude_convergence_db, markdown_table,
                               run_main)
from synth.capture import CaptureError, Encoder, capture, read_recording
from synth.contract import gm_group
from synth.engine import Engine
from synth.loudness import measure_key_level
from synth.preset import Preset, load_preset
from synth.refine import VALLEY_WEIGHT, Refiner, ValleyWeight
from synth.stft import log_spectral_distance_db, stft
from synth.timbre import CC_MORPH, CC_RANDOM, TimbreInfo

KEYS = (36, 48, 55, 72, 84)
CAPTURE_KEY = 60
VELOCITY = 100
MIN_PROGRAMS = 8
GOAL_WINS, GOAL_MEDIAN_DB = 7, 2.0
FLUID_RATE = 48000
RATE, PERIOD = 48000, 128  # change-to-sound, as live_latency


def holdout_programs(preset: Preset) -> list[int]:
    path = preset.root / "train_config.toml"
    try:
        programs = tomllib.loads(path.read_text())["train"]["holdout_programs"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        raise BenchmarkError(f"{path}: no [train] holdout_programs; give --programs") from None
    return [int(p) for p in programs]


def equally_near_family_snapshots(preset: Preset, program: int) -> list[int]:
    """Indices of the snapshots in ``program``'s GM group at the smallest program-number distance from
    it (the ones ``program_map`` chooses among; it takes the lowest), or the recalled one when the
    group has none."""
    group = [i for i, s in enumerate(preset.snapshots) if gm_group(s.program) == gm_group(program)]
    if not group:
        return [preset.programs[program]]
    nearest = min(abs(preset.snapshots[i].program - program) for i in group)
    return [i for i in group if abs(preset.snapshots[i].program - program) == nearest]


class FluidNotes:
    """Soundfont notes (FluidR3 unless told) through the training renderer (training.data), at the
    preset's rate."""

    def __init__(self, rate: int, hold: float, soundfont: str = SOUNDFONT) -> None:
        from training import data

        if not Path(soundfont).is_file():
            raise BenchmarkError(f"{soundfont}: soundfont not found")
        data._render_init([soundfont], tempfile.gettempdir(), rate)
        self._data, self.rate, self.hold = data, rate, hold

    def note(self, program: int, key: int) -> np.ndarray:
        audio = self._data.render_note(program, key, VELOCITY, self.hold)
        return soxr.resample(audio, FLUID_RATE, self.rate, quality="HQ").astype(np.float32)


def steady_mag(audio: np.ndarray, preset: Preset, hold: float) -> np.ndarray:
    """``(T, F)`` magnitudes of the steady part (0.1 s .. hold - 0.05 s) of a note starting at sample 0."""
    p = preset.params
    mag = np.abs(stft(audio, p))
    a, b = int(0.1 * p.frame_rate), int((hold - 0.05) * p.frame_rate)
    return mag[a:max(b, a + 1)]


def level_matched_lsd(real: np.ndarray, played: np.ndarray) -> float:
    """LSD (dB) after one gain that matches the played note's RMS level to the real one's."""
    gain = np.sqrt(np.mean(real ** 2) / max(float(np.mean(played ** 2)), 1e-30))
    return log_spectral_distance_db(real, played * gain)


def engine_note(preset: Preset, z: np.ndarray, key: int, hold: float, seconds: float,
                tone_db: np.ndarray | None = None) -> np.ndarray:
    """The engine (offline, at the model rate, before mix gain) playing ``key`` with latent ``z`` and
    tone curve ``tone_db`` (synth.tone; None: flat)."""
    eng = Engine(preset, polyphony=4, device="cpu", threads=1, knob_pickup=False, master_gain=1.0 / preset.mix_gain)
    eng.set_timbre_now(eng.store_timbre(z, TimbreInfo("latent", "bench"), tone_db=tone_db))
    rate = preset.params.sample_rate
    eng.prepare(rate, 1024, warm=False)
    eng.push(0, 0x90, key, VELOCITY)
    eng.push(int(hold * rate), 0x80, key, 0)
    out = np.zeros((int(seconds * rate), 2), np.float32)
    for a in range(0, len(out), 1024):
        eng.process(out[a:a + 1024])
    return out[:, 0].copy()


def _summary(name: str, margins: list[float], programs: int) -> str:
    wins = sum(x > 0 for x in margins)
    med = float(np.median(margins)) if margins else float("nan")
    ok = programs >= MIN_PROGRAMS and wins >= GOAL_WINS and med >= GOAL_MEDIAN_DB
    note = "" if programs >= MIN_PROGRAMS else f" (only {programs} programs: the goal needs {MIN_PROGRAMS})"
    return (f"{name}: closer on {wins} of {len(margins)} programs, median margin {med:.2f} dB; goal >= {GOAL_WINS} "
            f"of {MIN_PROGRAMS}, >= {GOAL_MEDIAN_DB:g} dB: {'met' if ok else 'NOT met'}{note}")


def fidelity_table(preset: Preset, programs: list[int], keys: tuple[int, ...], hold: float,
                   soundfont: str = SOUNDFONT, valley_weight: ValleyWeight | None = VALLEY_WEIGHT) -> str:
    fluid = FluidNotes(preset.params.sample_rate, hold, soundfont)
    encoder, refiner = Encoder(preset), Refiner(preset, valley_weight)
    seconds = hold + 0.2
    rows = []
    margins: dict[str, list[float]] = {"capture vs the program-change snapshot": [],
                                       "encoder alone vs the program-change snapshot": [],
                                       "capture vs the closest of the equally near family snapshots": []}
    for program in programs:
        snap = preset.snapshot_for_program(program)
        if snap is None:
            raise BenchmarkError(f"{preset.root}: no snapshots, nothing to compare with")
        recording = fluid.note(program, CAPTURE_KEY)
        try:
            caps = {"capture": capture(preset, recording, preset.params.sample_rate, encoder=encoder, refiner=refiner),
                    "encoder alone": capture(preset, recording, preset.params.sample_rate, encoder=encoder,
                                             refine=False)}
        except CaptureError as exc:
            rows.append([program, snap.name, f"capture failed: {exc}", "", "", "", "", "", "", "", ""])
            continue
        tied = [i for i in equally_near_family_snapshots(preset, program) if preset.snapshots[i] is not snap]
        # each plays a key at its key-tracked latent (synth.key_track): a snapshot as a program change recalls
        # it, a capture with the tracking it borrowed (the encoder's point has none)
        played = {"capture": caps["capture"], "encoder alone": caps["encoder alone"], "snapshot": snap}
        played |= {f"tied {i}": preset.snapshots[i] for i in tied}
        lsd: dict[str, list[float]] = {name: [] for name in played}
        at_capture_key: dict[str, float] = {}
        for key in (CAPTURE_KEY, *keys):
            real = steady_mag(recording if key == CAPTURE_KEY else fluid.note(program, key), preset, hold)
            for name, timbre in played.items():
                z = timbre.z_at(key)
                note = engine_note(preset, z, key, hold, seconds, timbre.tone_db)
                d = level_matched_lsd(real, steady_mag(note, preset, hold))
                if key == CAPTURE_KEY:
                    at_capture_key[name] = d
                else:
                    lsd[name].append(d)
        med = {name: float(np.median(v)) for name, v in lsd.items()}
        closest = min(["snapshot", *(f"tied {i}" for i in tied)], key=lambda name: med[name])
        closest_name = snap.name if closest == "snapshot" else preset.snapshots[int(closest.split()[1])].name
        margins["capture vs the program-change snapshot"].append(med["snapshot"] - med["capture"])
        margins["encoder alone vs the program-change snapshot"].append(med["snapshot"] - med["encoder alone"])
        margins["capture vs the closest of the equally near family snapshots"].append(med[closest] - med["capture"])
        cap = caps["capture"]
        dist = "-" if cap.distance is None else f"{cap.distance:.1f}"
        rows.append([program, snap.name, f"{cap.pitch:.2f}", dist, f"{med['snapshot']:.2f}", f"{med['capture']:.2f}",
                     f"{med['snapshot'] - med['capture']:+.2f}", f"{med['encoder alone']:.2f}",
                     f"{at_capture_key['snapshot']:.2f} / {at_capture_key['capture']:.2f}",
                     "-" if not tied else f"{closest_name} {med[closest]:.2f}",
                     "-" if not tied else f"{med[closest] - med['capture']:+.2f}"])
        log(f"program {program}: capture {med['capture']:.2f} / encoder alone {med['encoder alone']:.2f} dB, "
            f"snapshot {med['snapshot']:.2f} dB")
    table = markdown_table(["GM program", "family snapshot (program change)", "captured pitch", "distance (std)",
                            f"LSD family snapshot, keys {', '.join(map(str, keys))} (median, dB)", "LSD capture",
                            "capture's margin", "LSD encoder alone",
                            f"LSD at the captured key {CAPTURE_KEY}: snapshot / capture",
                            "closest equally near family snapshot", "capture's margin over it"], rows)
    return "\n".join([table, ""] + [_summary(name, m, len(programs)) for name, m in margins.items()])


WHOLE_SECONDS = 2.5  # the whole-note table: the recording's first 2.5 s (its key up at --hold)


def whole_note_scores(real: np.ndarray, played: np.ndarray, preset: Preset) -> tuple[float, float]:
    """Spectral convergence and LSD (dB) of ``played`` against ``real`` over every frame of both (attack,
    held part, release), after one gain that matches their energy."""
    a, b = np.abs(stft(real, preset.params)), np.abs(stft(played, preset.params))
    t = min(len(a), len(b))
    a, b = a[:t], b[:t]
    b = b * np.sqrt(float((a ** 2).sum()) / max(float((b ** 2).sum()), 1e-30))
    return magnitude_convergence_db(a, b), log_spectral_distance_db(a, b)


def whole_note_table(preset: Preset, programs: list[int], hold: float, soundfont: str = SOUNDFONT,
                     valley_weight: ValleyWeight | None = VALLEY_WEIGHT) -> str:
    """The whole-note section: how the captured key itself plays the recorded note back, from its attack
    through its release, for capture as users get it, capture without its reading of the whole note
    (``Refiner.read``), and the encoder's point alone."""
    fluid = FluidNotes(preset.params.sample_rate, hold, soundfont)
    encoder, refiner = Encoder(preset), Refiner(preset, valley_weight)
    rate = preset.params.sample_rate
    ways = {"capture": {}, "capture without the read": {"read": False}, "encoder alone": {"refine": False}}
    rows, scores = [], {name: [] for name in ways}
    for program in programs:
        recording = fluid.note(program, CAPTURE_KEY)[: int(WHOLE_SECONDS * rate)]
        row: list[object] = [program]
        for name, how in ways.items():
            try:
                cap = capture(preset, recording, rate, pitch=float(CAPTURE_KEY), encoder=encoder, refiner=refiner, **how)
            except CaptureError as exc:
                raise BenchmarkError(f"program {program}: {exc}") from None
            played = engine_note(preset, cap.z_at(CAPTURE_KEY), CAPTURE_KEY, hold, WHOLE_SECONDS, cap.tone_db)
            sc, lsd = whole_note_scores(recording, played, preset)
            scores[name].append((sc, lsd))
            row.append(f"{sc:.2f} / {lsd:.2f}")
        rows.append(row)
        log(f"whole note, program {program}: " + ", ".join(f"{n} {r}" for n, r in zip(ways, row[1:])))
    rows.append(["median", *(f"{np.median([v[0] for v in scores[n]]):.2f} / {np.median([v[1] for v in scores[n]]):.2f}"
                             for n in ways)])
    return markdown_table(["GM program (C4, key up at %g s, %g s)" % (hold, WHOLE_SECONDS),
                           *(f"{name}: SC / LSD (dB)" for name in ways)], rows)


SELF_PROGRAMS = (0, 4, 10, 16, 19, 24, 33, 41, 48, 56, 65, 73, 81, 89, 98, 104)
SELF_HOLD = 1.5


def self_capture_table(preset: Preset, valley_weight: ValleyWeight | None = VALLEY_WEIGHT) -> str:
    """The self-capture section (see the module doc)."""
    encoder, refiner = Encoder(preset), Refiner(preset, valley_weight)
    seconds = SELF_HOLD + 0.5
    rows, closest, mine, nearest, pitch_given = [], 0, [], [], 0
    for program in SELF_PROGRAMS:
        snap = preset.snapshot_for_program(program)
        if snap is None:
            raise BenchmarkError(f"{preset.root}: no snapshots, nothing to capture")
        note = engine_note(preset, snap.z_at(CAPTURE_KEY), CAPTURE_KEY, SELF_HOLD, seconds, snap.tone_db)
        ref = steady_mag(note, preset, SELF_HOLD)
        told = ""
        try:
            cap = capture(preset, note, preset.params.sample_rate, encoder=encoder, refiner=refiner)
        except CaptureError as exc:  # as the message tells a user: give the note's pitch
            log(f"self-capture {snap.name}: {exc}; again with its pitch")
            cap = capture(preset, note, preset.params.sample_rate, float(CAPTURE_KEY), encoder=encoder, refiner=refiner)
            told, pitch_given = " (pitch given)", pitch_given + 1

        def lsd(z: np.ndarray, tone_db: np.ndarray | None) -> float:
            return level_matched_lsd(ref, steady_mag(engine_note(preset, z, CAPTURE_KEY, SELF_HOLD, seconds, tone_db),
                                                     preset, SELF_HOLD))

        d = lsd(cap.z_at(CAPTURE_KEY), cap.tone_db)  # as the captured timbre plays that key, key tracking included
        others = sorted((lsd(s.z_at(CAPTURE_KEY), s.tone_db), s.name) for s in preset.snapshots if s is not snap)
        closer = sum(o < d for o, _ in others)
        closest += closer == 0
        mine.append(d)
        nearest.append(others[0][0])
        rows.append([program, snap.name + told, f"{d:.2f}", f"{others[0][1]} {others[0][0]:.2f}", closer])
        log(f"self-capture {snap.name}: {d:.2f} dB, nearest other {others[0][0]:.2f} dB, {closer} closer")
    table = markdown_table(["GM program", "snapshot (its C4, captured)", f"LSD capture at key {CAPTURE_KEY} (dB)",
                            "nearest other snapshot (dB)", "other snapshots closer than the capture"], rows)
    return (f"{table}\n\nself-capture: the capture is the closest on {closest} of {len(rows)} programs; median LSD "
            f"{np.median(mine):.2f} dB against the nearest other snapshot's {np.median(nearest):.2f} dB; "
            f"{pitch_given} note(s) refused without their pitch (the message asks for it)")


def _first_capture_seconds(preset: Preset, path: Path, refine: bool, python: str) -> tuple[float, float]:
    """Seconds from reading ``path`` to its latent, then to its level per key (``synth.loudness``), in a
    fresh process of interpreter ``python``, as ``run_synth.py --capture`` meets them: model sessions
    started, nothing (numba's first call included) warmed by an engine."""
    code = ("import sys, time\n"
            "from synth.capture import capture, read_recording\n"
            "from synth.loudness import measure_key_level\n"
            "from synth.partials import load_compiled\n"
            "from synth.preset import load_preset\n"
            "preset = load_preset(sys.argv[1])\n"
            "started = time.perf_counter()\n"
            "load_compiled(preset.params.n_bins)  # as run_synth.py --capture does (synth.timbre_cli)\n"
            "cap = capture(preset, *read_recording(sys.argv[2]), refine=sys.argv[3] == 'refine')\n"
            "captured = time.perf_counter()\n"
            "measure_key_level(preset, cap.z, cap.track, cap.tone_db, cap.pitch)\n"
            "print(captured - started, time.perf_counter() - captured)\n")
    done = subprocess.run([python, "-c", code, str(preset.root), str(path), "refine" if refine else "plain"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"first capture in a fresh process failed: {done.stderr.strip()[-300:]}")
    first, level = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
    return first, level


def speed_table(preset: Preset, program: int, repeats: int = 5, python: str = sys.executable) -> str:
    """A 4 s WAV to its latent, then its level per key (the engine plays seven notes of it): the first
    capture of a fresh process (model sessions started, as ``--capture`` meets it), and the median of
    later ones in one process (sessions kept, as a running synth would; this one has run the engine,
    as a synth has)."""
    fluid = FluidNotes(preset.params.sample_rate, 3.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "take.wav"
        sf.write(path, fluid.note(program, CAPTURE_KEY)[: 4 * preset.params.sample_rate], preset.params.sample_rate)
        for label, refine in (("", True), (", encoder alone", False)):
            first, first_level = _first_capture_seconds(preset, path, refine, python)
            encoder, refiner = Encoder(preset), Refiner(preset)
            later, later_level = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                audio, rate = read_recording(path)
                cap = capture(preset, audio, rate, encoder=encoder, refiner=refiner, refine=refine)
                captured = time.perf_counter()
                measure_key_level(preset, cap.z, cap.track, cap.tone_db, cap.pitch)
                later.append(captured - started)
                later_level.append(time.perf_counter() - captured)
            mid, mid_level = float(np.median(later)), float(np.median(later_level))
            rows.append([f"program {program}{label}", f"{first:.3f} + {first_level:.3f} = {first + first_level:.3f} s",
                         f"{mid:.3f} + {mid_level:.3f} = {mid + mid_level:.3f} s", "<= 1 s"])
    return markdown_table(["capture of a 4 s WAV", "first, fresh process: latent + level", "median of later: latent + level",
                           "goal"], rows)


def _change_time(preset: Preset, control: tuple[int, int] | None, morph: bool, at: int) -> np.ndarray:
    eng = Engine(preset, device="cpu", threads=1, random_seed=1)
    if morph:
        a, b = (eng.store_timbre(np.asarray(s.z, np.float32), TimbreInfo("snapshot", s.name), s.track, s.tone_db)
                for s in (preset.snapshots[0], preset.snapshots[-1]))
        eng.set_morph_now(a, b)
    eng.prepare(RATE, PERIOD, warm=False)
    for k in (48, 55, 60, 64):
        eng.push(4800, 0x90, k, 100)
    if control is not None:
        eng.push(at, 0xB0, *control)
    out = np.zeros((at + RATE // 10, 2), np.float32)
    for i in range(0, len(out), PERIOD):
        eng.process(out[i:i + PERIOD])
    return out[:, 0].copy()


def change_table(preset: Preset, repeats: int = 5) -> str:
    rows = []
    for label, control, morph in ((f"morph wheel (CC {CC_MORPH} 0 -> 127)", (CC_MORPH, 127), True),
                                  (f"random button (CC {CC_RANDOM})", (CC_RANDOM, 127), False)):
        times = []
        for r in range(repeats):
            at = 4800 + RATE // 2 + 37 * r
            plain, changed = _change_time(preset, None, morph, at), _change_time(preset, control, morph, at)
            differs = np.flatnonzero(np.abs(changed - plain) > 1e-3 * np.abs(plain).max())
            times.append((differs[0] - at) * 1000 / RATE if differs.size else np.nan)
        t = np.array(times)
        rows.append([label, f"{np.nanmin(t):.1f}", f"{np.nanmedian(t):.1f}", f"{np.nanmax(t):.1f}", "<= 20 ms"])
    table = markdown_table(["change-to-sound: the engine's response (offline, exact), ms", "min", "median", "max",
                            "goal"], rows)
    return table + ("\n\nEvents apply from the start of the block that holds them, so a change can be heard up to "
                    "one block (128 samples) before its time stamp: below 0.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=str(DEFAULT_PRESET))
    ap.add_argument("--programs", default=None,
                    help="comma-separated GM programs (default: the preset's held-out ones)")
    ap.add_argument("--keys", default=",".join(map(str, KEYS)), help="keys to compare (default 36,48,55,72,84)")
    ap.add_argument("--hold", type=float, default=1.0, help="seconds each note is held (default 1)")
    ap.add_argument("--soundfont", default=SOUNDFONT,
                    help="soundfont the held-out notes are rendered from (default FluidR3)")
    ap.add_argument("--valley-weight", default=None, metavar="RADIUS,DB,FLOOR|off",
                    help="how capture's note term weighs the valleys between partials (synth.refine.ValleyWeight); "
                         "default: as users get it (synth.refine.VALLEY_WEIGHT); off: every bin alike")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the speed table's fresh process (default this one); a venv made by the "
                         "README's Play command (pip install -e ., no scipy) times a capture as a fresh install meets it")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: fidelity,whole,self,speed,change")
    args = ap.parse_args()
    preset = load_preset(args.preset)
    programs = [int(p) for p in args.programs.split(",")] if args.programs else holdout_programs(preset)
    keys = tuple(int(k) for k in args.keys.split(","))
    if not all(36 <= k <= 84 and k != CAPTURE_KEY for k in keys):
        raise BenchmarkError(f"--keys {args.keys}: keys must be 36..84 and not the captured {CAPTURE_KEY}")
    skip = set(filter(None, args.skip.split(",")))
    valley = VALLEY_WEIGHT if args.valley_weight is None else None
    if args.valley_weight not in (None, "off"):
        try:
            radius, depth, floor = args.valley_weight.split(",")
            valley = ValleyWeight(int(radius), float(depth), float(floor))
        except ValueError:
            raise BenchmarkError(f"--valley-weight {args.valley_weight!r}: expected RADIUS,DB,FLOOR such as 5,40,0.1") from None
    if "fidelity" not in skip:
        print(fidelity_table(preset, programs, keys, args.hold, args.soundfont, valley), "\n", flush=True)
    if "whole" not in skip:
        print(whole_note_table(preset, programs, args.hold, args.soundfont, valley), "\n", flush=True)
    if "self" not in skip:
        print(self_capture_table(preset, valley), "\n", flush=True)
    if "speed" not in skip:
        print(speed_table(preset, programs[0], python=args.python), "\n", flush=True)
    if "change" not in skip:
        print(change_table(preset), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
