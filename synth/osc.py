"""OSC control (python-osc's parser) over UDP: the control surface for TouchOSC, Max, Pd, SuperCollider.

Address space (knobs and snapshots are numbered from 1, as on the page):

==============================  ==========  ==================================================
address                         arguments   effect
==============================  ==========  ==================================================
``/vaesynth/knob/N``            f           knob N (1..8) to coordinate -1..1 (its CC)
``/vaesynth/program``           i           program change 0..127 (recalls a snapshot)
``/vaesynth/snapshot``          s or i      recall a preset snapshot by name or number (1..)
``/vaesynth/user``              s or i      recall a user snapshot (captured timbre) by name or
                                            user program 0..127
``/vaesynth/random``            (none)      the random-timbre button
``/vaesynth/morph``             f           morph position 0 (endpoint A) .. 1 (B)
``/vaesynth/morph/endpoints``   s s         morph between two snapshots, by name (user
                                            snapshots first, then the preset's)
``/vaesynth/note``              i i         note key 0..127, velocity 0..127 (0: note-off)
``/vaesynth/state``             [i]         reply ``/vaesynth/state`` to the sender (or to
                                            its host at port i): voices i, load f, xruns i,
                                            ignored messages i, then one f per knob
==============================  ==========  ==================================================

Every control goes through :class:`synth.ui.surface.ControlSurface`, i.e. the same MIDI producer
path as a hardware controller. A packet that does not parse, whose size is not a multiple of 4
(OSC 1.0) or whose numeric arguments are cut short, an unknown address, or arguments
of the wrong type, count or range are ignored and counted (``ControlSurface.ignored``); nothing
a sender does raises. Bundles are applied at once, whatever their time tag.
"""
from __future__ import annotations

import asyncio
import math
from typing import Any, Callable

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from synth.ui.surface import ControlError, ControlSurface

PREFIX = "/vaesynth"
MAX_DATAGRAM_BYTES = 8192  # a control message is tens of bytes; larger datagrams are not parsed


FIXED_ARGUMENT_BYTES = {"i": 4, "f": 4, "c": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8}
"""OSC 1.0 type tags with a fixed-size argument (the variable ones, s and b, python-osc checks itself)."""


def _padded_end(dgram: bytes, start: int) -> int:
    """End of the NUL-terminated, 4-aligned OSC string starting at ``start`` (-1: none)."""
    nul = dgram.find(b"\0", start)
    return -1 if nul < 0 else (nul // 4 + 1) * 4


def _arguments_complete(dgram: bytes) -> bool:
    """Whether a message's fixed-size arguments are all there: python-osc pads a short float (for
    Reaktor), so a float tag with no bytes would read as 0.0 and move a knob."""
    tags_at = _padded_end(dgram, 0)
    tags_end = _padded_end(dgram, tags_at) if 0 <= tags_at < len(dgram) else -1
    if tags_end < 0 or dgram[tags_at:tags_at + 1] != b",":
        return True  # no type tags: nothing fixed-size to check (python-osc reads no arguments)
    tags = dgram[tags_at + 1:dgram.find(b"\0", tags_at)].decode("ascii", "replace")
    needed = sum(FIXED_ARGUMENT_BYTES.get(t, 0) for t in tags)
    return len(dgram) - tags_end >= needed


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ControlError(f"{value!r} is not a finite number")
    return float(value)


def _integer(value: Any) -> int:
    """An int, or a float with an integral value (Max and TouchOSC often send floats)."""
    number = _number(value)
    if number != int(number):
        raise ControlError(f"{value!r} is not a whole number")
    return int(number)


class OscControl(asyncio.DatagramProtocol):
    """Receives OSC datagrams and applies them to ``surface`` (on the server's event loop)."""

    def __init__(self, surface: ControlSurface) -> None:
        self.surface = surface
        self.handled = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._routes: dict[str, Callable[[list[Any], tuple[str, int]], None]] = {
            f"{PREFIX}/program": self._program,
            f"{PREFIX}/snapshot": self._snapshot,
            f"{PREFIX}/user": self._user,
            f"{PREFIX}/random": self._random,
            f"{PREFIX}/morph": self._morph,
            f"{PREFIX}/morph/endpoints": self._morph_endpoints,
            f"{PREFIX}/note": self._note,
            f"{PREFIX}/state": self._state,
        }
        for knob in range(surface.knob_count):
            self._routes[f"{PREFIX}/knob/{knob + 1}"] = self._knob_route(knob)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # OSC 1.0: a packet's size is a multiple of 4. python-osc pads a short float argument
        # (for Reaktor); a truncated packet must not set a knob to 0.
        if len(data) > MAX_DATAGRAM_BYTES or len(data) % 4:
            self.surface.refuse()
            return
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except Exception:  # noqa: BLE001 - hostile bytes can raise more than ParseError inside python-osc
            self.surface.refuse()
            return
        for message in messages:
            route = self._routes.get(message.address)
            try:
                if not _arguments_complete(message.dgram):
                    raise ControlError("an argument is cut short")
                if route is None:
                    raise ControlError(f"unknown OSC address {message.address!r}")
                route(list(message.params), addr)
                self.handled += 1
            except ControlError:
                self.surface.refuse()

    @staticmethod
    def _arity(params: list[Any], *allowed: int) -> None:
        if len(params) not in allowed:
            raise ControlError(f"{len(params)} arguments, expected {' or '.join(map(str, allowed))}")

    def _knob_route(self, knob: int) -> Callable[[list[Any], tuple[str, int]], None]:
        def route(params: list[Any], addr: tuple[str, int]) -> None:
            self._arity(params, 1)
            self.surface.knob(knob, _number(params[0]))
        return route

    def _program(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 1)
        self.surface.program(_integer(params[0]))

    def _snapshot(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 1)
        which = params[0]
        self.surface.snapshot(which if isinstance(which, str) else _integer(which) - 1)

    def _user(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 1)
        which = params[0]
        self.surface.user(which if isinstance(which, str) else _integer(which))

    def _random(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 0)
        self.surface.random()

    def _morph(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 1)
        self.surface.morph(_number(params[0]))

    def _morph_endpoints(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 2)
        if not all(isinstance(p, str) for p in params):
            raise ControlError("morph endpoints are two snapshot names")
        self.surface.morph_endpoints(params[0], params[1])

    def _note(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 2)
        self.surface.note(_integer(params[0]), _integer(params[1]))

    def _state(self, params: list[Any], addr: tuple[str, int]) -> None:
        self._arity(params, 0, 1)
        target = addr
        if params:
            port = _integer(params[0])
            if not 1 <= port <= 65535:
                raise ControlError(f"reply port {port} outside 1..65535")
            target = (addr[0], port)
        state = self.surface.state()
        reply = OscMessageBuilder(f"{PREFIX}/state")
        reply.add_arg(state["voices"], "i")
        reply.add_arg(float(state["load"]), "f")
        reply.add_arg(state["xruns"], "i")
        reply.add_arg(state["ignored"], "i")
        for value in state["knobs"]:
            reply.add_arg(float(value), "f")
        if self.transport is not None:
            self.transport.sendto(reply.build().dgram, target)


async def start_osc(surface: ControlSurface, host: str, port: int) -> tuple[asyncio.DatagramTransport, int]:
    """Listen for OSC on ``host:port`` (0: a free port) on the running loop; (transport, port bound)."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: OscControl(surface), local_addr=(host, port))
    return transport, int(transport.get_extra_info("sockname")[1])
