"""vaesynth command line: render a MIDI file offline (``--render``) or play live.

    python run_synth.py --render IN.mid --out OUT.wav [--preset DIR] [--samplerate 48000]
                        [--latent DIM=VALUE ...] [--decoder-device auto|cpu|gpu] [--polyphony 32]
                        [--bend-range 2] [--channel N] [--render-block 1024]
    python run_synth.py [--midi-in NAME] [-o|--output NAME|INDEX] [--state FILE] [--reset] ...  (live mode)
    python run_synth.py --config FILE.toml ...        (any long option as a key; the command line wins)

``--latent DIM=VALUE`` sets latent dimension DIM to mean + VALUE * std (VALUE in standard
deviations); ``DIM=abs:VALUE`` sets the coordinate itself. Every user error (a
``synth.errors.VaesynthError``) is turned into one line ``error: ...`` and exit status 2 here,
in :func:`main`, and nowhere else.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from synth.config import add_config_option, parse_args_with_config
from synth.errors import VaesynthError, run_command
from synth.render_ahead import DEFAULT_AHEAD as DEFAULT_RENDER_AHEAD
from synth.timbre_cli import add_timbre_options
from synth.ui.cli import add_arguments as add_ui_arguments

DEFAULT_PRESET = Path(__file__).resolve().parent / "presets" / "default"


class OptionError(VaesynthError):
    """An option value outside what the synth accepts (one line)."""


class DeprecatedOption(argparse.Action):
    """An old spelling kept for one release: it works as ``replacement`` and says so in one line."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str, **kwargs: Any) -> None:
        self.replacement = replacement
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated and goes in the next release; use {self.replacement}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Other modules add their options through one function each
    (``add_config_option``, ``synth.state.add_state_options``...), called here."""
    from synth.state import add_state_options

    ap = argparse.ArgumentParser(prog="run_synth.py", description="vaesynth: neural polyphonic synthesizer")
    add_config_option(ap)
    ap.add_argument("--preset", type=Path, default=DEFAULT_PRESET, help="preset folder (default: presets/default)")
    ap.add_argument("--samplerate", type=int, default=None, help="output rate in Hz (render default 48000)")
    ap.add_argument("--latent", action="append", metavar="DIM=VALUE",
                    help="set a latent dim: VALUE in std units from the mean, or abs:VALUE (repeatable)")
    ap.add_argument("--decoder-device", choices=("auto", "cpu", "gpu"), default="auto",
                    help="where the neural decoder runs (default auto: the GPU when onnxruntime has CUDA)")
    ap.add_argument("--device", dest="decoder_device", choices=("auto", "cpu", "gpu"), action=DeprecatedOption,
                    replacement="--decoder-device")
    ap.add_argument("--threads", type=int, default=None, help="decoder threads (default 1, deterministic)")
    ap.add_argument("--polyphony", type=int, default=32, help="maximum sounding voices (default 32)")
    ap.add_argument("--bend-range", type=float, default=2.0, help="pitch-bend range in semitones (default 2)")
    ap.add_argument("--channel", type=int, default=None, help="MIDI channel 1..16 to listen to (default all)")
    ap.add_argument("--no-level-follow", action="store_true",
                    help="let the knobs change the loudness as the decoder draws it (default: the level stays where "
                         "the last timbre change put it, within 12 dB, so the knobs move the timbre, not the volume)")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    render = ap.add_argument_group("offline rendering")
    render.add_argument("--render", metavar="IN.mid", default=None, help="render this MIDI file instead of playing live")
    render.add_argument("--out", metavar="OUT.wav", default=None, help="output WAV for --render")
    render.add_argument("--float", action="store_true", help="write 32-bit float WAV (default PCM 24-bit)")
    render.add_argument("--render-block", type=int, default=1024,
                        help="render block in samples (default 1024: larger decoder batches, fewer calls)")
    render.add_argument("--block", dest="render_block", type=int, action=DeprecatedOption, replacement="--render-block")
    live = ap.add_argument_group("live mode")
    live.add_argument("--midi-in", metavar="NAME", default=None,
                      help="connect the MIDI sources whose name contains NAME (now and whenever one appears)")
    live.add_argument("--list-midi", action="store_true", help="list MIDI sources and exit")
    live.add_argument("-o", "--output", metavar="NAME|INDEX", default=None,
                      help="audio output device (name substring or index; --list-devices lists them)")
    live.add_argument("--list-devices", action="store_true", help="list audio outputs and exit")
    live.add_argument("--blocksize", type=int, default=128, help="audio callback block in frames (default 128)")
    live.add_argument("--render-ahead", type=float, default=DEFAULT_RENDER_AHEAD, metavar="BLOCKS",
                      help=f"render on a worker thread this many blocks ahead of the audio callback, fractions "
                           f"allowed (default {DEFAULT_RENDER_AHEAD:g}: + {DEFAULT_RENDER_AHEAD:g} blocks of latency, "
                           f"5.3 ms at 48 kHz / 128; 0: in the callback; more holds more voices on a busy machine)")
    live.add_argument("--no-connect", action="store_true",
                      help="connect nothing automatically: no MIDI sources (unless --midi-in), no audio outputs")
    live.add_argument("--learn", metavar="KNOB", type=int, default=None,
                      help="MIDI learn: the next controller (CC) you move drives knob KNOB (0..7); saved")
    add_state_options(live)
    add_ui_arguments(live)
    add_timbre_options(ap)
    return ap


def check_options(args: argparse.Namespace) -> None:
    """Range checks argparse cannot express; raises OptionError."""
    if args.polyphony < 1 or args.polyphony > 256:
        raise OptionError(f"--polyphony {args.polyphony}: must be 1..256")
    if args.channel is not None and not 1 <= args.channel <= 16:
        raise OptionError(f"--channel {args.channel}: must be 1..16")
    if args.samplerate is not None and not 8000 <= args.samplerate <= 384000:
        raise OptionError(f"--samplerate {args.samplerate}: must be 8000..384000")
    if args.render_block < 1 or args.render_block > 8192:
        raise OptionError(f"--render-block {args.render_block}: must be 1..8192")


def run(argv: list[str] | None) -> int:
    args = parse_args_with_config(build_parser(), argv)
    check_options(args)
    if args.capture is not None:
        from synth.timbre_cli import run_capture

        return run_capture(args)
    if args.render is not None:
        from synth.cli_render import run_render

        return run_render(args)
    from synth.live import run_live  # imported lazily: rendering needs no audio stack

    return run_live(args)


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: run(argv))  # user errors: one line, status 2 (synth.errors)


def exit_now(status: int) -> None:
    """Leave without the interpreter's teardown. By then the session is saved and the stream
    stopped. What is left to the process's end: under JACK our audio stream and rtmidi ports,
    which may not be closed safely (``synth.jack_setup.may_unregister_ports``); and native
    libraries' threads and pools (PortAudio, JACK, onnxruntime, numba), which the teardown would
    free in no set order."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (| head) or a closed stream: nothing to keep
            pass
    os._exit(status)


def main_then_exit() -> None:
    """``main``, then :func:`exit_now`; an unexpected exception (a bug) still prints its traceback
    and leaves with status 1 the same way, so that no destructor closes a JACK port."""
    try:
        status = main()
    except SystemExit:  # argparse (--help, a usage error): nothing native is open yet
        raise
    except BaseException:  # noqa: BLE001 - reported in full, then the same exit as a clean stop
        traceback.print_exc()
        status = 1
    exit_now(status)


if __name__ == "__main__":
    main_then_exit()
