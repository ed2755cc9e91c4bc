"""The control surface against the real things: run_synth.py --ui under jackd, Debian's headless
chromium and firefox-esr (``tests.browsers``), OSC over UDP, MIDI and audio through a JACK probe.

One synth for the module, and one browser of each kind (start-up dominates). The page's core
checks (it loads with the token, a CC through JACK moves its knob, its map and knob drags change
the engine and the sound, a snapshot click recalls) run in both browsers through the ``page``
fixture; the rest, browser-independent, in chromium. Tests run in file order, grouped by browser,
but each sets up the state it asserts on.
"""
from __future__ import annotations

import http.server
import os
import shutil
import socket
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from synth.preset import load_preset
from tests.browsers import ChromiumPage, Page
from tests.fake_preset import make_fake_preset
from tests.jack_probe import JackProbe, Take, control, note_off, note_on, spectrum_db
from tests.ui_harness import SurfaceSession, add_latent_map, shown_knobs

pytestmark = pytest.mark.jack
RATE = 48000
HELD = (57,)  # one note: a chord's near-coincident partials beat, moving peak levels by dB
SCREENSHOT_ENV = "VAESYNTH_SCREENSHOT"  # a path: also copy the page's screenshot there (docs/)


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_latent_map(make_fake_preset(tmp_path_factory.mktemp("ui") / "fake", release_seconds=0.3))


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cfg")


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="module")
def session(jack_server: str, preset_dir: Path, config_dir: Path, library_dir: Path) -> Iterator[SurfaceSession]:
    s = SurfaceSession(preset_dir, jack_server, extra=["--library", str(library_dir)],
                       env={"VAESYNTH_CONFIG_DIR": str(config_dir)})
    try:
        yield s
    finally:
        status, err = s.close()
    assert status == 0, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def chromium(session: SurfaceSession) -> ChromiumPage:
    """Chromium on the page for the whole module (closed with the session)."""
    return session.open_page("chromium")


@pytest.fixture(scope="module", params=["chromium", "firefox"])
def page(request: pytest.FixtureRequest, session: SurfaceSession) -> Iterator[Page]:
    """The page in each browser in turn: the module's chromium, then a firefox of its own."""
    if request.param == "chromium":
        yield request.getfixturevalue("chromium")
        return
    firefox = session.open_page("firefox")
    yield firefox
    session.close_page(firefox)


def _snapshot_coords(preset_dir: Path, index: int) -> np.ndarray:
    """Snapshot ``index``'s knob coordinates, computed from the preset file (travel x scale per knob)."""
    preset = load_preset(preset_dir)
    k = preset.knobs
    return (k.directions @ (preset.snapshots[index].z.astype(np.float64) - k.center)) / k.step


def _send_midi(probe: JackProbe, *messages: bytes) -> None:
    """Send ``messages`` through JACK in the next cycles (real time, a few ms)."""
    p = probe.period
    probe.record([(2 * p + i, m) for i, m in enumerate(messages)], 4 * p, freewheel=False)


def _record_in_background(probe: JackProbe, events: list[tuple[int, bytes]], seconds: float):
    """Start a real-time recording; returns (thread, holder) — the Take lands in holder[0]."""
    holder: list[Take] = []
    thread = threading.Thread(target=lambda: holder.append(probe.record(events, int(seconds * RATE), freewheel=False)),
                              daemon=True)
    thread.start()
    return thread, holder


def _held(period: int, seconds: float) -> list[tuple[int, bytes]]:
    start, end = 10 * period, int((seconds - 0.1) * RATE)
    return [(start, note_on(k)) for k in HELD] + [(end, note_off(k)) for k in HELD]


def _window(take: Take, t0: float, t1: float) -> np.ndarray:
    spec = spectrum_db(take.audio[int(t0 * RATE):int(t1 * RATE)])
    return spec - spec.max()


