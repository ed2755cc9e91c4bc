"""Hostile presets are refused at load in one line: every case of benchmarks/hostile_presets.py,
on the fake and the shipped preset, through run_synth.py's own main; a few through the real CLI
in a subprocess; and the external-data scan of synth.model_file on its own."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import run_synth
from benchmarks.hostile_presets import CASES, Outcome, external_case, midi_file, prepare_case, run_case
from synth.model_file import MAX_NESTING, external_data_tensors
from synth.preset import PresetError, load_preset

REPO = Path(__file__).resolve().parents[1]
CASE_BY_NAME = {c.name: c for c in CASES}


@pytest.fixture(scope="module")
def midi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return midi_file(tmp_path_factory.mktemp("hostile-midi") / "one-note.mid")


def _main_outcome(base: str, name: str, work: Path, midi: Path, capsys: pytest.CaptureFixture[str]) -> Outcome:
    """run_synth.main(--render) on the damaged preset, in this process (a traceback fails the test)."""
    root = prepare_case(base, CASE_BY_NAME[name], work)
    out = work / "out.wav"
    capsys.readouterr()
    status = run_synth.main(["--render", str(midi), "--out", str(out), "--preset", str(root), "--quiet"])
    return Outcome(base, name, status, capsys.readouterr().err, out.exists())


@pytest.mark.parametrize("base", ["fake", "default"])
@pytest.mark.parametrize("name", sorted(CASE_BY_NAME))
def test_case_refused_in_one_line(base: str, name: str, tmp_path: Path, midi: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    outcome = _main_outcome(base, name, tmp_path, midi, capsys)
    assert outcome.refused_cleanly, f"{base} / {name}: exit {outcome.status}, stderr {outcome.stderr!r}"


@pytest.mark.parametrize("name", ["decoder.onnx is a symlink out of the folder", "external data climbing out with ..",
                                  "hop = 1", "decoder returns NaN"])
def test_real_cli_exits_2_with_one_line(name: str, tmp_path: Path, midi: Path) -> None:
    """The CLI as a user runs it: exit status 2, one ``error:`` line, no traceback, no WAV."""
    outcome = run_case("fake", CASE_BY_NAME[name], tmp_path, midi)
    assert outcome.refused_cleanly, f"{name}: exit {outcome.status}, stderr {outcome.stderr!r}"


@pytest.mark.parametrize("base", ["fake", "default"])
def test_undamaged_control_renders(base: str, tmp_path: Path, midi: Path) -> None:
    """The harness itself: the same steps without damage render a WAV (so refusals mean something:
    a copy of the shipped preset that lacked a file once made every default case 'refused')."""
    outcome = run_case(base, None, tmp_path, midi)
    assert outcome.status == 0 and outcome.wrote, outcome.stderr


# ---------------------------------------------------------------------------- the external-data scan
def _tensor(name: str, external: bool) -> TensorProto:
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), name)
    if external:
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", "w.bin"
    return t


def _model(graph_init: list[TensorProto] = (), constant: TensorProto | None = None,
           sparse: TensorProto | None = None, subgraph_init: TensorProto | None = None,
           function_const: TensorProto | None = None) -> bytes:
    """y = x (+ whatever tensors are placed where the scan must look)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    if constant is not None:
        nodes.append(helper.make_node("Constant", [], ["c"], value=constant))
    if subgraph_init is not None:
        branch = helper.make_graph([helper.make_node("Identity", [subgraph_init.name], ["b"])], "branch", [],
                                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])], [subgraph_init])
        nodes.append(helper.make_node("If", ["cond"], ["r"], then_branch=branch, else_branch=branch))
    graph = helper.make_graph(nodes, "g", [x], [y], list(graph_init))
    if sparse is not None:
        idx = numpy_helper.from_array(np.array([0], np.int64), "idx")
        graph.sparse_initializer.append(helper.make_sparse_tensor(sparse, idx, [4]))
    model = helper.make_model(graph)
    if function_const is not None:
        fn = helper.make_function("local", "f", ["a"], ["o"],
                                  [helper.make_node("Constant", [], ["o"], value=function_const)],
                                  [helper.make_opsetid("", 17)])
        model.functions.append(fn)
    return model.SerializeToString()


@pytest.mark.parametrize("where", ["initializer", "constant", "sparse", "subgraph", "function"])
def test_scan_finds_external_data_wherever_it_hides(where: str) -> None:
    place = {"initializer": "graph_init", "constant": "constant", "sparse": "sparse", "subgraph": "subgraph_init",
             "function": "function_const"}[where]
    clean = _model(**{place: [_tensor("t", False)] if place == "graph_init" else _tensor("t", False)})
    hostile = _model(**{place: [_tensor("t", True)] if place == "graph_init" else _tensor("t", True)})
    assert external_data_tensors(clean) == []
    assert set(external_data_tensors(hostile)) == {"t"}  # (an If node has it in both branches)


def _onnx_view(data: bytes) -> list[str]:
    """The onnx package's own list of tensors in external data."""
    ext = onnx.external_data_helper
    return [t.name for t in ext._get_all_tensors(onnx.load_from_string(data)) if ext.uses_external_data(t)]


def test_scan_agrees_with_onnx_on_shipped_and_hostile_models(tmp_path: Path) -> None:
    for path in sorted((REPO / "presets" / "default").glob("*.onnx")):
        data = path.read_bytes()
        assert external_data_tensors(data) == _onnx_view(data) == []
    root = prepare_case("fake", CASE_BY_NAME["external data at an absolute path"], tmp_path)
    data = (root / "decoder.onnx").read_bytes()
    assert external_data_tensors(data) == _onnx_view(data) != []


def test_scan_refuses_malformed_and_too_deep_messages() -> None:
    with pytest.raises(ValueError, match="malformed"):
        external_data_tensors(b"\x3a\xff\xff\xff\xff\x0f")  # graph field claiming 4 GB
    with pytest.raises(ValueError, match="malformed"):
        external_data_tensors(b"\x3a\x05\x0a")  # graph field longer than the file
    nested = b""  # attribute.g -> graph.node -> node.attribute -> ... deeper than MAX_NESTING
    for _ in range(MAX_NESTING):
        attribute = b"\x32" + _varint(len(nested)) + nested
        node = b"\x2a" + _varint(len(attribute)) + attribute
        nested = b"\x0a" + _varint(len(node)) + node
    with pytest.raises(ValueError, match="malformed"):
        external_data_tensors(b"\x3a" + _varint(len(nested)) + nested)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_onnxruntime_itself_refuses_external_data_out_of_the_folder(tmp_path: Path) -> None:
    """The second layer (pyproject's onnxruntime minimum): opened by path, bypassing our scan,
    onnxruntime refuses a reference that climbs out of the model's folder."""
    root = prepare_case("fake", CASE_BY_NAME["external data climbing out with .."], tmp_path)
    assert (root.parent / "secret.bin").exists(), "precondition: the reference would resolve"
    with pytest.raises(Exception, match="(?i)validation failed|escapes|outside|not allowed"):
        ort.InferenceSession(str(root / "decoder.onnx"), providers=["CPUExecutionProvider"])


def test_external_data_inside_the_folder_is_refused_too(tmp_path: Path) -> None:
    """Even a reference that stays inside the folder: a preset's models carry their own weights."""
    root = prepare_case("fake", None, tmp_path)
    external_case("weights.bin", "weights.bin")(root)
    with pytest.raises(PresetError, match="external data") as info:
        load_preset(root)
    assert "\n" not in str(info.value)
