"""Preset validation: a good preset loads, every kind of damage is one clear line."""
from pathlib import Path

import pytest
import tomli_w
import tomllib

from synth.contract import SpectrogramParams
from synth.preset import PresetError, load_preset
from tests.fake_preset import make_decoder, make_fake_preset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def preset_dir(tmp_path: Path) -> Path:
    return make_fake_preset(tmp_path / "p")


def _edit(root: Path, change) -> None:
    path = root / "preset.toml"
    doc = tomllib.loads(path.read_text())
    change(doc)
    path.write_bytes(tomli_w.dumps(doc).encode())


def test_fake_preset_loads(preset_dir: Path) -> None:
    p = load_preset(preset_dir)
    assert p.latent_size == len(p.latent_mean) == len(p.knob_order)
    assert p.params == SpectrogramParams()
    assert p.snapshot_for_program(5).name == "snap1"


def test_shipped_default_preset_loads() -> None:
    p = load_preset(REPO / "presets" / "default")
    assert len(p.snapshots) >= 8
    assert len({s.name for s in p.snapshots}) == len(p.snapshots)
    size = sum(f.stat().st_size for f in (REPO / "presets" / "default").iterdir())
    assert size <= 20 * 1024 * 1024


DAMAGE = {
    "no folder": (lambda r: None, "not found"),
    "wrong version": (lambda d: d["preset"].update(format_version=9), "format_version"),
    "unknown audio key": (lambda d: d["audio"].update(colour=3), "unknown audio parameter"),
    "bad hop": (lambda d: d["audio"].update(hop=100), "hop"),
    "short mean": (lambda d: d["latent"].update(mean=[0.0]), "'mean' must be"),
    "zero std": (lambda d: d["latent"].update(std=[0.0] * d["latent"]["size"]), "std must be positive"),
    "knob order": (lambda d: d["latent"].update(knob_order=[0] * d["latent"]["size"]), "permutation"),
    "contract": (lambda d: d["decoder"].update(contract="whole-note"), "contract"),
    "missing table": (lambda d: d.pop("pitch"), "missing [pitch]"),
    "snapshot program": (lambda d: d["snapshots"][0].update(program=300), "outside 0..127"),
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