def _drag_knob(page: Page, knob: int, dy: int) -> None:
    page.drag(f'.knob[data-knob="{knob}"] svg', [(0, dy // 2), (0, dy - dy // 2)])


def _wait_state(session: SurfaceSession, test, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = session.api("/api/state")
        if test(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"state never matched: {state}")
        time.sleep(0.02)


def _wait_shown(page: Page, expected: np.ndarray, atol: float = 2e-4, timeout: float = 5.0) -> None:
    """Until the page's knobs show ``expected`` (the engine applies a control, the next push shows it)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = np.array(shown_knobs(page))
        if np.allclose(shown, expected, atol=atol):
            return
        if time.monotonic() > deadline:
            np.testing.assert_allclose(shown, expected, atol=atol)
        time.sleep(0.02)


def test_page_loads(page: Page, session: SurfaceSession, preset_dir: Path) -> None:
    assert page.title == "vaesynth control surface"
    preset = load_preset(preset_dir)
    assert page.text(".knob .name") == [f"{i + 1} · z{d}" for i, d in enumerate(preset.knob_order[:8])]
    assert page.text("#snapshots button") == [s.name for s in preset.snapshots]
    assert page.text("#mapnote")[0].startswith(f"{preset.latent_map.size} training notes")
    assert page.text("#legend span") == list(preset.latent_map.families)
    assert page.wait_js("return document.getElementById('conn').textContent") == "connected"


def test_chromium_console_has_no_errors(chromium: ChromiumPage) -> None:
    errors = [e for e in chromium.driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # CSP violations, failed loads, script errors


def test_midi_cc_through_jack_moves_onscreen_knob(page: Page, session: SurfaceSession) -> None:
    for value, shown in ((127, 1.0), (0, -1.0)):
        _send_midi(session.probe, control(72, value))  # knob 3
        page.wait_js(f"return document.querySelector('.knob[data-knob=\"2\"]').dataset.value === '{shown:.4f}'",
                     timeout=2.0)


def test_map_point_follows_knobs_1_and_2_and_moves_them(page: Page, session: SurfaceSession) -> None:
    _send_midi(session.probe, control(70, 127), control(71, 0))
    page.wait_js("const m = document.getElementById('map').dataset; return m.x === '1.0000' && m.y === '-1.0000'",
                 timeout=2.0)
    # Drag the point to the upper left quarter of the map: the engine's knobs 1 and 2 follow.
    w = int(page.js("return document.getElementById('map').getBoundingClientRect().width"))
    page.drag("#map", [(3, 3)], at=(-w // 4, -w // 4))
    _wait_state(session, lambda s: s["knobs"][0] < -0.2 and s["knobs"][1] > 0.2)
    time.sleep(0.1)  # the drag's last CCs have landed; the page shows the engine's values within a push
    x, y = _wait_state(session, lambda s: True)["knobs"][:2]
    page.wait_js("const m = document.getElementById('map').dataset; "
                 f"return Math.abs(m.x - {x}) < 1e-3 && Math.abs(m.y - {y}) < 1e-3", timeout=2.0)


def test_knob_drag_changes_rendered_spectrum(page: Page, session: SurfaceSession) -> None:
    _send_midi(session.probe, control(70, 127))  # knob 1 at +1
    page.wait_js("return document.querySelector('.knob[data-knob=\"0\"]').dataset.value === '1.0000'")
    seconds = 2.4
    thread, holder = _record_in_background(session.probe, _held(session.probe.period, seconds), seconds)
    try:
        time.sleep(0.9)
        _drag_knob(page, 0, 300)  # down by more than the whole travel: knob 1 to -1
    finally:
        thread.join(30)
    assert _wait_state(session, lambda s: True)["knobs"][0] == -1.0
    before, after = _window(holder[0], 0.35, 0.75), _window(holder[0], 1.8, 2.2)
    loud = before > -40
    assert np.max(np.abs(after[loud] - before[loud])) > 3.0, "dragging knob 1 did not change the spectrum"


def test_snapshot_click_recalls_snapshot_and_knob_takes_over(page: Page, session: SurfaceSession,
                                                            preset_dir: Path) -> None:
    _send_midi(session.probe, control(70, 0))  # hardware knob 1 at the bottom
    page.click('#snapshots button[data-program="9"]')  # snap2
    expected = _snapshot_coords(preset_dir, 2)
    page.wait_js("return window.vaesynth.state.midi === 'c0 09'")
    page.wait_js("return document.querySelector('.knob[data-knob=\"0\"]').dataset.pickup === 'false'")
    _wait_shown(page, expected)
    # The on-screen knob sits at the snapshot's value, so dragging it takes the knob at once.
    _drag_knob(page, 0, 60)
    state = _wait_state(session, lambda s: s["pickup"][0] and s["knobs"][0] < expected[0] - 0.2)
    assert page.wait_js("return document.querySelector('.knob[data-knob=\"0\"]').dataset.pickup === 'true'")
    assert state["knobs"][1:] == pytest.approx(list(expected[1:]), abs=2e-4)


class _ForeignSite(http.server.BaseHTTPRequestHandler):
    """Another web page on this machine (another port = another origin) that tries to drive the synth."""

    page = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_foreign_origin_and_missing_token_refused(session: SurfaceSession, chromium: ChromiumPage) -> None:
    base = f"http://127.0.0.1:{session.port}"
    good = f"{base}/api/state?token={session.token}"
    assert _status(good, {}) == 200
    assert _status(good, {"Origin": base}) == 200
    assert _status(good, {"Origin": "http://evil.example"}) == 403
    assert _status(good, {"Host": f"evil.example:{session.port}"}) == 403  # DNS rebinding
    assert _status(f"{base}/api/state", {}) == 403
    assert _status(f"{base}/api/state?token={'0' * len(session.token)}", {}) == 403
    assert _status(good, {"Sec-Fetch-Site": "cross-site"}) == 403
    # In the browser: a page from another origin that knows the token still cannot open the socket.
    before = session.api("/api/state")["knobs"][4]
    _ForeignSite.page = (
        "<title>foreign</title><script>const ws = new WebSocket('ws://127.0.0.1:%d/ws?token=%s');"
        "ws.onopen = () => { ws.send(JSON.stringify({type: 'knob', knob: 4, value: 1})); document.title = 'opened'; };"
        "ws.onerror = () => { document.title = 'refused'; };</script>" % (session.port, session.token))
    server = http.server.HTTPServer(("127.0.0.1", 0), _ForeignSite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = chromium.driver
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        chromium.wait_js("return document.title !== 'foreign'")
        assert driver.title == "refused"
    finally:
        server.shutdown()
        driver.get(session.url)
        chromium.wait_js("return window.vaesynth && window.vaesynth.drawLog.length > 0")
    assert session.api("/api/state")["knobs"][4] == before


def _osc(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for a in args:
        builder.add_arg(a)
    return builder.build().dgram


MALFORMED = [
    b"garbage that is not OSC",
    b"/vaesynth/knob/1\x00\x00\x00\x00,f\x00\x00\x00",  # a float cut to one byte (not 4-aligned)
    _osc("/vaesynth/knob/1", "loud"),  # a string where a number goes
    _osc("/vaesynth/knob/1", float("nan")),
    _osc("/vaesynth/knob/9", 0.5),  # there are 8 knobs
    _osc("/vaesynth/knob/1", 0.5, 0.5),
    _osc("/vaesynth/program", 300),
    _osc("/vaesynth/nothing", 1),
    b"#bundle\x00" + b"\x00" * 8 + b"\x00\x00\x00\x40/vaesynth",  # an element longer than the packet
]


def _osc_take(session: SurfaceSession) -> tuple[Take, bytes, int]:
    """A held note under knob 1 at -1: malformed packets at 0.8 s, a state query, then a valid knob-1
    message at about 1.4 s. Returns (take, the state reply, how many messages were refused)."""
    _send_midi(session.probe, control(70, 0))  # knob 1 at -1
    _wait_state(session, lambda s: s["knobs"][0] == -1.0)
    ignored = session.api("/api/state")["ignored"]
    osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    osc.settimeout(2.0)
    target = ("127.0.0.1", session.osc_port)
    seconds = 2.6
    thread, holder = _record_in_background(session.probe, _held(session.probe.period, seconds), seconds)
    try:
        time.sleep(0.8)
        for packet in MALFORMED:
            osc.sendto(packet, target)
        time.sleep(0.6)
        osc.sendto(_osc("/vaesynth/state"), target)
        reply = osc.recv(1024)
        osc.sendto(_osc("/vaesynth/knob/1", 1.0), target)
        thread.join(30)
    finally:
        osc.close()
    state = session.api("/api/state")
    assert state["knobs"][0] == 1.0
    return holder[0], reply, state["ignored"] - ignored


def test_osc_knob_changes_sound_and_malformed_packets_change_nothing(session: SurfaceSession) -> None:
    # Real time on a shared machine: a take with an xrun (a dropout inside a window changes its
    # spectrum) is taken again, once.
    take, reply, refused = _osc_take(session)
    if take.xruns or take.lost_cycles:
        take, reply, refused = _osc_take(session)
    assert refused == len(MALFORMED)
    assert reply.startswith(b"/vaesynth/state\x00") and b"," + b"ifii" + b"f" * 8 in reply
    quiet, noisy, changed = (_window(take, a, b) for a, b in ((0.35, 0.75), (0.95, 1.35), (2.0, 2.4)))
    peaks = _harmonic_peaks(quiet)
    drift = np.abs(noisy[peaks] - quiet[peaks])
    assert np.max(drift) < 1.0, f"a malformed OSC packet changed the sound: {np.round(drift, 2)} (xruns {take.xruns})"
    assert np.max(np.abs(changed[peaks] - quiet[peaks])) > 3.0, "the OSC knob message did not change the sound"


def _harmonic_peaks(spec_db: np.ndarray, floor_db: float = -30.0) -> np.ndarray:
    """Bins of the spectrum's local maxima above ``floor_db`` (the chord's partials): the valleys
    between them are leakage, which moves with each window's phases."""
    mid = spec_db[1:-1]
    return np.flatnonzero((mid > spec_db[:-2]) & (mid >= spec_db[2:]) & (mid > floor_db)) + 1


def test_midi_learn_by_click(session: SurfaceSession, chromium: ChromiumPage, config_dir: Path) -> None:
    chromium.click('.knob[data-knob="3"] button')
    chromium.wait_js("return window.vaesynth.state.learning === 3")
    _send_midi(session.probe, control(20, 127))  # the hardware control the player moves
    chromium.wait_js("return document.querySelector('.knob[data-knob=\"3\"] .cc').textContent === 'CC 20'")
    saved = tomllib.loads((config_dir / "mappings.toml").read_text())
    assert saved["cc_to_knob"] == {"20": 3}  # the file --learn writes
    # A sweep over the whole travel crosses the knob's value: picked up, it follows CC 20 to the top.
    _send_midi(session.probe, control(20, 0), control(20, 127))
    chromium.wait_js("return document.querySelector('.knob[data-knob=\"3\"]').dataset.value === '1.0000'")


def _coords(preset_dir: Path, z: np.ndarray) -> np.ndarray:
    k = load_preset(preset_dir).knobs
    return (k.directions @ (np.asarray(z, np.float64) - k.center)) / k.step


def _note_wav(preset_dir: Path, z: np.ndarray, path: Path) -> Path:
    """One C4 of latent ``z`` rendered offline by the engine, written as a WAV (what a player records)."""
    import soundfile as sf

    from synth.engine import Engine

    engine = Engine(load_preset(preset_dir), device="cpu", knob_pickup=False)
    for d, v in enumerate(z):
        engine.set_latent(d, float(v), absolute=True)
    engine.prepare(RATE, 1024, warm=False)
    engine.push(8, 0x90, 60, 100)
    engine.push(8 + int(1.5 * RATE), 0x80, 60, 0)
    out = np.zeros((2 * RATE, 2), np.float32)
    for a in range(0, len(out), 1024):
        engine.process(out[a:a + 1024])
    # recorded with headroom, as a player sets the gain: the fake preset's note peaks at the
    # limiter's ceiling, which the capture would rightly refuse as clipped
    out *= 10 ** (-6 / 20) / max(float(np.abs(out).max()), 1e-9)
    sf.write(path, out, RATE, subtype="PCM_24")
    return path


def test_random_button_changes_the_timbre(session: SurfaceSession, chromium: ChromiumPage) -> None:
    before = session.api("/api/state")
    chromium.click("#random")
    state = _wait_state(session, lambda s: s["timbre"].startswith("random:"))
    assert state["knobs"] != before["knobs"]
    chromium.wait_js("return document.getElementById('timbre').textContent.startsWith('random:')")


def test_capture_drop_zone_makes_a_selectable_user_snapshot(session: SurfaceSession, chromium: ChromiumPage,
                                                            preset_dir: Path, library_dir: Path,
                                                            tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from tests.fake_preset import capture_subspace

    z = (np.random.default_rng(4).standard_normal(len(capture_subspace())) @ capture_subspace()).astype(np.float32)
    wav = _note_wav(preset_dir, z, tmp_path / "bottle.wav")
    driver = chromium.driver
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF but not really a wave file" * 10)
    driver.find_element(By.ID, "capturefile").send_keys(str(junk))
    chromium.wait_js("return document.getElementById('capturemsg').textContent.startsWith('not captured')")
    assert "junk.wav" in driver.find_element(By.ID, "capturemsg").text  # the one-line reason names the file
    driver.find_element(By.ID, "capturefile").send_keys(str(wav))
    chromium.wait_js("return document.getElementById('capturemsg').textContent.startsWith('captured')", timeout=60)
    library = tomllib.loads((library_dir / "library.toml").read_text())
    stored = [e for e in library["snapshot"] if e["name"] == "bottle"]
    assert len(stored) == 1  # saved as --capture saves it
    chromium.wait_js("const b = document.querySelector('#usersnaps button[data-user]'); "
                     "return b && b.textContent === 'bottle'")
    chromium.click("#usersnaps button[data-user]")
    _wait_state(session, lambda s: s["timbre"] == "bottle")
    _wait_shown(chromium, _coords(preset_dir, stored[0]["z"]))


def test_morph_slider_moves_between_two_chosen_timbres(session: SurfaceSession, chromium: ChromiumPage,
                                                       preset_dir: Path) -> None:
    def choose(select: str, name: str) -> None:
        chromium.js(
            "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
            "s.dispatchEvent(new Event('change'));", select, name)

    def slide(value: int) -> None:
        chromium.js(
            "const s = document.getElementById('morph'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('input'));", value)

    slide(0)
    choose("morph-a", "snap0")
    choose("morph-b", "snap2")
    _wait_state(session, lambda s: s["morphing"] and s["timbre"].startswith("snap0->snap2"))
    snaps = load_preset(preset_dir).snapshots
    for value, target in ((1000, snaps[2].z), (0, snaps[0].z)):
        slide(value)
        expected = _coords(preset_dir, target)
        state = _wait_state(session, lambda s: abs(s["knobs"][0] - expected[0]) < 2e-4)
        np.testing.assert_allclose(state["knobs"], expected, atol=2e-4)
    chromium.wait_js("return document.getElementById('morph').value === '0'")


def test_screenshot_while_playing_over_osc(session: SurfaceSession, chromium: ChromiumPage, tmp_path: Path) -> None:
    osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for key in (48, 55, 64, 67):
            osc.sendto(_osc("/vaesynth/note", key, 90), ("127.0.0.1", session.osc_port))
        state = _wait_state(session, lambda s: s["voices"] == 4)
        # (the overload governor may shed a voice on a busy machine: the page shows what sounds)
        chromium.wait_js("return Number(document.getElementById('voices').textContent) > 0")
        shot = tmp_path / "control-surface.png"
        assert chromium.driver.save_screenshot(str(shot))
        assert state["midi"] == "90 43 5a"
    finally:
        for key in (48, 55, 64, 67):
            osc.sendto(_osc("/vaesynth/note", key, 0), ("127.0.0.1", session.osc_port))
        osc.close()
    _wait_state(session, lambda s: s["voices"] == 0)
    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        shutil.copyfile(shot, target)
