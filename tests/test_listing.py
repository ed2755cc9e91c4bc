"""The listing commands say what they found, or what to start: with no audio server (one line,
no noise from libasound or rtmidi) and under a real jackd (a count and the names)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jack
import pytest

from tests.jack_probe import REPO


def _cli(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JACK_DEFAULT_SERVER=server)
    return subprocess.run([sys.executable, str(REPO / "run_synth.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(Path("/dev/snd").exists(), reason="a sound card exists: there is always something to list")
@pytest.mark.parametrize("option, words", [("--list-devices", "start JACK"), ("--list-midi", "start JACK")])
def test_listing_with_no_server_says_what_to_start(option: str, words: str) -> None:
    done = _cli(option, server="vaesynth-no-such-server")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and done.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr


@pytest.mark.jack
def test_listing_under_jack_says_what_it_found(jack_server: str) -> None:
    devices = _cli("--list-devices", server=jack_server)
    assert devices.returncode == 0 and "audio output(s) (" in devices.stdout.splitlines()[0], devices.stderr
    assert "JACK" in devices.stdout
    empty = _cli("--list-midi", server=jack_server)
    assert empty.returncode == 0 and "no MIDI sources under JACK" in empty.stdout and "a2jmidid" in empty.stdout
    source = jack.Client("listed-keyboard", servername=jack_server, no_start_server=True)
    try:
        source.midi_outports.register("out")
        found = _cli("--list-midi", server=jack_server)
    finally:
        source.close()
    first, *names = found.stdout.strip().splitlines()
    assert found.returncode == 0 and first.startswith("1 MIDI source(s) (JACK)"), found.stdout
    assert names == ["  listed-keyboard:out"] and "vaesynth-midi:midi_in" in first
