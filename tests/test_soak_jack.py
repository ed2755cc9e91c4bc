"""Soak: two minutes of random dense MIDI into the live synth under the test session's JACK
server, through benchmarks/soak.py as a user runs it. The one test allowed to take minutes.

Asserted: RSS growth after the warm-up <= 5 MB, no stuck note, silence after all-notes-off,
peak <= 0 dBFS, sound actually came out, a clean exit. Xruns are reported, not asserted: this
is a shared machine (the real figures come from the benchmark on an otherwise idle machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.soak import KEYS, NOTES_PER_SECOND, RATE, dense_performance, read_rss_kb, sounding_pitches
from synth.events import KNOB_CCS

REPO = Path(__file__).resolve().parents[1]
SOAK_MINUTES = 2.0


@pytest.mark.jack
@pytest.mark.slow
def test_two_minute_soak_under_jack(jack_server: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--minutes", str(SOAK_MINUTES),
                           "--server", jack_server, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    report = done.stdout
    assert r["notes_sent"] >= 0.8 * NOTES_PER_SECOND * SOAK_MINUTES * 60, report
    assert r["median_second_peak_dbfs"] > -40, f"the synth hardly sounded: MIDI did not arrive?\n{report}"
    assert r["rss_growth_mb"] <= 5.0, report
    assert r["stuck_notes"] == 0, report
    assert r["silent_after_all_notes_off"], report
    assert r["peak_dbfs"] <= 0.0, report
    assert r["synth_exit"] == 0 and not r["synth_traceback"], report


def test_performance_is_dense_and_releases_every_note() -> None:
    perf = dense_performance(60.0, seed=3)
    held: dict[int, int] = {}
    kinds = set()
    for frame, msg in perf.events:
        kind = msg[0] & 0xF0
        kinds.add(kind if kind != 0xB0 else (kind, msg[1]))
        if kind == 0x90:
            assert msg[1] not in held, "a held key struck again"
            assert KEYS[0] <= msg[1] < KEYS[1]
            held[msg[1]] = frame
        elif kind == 0x80:
            assert held.pop(msg[1]) <= frame
    assert not held and perf.events[-1][0] <= perf.end
    assert 0.8 * NOTES_PER_SECOND * 60 <= perf.notes <= 1.2 * NOTES_PER_SECOND * 60
    assert {0x90, 0x80, 0xE0, 0xC0, (0xB0, 64)} <= kinds and any((0xB0, c) in kinds for c in KNOB_CCS)
    onsets = np.array(sorted(f for f, m in perf.events if m[0] & 0xF0 == 0x90))
    assert np.sum(np.diff(onsets) < 0.02 * RATE) > 0.2 * len(onsets), "no clusters"


def test_stuck_note_detector_hears_a_quiet_note_and_not_silence() -> None:
    t = np.arange(RATE // 2) / RATE
    tone = 10 ** (-60 / 20) * sum(np.sin(2 * np.pi * 220 * h * t) / h for h in range(1, 5))  # A3 = key 57
    audio = np.stack([tone, tone], axis=1).astype(np.float32)
    assert sounding_pitches(audio) == [57]
    assert sounding_pitches(np.zeros((RATE // 2, 2), np.float32)) == []
    assert sounding_pitches(audio * 1e-3) == []  # -120 dBFS: silence


def test_rss_reader_reads_this_process() -> None:
    kb = read_rss_kb(os.getpid())
    assert kb is not None and kb > 10_000
