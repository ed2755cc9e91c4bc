"""``run_synth.py --ui``: the control surface's options, and its server thread in live mode.

The web server and the OSC listener share one asyncio loop on a daemon thread of their own;
they reach the engine only through ``LiveSynth.push_control`` (see ``synth.ui.surface``).
Importing this module imports no server library: the CLI builds its parser without them.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

from synth.errors import VaesynthError

DEFAULT_OSC_PORT = 9000  # TouchOSC's default outgoing port
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0


class SurfaceError(VaesynthError, RuntimeError):
    """The control surface cannot start (port taken, server libraries missing)."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} outside 0..65535")
    return port


def add_arguments(group: Any) -> None:
    """``--ui``, ``--ui-port``, ``--osc-port`` on the live-mode option group."""
    group.add_argument("--ui", action="store_true",
                       help="start the control surface: a local web page (its address is printed) and OSC")
    group.add_argument("--ui-port", type=_port, default=0, metavar="PORT",
                       help="web page port on 127.0.0.1 (default: a free port)")
    group.add_argument("--osc-port", type=_port, default=DEFAULT_OSC_PORT, metavar="PORT",
                       help=f"OSC UDP port on 127.0.0.1 with --ui (default {DEFAULT_OSC_PORT}; 0: a free port)")


class SurfaceThread:
    """The web server and OSC on their own event loop thread; ``url`` and ``osc_port`` once started."""

    def __init__(self, synth: Any, preset: Any, mapping_path: Path, ui_port: int, osc_port: int,
                 library_dir: Path | None = None) -> None:
        try:
            from synth.osc import start_osc
            from synth.ui.server import HOST, WebSurface
            from synth.ui.surface import ControlSurface
        except ImportError as exc:
            raise SurfaceError(f"--ui needs the control surface's libraries ({exc.name}): "
                               "pip install 'vaesynth[ui]'") from None
        self._start_osc, self.host = start_osc, HOST
        self.surface = ControlSurface(synth, preset, mapping_path, library_dir)
        self.web = WebSurface(self.surface)
        self._ports = (ui_port, osc_port)
        self.osc_port = 0
        self._loop = asyncio.new_event_loop()
        self._osc: asyncio.DatagramTransport | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vaesynth-ui", daemon=True)

    @property
    def url(self) -> str:
        return self.web.url

    def start(self) -> None:
        """Bind both ports and serve; raises :class:`SurfaceError` when a port is taken."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise SurfaceError("the control surface did not start")
        if self._failure is not None:
            raise SurfaceError(f"cannot start the control surface: {self._failure}")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception as exc:  # noqa: BLE001 - a port in use, no loopback: reported by start() in one line
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        ui_port, osc_port = self._ports
        await self.web.start(ui_port)
        try:
            self._osc, self.osc_port = await self._start_osc(self.surface, self.host, osc_port)
        except OSError as exc:
            await self.web.stop()
            raise OSError(f"OSC port {osc_port}: {exc.strerror or exc}") from None

    async def _shutdown(self) -> None:
        if self._osc is not None:
            self._osc.close()
        await self.web.stop()

    def stop(self) -> None:
        """Close the server and OSC; the loop thread ends (a daemon: it never holds up exit)."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(STOP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - shutting down: a page mid-request must not block exit
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()


def start_surface(args: argparse.Namespace, synth: Any, preset: Any, mapping_path: Path) -> SurfaceThread | None:
    """With ``--ui``: start the surface and print its one line (stdout, even with --quiet: it is
    what --ui asked for). None without ``--ui``."""
    if not getattr(args, "ui", False):
        return None
    surface = SurfaceThread(synth, preset, mapping_path, args.ui_port, args.osc_port, getattr(args, "library", None))
    surface.start()
    print(f"control surface: {surface.url}", flush=True)
    if not getattr(args, "quiet", False):
        print(f"vaesynth: OSC on udp://{surface.host}:{surface.osc_port} (addresses under /vaesynth)",
              file=sys.stderr, flush=True)
    return surface
