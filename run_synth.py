"""vaesynth command line: render a MIDI file offline (``--render``) or play live.

    python run_synth.py --render IN.mid --out OUT.wav [--preset DIR] [--samplerate 48000]
                        [--latent DIM=VALUE ...] [--device auto|cpu|gpu] [--polyphony 32]
                        [--bend-range 2] [--channel N]
    python run_synth.py [--midi-in NAME] [--output NAME|INDEX] ...      (live mode)

``--latent DIM=VALUE`` sets latent dimension DIM to mean + VALUE * std (VALUE in standard
deviations); ``DIM=abs:VALUE`` sets the coordinate itself. Errors print one line
``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synth.ui.cli import add_arguments as add_ui_arguments

DEFAULT_PRESET = Path(__file__).resolve().parent / "presets" / "default"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run_synth.py", description="vaesynth: neural polyphonic synthesizer")
    ap.add_argument("--preset", type=Path, default=DEFAULT_PRESET, help="preset folder (default: presets/default)")
    ap.add_argument("--samplerate", type=int, default=None, help="output rate in Hz (render default 48000)")
    ap.add_argument("--latent", action="append", metavar="DIM=VALUE",
                    help="set a latent dim: VALUE in std units from the mean, or abs:VALUE (repeatable)")
    ap.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="decoder device")
    ap.add_argument("--threads", type=int, default=None, help="decoder threads (default 1, deterministic)")
    ap.add_argument("--polyphony", type=int, default=32, help="maximum sounding voices (default 32)")
    ap.add_argument("--bend-range", type=float, default=2.0, help="pitch-bend range in semitones (default 2)")
    ap.add_argument("--channel", type=int, default=None, help="MIDI channel 1..16 to listen to (default all)")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    render = ap.add_argument_group("offline rendering")
    render.add_argument("--render", metavar="IN.mid", default=None, help="render this MIDI file instead of playing live")
    render.add_argument("--out", metavar="OUT.wav", default=None, help="output WAV for --render")
    render.add_argument("--float", action="store_true", help="write 32-bit float WAV (default PCM 24-bit)")
    render.add_argument("--block", type=int, default=1024,
                        help="render block size in samples (default 1024: larger decoder batches, fewer calls)")
    live = ap.add_argument_group("live mode")
    live.add_argument("--midi-in", metavar="NAME", default=None, help="connect MIDI inputs whose name contains NAME")
    live.add_argument("--list-midi", action="store_true", help="list MIDI inputs and exit")
    live.add_argument("--output", metavar="NAME|INDEX", default=None, help="audio output device")
    live.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    live.add_argument("--blocksize", type=int, default=128, help="audio callback block size (default 128)")
    live.add_argument("--no-connect", action="store_true", help="do not connect MIDI inputs automatically")
    live.add_argument("--learn", metavar="DIM", type=int, default=None, help="MIDI-learn a CC for knob DIM")
    add_ui_arguments(live)
    return ap


def _check_common(args: argparse.Namespace) -> str | None:
    if args.polyphony < 1 or args.polyphony > 256:
        return f"--polyphony {args.polyphony}: must be 1..256"
    if args.channel is not None and not 1 <= args.channel <= 16:
        return f"--channel {args.channel}: must be 1..16"
    if args.samplerate is not None and not 8000 <= args.samplerate <= 384000:
        return f"--samplerate {args.samplerate}: must be 8000..384000"
    if args.block < 1 or args.block > 8192:
        return f"--block {args.block}: must be 1..8192"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _check_common(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.render is None:
        from synth.live import run_live  # imported lazily: rendering needs no audio stack

        return run_live(args)
    from synth.cli_render import USER_ERRORS, run_render
    from synth.errors import VaesynthError, report

    try:
        return run_render(args)
    except (VaesynthError, *USER_ERRORS) as exc:
        return report(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
