"""Shared pytest fixtures.

``jack_server``: one private jackd (dummy driver, sync mode, 48 kHz, period 128)
for the whole session. A fixed server name (JACK's registry has 8
slots), stop by PID with SIGTERM, never assert on jackd's exit code.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

JACK_TEST_SERVER = "vaesynth-test"
JACK_TEST_RATE = 48000
JACK_TEST_PERIOD = 128


def _jack_state(name: str) -> str:
    """'running' or 'not running', as ``jack_wait -s NAME -c`` prints it ('' if it hung)."""
    try:
        done = subprocess.run(["jack_wait", "-s", name, "-c"], capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.strip()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, SIGKILL if it lingers (a stuck server must not outlive the session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _start_jackd(name: str) -> subprocess.Popen[bytes]:
    if _jack_state(name) == "running":
        raise RuntimeError(f"a JACK server named {name!r} is already running (another test session?)")
    cmd = ["jackd", "-n", name, "-R", "-S", "-d", "dummy",
           "-r", str(JACK_TEST_RATE), "-p", str(JACK_TEST_PERIOD)]
    # Output to /dev/null: an undrained pipe blocks the server, and a broken graph can
    # make jackd log gigabytes.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        subprocess.run(["jack_wait", "-s", name, "-w", "-t", "10"], capture_output=True, timeout=15)
        deadline = time.monotonic() + 10.0
        while _jack_state(name) != "running":
            if proc.poll() is not None:
                raise RuntimeError(f"jackd exited with {proc.returncode} (server already active?)")
            if time.monotonic() > deadline:
                raise RuntimeError("jackd did not come up within 10 s")
            time.sleep(0.05)
    except BaseException:
        _stop(proc)
        raise
    return proc


@pytest.fixture(scope="session")
def jack_server() -> Iterator[str]:
    """Start jackd, set JACK_DEFAULT_SERVER for this process and its children, yield the name."""
    if shutil.which("jackd") is None or shutil.which("jack_wait") is None:
        pytest.fail("jackd is not installed: apt-get install jackd2 (the live tests need a real server)")
    try:
        proc = _start_jackd(JACK_TEST_SERVER)
    except RuntimeError as exc:
        if "exited" not in str(exc):
            raise
        # A killed server leaves a stale registry entry; the failed start clears it.
        proc = _start_jackd(JACK_TEST_SERVER)
    previous = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = JACK_TEST_SERVER
    try:
        yield JACK_TEST_SERVER
    finally:
        if previous is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = previous
        _stop(proc)
