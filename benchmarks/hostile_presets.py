"""Hostile presets: how many damaged or malicious preset folders ``run_synth.py --render`` refuses cleanly.

Each case starts from a good preset (tests/fake_preset.py's fake one, and a copy of
presets/default), damages it one way (a file outside the folder, a symlink out of it, a folder
where a file should be, a 100 MB preset.toml, an ONNX claiming 2 GB, external-data weights,
``n_fft = 2**24``, ``hop = 1``, values of the wrong type, a decoder of the wrong dtype, rank,
batch or one that returns NaN, ...) and runs the real CLI on it in a subprocess, as a user
would. A case is *refused cleanly* when the exit status is 2, stderr is exactly one line
``error: ...``, there is no traceback, no Python wording leaks ("'<' not supported between
instances ..."), and no WAV was written. An undamaged control of each base must render.

Prints a markdown table: base, case, refused in one line (yes/no), exit status, message.

Run: ``python -m benchmarks.hostile_presets [--base fake|default|both] [--case NAME ...]``.
Needs the ``onnx`` package (the train extra) to build the damaged models; the engine does not.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tomli_w

from synth.errors import EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PRESET = REPO / "presets" / "default"
PRESET_FILES = ("preset.toml", "decoder.onnx", "decoder_parts.onnx", "encoder.onnx", "latent_map.npz")
RAW_PYTHON_WORDING = ("not supported between instances", "object has no attribute", "invalid literal for",
                      "unhashable type", "NoneType", "object is not", "unsupported operand", "list index out of range",
                      "KeyError", "TypeError", "ValueError", "OverflowError", "RecursionError", "MemoryError")
"""Phrases of Python's own exception texts: a message holding one leaked an unhandled error."""


# ---------------------------------------------------------------------------- editing a preset
def edit_toml(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / "preset.toml"
    doc = tomllib.loads(path.read_text())
    change(doc)
    path.write_bytes(tomli_w.dumps(doc).encode())


def toml_set(table: str, key: str, value: Any) -> Callable[[Path], None]:
    return lambda root: edit_toml(root, lambda d: d[table].__setitem__(key, value))


def snapshot_set(key: str, value: Any) -> Callable[[Path], None]:
    """Set ``key`` of the first ``[[snapshots]]`` entry."""
    return lambda root: edit_toml(root, lambda d: d["snapshots"][0].__setitem__(key, value))


def toml_text(table: str, key: str, literal: str) -> Callable[[Path], None]:
    """Set ``[table] key = literal`` as raw TOML text (values tomli_w cannot write, e.g. nan)."""
    def apply(root: Path) -> None:
        edit_toml(root, lambda d: d[table].pop(key, None))
        text = (root / "preset.toml").read_text()
        head = f"[{table}]\n"
        (root / "preset.toml").write_text(text.replace(head, f"{head}{key} = {literal}\n", 1))
    return apply


def _onnx():  # noqa: ANN202 - the onnx module, imported only when a case needs it
    import onnx

    return onnx


def edit_model(file: str, change: Callable[[Any], None]) -> Callable[[Path], None]:
    """Load ``root/file`` with onnx, apply ``change(model)``, write the bytes back unchecked."""
    def apply(root: Path) -> None:
        model = _onnx().load(str(root / file))
        change(model)
        (root / file).write_bytes(model.SerializeToString())
    return apply


def _graph_tensors(model: Any) -> list[Any]:
    """Initializers and Constant-node tensors of the main graph, largest first."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    return sorted(tensors, key=lambda t: -len(t.raw_data))


def externalize(model: Any, location: str) -> bytes:
    """Move the largest tensor's bytes out of ``model`` to external data at ``location`` (what a
    malicious preset would do); returns those bytes."""
    onnx = _onnx()
    from onnx import numpy_helper

    tensor = _graph_tensors(model)[0]
    if not tensor.raw_data:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    data = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return data


def external_case(location: str, write_to: str | None) -> Callable[[Path], None]:
    """decoder.onnx with a tensor in external data at ``location``; its bytes are written to
    ``write_to`` (relative to the preset folder) when given, so the reference would resolve."""
    def apply(root: Path) -> None:
        model = _onnx().load(str(root / "decoder.onnx"))
        data = externalize(model, location)
        if write_to is not None:
            (root / write_to).parent.mkdir(parents=True, exist_ok=True)
            (root / write_to).write_bytes(data)
        (root / "decoder.onnx").write_bytes(model.SerializeToString())
    return apply


def _rename_output(model: Any, name: str, new: str) -> None:
    for node in model.graph.node:
        node.output[:] = [new if o == name else o for o in node.output]


def append_to_output(name: str, make_nodes: Callable[[str, str], list[Any]]) -> Callable[[Any], None]:
    """Insert nodes between the graph's producer of output ``name`` and the output itself."""
    def change(model: Any) -> None:
        _rename_output(model, name, f"{name}__raw")
        model.graph.node.extend(make_nodes(f"{name}__raw", name))
    return change


