"""The control surface under test: run_synth.py --ui under JACK, a probe, headless browsers, OSC.

Shared by tests/test_ui.py and benchmarks/ui_latency.py. ``add_latent_map`` gives the fake
preset a ``[map] file`` (the real export ships one); ``SurfaceSession`` starts the CLI with
``--ui``, reads the one line it prints, wires a ``JackProbe`` and opens the page in a real
headless browser (``tests.browsers``: Debian's chromium or firefox-esr).
"""
from __future__ import annotations

import json
import re
import socket
import threading
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import tomli_w

from synth.latent_map import LatentMap
from tests.browsers import BROWSERS, Page
from tests.jack_probe import JackProbe, SynthProcess

URL_LINE = re.compile(r"^control surface: (http://127\.0\.0\.1:(\d+)/\?token=([0-9a-f]+))$")
FAMILIES = ("keys", "strings", "brass", "reed")


def add_latent_map(preset_dir: Path, points: int = 600, seed: int = 3) -> Path:
    """Write a latent map of ``points`` random posteriors into the preset and name it in ``[map]``."""
    doc = tomllib.loads((preset_dir / "preset.toml").read_text())
    size = int(doc["latent"]["size"])
    rng = np.random.default_rng(seed)
    family = rng.integers(0, len(FAMILIES), points).astype(np.int16)
    mu = (rng.standard_normal((points, size)) + family[:, None] * 0.6 - 0.9).astype(np.float32)
    lmap = LatentMap(mu=mu, sigma=np.full_like(mu, 0.3), family=family,
                     program=(family * 8).astype(np.int16), pitch=rng.uniform(40, 80, points).astype(np.float32),
                     families=FAMILIES)
    lmap.save(preset_dir / "latent_map.npz")
    doc["map"] = {"file": "latent_map.npz"}
    (preset_dir / "preset.toml").write_bytes(tomli_w.dumps(doc).encode())
    return preset_dir


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SurfaceSession:
    """``run_synth.py --ui`` on ``server`` with a probe wired to it; ``url``, ``port``, ``token``."""

    def __init__(self, preset_dir: Path, server: str, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, probe: JackProbe | None = None) -> None:
        self.osc_port = free_udp_port()
        args = ["--preset", str(preset_dir), "--quiet", "--ui", "--osc-port", str(self.osc_port)]
        self.pages: list[Page] = []
        self.synth = SynthProcess(args + (extra or []), server, env=env)
        self.probe = probe or JackProbe(server)
        try:
            self.synth.wait_for_ports(self.probe.client)
            self.url, self.port, self.token = self._read_url()
            self.probe.connect_synth()
        except BaseException:
            self.close()
            raise

    def _read_url(self, timeout: float = 20.0) -> tuple[str, int, str]:
        """The one line --ui prints on stdout."""
        found: list[str] = []

        def read() -> None:
            found.append(self.synth.proc.stdout.readline().strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        match = URL_LINE.match(found[0]) if found else None
        if match is None:
            raise RuntimeError(f"no control-surface line on stdout: {found!r}")
        return match.group(1), int(match.group(2)), match.group(3)

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}?token={self.token}", timeout=5) as r:
            return json.loads(r.read())

    def open_page(self, browser: str = "chromium", width: int = 1180, height: int = 1300) -> Page:
        """``browser`` (``tests.browsers.BROWSERS``) headless on the page; returns once the page has
        drawn its first state. ``close`` closes it if the caller did not."""
        page = BROWSERS[browser](width, height)
        self.pages.append(page)
        page.open(self.url)
        page.wait_js("return window.vaesynth && window.vaesynth.drawLog.length > 0", timeout=20.0)
        return page

    def close_page(self, page: Page) -> None:
        self.pages.remove(page)
        page.close()

    def close(self) -> tuple[int, str]:
        for page in self.pages[::-1]:
            self.close_page(page)
        try:
            self.probe.close()
        except Exception:  # noqa: BLE001 - closing after a failed start: the probe may be half made
            pass
        return self.synth.stop()


def shown_knobs(page: Page) -> list[float]:
    """The knob values the page shows (its knobs' data-value attributes)."""
    return [float(v) for v in page.js("return [...document.querySelectorAll('.knob')].map(k => k.dataset.value)")]
