"""``run_synth.py --render`` end to end: a real subprocess, a MIDI file written with mido."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from tests.fake_preset import make_fake_preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_preset(tmp_path_factory.mktemp("cli") / "fake")


@pytest.fixture(scope="module")
def midi_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tracks, a tempo change, CC, bend and program change; 480 ticks per beat."""
    mid = mido.MidiFile(ticks_per_beat=480)
    conductor, notes = mido.MidiTrack(), mido.MidiTrack()
    mid.tracks += [conductor, notes]
    conductor.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))  # 120 bpm
    conductor.append(mido.MetaMessage("set_tempo", tempo=250000, time=480))  # 240 bpm after 0.5 s
    notes.append(mido.Message("program_change", program=5, time=0))
    notes.append(mido.Message("note_on", note=60, velocity=100, time=0))
    notes.append(mido.Message("control_change", control=70, value=100, time=240))
    notes.append(mido.Message("note_off", note=60, velocity=0, time=240))  # 0.5 s
    notes.append(mido.Message("pitchwheel", pitch=2000, time=0))
    notes.append(mido.Message("note_on", note=67, velocity=90, time=0))
    notes.append(mido.Message("note_off", note=67, velocity=0, time=480))  # 0.5 + 0.25 s
    path = tmp_path_factory.mktemp("midi") / "song.mid"
    mid.save(str(path))
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run_synth.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_midifile_reads_tempo_map(midi_file: Path) -> None:
    from synth.midifile import read_midi_events

    ev = read_midi_events(midi_file, 48000)
    times = {(e.status & 0xF0, e.data1): e.sample_time for e in ev if e.status & 0xF0 in (0x80, 0x90)}
    assert times[(0x90, 60)] == 0
    assert times[(0x90, 67)] == 24000  # 480 ticks at 120 bpm
    # note 67 is released 480 ticks later at 240 bpm: 0.25 s
    offs = [e.sample_time for e in ev if e.data1 == 67 and (e.status & 0xF0 == 0x80 or e.data2 == 0)]
    assert offs[-1] == 36000
    assert any(e.status & 0xF0 == 0xE0 for e in ev) and any(e.status & 0xF0 == 0xC0 for e in ev)


def test_render_writes_wav_deterministically(tmp_path: Path, preset_dir: Path, midi_file: Path) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    for out in (a, b):
        done = run("--render", str(midi_file), "--out", str(out), "--preset", str(preset_dir), "--decoder-device", "cpu")
        assert done.returncode == 0, done.stderr
    assert a.read_bytes() == b.read_bytes()
    x, rate = sf.read(str(a), dtype="float32")
    assert rate == 48000 and x.ndim == 2 and x.shape[1] == 2
    assert sf.info(str(a)).subtype == "PCM_24"
    # last note-off at 0.75 s, release 0.5 s + 30 ms fade: the tail is rendered, then it stops
    assert 1.25 <= len(x) / rate <= 1.5
    assert np.abs(x[:36000]).max() > 0.05 and np.all(x[-256:] == 0.0)


def test_render_latent_and_float(tmp_path: Path, preset_dir: Path, midi_file: Path) -> None:
    plain, moved = tmp_path / "p.wav", tmp_path / "m.wav"
    assert run("--render", str(midi_file), "--out", str(plain), "--preset", str(preset_dir), "--float").returncode == 0
    done = run("--render", str(midi_file), "--out", str(moved), "--preset", str(preset_dir), "--float",
               "--latent", "0=2.5", "--latent", "3=abs:-1")
    assert done.returncode == 0, done.stderr
    assert sf.info(str(moved)).subtype == "FLOAT"
    assert not np.array_equal(sf.read(str(plain))[0], sf.read(str(moved))[0])


@pytest.mark.parametrize("case", ["missing_midi", "bad_midi", "bad_preset", "unwritable", "bad_latent", "latent_dim"])
def test_errors_are_one_line_exit_2(case: str, tmp_path: Path, preset_dir: Path, midi_file: Path) -> None:
    garbage = tmp_path / "garbage.mid"
    garbage.write_bytes(b"MThd this is not midi")
    args = {"midi": str(midi_file), "out": str(tmp_path / "o.wav"), "preset": str(preset_dir)}
    extra: list[str] = []
    expect = ""
    if case == "missing_midi":
        args["midi"], expect = str(tmp_path / "none.mid"), "not found"
    elif case == "bad_midi":
        args["midi"], expect = str(garbage), "not a readable MIDI file"
    elif case == "bad_preset":
        args["preset"], expect = str(tmp_path), "not a preset"
    elif case == "unwritable":
        args["out"], expect = str(tmp_path / "no" / "such" / "dir" / "o.wav"), "cannot write"
    elif case == "bad_latent":
        extra, expect = ["--latent", "three=1"], "DIM=VALUE"
    else:
        extra, expect = ["--latent", "99=1"], "latent dim 99"
    done = run("--render", args["midi"], "--out", args["out"], "--preset", args["preset"], *extra)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_render_applies_cc_automation_after_a_program_change(tmp_path: Path) -> None:
    """A file's knob CC right after a program change is heard (no pick-up offline)."""
    import mido

    from synth.cli_render import render
    from synth.engine import Engine
    from synth.midifile import read_midi_events
    from synth.preset import load_preset
    from tests.fake_preset import make_fake_preset

    preset = load_preset(make_fake_preset(tmp_path / "fake"))
    takes = []
    for cc in (None, 127):
        mid = mido.MidiFile(ticks_per_beat=480)
        track = mido.MidiTrack()
        mid.tracks.append(track)
        track.append(mido.Message("program_change", program=5, time=0))
        if cc is not None:
            track.append(mido.Message("control_change", control=70, value=cc, time=0))
        track.append(mido.Message("note_on", note=60, velocity=100, time=10))
        track.append(mido.Message("note_off", note=60, velocity=0, time=480))
        path = tmp_path / f"cc{cc}.mid"
        mid.save(str(path))
        eng = Engine(preset, device="cpu", knob_pickup=False)
        eng.prepare(48000, 1024, warm=False)

        class Sink:
            chunks: list = []

            def write(self, x):  # noqa: ANN001, ANN202
                self.chunks.append(x.copy())

        sink = Sink()
        sink.chunks = []
        render(eng, read_midi_events(path, 48000), sink, 1024)
        takes.append(np.concatenate(sink.chunks))
    n = min(len(t) for t in takes)
    assert np.abs(takes[0][:n] - takes[1][:n]).max() > 1e-3, "the CC after the program change was ignored"