def nan_output(raw: str, out: str) -> list[Any]:
    import numpy as np
    from onnx import helper, numpy_helper

    return [helper.make_node("Constant", [], ["hostile_nan"], value=numpy_helper.from_array(np.float32(np.nan))),
            helper.make_node("Add", [raw, "hostile_nan"], [out])]


def short_output(raw: str, out: str) -> list[Any]:
    """Drop the last bin at run time while the declared shape stays (B, F)."""
    import numpy as np
    from onnx import helper, numpy_helper

    c = lambda n, v: helper.make_node("Constant", [], [n], value=numpy_helper.from_array(np.array(v, np.int64)))  # noqa: E731
    return [c("hs_start", [0]), c("hs_end", [-1]), c("hs_axis", [-1]),
            helper.make_node("Slice", [raw, "hs_start", "hs_end", "hs_axis"], [out])]


def unsqueeze_output(raw: str, out: str) -> list[Any]:
    """Give the output a leading axis of 1: (1, B, F) instead of (B, F)."""
    import numpy as np
    from onnx import helper, numpy_helper

    return [helper.make_node("Constant", [], ["hu_axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
            helper.make_node("Unsqueeze", [raw, "hu_axes"], [out])]


def input_as_double(name: str) -> Callable[[Any], None]:
    def change(model: Any) -> None:
        onnx = _onnx()
        for node in model.graph.node:
            node.input[:] = [f"{name}__f" if i == name else i for i in node.input]
        model.graph.node.insert(0, onnx.helper.make_node("Cast", [name], [f"{name}__f"], to=onnx.TensorProto.FLOAT))
        next(i for i in model.graph.input if i.name == name).type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return change


def rename_input(name: str, new: str) -> Callable[[Any], None]:
    def change(model: Any) -> None:
        for node in model.graph.node:
            node.input[:] = [new if i == name else i for i in node.input]
        next(i for i in model.graph.input if i.name == name).name = new
    return change


def add_dim(name: str) -> Callable[[Any], None]:
    """Declare one more (leading, size 1) dimension on input or output ``name``."""
    def change(model: Any) -> None:
        arg = next(a for a in [*model.graph.input, *model.graph.output] if a.name == name)
        arg.type.tensor_type.shape.dim.insert(0, _onnx().TensorShapeProto.Dimension(dim_value=1))
    return change


def fixed_batch(model: Any) -> None:
    for arg in [*model.graph.input, *model.graph.output]:
        dim = arg.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1


def drop_output(name: str) -> Callable[[Any], None]:
    def change(model: Any) -> None:
        keep = [o for o in model.graph.output if o.name != name]
        del model.graph.output[:]
        model.graph.output.extend(keep)
    return change


# ---------------------------------------------------------------------------- file-system damage
def sparse_file(name: str, size: int) -> Callable[[Path], None]:
    """Replace ``name`` by a sparse file of ``size`` bytes (no disk used, the size is only claimed)."""
    def apply(root: Path) -> None:
        with open(root / name, "r+b" if (root / name).exists() else "wb") as f:
            f.truncate(size)
    return apply


def replace_by_folder(name: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / name).unlink()
        (root / name).mkdir()
    return apply


def remove(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def symlink_out(name: str) -> Callable[[Path], None]:
    """``name`` becomes a symlink to an identical copy outside the folder."""
    def apply(root: Path) -> None:
        outside = root.parent / f"outside-{name}"
        shutil.copyfile(root / name, outside)
        (root / name).unlink()
        (root / name).symlink_to(outside)
    return apply


def copy_to(name: str, where: str, then: Callable[[Path], None]) -> Callable[[Path], None]:
    """Put a good copy of ``name`` at ``where`` (relative to the folder) and point the preset at it."""
    def apply(root: Path) -> None:
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, root / where)
        then(root)
    return apply


def write_bytes(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / name).write_bytes(data)


def truncate_half(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_bytes((root / name).read_bytes()[: (root / name).stat().st_size // 2])


def _npy_bytes(array: Any = None, claimed_shape: tuple[int, ...] | None = None) -> bytes:
    """An .npy member: ``array`` saved, or a header claiming ``claimed_shape`` over 64 zero bytes."""
    import io

    import numpy as np
    from numpy.lib import format as npy

    buf = io.BytesIO()
    if claimed_shape is None:
        np.save(buf, array)
        return buf.getvalue()
    npy.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": claimed_shape})
    return buf.getvalue() + bytes(64)


def latent_map_bomb(root: Path) -> None:
    """A [map] file of a few kB whose mu.npy header claims 4e9 x 16 floats (238 GiB)."""
    import zipfile

    import numpy as np

    members = {"mu": _npy_bytes(claimed_shape=(4_000_000_000, 16)), "sigma": _npy_bytes(np.ones((3, 16), np.float32)),
               "family": _npy_bytes(np.zeros(3, np.int16)), "program": _npy_bytes(np.zeros(3, np.int16)),
               "pitch": _npy_bytes(np.zeros(3, np.float32)), "families": _npy_bytes(np.array(["x"]))}
    with zipfile.ZipFile(root / "latent_map.npz", "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    edit_toml(root, lambda d: d.__setitem__("map", {"file": "latent_map.npz"}))


def latent_map_plain_npy(root: Path) -> None:
    import numpy as np

    with open(root / "latent_map.npz", "wb") as f:
        np.save(f, np.zeros((3, 16), np.float32))
    edit_toml(root, lambda d: d.__setitem__("map", {"file": "latent_map.npz"}))


def deep_toml(root: Path) -> None:
    with open(root / "preset.toml", "a") as f:
        f.write("\n[deep]\nx = " + "[" * 100_000 + "]" * 100_000 + "\n")


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path], None]


CASES: tuple[Case, ...] = (
    # files named by the preset
    Case("decoder file is an absolute path", toml_set("decoder", "file", "/etc/passwd")),
    Case("decoder file climbs out with ..", copy_to("decoder.onnx", "../decoder.onnx",
                                                    toml_set("decoder", "file", "../decoder.onnx"))),
    Case("decoder file in a subfolder", copy_to("decoder.onnx", "sub/decoder.onnx",
                                                toml_set("decoder", "file", "sub/decoder.onnx"))),
    Case("parts file outside the folder", toml_set("decoder", "parts_file", "../../x.onnx")),
    Case("encoder file is an empty name", toml_set("encoder", "file", "")),
    Case("latent map outside the folder",
         lambda root: edit_toml(root, lambda d: d.__setitem__("map", {"file": "/etc/hostname"}))),
    Case("decoder.onnx is a symlink out of the folder", symlink_out("decoder.onnx")),
    Case("preset.toml is a symlink out of the folder", symlink_out("preset.toml")),
    Case("decoder.onnx is a folder", replace_by_folder("decoder.onnx")),
    Case("preset.toml is a folder", replace_by_folder("preset.toml")),
    Case("decoder.onnx missing", remove("decoder.onnx")),
    Case("encoder.onnx missing", remove("encoder.onnx")),
    Case("preset.toml missing", remove("preset.toml")),
    Case("preset.toml of 100 MB", sparse_file("preset.toml", 100 << 20)),
    Case("decoder.onnx claims 2 GB", sparse_file("decoder.onnx", 2 << 30)),
    # file contents
    Case("preset.toml is binary", write_bytes("preset.toml", bytes(range(256)) * 64)),
    Case("preset.toml nested 100 000 deep", deep_toml),
    Case("latent map declares a 238 GB array", latent_map_bomb),
    Case("latent map is a plain .npy, not an .npz", latent_map_plain_npy),
    Case("decoder.onnx is garbage", write_bytes("decoder.onnx", b"\x08\x07" + os.urandom(4096))),
    Case("decoder.onnx is empty", write_bytes("decoder.onnx", b"")),
    Case("decoder.onnx cut in half", truncate_half("decoder.onnx")),
    # ONNX external data
    Case("external data inside the folder", external_case("weights.bin", "weights.bin")),
    Case("external data climbing out with ..", external_case("../secret.bin", "../secret.bin")),
    Case("external data at an absolute path", external_case("/etc/passwd", None)),
    # [audio]
    Case("n_fft = 2**24", toml_set("audio", "n_fft", 2**24)),
    Case("hop = 1", toml_set("audio", "hop", 1)),
    Case("hop = 100 (not a power of two)", toml_set("audio", "hop", 100)),
    Case("n_fft = \"1024\" (a string)", toml_set("audio", "n_fft", "1024")),
    Case("sample_rate = 24000.0 (a float)", toml_set("audio", "sample_rate", 24000.0)),
    Case("sample_rate = true", toml_set("audio", "sample_rate", True)),
    Case("sample_rate = 10**18", toml_set("audio", "sample_rate", 10**18)),
    Case("sample_rate = 4000000", toml_set("audio", "sample_rate", 4_000_000)),
    Case("window = \"blackman\"", toml_set("audio", "window", "blackman")),
    Case("window = 3", toml_set("audio", "window", 3)),
    Case("log_floor = \"tiny\"", toml_set("audio", "log_floor", "tiny")),
    Case("log_floor = 0", toml_set("audio", "log_floor", 0)),
    Case("log_floor = nan", toml_text("audio", "log_floor", "nan")),
    Case("note_seconds = 1e9", toml_set("audio", "note_seconds", 1e9)),
    Case("hold_seconds > note_seconds", toml_set("audio", "hold_seconds", 50.0)),
    Case("unknown [audio] key", toml_set("audio", "colour", 3)),
    Case("[audio] is a number", lambda root: edit_toml(root, lambda d: d.__setitem__("audio", 3))),
    # other values
    Case("release_seconds = 1e300", toml_set("decoder", "release_seconds", 1e300)),
    Case("time_on_max = \"2.5\"", toml_set("decoder", "time_on_max", "2.5")),
    Case("frame_stride = 0", toml_set("encoder", "frame_stride", 0)),
    Case("latent size = \"16\"", toml_set("latent", "size", "16")),
    Case("latent mean holds a string", lambda root: edit_toml(root, lambda d: d["latent"]["mean"].__setitem__(0, "x"))),
    Case("latent mean holds 10**400",
         lambda root: edit_toml(root, lambda d: d["latent"]["mean"].__setitem__(0, 10**400))),
    Case("pitch min = \"low\"", toml_set("pitch", "min", "low")),
    Case("mix gain = true", toml_set("mix", "gain", True)),
    Case("knob travel = 1e9 std", lambda root: edit_toml(root, lambda d: d["knobs"].__setitem__("travel", [1e9] * 8))),
    Case("snapshot level = 10**400", snapshot_set("level", 10**400)),
    Case("snapshot program = \"5\"", snapshot_set("program", "5")),
    # model inputs and outputs
    Case("decoder input z renamed", edit_model("decoder.onnx", rename_input("z", "latent"))),
    Case("decoder input pitch is float64", edit_model("decoder.onnx", input_as_double("pitch"))),
    Case("decoder input z of rank 3", edit_model("decoder.onnx", add_dim("z"))),
    Case("decoder output of rank 3", edit_model("decoder.onnx", lambda m: (
        append_to_output("log_mag", unsqueeze_output)(m), add_dim("log_mag")(m)))),
    Case("decoder with a fixed batch of 1", edit_model("decoder.onnx", fixed_batch)),
    Case("decoder returns NaN", edit_model("decoder.onnx", append_to_output("log_mag", nan_output))),
    Case("decoder returns one bin short", edit_model("decoder.onnx", append_to_output("log_mag", short_output))),
    Case("encoder lacks its logvar output", edit_model("encoder.onnx", drop_output("logvar"))),
    Case("format 5 with an encoder that takes the pitch (format 6's)", toml_set("preset", "format_version", 5)),
)
CASE_NAMES = tuple(c.name for c in CASES)


# ---------------------------------------------------------------------------- bases and runs
def make_base(base: str, dest: Path) -> Path:
    """A good preset folder at ``dest``: ``fake`` (tests/fake_preset.py) or ``default`` (a copy)."""
    if base == "fake":
        from tests.fake_preset import make_fake_preset

        return make_fake_preset(dest)
    dest.mkdir(parents=True)
    for name in PRESET_FILES:
        if (DEFAULT_PRESET / name).exists():
            shutil.copyfile(DEFAULT_PRESET / name, dest / name)
    if not (dest / "decoder_parts.onnx").exists():  # cases that name the parts file still apply
        shutil.copyfile(dest / "decoder.onnx", dest / "decoder_parts.onnx")
    return dest


def midi_file(path: Path) -> Path:
    """A one-note MIDI file (what the user asked to render)."""
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track += [mido.Message("note_on", note=60, velocity=100, time=0),
              mido.Message("note_off", note=60, velocity=0, time=240)]
    mid.save(str(path))
    return path


@dataclass(frozen=True)
class Outcome:
    base: str
    case: str
    status: int
    stderr: str
    wrote: bool

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()

    @property
    def refused_cleanly(self) -> bool:
        """Exit 2, one ``error:`` line, no traceback, no Python wording, no WAV."""
        lines = self.lines
        return (self.status == EXIT_USER_ERROR and len(lines) == 1 and lines[0].startswith("error: ")
                and "Traceback" not in self.stderr and not any(p in lines[0] for p in RAW_PYTHON_WORDING)
                and not self.wrote)


def prepare_case(base: str, case: Case | None, work: Path) -> Path:
    """Build the damaged preset for ``case`` (None: the undamaged control) under ``work``."""
    root = make_base(base, work / "case" / "preset")
    if case is not None:
        case.damage(root)
    return root


def run_cli(preset: Path, midi: Path, out: Path, timeout: float = 300.0) -> tuple[int, str]:
    """``run_synth.py --render`` in a subprocess, as a user runs it; (exit status, stderr)."""
    cmd = [sys.executable, str(REPO / "run_synth.py"), "--render", str(midi), "--out", str(out),
           "--preset", str(preset), "--quiet"]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"(no answer within {timeout:g} s)"
    return done.returncode, done.stderr


def run_case(base: str, case: Case | None, work: Path, midi: Path) -> Outcome:
    shutil.rmtree(work / "case", ignore_errors=True)
    root = prepare_case(base, case, work)
    out = work / "out.wav"
    out.unlink(missing_ok=True)
    status, err = run_cli(root, midi, out)
    return Outcome(base, case.name if case else "(undamaged control)", status, err, out.exists())


def table(outcomes: list[Outcome]) -> str:
    rows = ["| base | case | refused in one line | exit | message |", "|---|---|---|---|---|"]
    for o in outcomes:
        control = o.case.startswith("(")
        verdict = ("renders" if o.status == 0 else "FAILS") if control else ("yes" if o.refused_cleanly else "**no**")
        first = o.lines[0] if o.lines else ""
        message = first if len(o.lines) <= 1 else f"{first} (+{len(o.lines) - 1} more lines)"
        message = message.replace(str(Path(tempfile.gettempdir())), "$TMP").replace("|", "\\|")
        rows.append(f"| {o.base} | {o.case} | {verdict} | {o.status} | {message[:200]} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", choices=("fake", "default", "both"), default="both")
    ap.add_argument("--case", action="append", choices=CASE_NAMES, metavar="NAME",
                    help="run only this case (repeatable; default: all)")
    args = ap.parse_args()
    bases = ("fake", "default") if args.base == "both" else (args.base,)
    cases = [c for c in CASES if not args.case or c.name in args.case]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="vaesynth-hostile-") as tmp:
        work = Path(tmp)
        midi = midi_file(work / "one-note.mid")
        for base in bases:
            outcomes.append(run_case(base, None, work, midi))
            for case in cases:
                print(f"{base}: {case.name}", file=sys.stderr, flush=True)
                outcomes.append(run_case(base, case, work, midi))
    print(table(outcomes))
    hostile = [o for o in outcomes if not o.case.startswith("(")]
    clean = sum(o.refused_cleanly for o in hostile)
    controls_ok = all(o.status == 0 for o in outcomes if o.case.startswith("("))
    print(f"\nrefused cleanly: {clean} of {len(hostile)} hostile-preset cases "
          f"({len(cases)} cases x {len(bases)} base preset(s)); undamaged controls render: "
          f"{'yes' if controls_ok else 'NO'}")
    return 0 if clean == len(hostile) and controls_ok else 1


if __name__ == "__main__":
    sys.exit(main())
