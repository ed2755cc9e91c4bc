"""The audio server dies under a playing synth: the synth notices at once (its JACK watch client
hears the shutdown), says why in one line and exits with status 3, within a second; no
traceback, no hang (closing a stream after jackd died can hang, so it exits without that).
The session state (knobs, timbre) is saved on the way out."""
from __future__ import annotations

import pytest

from tests.fake_preset import make_fake_preset
from tests.jack_probe import kill_server_under_synth

pytestmark = pytest.mark.jack
SERVER = "vaesynth-loss"


def test_server_loss_exits_within_a_second(tmp_path) -> None:  # noqa: ANN001
    preset = make_fake_preset(tmp_path / "fake")
    took, status, err = kill_server_under_synth(preset, SERVER, tmp_path, wait=5.0)
    assert status == 3, f"exit status {status}: {err}"
    assert took < 1.0, f"took {took:.2f} s to notice the server was gone"
    assert "Traceback" not in err and "went away" in err, err
    assert (tmp_path / "state.toml").exists(), "the session state was not saved on the way out"
