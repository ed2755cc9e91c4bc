"""The user's snapshot library: programs per preset, other presets refused, atomic writes that survive a
crash at any point, hostile files refused in one line."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from synth.library import LIBRARY_FILE, Library, LibraryError, check_name
from synth.loudness import KeyLevel
from synth.preset import Preset, load_preset
from tests.fake_preset import make_fake_preset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("lib") / "fake"))


def test_store_find_and_program_numbers(preset: Preset, tmp_path: Path) -> None:
    lib = Library.open(tmp_path)
    a = lib.store(preset, "bottle", np.arange(8.0), 61.0, "bottle.wav")
    b = lib.store(preset, "voice", np.ones(8), 57.0)
    assert (a.program, b.program) == (0, 1)
    again = Library.open(tmp_path)  # read back from disk
    assert [s.name for s in again.for_preset(preset)] == ["bottle", "voice"]
    assert np.allclose(again.find(preset, "bottle").z, np.arange(8.0))
    replaced = again.store(preset, "bottle", np.zeros(8), 60.0)
    assert replaced.program == 0 and np.allclose(Library.open(tmp_path).find(preset, "bottle").z, 0.0)
    assert again.find(preset, "nothing") is None


def test_a_capture_s_tone_curve_is_kept(preset: Preset, tmp_path: Path) -> None:
    """A capture's tone curve (synth.tone) is part of its sound: stored, read back, refused when out of bounds."""
    tone = np.array([0.0, 1.5, -3.0, 2.0, 4.0, 7.5, 11.0])
    Library.open(tmp_path).store(preset, "bright", np.ones(8), 60.0, tone_db=tone)
    again = Library.open(tmp_path)
    np.testing.assert_allclose(again.find(preset, "bright").tone(), tone)
    assert again.store(preset, "flat", np.ones(8), 60.0).tone() is None
    with pytest.raises(LibraryError, match="tone curve"):
        again.store(preset, "loud", np.ones(8), 60.0, tone_db=np.full(7, 30.0))


def test_a_capture_s_level_per_key_is_kept(preset: Preset, tmp_path: Path) -> None:
    """A capture's measured level per key (synth.loudness) is stored and read back; one stored before
    levels existed plays at 1.0 (None)."""
    level = KeyLevel((36, 60, 84), (-7.5, 0.0, 3.25))
    Library.open(tmp_path).store(preset, "quiet", np.ones(8), 60.0, key_level=level)
    again = Library.open(tmp_path).find(preset, "quiet")
    assert again.key_level == level
    np.testing.assert_allclose(20 * np.log10(again.key_gain()[[36, 48, 84, 100]]), [-7.5, -3.75, 3.25, 3.25], atol=1e-4)
    assert Library.open(tmp_path).store(preset, "old", np.ones(8), 60.0).key_gain() is None


def test_another_presets_snapshot_is_refused(preset: Preset, tmp_path: Path) -> None:
    other = load_preset(make_fake_preset(tmp_path / "other", latent=4))
    lib = Library.open(tmp_path)
    lib.store(other, "pad", np.zeros(4), 60.0)
    with pytest.raises(LibraryError, match="captured with preset 'fake' \\(4 latent dims\\)"):
        Library.open(tmp_path).find(preset, "pad")
    assert Library.open(tmp_path).for_preset(preset) == []


@pytest.mark.parametrize("name", ["", "a,b", "x" * 65, "random:3", "tab\there"])
def test_bad_names(name: str) -> None:
    with pytest.raises(LibraryError):
        check_name(name)


CRASH = textwrap.dedent("""
    import os, sys
    import numpy as np
    from synth import library
    from synth.preset import load_preset
    where = sys.argv[3]
    real_replace, real_fsync = os.replace, os.fsync
    if where == "before-replace":
        library.os.replace = lambda a, b: os._exit(9)  # killed after the temp file is complete
    else:
        def half_and_die(fd):  # killed with half the new library written
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os._exit(9)
        library.os.fsync = half_and_die
    lib = library.Library.open(sys.argv[2])
    lib.store(load_preset(sys.argv[1]), "new", np.full(8, 7.0), 60.0)
""")


@pytest.mark.parametrize("where", ["mid-write", "before-replace"])
def test_library_survives_a_crash_mid_write(preset: Preset, tmp_path: Path, where: str) -> None:
    lib = Library.open(tmp_path)
    lib.store(preset, "kept", np.full(8, 3.0), 60.0)
    before = (tmp_path / LIBRARY_FILE).read_bytes()
    proc = subprocess.run([sys.executable, "-c", CRASH, str(preset.root), str(tmp_path), where], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert (tmp_path / LIBRARY_FILE).read_bytes() == before  # the old library, whole
    again = Library.open(tmp_path)
    assert [s.name for s in again.for_preset(preset)] == ["kept"]
    again.store(preset, "new", np.full(8, 7.0), 60.0)  # a leftover temp file does not get in the way
    assert [s.name for s in Library.open(tmp_path).for_preset(preset)] == ["kept", "new"]


@pytest.mark.parametrize("text, message", [
    ("not toml [[[", "unreadable snapshot library"),
    ("format_version = 99\n", "format_version 99"),
    ("format_version = 1\nsnapshot = 3\n", "array of tables"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 0\nz = ["a"]\n', "list of numbers"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 300\nz = [1.0]\n', "0..127"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [nan]\n', "finite"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [1.0]\ntrack_keys = [60, 36]\n'
     'track_z = [[1.0], [2.0]]\n', "track_keys must be increasing"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [1.0]\ntrack_keys = [36]\n'
     'track_z = [[inf]]\n', "one finite latent per key"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [1.0]\ntone_db = [1.0, 2.0]\n',
     "tone_db must be 7 gains"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [1.0]\n'
     'tone_db = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 99.0]\n', "tone_db must be 7 gains"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [1.0]\n'
     'key_level_keys = [36, 60]\nkey_level_db = [0.0, 40.0]\n', "key_level_db must be increasing MIDI keys"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [1.0]\n'
     'key_level_keys = [60, 36]\nkey_level_db = [0.0, 1.0]\n', "within"),
    ('format_version = 1\n[[snapshot]]\nname = "x"\npreset = "fake"\nprogram = 1\nz = [1.0]\n'
     'key_level_db = [0.0]\n', "key_level_keys and key_level_db"),
])
def test_hostile_library_files_get_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / LIBRARY_FILE).write_text(text)
    with pytest.raises(LibraryError, match=message) as err:
        Library.open(tmp_path)
    assert "\n" not in str(err.value)


def test_a_corrupt_library_is_never_overwritten(preset: Preset, tmp_path: Path) -> None:
    (tmp_path / LIBRARY_FILE).write_text("not toml [[[")
    with pytest.raises(LibraryError):
        Library.open(tmp_path).store(preset, "x", np.zeros(8), 60.0)
    assert (tmp_path / LIBRARY_FILE).read_text() == "not toml [[["
