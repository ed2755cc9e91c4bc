"""``--config FILE.toml``: every long option as a key, the command line wins, bad keys in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from run_synth import build_parser
from synth.config import ConfigError, parse_args_with_config


def _args(tmp_path: Path, text: str, *argv: str):  # noqa: ANN202 - argparse.Namespace
    cfg = tmp_path / "vaesynth.toml"
    cfg.write_text(text)
    return parse_args_with_config(build_parser(), ["--config", str(cfg), *argv])


def test_file_sets_options_and_command_line_wins(tmp_path: Path) -> None:
    text = ('polyphony = 16\nmidi-in = "Keystation"\nbend-range = 12\nquiet = true\n'
            'latent = ["0=1.5", "3=-1"]\noutput = "BlackHole"\ndecoder-device = "cpu"\n')
    args = _args(tmp_path, text)
    assert (args.polyphony, args.midi_in, args.bend_range, args.quiet) == (16, "Keystation", 12.0, True)
    assert args.latent == ["0=1.5", "3=-1"] and args.output == "BlackHole" and args.decoder_device == "cpu"
    args = _args(tmp_path, text, "--polyphony", "8", "-o", "CABLE", "--latent", "1=2")
    assert (args.polyphony, args.output, args.latent) == (8, "CABLE", ["1=2"])
    assert args.midi_in == "Keystation"  # untouched by the command line: the file's value


def test_every_long_option_is_a_key() -> None:
    """Generic: the keys come from the parser itself, so options added later are covered."""
    from synth.config import _long_options

    keys = _long_options(build_parser())
    for key in ("preset", "polyphony", "midi-in", "output", "render-block", "state", "learn", "blocksize"):
        assert key in keys


@pytest.mark.parametrize("text, words", [
    ('polyphony = "many"', "polyphony must be an integer"),
    ("quiet = 1", "quiet must be true or false"),
    ('decoder-device = "tpu"', "choose from auto, cpu, gpu"),
    ("bend-range = [1, 2]", "takes one value"),
    ("polyphony = 16\npolyphony = 8", "not valid TOML"),
])
def test_wrong_values_are_one_line_errors(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        _args(tmp_path, text)


def test_unknown_key_is_one_warning_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(tmp_path, 'polyphonie = 16\npolyphony = 12\n')
    err = capsys.readouterr().err.strip().splitlines()
    assert args.polyphony == 12
    assert len(err) == 1 and "unknown option 'polyphonie'" in err[0]


def test_deprecated_spellings_work_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args_with_config(build_parser(), ["--device", "cpu", "--block", "512"])
    assert args.decoder_device == "cpu" and args.render_block == 512
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "use --decoder-device" in err[0] and "use --render-block" in err[1]
    args = _args(tmp_path, "block = 256\n")
    assert args.render_block == 256 and "'block' is deprecated" in capsys.readouterr().err


def test_refine_of_the_last_release_is_accepted_with_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every capture refines now: ``--refine`` (and a config's ``refine = true``) still parse, and say so."""
    parse_args_with_config(build_parser(), ["--refine"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refine is deprecated" in err[0] and "every capture refines now" in err[0]
    _args(tmp_path, "refine = true\n")
    assert "'refine' is deprecated" in capsys.readouterr().err


def test_cli_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("polyphony = [")
    done = subprocess.run([sys.executable, "run_synth.py", "--config", str(cfg), "--list-devices"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config ") and "not valid TOML" in lines[0], done.stderr


def test_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    args = _args(tmp_path, 'preset = "presets/mine"\nstate = "/abs/state.toml"\n')
    assert args.preset == tmp_path / "presets" / "mine" and args.state == Path("/abs/state.toml")
