"""The control surface's web server (aiohttp): the page, its state push, and the guard around both.

Routes (every one needs ``?token=TOKEN``):

- ``GET /`` the page; ``GET /static/app.js``, ``/static/style.css`` its two files;
- ``GET /api/info`` preset name, knob names, snapshots and the map (JSON, once per page load);
- ``GET /api/state`` the live state (JSON; the same object the WebSocket pushes);
- ``GET /ws`` WebSocket: the server pushes the state ``PUSH_HZ`` times a second, and as soon as
  the engine has applied a control that moves a knob (see *Push* below); the page
  sends controls as JSON (``{"type": "knob", "knob": 0, "value": 0.5}``, ``"program"``,
  ``"snapshot"``, ``"user"``, ``"random"``, ``"morph"``, ``"morph_endpoints"``, ``"note"``,
  ``"learn"``; see :meth:`WebSurface.apply`);
- ``POST /api/capture?name=NAME&filename=FILE`` a recording (the body, at most
  ``MAX_UPLOAD_BYTES``) captured as user snapshot NAME; JSON ``{name, program, summary}`` or
  ``{error}`` (400; 413 when too large).

Security: the server binds 127.0.0.1. A request passes only with the right token, a ``Host`` of
``127.0.0.1:PORT`` or ``localhost:PORT`` (a DNS-rebinding page has its own host name there), an
``Origin`` of the same origin when one is sent (WebSocket handshakes must send one), and no
``Sec-Fetch-Site: cross-site``; anything else is a 403. Messages are size-limited
(``MAX_BODY_BYTES``; a recording ``MAX_UPLOAD_BYTES``, streamed to a private temp file and read by
soundfile through ``synth.capture``'s checks) and parsed as JSON into plain values. A slow or vanished page only slows its
own push loop (each send has ``SEND_TIMEOUT_S``); the audio thread never waits on this one.

Push: while a page is open, ``LiveSynth.control_listener`` tells this loop (thread-safe, never
blocking, at most one wake-up pending) that a CC or program change was queued and on which output
sample it lands. The knob watcher waits until the audio callback has rendered that sample (the
engine applies controls there), reads the knobs and, when they moved, wakes every page's push. A
push goes out at once unless the page's last one left less than ``MIN_PUSH_GAP_S`` ago, then at
that gap: a CC flood is coalesced into at most ``1 / MIN_PUSH_GAP_S`` messages a second per page.
Nothing polls while no control arrives but the ``PUSH_HZ`` meters tick.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from synth.ui.surface import ControlError, ControlSurface

HOST = "127.0.0.1"
PUSH_HZ = 10.0  # the meters' push rate (voices, load, xruns); a moved knob is pushed at once (docstring: Push)
STATE_FRESH_S = 0.015  # the state JSON is rebuilt at most this often, however many pages and requests ask
MIN_PUSH_GAP_S = 0.008  # pushes to one page at most every 8 ms (125 a second, one per frame of a 120 Hz display)
APPLY_WAIT_S = 0.05  # a control the audio callback has not rendered by then (a stalled stream) is read anyway
APPLY_POLL_S = 0.001  # re-check the rendered frames this often once the expected block should be done
SHUTDOWN_S = 1.0
SEND_TIMEOUT_S = 1.0  # a page that takes longer to accept one state message is dropped
MAX_BODY_BYTES = 64 * 1024  # request bodies and WebSocket messages: controls are tiny
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # a recording to capture: minutes of 16-bit stereo WAV
UPLOAD_CHUNK = 256 * 1024
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
TOKEN_PLACEHOLDER = "{{TOKEN}}"


def _static_text(name: str) -> str:
    return resources.files("synth.ui").joinpath("static", name).read_text(encoding="utf-8")


class WebSurface:
    """The aiohttp application around one :class:`ControlSurface`; ``port`` is known after start."""

    def __init__(self, surface: ControlSurface, token: str | None = None) -> None:
        self.surface = surface
        self.token = token or secrets.token_hex(16)
        self.port = 0
        self.refused = 0  # requests answered 403
        self._page = _static_text("index.html")
        self._static = {name: _static_text(name) for name in STATIC_FILES}
        self._state_text = ""
        self._state_at = -1.0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets = 0
        self._watcher: asyncio.Task[None] | None = None
        self._queued = asyncio.Event()  # a control was queued (set from the loop, see control_queued)
        self._due = -1  # the output sample the last queued control lands on (written by producers)
        self._wake_pending = False
        self._moved = asyncio.Event()  # replaced each time it fires (no loop is bound until first awaited)
        self._moves = 0  # how often the knobs moved: a push that was sending meanwhile does not wait

    # ------------------------------------------------------------------ guard
    def allowed(self, request: web.Request) -> bool:
        """Token, Host, Origin and fetch-site checks (see the module docstring)."""
        if not secrets.compare_digest(request.query.get("token", ""), self.token):
            return False
        hosts = (f"{HOST}:{self.port}", f"localhost:{self.port}")
        if request.headers.get("Host", "") not in hosts:
            return False
        origin = request.headers.get("Origin")
        is_socket = request.headers.get("Upgrade", "").lower() == "websocket"
        if origin is None:
            if is_socket or request.method not in ("GET", "HEAD"):
                return False
        elif origin not in tuple(f"http://{h}" for h in hosts):
            return False
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.allowed(request):
            self.refused += 1
            return web.Response(status=403, text="forbidden: open the address run_synth.py --ui printed\n")
        response = await handler(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        sockets = " ".join(f"ws://{h}:{self.port}" for h in (HOST, "localhost"))
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; connect-src 'self' {sockets}; img-src 'self' data:; frame-ancestors 'none'")
        return response

    # ------------------------------------------------------------------ routes
    def app(self) -> web.Application:
        application = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        application.router.add_get("/", self._index)
        application.router.add_get("/static/{name}", self._static_file)
        application.router.add_get("/api/info", self._info)
        application.router.add_get("/api/state", self._state)
        application.router.add_get("/ws", self._socket)
        application.router.add_post("/api/capture", self._capture)
        return application

    async def _capture(self, request: web.Request) -> web.Response:
        """Stream the body to a private temp file (bounded), capture it off the loop, answer in JSON."""
        from synth.errors import VaesynthError, one_line

        name = request.query.get("name", "").strip()
        filename = Path(request.query.get("filename", "")).name[:200].strip(". ") or "recording.wav"
        if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
            return web.json_response({"error": f"the recording is over {MAX_UPLOAD_BYTES >> 20} MB"}, status=413)
        folder = Path(tempfile.mkdtemp(prefix="vaesynth-capture-"))  # private (0700), removed below
        path = folder / filename
        try:
            size = 0
            with open(path, "wb") as f:
                while chunk := await request.content.read(UPLOAD_CHUNK):
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        return web.json_response(
                            {"error": f"the recording is over {MAX_UPLOAD_BYTES >> 20} MB"}, status=413)
                    f.write(chunk)
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(None, self.surface.capture, path, name, filename)
            except VaesynthError as exc:  # the message names the upload, not our temp folder
                return web.json_response({"error": one_line(exc).replace(str(path), filename)}, status=400)
            return web.json_response(result)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=self._page.replace(TOKEN_PLACEHOLDER, self.token), content_type="text/html")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(text=self._static[name], content_type=STATIC_FILES[name])

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(self.surface.info())

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(text=self.state_text(), content_type="application/json")

    def state_text(self) -> str:
        """The state as JSON, rebuilt at most every ``STATE_FRESH_S`` (and after each knob move)."""
        now = time.monotonic()
        if now - self._state_at >= STATE_FRESH_S:
            self.surface.poll_learn()
            self._state_text = json.dumps(self.surface.state(), separators=(",", ":"))
            self._state_at = now
        return self._state_text

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_BODY_BYTES)
        await ws.prepare(request)
        self._sockets += 1
        self._loop = asyncio.get_running_loop()
        self.surface.synth.control_listener = self.control_queued
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_knobs())
        pusher = asyncio.create_task(self._push(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.apply(msg.data)
                else:
                    self.surface.refuse()
        finally:
            pusher.cancel()
            self._sockets -= 1
            if self._sockets == 0:
                self.surface.synth.control_listener = None
                self._queued.set()  # the watcher sees no page left and ends
        return ws

    def control_queued(self, sample: int) -> None:
        """``LiveSynth.control_listener``, on the producer's thread (MIDI input, OSC, this loop): a
        control landing on output sample ``sample`` was queued. Never blocks: while a wake-up is
        pending it only notes the sample; else one non-blocking write to the loop's wake-up socket."""
        self._due = sample
        if self._wake_pending or self._loop is None:
            return
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake_watcher)
        except RuntimeError:  # the loop closed (shutting down): nobody to draw for
            pass

    def _wake_watcher(self) -> None:
        self._wake_pending = False  # before the watcher reads _due: a later control wakes it again
        self._queued.set()

    async def _watch_knobs(self) -> None:
        """While a page is open: after each queued control, wait until the audio callback has
        rendered the sample it lands on, then wake every pusher if the knobs moved."""
        loop = asyncio.get_running_loop()
        last = self.surface.knob_snapshot()
        while self._sockets > 0:
            await self._queued.wait()
            self._queued.clear()
            due, deadline = self._due, loop.time() + APPLY_WAIT_S
            while self.surface.frames_rendered() <= due and loop.time() < deadline:
                ahead = (due + 1 - self.surface.frames_rendered()) / self.surface.synth.sample_rate
                await asyncio.sleep(max(ahead, APPLY_POLL_S))
            knobs = self.surface.knob_snapshot()
            if knobs != last:
                last = knobs
                self._moves += 1
                self._state_at = -1.0  # the next state_text() reads afresh
                moved, self._moved = self._moved, asyncio.Event()
                moved.set()

    async def _push(self, ws: web.WebSocketResponse) -> None:
        """State to one page every 1 / ``PUSH_HZ`` s and when the knobs moved, never two within
        ``MIN_PUSH_GAP_S``; a page that stalls is closed."""
        period = 1.0 / PUSH_HZ
        next_tick = time.monotonic()
        while not ws.closed:
            moves = self._moves
            try:
                await asyncio.wait_for(ws.send_str(self.state_text()), SEND_TIMEOUT_S)
            except (ConnectionError, asyncio.TimeoutError):
                await ws.close()
                return
            sent = time.monotonic()
            next_tick = max(next_tick + period, sent - period)
            if self._moves == moves:
                try:
                    await asyncio.wait_for(self._moved.wait(), max(0.0, next_tick - sent))
                except asyncio.TimeoutError:
                    pass
            gap = sent + MIN_PUSH_GAP_S - time.monotonic()
            if gap > 0:  # knobs moving faster than that: their changes meanwhile go in one message
                await asyncio.sleep(gap)

    def apply(self, text: str) -> None:
        """One control message from the page; malformed or refused ones are counted, never raised."""
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict):
                raise ControlError("a control message is a JSON object")
            kind = msg.get("type")
            if kind == "knob":
                self.surface.knob(msg.get("knob"), msg.get("value"))
            elif kind == "program":
                self.surface.program(msg.get("program"))
            elif kind == "snapshot":
                self.surface.snapshot(msg.get("snapshot"))
            elif kind == "user":
                self.surface.user(msg.get("user"))
            elif kind == "random":
                self.surface.random()
            elif kind == "morph":
                self.surface.morph(msg.get("value"))
            elif kind == "morph_endpoints":
                self.surface.morph_endpoints(msg.get("a"), msg.get("b"))
            elif kind == "note":
                self.surface.note(msg.get("key"), msg.get("velocity"))
            elif kind == "learn":
                self.surface.learn(msg.get("knob"))
            else:
                raise ControlError(f"unknown control type {kind!r}")
        except (ValueError, ControlError):  # json.JSONDecodeError is a ValueError
            self.surface.refuse()

    # ------------------------------------------------------------------ lifetime (on the loop)
    async def start(self, port: int) -> None:
        """Listen on 127.0.0.1:``port`` (0: a free port); ``self.port`` is the one bound."""
        # A page mid-request (an upload, a socket) gets a second at shutdown, not aiohttp's minute.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=SHUTDOWN_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"
