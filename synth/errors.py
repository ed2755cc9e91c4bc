"""The one base class of user-facing failures, and the one place that reports them.

Anything a musician can cause (a bad preset, a missing device, a malformed MIDI file,
a refused option) raises a subclass of :class:`VaesynthError`. The command line turns
it into a single ``error: ...`` line on stderr and exit status 2 in :func:`report`;
nothing else prints tracebacks for these conditions.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class VaesynthError(Exception):
    """A failure the user can fix from the message alone (printed as one line, no traceback)."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (first line, at most 300 characters)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]


def report(exc: BaseException, prefix: str = "") -> int:
    """Print ``[prefix]error: MESSAGE`` to stderr and return the exit status for it."""
    print(f"{prefix}error: {one_line(exc)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def run_command(body: Callable[[], int]) -> int:
    """Run a command line's body: a VaesynthError becomes one ``error: ...`` line and status 2,
    Ctrl-C ``error: interrupted`` and status 130. Every entry point goes through here."""
    try:
        return body()
    except VaesynthError as exc:
        return report(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
