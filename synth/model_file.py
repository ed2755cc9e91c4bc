"""A preset's files, read the safe way: bounded, inside the preset folder, self-contained ONNX.

A downloaded preset is untrusted input. Every file it names must be a plain file name inside
its folder (a symlink may not lead out of it), must be a regular file, and must not be larger
than its kind allows (checked with ``stat`` before a byte is read, so a sparse 2 GB file costs
nothing). An ONNX model must carry all its weights: a tensor stored as *external data* would
make onnxruntime open another file the preset names, so :func:`external_data_tensors` walks
the model's protobuf (a tiny reader of the wire format; the engine does not depend on the
``onnx`` package) and any such tensor refuses the model.

The bytes returned by :func:`read_model` are what ``onnxruntime.InferenceSession`` loads
(never the path again), so what was checked is exactly what runs. onnxruntime's own refusal
of external-data paths outside the model folder (>= 1.24.3, the minimum in pyproject.toml) is
the second layer.
"""
from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from synth.errors import VaesynthError

MAX_TOML_BYTES = 4 << 20
"""preset.toml above this is refused unread (the default preset's is about 55 kB)."""
MAX_MODEL_BYTES = 256 << 20
"""An ONNX model above this is refused unread (the default decoder is 2.7 MB; protobuf's own
limit is 2 GB)."""
MAX_NESTING = 64
"""Deepest message nesting the reader follows (real models: graph > node > attribute > graph
... a few levels); deeper is refused as hostile."""


class PresetError(VaesynthError):
    """A preset that cannot be played; the message is one line for the user (``synth.preset``
    re-exports it: every preset check raises this one class)."""


def preset_file(root: Path, name: object, what: str, max_bytes: int) -> Path:
    """``root / name`` after checking: ``name`` a bare file name, the file inside ``root`` even
    through symlinks, a regular file, at most ``max_bytes``. ``what`` names the setting in messages."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise PresetError(f"{what} must be a file name inside the preset folder, not {name!r}")
    path = root / name
    try:
        real, real_root = path.resolve(strict=True), root.resolve(strict=True)
    except FileNotFoundError:
        raise PresetError(f"{path}: file missing") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise PresetError(f"{path}: cannot be opened ({type(exc).__name__})") from None
    if real.parent != real_root:
        raise PresetError(f"{path}: a link to {real}, outside the preset folder")
    try:
        info = real.stat()
    except OSError as exc:
        raise PresetError(f"{path}: cannot be opened ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise PresetError(f"{path}: {kind}, expected a file")
    if info.st_size > max_bytes:
        raise PresetError(f"{path}: {info.st_size / 2**20:.0f} MB, larger than the "
                          f"{max_bytes / 2**20:.0f} MB a preset file may be")
    return path


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, never more than ``max_bytes`` (it may have grown since ``stat``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise PresetError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise PresetError(f"{path}: larger than the {max_bytes / 2**20:.0f} MB a preset file may be")
    return data


# ---------------------------------------------------------------------------- protobuf wire format
# Field numbers from onnx.proto (ONNX IR), only those on a path to a TensorProto.
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):  # noqa: ANN202 - yields (field number, wire type, value)
    """Top-level fields of one message: varints as int, length-delimited as memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _BYTES:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Malformed
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            value = None
        else:  # groups (3, 4) are not used by ONNX
            raise _Malformed
        if pos > len(buf) or number == 0:
            raise _Malformed
        yield number, wire, value


def _tensor_is_external(buf: memoryview) -> str | None:
    """The tensor's name when it stores its data externally, else None."""
    name, external = "", False
    for number, wire, value in _fields(buf):
        if number == _TENSOR_NAME and wire == _BYTES:
            name = bytes(value).decode("utf-8", "replace")
        elif number == _TENSOR_EXTERNAL_DATA and wire == _BYTES:
            external = True
        elif number == _TENSOR_DATA_LOCATION and wire == _VARINT and value == _EXTERNAL:
            external = True
    return (name or "(unnamed)") if external else None


def _walk(buf: memoryview, kind: str, depth: int, found: list[str]) -> None:
    """Collect external tensors under a message of ``kind`` (model, graph, node, ...)."""
    if depth > MAX_NESTING:
        raise _Malformed
    children = _CHILDREN[kind]
    for number, wire, value in _fields(buf):
        child = children.get(number)
        if child is None or wire != _BYTES:
            continue
        if child == "tensor":
            name = _tensor_is_external(value)
            if name is not None:
                found.append(name)
        else:
            _walk(value, child, depth + 1, found)


_CHILDREN: dict[str, dict[int, str]] = {
    "model": {_MODEL_GRAPH: "graph", _MODEL_TRAINING: "training", _MODEL_FUNCTIONS: "function"},
    "training": {n: "graph" for n in _TRAINING_GRAPHS},
    "function": {_FUNCTION_NODE: "node"},
    "graph": {_GRAPH_NODE: "node", _GRAPH_INITIALIZER: "tensor", _GRAPH_SPARSE_INITIALIZER: "sparse"},
    "node": {_NODE_ATTRIBUTE: "attribute"},
    "attribute": {_ATTR_TENSOR: "tensor", _ATTR_TENSORS: "tensor", _ATTR_GRAPH: "graph", _ATTR_GRAPHS: "graph",
                  _ATTR_SPARSE: "sparse", _ATTR_SPARSES: "sparse"},
    "sparse": {_SPARSE_VALUES: "tensor", _SPARSE_INDICES: "tensor"},
}


def external_data_tensors(model: bytes) -> list[str]:
    """Names of the tensors of an ONNX ``ModelProto`` that keep their data in another file
    (initializers, Constant/attribute tensors, sparse tensors, in subgraphs and functions too).
    Raises ``ValueError`` when the bytes are not a well-formed protobuf message."""
    found: list[str] = []
    try:
        _walk(memoryview(model), "model", 0, found)
    except _Malformed:
        raise ValueError("malformed protobuf") from None
    return found


def read_model(path: Path) -> bytes:
    """A preset's ONNX model as bytes, checked to carry all its weights itself; ``path`` comes
    from :func:`preset_file`. Raises :class:`PresetError` with one line."""
    data = read_bounded(path, MAX_MODEL_BYTES)
    try:
        external = external_data_tensors(data)
    except ValueError as exc:
        raise PresetError(f"{path}: not a loadable ONNX model ({exc})") from None
    if external:
        more = f" and {len(external) - 1} more" if len(external) > 1 else ""
        raise PresetError(f"{path}: tensor {external[0]!r}{more} stored as external data in another file; "
                          "a preset's models must carry their weights (re-export it)")
    return data



def session_options(threads: int | None = 1) -> Any:
    """onnxruntime options every session of the engine uses: deterministic and quiet."""
    import onnxruntime as ort  # imported here: reading and checking files needs no runtime

    opts = ort.SessionOptions()
    # A fixed thread count and sequential execution make the output bit-identical run to run.
    opts.intra_op_num_threads = int(threads) if threads else 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.enable_mem_pattern = True
    # Idle intra-op workers would otherwise spin after every call, taking the core the audio
    # thread or the DAW needs; the caller's thread runs its share of the work either way.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def cpu_session(model: bytes, threads: int | None = 1) -> Any:
    """A CPU onnxruntime session over checked model bytes (from :func:`read_model`)."""
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
