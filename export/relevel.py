"""Re-measure a preset's ``[mix] gain``, snapshot ``level`` trims and levels per key through the
current engine, in place: what the export measures (``export.onnx.mix_gain``,
``export.onnx.key_levels``), for an engine change that moves
note peaks (the phase of a note's first frame sets how its partials add up) without retraining.
Re-running the preset's own export command gives the same values.

    python -m export.relevel presets/NAME
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Sequence

from export.onnx import MEDIAN_PEAK_TEXT, TARGET_PEAK_DBFS, _write_doc, key_levels, mix_gain, without_key_levels
from synth.contract import PRESET_FORMAT_VERSION
from synth.errors import VaesynthError, run_command

MEDIAN_PEAK = re.compile(re.escape(MEDIAN_PEAK_TEXT.split("{")[0]) + r"[0-9.e+-]+")


def relevel(preset_dir: Path) -> tuple[float, float, list[float]]:
    """Measure on a unity-gain copy (gain 1, every level 1, none per key), then write gain, levels
    and the description's median peak into ``preset_dir/preset.toml``, then measure and write the
    levels per key; returns ``(gain, median peak, levels)``."""
    doc = tomllib.loads((preset_dir / "preset.toml").read_text())
    per_key = doc["preset"].get("format_version", 1) >= 2  # version 1's knobs read differently: it stays 1
    if per_key:
        doc["preset"]["format_version"] = PRESET_FORMAT_VERSION  # levels per key need it (the rest reads the same)
    snaps = [without_key_levels(snap) for snap in doc["snapshots"]]
    with tempfile.TemporaryDirectory() as tmp:
        unity = Path(tmp) / preset_dir.name
        shutil.copytree(preset_dir, unity)
        flat = {**doc, "mix": {**doc["mix"], "gain": 1.0}, "snapshots": [{**snap, "level": 1.0} for snap in snaps]}
        _write_doc(unity, flat)
        gain, median, levels = mix_gain(unity, snaps)
    doc["mix"]["gain"] = gain
    doc["snapshots"] = [{**snap, "level": level} for snap, level in zip(snaps, levels)]
    doc["preset"]["description"] = MEDIAN_PEAK.sub(MEDIAN_PEAK_TEXT.format(median), doc["preset"]["description"])
    _write_doc(preset_dir, doc)
    if per_key:
        doc["snapshots"] = [{**snap, **keyed} for snap, keyed in zip(doc["snapshots"], key_levels(preset_dir, snaps, gain))]
        _write_doc(preset_dir, doc)
    return gain, median, levels


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("preset", help="preset folder (its preset.toml is rewritten)")
    args = p.parse_args(argv)
    if not (Path(args.preset) / "preset.toml").is_file():
        raise VaesynthError(f"{args.preset}: no preset.toml")
    gain, median, levels = relevel(Path(args.preset))
    print(f"[mix] gain {gain:.4f} (a v100 C4 of the median snapshot at {TARGET_PEAK_DBFS:g} dBFS; "
          f"median peak at unity {median:.3g}); snapshot levels {min(levels):.3f}..{max(levels):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(lambda: main()))
