"""How a live session ends under JACK: no port is unregistered from an active client.

rtmidi's closePort and PortAudio's CloseStream unregister ports while their client is active,
and jack2 can crash the process then (synth.jack_setup.may_unregister_ports). Under JACK the
session leaves its stream and MIDI ports to the process's end (run_synth leaves through
os._exit); elsewhere it closes them. The JACK suite checks that the server drops them
(tests/jack_probe.ports_left_behind, after every wired synth stops).
"""
from __future__ import annotations

import sys
import types

import pytest

import run_synth
from synth import live


class _RecordingPort:
    """Stands in for an rtmidi MidiIn: records the calls that would unregister its port."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def close_port(self) -> None:
        self.calls.append("close_port")

    def delete(self) -> None:
        self.calls.append("delete")


@pytest.mark.parametrize("use_jack, expected", [(True, []), (False, ["close_port", "delete"])])
def test_midi_ports_are_left_to_the_process_end_only_under_jack(monkeypatch, use_jack, expected):
    monkeypatch.setitem(sys.modules, "rtmidi", types.SimpleNamespace(API_UNIX_JACK=3, API_UNSPECIFIED=0))
    monkeypatch.setattr(live, "_native_midi_api", lambda rtmidi: rtmidi.API_UNSPECIFIED)
    inputs = live.MidiInputs(use_jack)
    port = _RecordingPort()
    inputs.ports.append(port)
    inputs.close()
    assert port.calls == expected
    assert inputs.ports == []


def test_an_unexpected_error_still_leaves_through_exit_now(monkeypatch, capsys):
    """A bug's traceback is printed in full, and the process still skips the teardown (status 1)."""

    def failing_main() -> int:
        raise RuntimeError("a bug")

    exits: list[int] = []
    monkeypatch.setattr(run_synth, "main", failing_main)
    monkeypatch.setattr(run_synth.os, "_exit", exits.append)
    run_synth.main_then_exit()
    assert exits == [1]
    assert "RuntimeError: a bug" in capsys.readouterr().err


def test_a_clean_stop_leaves_through_exit_now_with_its_status(monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(run_synth, "main", lambda: 2)
    monkeypatch.setattr(run_synth.os, "_exit", exits.append)
    run_synth.main_then_exit()
    assert exits == [2]
