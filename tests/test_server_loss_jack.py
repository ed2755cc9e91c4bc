"""The audio server dies under a playing synth: the synth notices at once (its JACK watch client
hears the shutdown), says why in one line and exits with status 3, within a second; no
traceback, no hang (closing a stream after jackd died can hang, so it exits without that).
The session state (knobs, timbre) is saved on the way out."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import _start_jackd, _stop
from tests.fake_preset import make_fake_preset
from tests.jack_probe import JackProbe, SynthProcess, note_on

pytestmark = pytest.mark.jack
SERVER = "vaesynth-loss"


def test_server_loss_exits_within_a_second(tmp_path) -> None:  # noqa: ANN001
    preset = make_fake_preset(tmp_path / "fake")
    jackd = _start_jackd(SERVER)
    synth = SynthProcess(["--preset", str(preset), "--quiet"], SERVER, env={"VAESYNTH_CONFIG_DIR": str(tmp_path)})
    try:
        probe = JackProbe(SERVER, "vaesynth-loss-probe")
        synth.wait_for_ports(probe.client)
        probe.connect_synth()
        probe.record([(256, note_on(60))], 48000 // 4, freewheel=False)  # playing when it dies
        probe.close()
        killed = time.monotonic()
        _stop(jackd)
        try:
            synth.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # 'took' says it
        took = time.monotonic() - killed
    finally:
        status, err = synth.stop()
        _stop(jackd)
    assert status == 3, f"exit status {status}: {err}"
    assert took < 1.0, f"took {took:.2f} s to notice the server was gone"
    assert "Traceback" not in err and "went away" in err, err
    assert (tmp_path / "state.toml").exists(), "the session state was not saved on the way out"
