"""Offline rendering for ``run_synth.py --render``: a MIDI file through ``Engine.process`` to a WAV.

The same block-wise ``Engine.process`` as live mode, with events queued at their exact sample
times; after the file's last event every note still held is released, and rendering goes
on until every voice is silent (capped at the preset's release time plus two seconds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from synth.engine import Engine
from synth.errors import VaesynthError
from synth.events import CC_ALL_NOTES_OFF, CC_SUSTAIN, CONTROL_CHANGE, MidiEvent
from synth.level_follow import FOLLOW_PERIOD_S, LevelFollower
from synth.midifile import events_end, read_midi_events
from synth.timbre import CC_RANDOM

DEFAULT_SAMPLE_RATE = 48000
WRITE_CHUNK = 48000
END_SILENCE = 512


class RenderError(VaesynthError):
    """A user-facing render failure (one line)."""


def parse_latent(items: list[str] | None) -> list[tuple[int, float, bool]]:
    """``["3=1.5", "0=abs:-0.2"]`` -> ``[(3, 1.5, False), (0, -0.2, True)]``.

    ``DIM=VALUE`` is in standard deviations from the preset's mean (z = mean + VALUE*std);
    ``DIM=abs:VALUE`` sets the latent coordinate itself.
    """
    out = []
    for item in items or []:
        dim_s, sep, val_s = item.partition("=")
        absolute = val_s.startswith("abs:")
        try:
            if not sep:
                raise ValueError
            dim = int(dim_s)
            value = float(val_s[4:] if absolute else val_s)
        except ValueError:
            raise RenderError(f"--latent {item!r}: expected DIM=VALUE (std units) or DIM=abs:VALUE") from None
        if not np.isfinite(value):
            raise RenderError(f"--latent {item!r}: value must be finite")
        out.append((dim, value, absolute))
    return out


def _closing_events(end: int) -> list[MidiEvent]:
    """Pedal up and all-notes-off on every channel, just after the file's last event."""
    return [MidiEvent(end, CONTROL_CHANGE | ch, cc, 0) for ch in range(16) for cc in (CC_SUSTAIN, CC_ALL_NOTES_OFF)]


def _open_output(path: Path, rate: int, subtype: str):  # noqa: ANN202 - soundfile.SoundFile
    import soundfile as sf

    if path.is_dir():
        raise RenderError(f"{path}: is a folder, not a file")
    try:
        return sf.SoundFile(str(path), "w", samplerate=rate, channels=2, subtype=subtype, format="WAV")
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise RenderError(f"{path}: cannot write ({str(exc).strip().splitlines()[0][:120]})") from None


PROGRESS_AFTER_S = 5.0  # renders of more audio than this show a progress bar (on a terminal)


def render(engine: Engine, events: list[MidiEvent], writer, block: int = 128, progress: bool = False,  # noqa: ANN001
           follower: LevelFollower | None = None) -> int:
    """Render ``events`` through ``engine`` (prepared) into ``writer.write``; returns samples written.
    ``follower`` (synth.level_follow) looks at the latent every FOLLOW_PERIOD_S of audio, as it does live."""
    from tqdm import tqdm

    rate = engine.sample_rate
    follow_every, next_follow = max(1, int(FOLLOW_PERIOD_S * rate)), 0
    end = events_end(events) + 1
    events = sorted(events + _closing_events(end), key=lambda e: e.sample_time)
    cap = end + int((engine.preset.release_seconds + 2.0) * rate)
    buf = np.zeros((WRITE_CHUNK, 2), np.float32)
    filled = written = 0
    i = 0
    bar = tqdm(total=end, unit="smp", unit_scale=True, disable=not progress, file=sys.stderr, leave=False)
    t = 0
    quiet = 0  # samples rendered since the engine went idle: end the file on a little true silence
    while t < cap and (t < end or i < len(events) or quiet < END_SILENCE):
        while i < len(events) and events[i].sample_time < t + block:
            e = events[i]
            if not engine.push(e.sample_time, e.status, e.data1, e.data2):
                raise RenderError("event queue overflow")
            i += 1
        n = min(block, WRITE_CHUNK - filled)
        engine.process(buf[filled:filled + n])
        filled += n
        t += n
        if follower is not None and t >= next_follow:
            follower.update()
            next_follow = t + follow_every
        quiet = quiet + n if engine.idle and t >= end else 0
        if filled == WRITE_CHUNK:
            writer.write(buf)
            written += filled
            filled = 0
        bar.update(min(n, max(0, end - bar.n)))
    if filled:
        writer.write(buf[:filled])
        written += filled
    bar.close()
    return written


def run_render(args: argparse.Namespace) -> int:
    """The ``--render`` command; returns the exit status (user errors raise VaesynthError subclasses)."""
    from synth.preset import load_preset
    from synth.timbre_cli import apply_timbre_options

    rate = args.samplerate or DEFAULT_SAMPLE_RATE
    if args.out is None:
        raise RenderError("--render needs --out OUT.wav")
    latent = parse_latent(args.latent)
    preset = load_preset(args.preset)
    events = read_midi_events(args.render, rate)
    engine = Engine(preset, polyphony=args.polyphony, bend_range=args.bend_range, channel=args.channel,
                    device=args.decoder_device, threads=args.threads, knob_pickup=False)
    apply_timbre_options(args, engine, random_button=any(
        e.status & 0xF0 == CONTROL_CHANGE and e.data1 == CC_RANDOM for e in events))
    for dim, value, absolute in latent:
        try:
            engine.set_latent(dim, value, absolute)
        except ValueError as exc:
            raise RenderError(f"--latent: {exc}") from None
    engine.prepare(rate, args.render_block, warm=False)  # no real-time deadline: kernels may compile on first use
    seconds = events_end(events) / rate
    progress = sys.stderr.isatty() and seconds > PROGRESS_AFTER_S and not args.quiet
    out_path = Path(args.out)
    with _open_output(out_path, rate, "FLOAT" if args.float else "PCM_24") as writer:
        follower = None if getattr(args, "no_level_follow", False) else LevelFollower(engine)
        n = render(engine, events, writer, args.render_block, progress, follower)
    if not args.quiet:
        print(f"wrote {out_path} ({n / rate:.2f} s at {rate} Hz, decoder on {engine.providers[0]})", file=sys.stderr)
    if engine.stats.nan_voices:
        print(f"warning: {engine.stats.nan_voices} voice(s) muted for NaN/Inf decoder output", file=sys.stderr)
    return 0

