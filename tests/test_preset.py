"""Preset validation: a good preset loads, every kind of damage is one clear line."""
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import tomllib

from synth.contract import SpectrogramParams
from synth.preset import V1_MIX_GAIN, PresetError, load_preset
from tests.fake_preset import MIX_GAIN, knob_directions, make_decoder, make_fake_preset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def preset_dir(tmp_path: Path) -> Path:
    return make_fake_preset(tmp_path / "p")


def _edit(root: Path, change) -> None:
    path = root / "preset.toml"
    doc = tomllib.loads(path.read_text())
    change(doc)
    path.write_bytes(tomli_w.dumps(doc).encode())


@pytest.fixture
def v1_dir(tmp_path: Path) -> Path:
    return make_fake_preset(tmp_path / "v1", format_version=1)


def test_fake_preset_loads(preset_dir: Path) -> None:
    p = load_preset(preset_dir)
    assert p.format_version == 6
    assert p.latent_size == len(p.latent_mean) == p.knobs.directions.shape[1]
    assert p.knobs.count == len(p.knob_order) == 8
    np.testing.assert_allclose(p.knobs.directions, knob_directions(p.latent_size), atol=1e-6)
    assert p.mix_gain == pytest.approx(MIX_GAIN)
    assert p.params == SpectrogramParams()
    assert p.snapshot_for_program(5).name == "snap1"


def test_version_1_preset_still_loads(v1_dir: Path) -> None:
    p = load_preset(v1_dir)
    order = tomllib.loads((v1_dir / "preset.toml").read_text())["latent"]["knob_order"]
    assert p.format_version == 1 and p.knob_order == order[:8]
    np.testing.assert_array_equal(p.knobs.directions, np.eye(p.latent_size)[order[:8]])
    np.testing.assert_allclose(p.knobs.scale, p.latent_std[order[:8]])
    np.testing.assert_allclose(p.knobs.center, p.latent_mean)
    assert p.mix_gain == V1_MIX_GAIN


def test_encoder_takes_the_pitch_from_format_6_only(tmp_path: Path) -> None:
    """A format-6 encoder may read the note's pitch (the harmonic encoder) or not (as every format-5
    export); a format-5 preset whose encoder wants a pitch is refused in one line, as an older engine
    refuses it."""
    pitched = make_fake_preset(tmp_path / "v6", format_version=6)
    older = make_fake_preset(tmp_path / "v5", format_version=5)
    unpitched_encoder = (older / "encoder.onnx").read_bytes()
    assert load_preset(pitched).format_version == 6 and load_preset(older).format_version == 5
    (older / "encoder.onnx").write_bytes((pitched / "encoder.onnx").read_bytes())
    with pytest.raises(PresetError) as info:
        load_preset(older)
    message = str(info.value)
    assert "encoder.onnx" in message and "pitch" in message and "\n" not in message
    (pitched / "encoder.onnx").write_bytes(unpitched_encoder)
    assert load_preset(pitched).format_version == 6


def test_mix_table_is_optional(tmp_path: Path) -> None:
    assert load_preset(make_fake_preset(tmp_path / "p", mix_gain=None)).mix_gain == 1.0


@pytest.mark.parametrize("version", [0, 7, 9])
def test_unknown_version_says_what_is_read(preset_dir: Path, version: int) -> None:
    _edit(preset_dir, lambda d: d["preset"].update(format_version=version))
    with pytest.raises(PresetError) as info:
        load_preset(preset_dir)
    message = str(info.value)
    assert f"format_version {version}" in message and "reads 1, 2, 3, 4, 5 and 6" in message and "re-export" in message
    assert "\n" not in message


def test_version_2_preset_still_loads(tmp_path: Path) -> None:
    p = load_preset(make_fake_preset(tmp_path / "v2", format_version=2))
    assert p.format_version == 2 and all(s.track is None for s in p.snapshots)


def test_key_track_interpolates_between_track_keys(tmp_path: Path) -> None:
    root = make_fake_preset(tmp_path / "track", key_track=True)
    doc = tomllib.loads((root / "preset.toml").read_text())
    p = load_preset(root)
    for snap, raw in zip(p.snapshots, doc["snapshots"]):
        low, home, high = (np.array(r, np.float32) for r in raw["track_z"])  # at keys 36, 60, 84
        assert snap.track is not None and snap.track.shape == (128, p.latent_size)
        np.testing.assert_allclose(snap.z_at(60), snap.z, atol=1e-6)
        np.testing.assert_allclose(snap.z_at(36), low, atol=1e-5)
        np.testing.assert_allclose(snap.z_at(48), (low + home) / 2, atol=1e-5)
        np.testing.assert_allclose(snap.z_at(21), low, atol=1e-5)  # held below the first track key
        np.testing.assert_allclose(snap.z_at(108), high, atol=1e-5)  # and above the last
        assert np.abs(snap.z_at(36) - snap.z).max() > 0.1  # the fake's offsets are not zero


