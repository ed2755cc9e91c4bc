"""``--config FILE.toml``: any long command-line option as a key; the command line wins.

The keys are the parser's own long options without the dashes (``polyphony = 16``,
``midi-in = "Keystation"``, ``latent = ["0=1.5", "3=-1"]``, ``quiet = true``), read generically
from the ``argparse`` parser, so an option added anywhere is accepted in the file too. A value
becomes the option's default before the command line is parsed, which is how the command line
wins; for repeatable options the file's list is used only when the command line gives none.

Wrong types and refused choices are one-line errors (``ConfigError``); an unknown key is one
warning line and is ignored (a newer file may name options an older vaesynth lacks). Relative
folder and file options typed as paths (``preset``, ``state``) are relative to the file's folder.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synth.errors import VaesynthError

CONFIG_OPTION = "--config"
# Options that make no sense inside a config file (they name or bypass it).
NOT_IN_FILE = frozenset({"config", "help"})


class ConfigError(VaesynthError):
    """A config file that cannot be used as it is (one line)."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(CONFIG_OPTION, metavar="FILE.toml", type=Path, default=None,
                        help="read options from a TOML file (keys are long options: polyphony = 16, "
                             'midi-in = "Keystation"); the command line wins')


def _long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``"midi-in" -> action`` for every long option of ``parser`` (deprecated spellings included)."""
    table: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public accessor for its options
        for opt in action.option_strings:
            if opt.startswith("--"):
                table[opt[2:]] = action
    return table


def _config_path(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Path | None:
    """The ``--config`` value from ``argv`` alone (the rest is parsed later, with the file applied)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(CONFIG_OPTION, type=Path, default=None)
    known, _ = pre.parse_known_args(list(argv))
    return known.config


def read_config(path: Path) -> dict[str, Any]:
    """The TOML table in ``path``; one-line ConfigError when it cannot be read."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML ({exc})") from None
    return doc


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _convert(path: Path, key: str, action: argparse.Action, value: object) -> object:
    """The namespace value ``value`` stands for, checked like the command line would check it."""
    where = f"config {path}: {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {_type_name(value)}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_convert_one(where, action, item, path.parent) for item in items]
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where} takes one value, not {_type_name(value)}")
    return _convert_one(where, action, value, path.parent)


def _convert_one(where: str, action: argparse.Action, value: object, base: Path) -> object:
    kind = action.type
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise ConfigError(f"{where} cannot be {_type_name(value)}")
    if kind is int:
        if not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {_type_name(value)} ({value!r})")
        out: object = value
    elif kind is float:
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {_type_name(value)} ({value!r})")
        out = float(value)
    else:  # strings, paths and free-form values are written as strings
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where} must be a string, not {_type_name(value)}")
        text = str(value)
        try:
            out = kind(text) if callable(kind) else text
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if isinstance(out, Path) and not out.is_absolute():
        out = base / out
    if action.choices is not None and out not in action.choices:
        raise ConfigError(f"{where} = {value!r}: choose from {', '.join(map(str, action.choices))}")
    return out


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config FILE``'s values as the defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(parser, argv)
    if path is None:
        return parser.parse_args(argv)
    options = _long_options(parser)
    defaults: dict[str, object] = {}
    lists: dict[str, list[object]] = {}  # repeatable options: used when the command line has none
    for key, value in read_config(path).items():
        action = options.get(key)
        if action is None or key in NOT_IN_FILE or action.dest == argparse.SUPPRESS:
            print(f"warning: config {path}: unknown option {key!r} (ignored)", file=sys.stderr)
            continue
        converted = _convert(path, key, action, value)
        deprecated = getattr(action, "replacement", None)
        if deprecated:
            print(f"warning: config {path}: {key!r} is deprecated, use {deprecated.lstrip('-')!r}", file=sys.stderr)
        if isinstance(action, argparse._AppendAction):
            lists[action.dest] = list(converted)  # type: ignore[arg-type]
        else:
            defaults[action.dest] = converted
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for dest, items in lists.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, items)
    return args
