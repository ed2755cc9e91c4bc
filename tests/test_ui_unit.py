"""Control-surface logic without a browser or JACK: the real Engine and LiveSynth on the fake
preset, the surface's controls as MIDI, OSC parsing under hostile bytes, the request guard."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request
from pythonosc.osc_message_builder import OscMessageBuilder

from synth.engine import Engine
from synth.latent_map import LatentMap
from synth.live import LiveSynth
from synth.osc import OscControl
from synth.preset import load_preset
from synth.ui.server import MAX_UPLOAD_BYTES, MIN_PUSH_GAP_S, PUSH_HZ, WebSurface
from synth.ui.surface import ControlSurface, cc_value, map_coordinates
from tests.fake_preset import make_fake_preset
from tests.ui_harness import add_latent_map

RATE, BLOCK = 48000, 128
DISPLAY_FRAME_S = 1 / 60


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_latent_map(make_fake_preset(tmp_path_factory.mktemp("ui_unit") / "fake"))


@pytest.fixture()
def surface(preset_dir: Path, tmp_path: Path) -> ControlSurface:
    preset = load_preset(preset_dir)
    engine = Engine(preset, device="cpu")
    engine.prepare(RATE, BLOCK, warm=False)
    return ControlSurface(LiveSynth(engine, RATE), preset, tmp_path / "mappings.toml")


def _render(surface: ControlSurface, blocks: int = 2) -> None:
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(blocks):
        surface.synth.engine.process(out)


def _osc(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for a in args:
        builder.add_arg(a)
    return builder.build().dgram


def test_cc_value_spans_the_travel() -> None:
    assert [cc_value(u) for u in (-5.0, -1.0, 0.0, 1.0, 7.0)] == [0, 0, 64, 127, 127]


def test_knob_takes_a_knob_waiting_for_pickup(surface: ControlSurface) -> None:
    engine = surface.synth.engine
    surface.synth.push_control(bytes([0xB0, 70, 0]))  # the hardware knob sits at the bottom
    surface.program(9)  # snap2: knob 1 moves away from it and waits for pick-up
    _render(surface)
    assert not engine.knob_pickup[0]
    surface.knob(0, 0.5)
    _render(surface)
    assert engine.knob_pickup[0] and engine.knob_values[0] == pytest.approx(cc_value(0.5) * 2 / 127 - 1)


def test_snapshot_by_name_and_number_and_refusals(surface: ControlSurface, preset_dir: Path) -> None:
    preset = load_preset(preset_dir)
    k = preset.knobs
    surface.snapshot("snap1")
    _render(surface)
    expected = k.directions @ (preset.snapshots[1].z - k.center) / k.step
    np.testing.assert_allclose(surface.synth.engine.knob_values, expected, atol=1e-5)
    for bad in (lambda: surface.snapshot("nope"), lambda: surface.snapshot(3), lambda: surface.knob(8, 0.0),
                lambda: surface.knob(0, float("nan")), lambda: surface.knob(True, 0.0), lambda: surface.program(128),
                lambda: surface.note(60, 200), lambda: surface.learn(-1)):
        with pytest.raises(ValueError):
            bad()


def test_map_coordinates_are_knob_1_and_2_coordinates(preset_dir: Path) -> None:
    preset = load_preset(preset_dir)
    k = preset.knobs
    z = k.center + 0.5 * k.step[0] * k.directions[0] - 0.25 * k.step[1] * k.directions[1]
    one = LatentMap(z[None].astype(np.float32), np.ones((1, z.size), np.float32), np.zeros(1, np.int16),
                    np.zeros(1, np.int16), np.full(1, 60, np.float32), ("keys",))
    x, y = map_coordinates(type("P", (), {"latent_map": one, "knobs": k})())
    assert x[0] == pytest.approx(0.5, abs=1e-5) and y[0] == pytest.approx(-0.25, abs=1e-5)


def test_osc_controls_and_hostile_datagrams(surface: ControlSurface) -> None:
    osc = OscControl(surface)
    osc.datagram_received(_osc("/vaesynth/knob/2", 1.0), ("127.0.0.1", 9))
    osc.datagram_received(_osc("/vaesynth/note", 60, 100), ("127.0.0.1", 9))
    _render(surface)
    assert surface.synth.engine.knob_values[1] == 1.0 and surface.synth.engine.stats.active_voices == 1
    assert osc.handled == 2 and surface.ignored == 0
    queued = len(surface.synth.engine.queue)
    # 4-aligned, but the float tag has no bytes: python-osc would read 0.0
    osc.datagram_received(b"/vaesynth/knob/2\0\0\0\0,f\0\0", ("127.0.0.1", 9))
    bundle = b"#bundle\0" + b"\0" * 8 + len(b"/vaesynth/knob/2\0\0\0\0,f\0\0").to_bytes(4, "big") \
        + b"/vaesynth/knob/2\0\0\0\0,f\0\0"
    osc.datagram_received(bundle, ("127.0.0.1", 9))
    assert surface.ignored == 2 and len(surface.synth.engine.queue) == queued
    rng = np.random.default_rng(0)
    packets = [rng.bytes(int(n)) for n in rng.integers(0, 200, 2000)]
    packets += [b"/vaesynth/knob/1\x00\x00\x00\x00" + rng.bytes(int(n) * 4) for n in rng.integers(0, 6, 500)]
    packets += [b"#bundle\x00" + rng.bytes(int(n) * 4) for n in rng.integers(0, 30, 500)]
    for p in packets:
        osc.datagram_received(p, ("127.0.0.1", 9))  # never raises
    accepted = osc.handled - 2
    assert surface.ignored > 0.9 * len(packets)
    # Only accepted messages reach the queue (a knob waiting for pick-up sends two CCs).
    assert len(surface.synth.engine.queue) - queued <= 2 * accepted


def test_osc_timbre_addresses(surface: ControlSurface) -> None:
    engine = surface.synth.engine
    osc = OscControl(surface)
    osc.datagram_received(_osc("/vaesynth/random"), ("127.0.0.1", 9))
    _render(surface)
    assert engine.current_timbre.label.startswith("random:")
    osc.datagram_received(_osc("/vaesynth/morph/endpoints", "snap0", "snap2"), ("127.0.0.1", 9))
    osc.datagram_received(_osc("/vaesynth/morph", 1.0), ("127.0.0.1", 9))
    _render(surface)
    assert engine.current_timbre.label.startswith("snap0->snap2 100")
    for bad in (_osc("/vaesynth/morph", 1.5), _osc("/vaesynth/morph/endpoints", "snap0", "nope"),
                _osc("/vaesynth/user", "nobody"), _osc("/vaesynth/random", 1)):
        osc.datagram_received(bad, ("127.0.0.1", 9))
    assert surface.ignored == 4 and osc.handled == 3


def test_web_messages_refused_and_counted(surface: ControlSurface) -> None:
    web = WebSurface(surface)
    bad = ["not json", "[]", "{}", '{"type": "knob", "knob": "0", "value": 0}',
           '{"type": "knob", "knob": 0, "value": 1e999}', '{"type": "knob", "knob": 0, "value": NaN}',
           '{"type": "program", "program": 3.5}', '{"type": "exec", "code": "rm -rf"}']
    for text in bad:
        web.apply(text)
    assert surface.ignored == len(bad) and len(surface.synth.engine.queue) == 0
    web.apply(json.dumps({"type": "knob", "knob": 0, "value": -1}))
    assert len(surface.synth.engine.queue) == 1


@pytest.mark.parametrize("headers, query, ok", [
    ({"Host": "127.0.0.1:5000"}, "token=T", True),
    ({"Host": "localhost:5000", "Origin": "http://localhost:5000"}, "token=T", True),
    ({"Host": "127.0.0.1:5000"}, "token=X", False),
    ({"Host": "127.0.0.1:5000"}, "", False),
    ({"Host": "evil.example:5000"}, "token=T", False),  # DNS rebinding
    ({"Host": "127.0.0.1:5000", "Origin": "http://evil.example"}, "token=T", False),
    ({"Host": "127.0.0.1:5000", "Origin": "http://127.0.0.1:5001"}, "token=T", False),
    ({"Host": "127.0.0.1:5000", "Origin": "null"}, "token=T", False),
    ({"Host": "127.0.0.1:5000", "Upgrade": "websocket"}, "token=T", False),  # a socket must send Origin
    ({"Host": "127.0.0.1:5000", "Sec-Fetch-Site": "cross-site"}, "token=T", False),
])
def test_guard(surface: ControlSurface, headers: dict[str, str], query: str, ok: bool) -> None:
    web = WebSurface(surface, token="T")
    web.port = 5000
    assert web.allowed(make_mocked_request("GET", f"/api/state?{query}", headers=headers)) is ok


def test_benchmark_timbre_detector_finds_a_switch() -> None:
    from benchmarks.ui_latency import DETECT_WINDOW, half_way_frame

    t = np.arange(RATE) / RATE
    change = RATE // 2
    bright = np.where(np.arange(RATE) >= change, 0.8, 0.05)
    x = 0.5 * np.sin(2 * np.pi * 220 * t) + bright * np.sin(2 * np.pi * 660 * t)
    at = half_way_frame(np.stack([x, x], axis=1).astype(np.float32), change)
    assert at is not None and change < at <= change + DETECT_WINDOW
    steady = 0.5 * np.sin(2 * np.pi * 220 * t)
    assert half_way_frame(np.stack([steady, steady], axis=1).astype(np.float32), change) is None


def test_server_thread_pushes_state_and_guards_sockets(surface: ControlSurface) -> None:
    """The real server on its thread: the meters' WebSocket push, a control through it, a foreign
    Origin refused at the handshake, a taken port a one-line SurfaceError."""
    import asyncio
    import socket
    import time

    import aiohttp

    from synth.ui.cli import SurfaceError, SurfaceThread

    thread = SurfaceThread(surface.synth, surface.preset, surface.mapping_path, 0, 0)
    thread.start()
    try:
        port, token = thread.web.port, thread.web.token
        origin = f"http://127.0.0.1:{port}"

        async def session() -> tuple[int, int, int]:
            async with aiohttp.ClientSession() as http:
                url = f"ws://127.0.0.1:{port}/ws?token={token}"
                async with http.ws_connect(url, origin=origin) as ws:
                    await ws.send_str(json.dumps({"type": "knob", "knob": 2, "value": 1.0}))
                    start, count = time.monotonic(), 0
                    while time.monotonic() - start < 1.0:
                        await ws.receive_str()
                        count += 1
                try:
                    await http.ws_connect(url, origin="http://evil.example")
                    refused = 0
                except aiohttp.WSServerHandshakeError as exc:
                    refused = exc.status
                capture = f"{origin}/api/capture?token={token}&name=x&filename=x.wav"
                async with http.post(capture, data=b"RIFF") as no_origin:
                    pass
                too_big = b"\0" * (MAX_UPLOAD_BYTES + 1)
                async with http.post(capture, data=too_big, headers={"Origin": origin}) as big:
                    pass
                async with http.get(f"{origin}/?token={token}") as page:
                    return count, refused, page.status, no_origin.status, big.status

        count, refused, page, no_origin, big = asyncio.run(session())
        assert 0.8 * PUSH_HZ <= count <= 1.2 * PUSH_HZ + 2 and refused == 403 and page == 200  # + the knob's echo
        assert no_origin == 403 and big == 413  # a POST must carry our Origin; an upload is bounded
        assert len(surface.synth.engine.queue) == 1  # the knob's CC, queued for the engine
        taken = SurfaceThread(surface.synth, surface.preset, surface.mapping_path, port, 0)
        with pytest.raises(SurfaceError, match="cannot start the control surface"):
            taken.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
            busy.bind(("127.0.0.1", 0))
            osc_taken = SurfaceThread(surface.synth, surface.preset, surface.mapping_path, 0, busy.getsockname()[1])
            with pytest.raises(SurfaceError, match="OSC port"):
                osc_taken.start()
    finally:
        thread.stop()


def test_a_moved_knob_is_pushed_at_once_and_a_flood_is_coalesced(surface: ControlSurface) -> None:
    """The real server and LiveSynth, its audio callback driven in real time by a thread: a CC queued
    as the MIDI thread queues it reaches the page well within a push period; a CC flood does not
    flood the socket; without a page nothing listens on the producer path."""
    import asyncio
    import threading
    import time
    import types

    import aiohttp

    from synth.ui.cli import SurfaceThread

    synth = surface.synth
    stop = threading.Event()

    def audio() -> None:  # the audio callback at its real pace
        out = np.zeros((BLOCK, 2), np.float32)
        status = types.SimpleNamespace(output_underflow=False)
        while not stop.wait(BLOCK / RATE):
            synth.audio_callback(out, BLOCK, None, status)

    player = threading.Thread(target=audio, daemon=True)
    player.start()
    thread = SurfaceThread(synth, surface.preset, surface.mapping_path, 0, 0)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{thread.web.port}/ws?token={thread.web.token}"

        async def page() -> tuple[list[float], int, float]:
            async with aiohttp.ClientSession() as http, \
                    http.ws_connect(url, origin=f"http://127.0.0.1:{thread.web.port}") as ws:
                await ws.receive_str()
                delays = []
                for take in range(12):
                    await asyncio.sleep(0.011 * take % (1.0 / PUSH_HZ))  # anywhere in the push period
                    value = 127 if take % 2 == 0 else 0
                    sent = time.monotonic()
                    await asyncio.to_thread(synth.push_control, bytes([0xB0, 70, value]))  # another thread, as MIDI
                    while json.loads(await ws.receive_str())["knobs"][0] != (1.0 if value else -1.0):
                        pass
                    delays.append(time.monotonic() - sent)
                count = 0
                start = time.monotonic()
                for i in range(500):  # a CC every millisecond
                    synth.push_control(bytes([0xB0, 71, i % 128]))
                    await asyncio.sleep(0.001)
                    while True:
                        try:
                            await ws.receive_str(timeout=0.0001)
                            count += 1
                        except TimeoutError:
                            break
                return delays, count, time.monotonic() - start

        delays, count, flood_s = asyncio.run(page())
        deadline = time.monotonic() + 2.0  # the server sees the page's close on its own thread
        while synth.control_listener is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert synth.control_listener is None  # no page left: the producer path calls nothing
    finally:
        thread.stop()
        stop.set()
        player.join(5)
    # Within half a display frame in the median (the meters' tick alone: half its period, 50 ms).
    assert np.median(delays) < 0.5 * DISPLAY_FRAME_S, np.round(delays, 4)
    assert count <= flood_s * (1.0 / MIN_PUSH_GAP_S + PUSH_HZ) + 2, (count, flood_s)
    assert count >= 0.5 * flood_s / DISPLAY_FRAME_S  # the knob moved all along: shown every other frame at least