def test_key_level_interpolates_in_db_between_its_keys(tmp_path: Path) -> None:
    root = make_fake_preset(tmp_path / "levels")
    doc = tomllib.loads((root / "preset.toml").read_text())
    doc["snapshots"][0].update(key_level_keys=[40, 60, 80], key_level_db=[-6.0, 0.0, 6.0])
    (root / "preset.toml").write_text(tomli_w.dumps(doc))
    p = load_preset(root)
    gain = p.snapshots[0].key_level
    assert gain is not None and gain.shape == (128,) and p.snapshots[1].key_level is None
    db = 20 * np.log10(gain)
    np.testing.assert_allclose(db[[0, 40, 50, 60, 70, 80, 127]], [-6, -6, -3, 0, 3, 6, 6], atol=1e-4)


def test_shipped_default_preset_loads() -> None:
    p = load_preset(REPO / "presets" / "default")
    assert len(p.snapshots) >= 8
    assert len({s.name for s in p.snapshots}) == len(p.snapshots)
    size = sum(f.stat().st_size for f in (REPO / "presets" / "default").iterdir())
    assert size <= 20 * 1024 * 1024


DAMAGE = {
    "no folder": (lambda r: None, "not found"),
    "wrong version": (lambda d: d["preset"].update(format_version=9), "format_version"),
    "decoder outside the folder": (lambda d: d["decoder"].update(file="../decoder.onnx"), "inside the preset folder"),
    "absolute decoder path": (lambda d: d["decoder"].update(file="/etc/passwd"), "inside the preset folder"),
    "parts outside the folder": (lambda d: d["decoder"].update(parts_file="../../x.onnx"), "inside the preset folder"),
    "unknown audio key": (lambda d: d["audio"].update(colour=3), "unknown audio parameter"),
    "bad hop": (lambda d: d["audio"].update(hop=100), "hop"),
    "short mean": (lambda d: d["latent"].update(mean=[0.0]), "'mean' must be"),
    "zero std": (lambda d: d["latent"].update(std=[0.0] * d["latent"]["size"]), "std must be positive"),
    "no knobs": (lambda d: d.pop("knobs"), "missing [knobs]"),
    "knob rows": (lambda d: d["knobs"]["directions"].pop(), "must have 8 rows"),
    "knob row size": (lambda d: d["knobs"]["directions"][2].pop(), "row 3: 'directions' must be"),
    "knob not unit": (lambda d: d["knobs"].update(directions=[[2 * x for x in r] for r in d["knobs"]["directions"]]),
                      "not orthonormal"),
    "knobs not orthogonal": (lambda d: d["knobs"]["directions"].__setitem__(1, d["knobs"]["directions"][0]),
                             "not orthonormal"),
    "knob center": (lambda d: d["knobs"].update(center=[0.0]), "'center' must be"),
    "knob scale zero": (lambda d: d["knobs"]["scale"].__setitem__(3, 0.0), "'scale' must be positive"),
    "knob scale nan": (lambda d: d["knobs"]["scale"].__setitem__(0, float("nan")), "NaN or Inf"),
    "knob scale size": (lambda d: d["knobs"]["scale"].pop(), "'scale' must be 8 numbers"),
    "knob travel huge": (lambda d: d["knobs"].update(travel=[3.0] * 7 + [50.0]), "'travel' must lie in 1..6"),
    "knob travel zero": (lambda d: d["knobs"].update(travel=[0.0] * 8), "'travel' must lie in 1..6"),
    "knob travel size": (lambda d: d["knobs"].update(travel=[3.0] * 3), "'travel' must be 8 numbers"),
    "mix zero": (lambda d: d["mix"].update(gain=0.0), "gain 0.0 must be"),
    "mix negative": (lambda d: d["mix"].update(gain=-1), "gain -1.0 must be"),
    "mix inf": (lambda d: d["mix"].update(gain=float("inf")), "gain inf must be"),
    "mix huge": (lambda d: d["mix"].update(gain=1e4), "gain 10000.0 must be"),
    "mix type": (lambda d: d["mix"].update(gain="loud"), "'gain' has the wrong type"),
    "contract": (lambda d: d["decoder"].update(contract="whole-note"), "contract"),
    "missing table": (lambda d: d.pop("pitch"), "missing [pitch]"),
    "snapshot program": (lambda d: d["snapshots"][0].update(program=300), "outside 0..127"),
    "snapshot level huge": (lambda d: d["snapshots"][0].update(level=1000.0), "level 1000.0 outside"),
    "snapshot level type": (lambda d: d["snapshots"][0].update(level="loud"), "'level' has the wrong type"),
    "track in version 2": (lambda d: (d["preset"].update(format_version=2), d["snapshots"][0].update(
        track_keys=[60], track_z=[d["snapshots"][0]["z"]])), "needs format_version 3"),
    "track keys not increasing": (lambda d: d["snapshots"][0].update(
        track_keys=[60, 36], track_z=[d["snapshots"][0]["z"]] * 2), "increasing keys"),
    "track key outside": (lambda d: d["snapshots"][0].update(
        track_keys=[60, 200], track_z=[d["snapshots"][0]["z"]] * 2), "increasing keys"),
    "track rows": (lambda d: d["snapshots"][0].update(track_keys=[36, 60], track_z=[d["snapshots"][0]["z"]]),
                   "one latent per track key"),
    "track nan": (lambda d: d["snapshots"][0].update(track_keys=[60], track_z=[[float("nan")] * d["latent"]["size"]]),
                  "NaN or Inf"),
    "track without keys": (lambda d: d["snapshots"][0].update(track_z=[d["snapshots"][0]["z"]]), "'track_keys'"),
    "key level in version 3": (lambda d: (d["preset"].update(format_version=3), d["snapshots"][0].update(
        key_level_keys=[60], key_level_db=[1.0])), "needs format_version 4"),
    "key level too loud": (lambda d: d["snapshots"][0].update(key_level_keys=[36, 60], key_level_db=[0.0, 40.0]),
                           "'key_level_db' must hold one level in -12..12 dB"),
    "key level nan": (lambda d: d["snapshots"][0].update(key_level_keys=[60], key_level_db=[float("nan")]),
                      "'key_level_db'"),
    "key level text": (lambda d: d["snapshots"][0].update(key_level_keys=[60], key_level_db=["loud"]), "'key_level_db'"),
    "key level count": (lambda d: d["snapshots"][0].update(key_level_keys=[36, 60], key_level_db=[1.0]),
                        "per key (2)"),
    "key level keys": (lambda d: d["snapshots"][0].update(key_level_keys=[60, 60], key_level_db=[1.0, 1.0]),
                       "increasing keys"),
    "key level without keys": (lambda d: d["snapshots"][0].update(key_level_db=[1.0]), "'key_level_keys'"),
    "tone in version 4": (lambda d: (d["preset"].update(format_version=4), d["snapshots"][0].update(
        tone_db=[0.0] * 7)), "needs format_version 5"),
    "tone too loud": (lambda d: d["snapshots"][0].update(tone_db=[0.0] * 6 + [40.0]), "'tone_db' must hold 7 gains"),
    "tone nan": (lambda d: d["snapshots"][0].update(tone_db=[float("nan")] * 7), "'tone_db' must hold 7 gains"),
    "tone count": (lambda d: d["snapshots"][0].update(tone_db=[1.0] * 3), "'tone_db' must hold 7 gains"),
    "tone text": (lambda d: d["snapshots"][0].update(tone_db=["bright"] * 7), "'tone_db' must hold 7 gains"),
    "tone bool": (lambda d: d["snapshots"][0].update(tone_db=[True] * 7), "'tone_db' must hold 7 gains"),
    "map outside the folder": (lambda d: d.update(map={"file": "../m.npz"}), "inside the preset folder"),
    "map missing": (lambda d: d.update(map={"file": "m.npz"}), "file missing"),
    "missing onnx": (lambda d: d["decoder"].update(file="nope.onnx"), "file missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_preset_is_one_line(preset_dir: Path, case: str) -> None:
    change, expected = DAMAGE[case]
    target = preset_dir / "gone" if case == "no folder" else preset_dir
    if case != "no folder":
        _edit(preset_dir, change)
    with pytest.raises(PresetError) as info:
        load_preset(target)
    message = str(info.value)
    assert expected in message and "\n" not in message


V1_DAMAGE = {
    "knob order": (lambda d: d["latent"].update(knob_order=[0] * d["latent"]["size"]), "permutation"),
    "no knob order": (lambda d: d["latent"].pop("knob_order"), "missing key 'knob_order'"),
}


@pytest.mark.parametrize("case", sorted(V1_DAMAGE))
def test_damaged_version_1_preset_is_one_line(v1_dir: Path, case: str) -> None:
    change, expected = V1_DAMAGE[case]
    _edit(v1_dir, change)
    with pytest.raises(PresetError) as info:
        load_preset(v1_dir)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_every_program_resolves_on_default_layout() -> None:
    """Own snapshot, else the nearest in its GM group, else the nearest overall (ties: lower), on
    the shipped default preset (its held-out programs have no snapshot of their own)."""
    from synth.contract import gm_group

    p = load_preset(REPO / "presets" / "default", check_models=False)
    by_program = {s.program: s.name for s in p.snapshots}
    missing = [q for q in range(128) if q not in by_program]
    assert missing, "precondition: some programs have no snapshot of their own"
    for q in range(128):
        got = p.snapshot_for_program(q)
        assert got is not None, f"program {q} recalls nothing"
        if q in by_program:
            assert got.name == by_program[q]
            continue
        group = [r for r in by_program if gm_group(r) == gm_group(q)]
        pool = group or list(by_program)
        want = min(pool, key=lambda r: (abs(r - q), r))
        assert got.program == want, f"program {q} recalls {got.program}, expected {want}"
    assert p.snapshot_for_program(40).program in range(40, 48), "violin (held out) recalls a strings snapshot"
    assert p.snapshot_for_program(56).program in range(56, 64), "trumpet (held out) recalls a brass snapshot"


def test_corrupt_onnx_and_toml(preset_dir: Path) -> None:
    (preset_dir / "decoder.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(PresetError, match="not a loadable ONNX model"):
        load_preset(preset_dir)
    (preset_dir / "preset.toml").write_text("[preset\nname=")
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset(preset_dir)


def test_decoder_of_another_size_is_refused(preset_dir: Path) -> None:
    make_decoder(preset_dir / "decoder.onnx", SpectrogramParams(), latent=3)
    with pytest.raises(PresetError, match="last dimension"):
        load_preset(preset_dir)


def test_knob_travel_is_optional_and_sets_each_knobs_reach(preset_dir: Path) -> None:
    from synth.knobs import TimbreKnobs

    default = load_preset(preset_dir).knobs
    np.testing.assert_array_equal(default.travel, np.full(8, 3.0))  # no [knobs] travel in the file
    travel = [3.0] * 6 + [4.5, 5.5]
    _edit(preset_dir, lambda d: d["knobs"].update(travel=travel))
    preset = load_preset(preset_dir)
    knobs = TimbreKnobs(preset)
    z = np.zeros(preset.latent_size, np.float32)
    for knob in range(8):
        knobs.control(knob, 127, z)  # every knob at its top end
    reach = (z.astype(np.float64) - preset.knobs.center) @ preset.knobs.directions.T
    np.testing.assert_allclose(reach, np.array(travel) * preset.knobs.scale, rtol=1e-5)


def test_the_engine_runs_without_torch_and_scipy() -> None:
    """In a fresh interpreter where scipy cannot be imported (``pip install -e .`` does not install it; numba
    takes it when present, and it costs a fresh capture 0.2 s), every module of ``synth`` (the UI's too) and
    ``run_synth`` import, the shipped preset plays a note through the engine's compiled kernels, and torch
    is never imported."""
    import subprocess
    import sys

    code = ("import sys\n"
            "sys.modules['scipy'] = None  # import scipy raises ImportError, as where it is not installed\n"
            "import pkgutil, importlib, numpy as np, synth, synth.ui, run_synth\n"
            "for pkg in (synth, synth.ui):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "from synth.engine import Engine\n"
            "from synth.preset import load_preset\n"
            "eng = Engine(load_preset('presets/default'), device='cpu')\n"
            "eng.prepare(48000, 256, warm=False)\n"
            "eng.push(0, 0x90, 60, 100)\n"
            "out = np.zeros((9600, 2), np.float32)\n"
            "eng.process(out)\n"
            "print(bool(np.isfinite(out).all() and np.abs(out).max() > 1e-3), 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"], done.stdout
