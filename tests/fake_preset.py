"""Build a small but honest preset folder without torch (onnx.helper graphs).

The decoder follows the "framewise-v1" contract: ``z (B, L)``, ``pitch``, ``velocity``,
``time_on``, ``time_off`` (all ``(B,)``) -> ``log_mag (B, F)``. It places ``HARMONICS``
Hann main lobes (|sin(pi d) / (pi d (1 - d^2))|, |d| < 2 bins) at exact multiples of
f0 = 440 * 2^((pitch - 69) / 12), so a rendered note is in tune by construction; the
amplitude follows velocity, a slow decay in ``time_on`` and a fast one after note-off,
and ``z`` tilts the harmonic amplitudes (timbre): harmonic h is scaled by
``exp(z @ timbre_weights(L))[h]``. ``nan_above_pitch`` makes the decoder return NaN for
pitches above it (to test the engine's NaN guard).

``preset.toml`` is format version 6 by default (its encoder takes the pitch): ``[knobs]`` with random orthonormal,
non-axis-aligned directions (``knob_directions``) and ``[mix] gain = MIX_GAIN``;
``format_version=1`` writes the old ``[latent] knob_order`` instead. ``key_track=True`` gives every
snapshot key tracking (``TRACK_KEYS``): its latent at each, ``z`` plus a random offset that
is zero at key 60. ``tones`` gives the snapshots of some programs a tone curve (``tone_db``).

The encoder inverts the decoder at key ``ENCODER_PITCH`` (see ``make_encoder``), so a capture of a
note the engine renders there from a latent in ``capture_subspace`` recovers it. Only the latent directions that change
the harmonics' relative levels can be recovered (a level change is the microphone's, not the
timbre's): ``capture_subspace``. The latent map (``[map] file``) holds points in that subspace.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import tomli_w
from onnx import TensorProto, helper, numpy_helper

from synth.contract import LATENT_MAP_FILE, SpectrogramParams
from synth.latent_map import LatentMap

HARMONICS = 6
LATENT = 8
OPSET = 17
# Keeps d away from the removable singularities of the Hann kernel at d = 0, +-1.
LOBE_NUDGE = 3.1e-4
MIX_GAIN = 0.5  # keeps the engine's output level at what the tests were written for (old master 0.5)
PROGRAMS = (0, 5, 9)
TRACK_KEYS = (36, 60, 84)
ENCODER_PITCH = 60.0
MAP_POINTS = 200
KNOB_SCALE = 0.8  # [knobs] scale of knob i: KNOB_SCALE ** i (most variance first)


def timbre_weights(latent: int = LATENT) -> np.ndarray:
    """``(L, HARMONICS)``: the decoder's log-amplitude of harmonic h grows by ``(z @ W)[h]``."""
    return (0.3 * np.random.default_rng(7).standard_normal((latent, HARMONICS))).astype(np.float32)


def capture_subspace(latent: int = LATENT) -> np.ndarray:
    """``(R, L)`` orthonormal rows spanning the latents a capture can recover: those that change the
    harmonics' levels relative to each other (R = HARMONICS - 1 when L >= HARMONICS - 1)."""
    w = timbre_weights(latent).astype(np.float64)
    centred = w - w.mean(axis=1, keepdims=True)  # a common change of every harmonic is a level change
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, s > 1e-6 * s.max()].T


def _harmonic_bins(params: SpectrogramParams) -> np.ndarray:
    """The bin nearest each harmonic of ``ENCODER_PITCH``: ``(HARMONICS,)`` int64."""
    f0 = 440.0 * 2.0 ** ((ENCODER_PITCH - 69.0) / 12.0)
    return np.round(np.arange(1, HARMONICS + 1) * f0 * params.n_fft / params.sample_rate).astype(np.int64)


def _encoder_inverse(decoder: Path, params: SpectrogramParams, latent: int) -> tuple[np.ndarray, np.ndarray]:
    """``(offset (H,), inverse (H, L))``: the decoder's centred log-levels at the harmonic bins for z = 0
    (the Hann lobes' values there, which the map must take away), and the pseudo-inverse of the centred
    timbre weights."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])
    feeds = {"z": np.zeros((1, latent), np.float32), "pitch": np.full(1, ENCODER_PITCH, np.float32),
             "velocity": np.full(1, 100.0, np.float32), "time_on": np.full(1, 0.1, np.float32),
             "time_off": np.full(1, -1.0, np.float32)}
    levels = sess.run(["log_mag"], feeds)[0][0, _harmonic_bins(params)].astype(np.float64)
    w = timbre_weights(latent).astype(np.float64)
    centred = w - w.mean(axis=1, keepdims=True)
    return (levels - levels.mean()).astype(np.float32), np.linalg.pinv(centred).astype(np.float32)


def make_latent_map(latent: int = LATENT) -> LatentMap:
    """``MAP_POINTS`` posteriors in the capture subspace, families by program."""
    rng = np.random.default_rng(19)
    basis = capture_subspace(latent)
    mu = (rng.standard_normal((MAP_POINTS, len(basis))) @ basis).astype(np.float32)
    program = np.array(PROGRAMS, np.int16)[np.arange(MAP_POINTS) % len(PROGRAMS)]
    return LatentMap(mu=mu, sigma=np.full_like(mu, 0.2), family=(np.arange(MAP_POINTS) % 2).astype(np.int16),
                     program=program, pitch=np.full(MAP_POINTS, ENCODER_PITCH, np.float32), families=("piano", "organ"))


def knob_directions(latent: int = LATENT) -> np.ndarray:
    """``(min(8, L), L)`` orthonormal rows, none of them close to a latent axis."""
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((latent, latent)))
    return q.T[: min(8, latent)]


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _decoder_nodes(params: SpectrogramParams, latent: int, nan_above_pitch: float | None) -> list[onnx.NodeProto]:
    f = params.n_bins
    bin_hz = params.sample_rate / params.n_fft
    f32 = np.float32
    consts = [
        _const("c69", f32(69.0)), _const("c12", f32(12.0)), _const("c2", f32(2.0)), _const("c440", f32(440.0)),
        _const("harm", np.arange(1, HARMONICS + 1, dtype=f32)[None, :]),
        _const("inv_h", (0.35 / np.arange(1, HARMONICS + 1, dtype=f32))[None, :]),
        _const("bin_hz", f32(bin_hz)),
        _const("bins", np.arange(f, dtype=f32)[None, None, :]),
        _const("nudge", f32(LOBE_NUDGE)), _const("pi", f32(np.pi)), _const("one", f32(1.0)),
        _const("two", f32(2.0)), _const("zero_f", f32(0.0)),
        _const("wz", timbre_weights(latent)),
        _const("inv127", f32(1.0 / 127.0)), _const("decay_on", f32(-0.4)), _const("decay_off", f32(-12.0)),
        _const("floor", f32(params.log_floor)), _const("ax1", np.array([1], np.int64)),
        _const("ax2", np.array([2], np.int64)),
    ]
    n = helper.make_node
    nodes = consts + [
        n("Sub", ["pitch", "c69"], ["p69"]), n("Div", ["p69", "c12"], ["oct"]), n("Pow", ["c2", "oct"], ["ratio"]),
        n("Mul", ["ratio", "c440"], ["f0"]), n("Unsqueeze", ["f0", "ax1"], ["f0c"]),
        n("Mul", ["f0c", "harm"], ["fh"]), n("Div", ["fh", "bin_hz"], ["centre"]),
        n("Unsqueeze", ["centre", "ax2"], ["centre3"]), n("Sub", ["bins", "centre3"], ["d0"]),
        n("Add", ["d0", "nudge"], ["d"]), n("Mul", ["d", "pi"], ["pid"]), n("Sin", ["pid"], ["spid"]),
        n("Mul", ["d", "d"], ["d2"]), n("Sub", ["one", "d2"], ["omd2"]), n("Mul", ["pid", "omd2"], ["den"]),
        n("Div", ["spid", "den"], ["kern"]), n("Abs", ["kern"], ["akern"]), n("Abs", ["d"], ["ad"]),
        n("Less", ["ad", "two"], ["inlobe"]), n("Where", ["inlobe", "akern", "zero_f"], ["lobe"]),
        # amplitudes (B, K): velocity * 1/h * exp(z @ wz) * envelope
        n("MatMul", ["z", "wz"], ["tilt"]), n("Exp", ["tilt"], ["etilt"]), n("Mul", ["etilt", "inv_h"], ["a0"]),
        n("Mul", ["velocity", "inv127"], ["vel01"]), n("Mul", ["time_on", "decay_on"], ["lon"]),
        n("Relu", ["time_off"], ["toff"]), n("Mul", ["toff", "decay_off"], ["loff"]),
        n("Add", ["lon", "loff"], ["lenv"]), n("Exp", ["lenv"], ["env"]), n("Mul", ["env", "vel01"], ["g"]),
        n("Unsqueeze", ["g", "ax1"], ["gc"]), n("Mul", ["a0", "gc"], ["amp"]),
        n("Unsqueeze", ["amp", "ax2"], ["amp3"]), n("Mul", ["amp3", "lobe"], ["parts"]),
        n("ReduceSum", ["parts", "ax1"], ["mag"], keepdims=0), n("Add", ["mag", "floor"], ["magf"]),
    ]
    if nan_above_pitch is None:
        nodes.append(n("Log", ["magf"], ["log_mag"]))
    else:
        nodes += [
            n("Log", ["magf"], ["lm"]), _const("thr", f32(nan_above_pitch)), _const("nan", f32(np.nan)),
            n("Greater", ["pitch", "thr"], ["bad"]), n("Unsqueeze", ["bad", "ax1"], ["badc"]),
            n("Where", ["badc", "nan", "lm"], ["log_mag"]),
        ]
    return nodes


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_decoder(path: Path, params: SpectrogramParams, latent: int = LATENT, nan_above_pitch: float | None = None) -> None:
    """Write a framewise-v1 decoder ONNX graph to ``path``."""
    vec = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B"])  # noqa: E731
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", latent]),
              vec("pitch"), vec("velocity"), vec("time_on"), vec("time_off")]
    out = [helper.make_tensor_value_info("log_mag", TensorProto.FLOAT, ["B", params.n_bins])]
    graph = helper.make_graph(_decoder_nodes(params, latent, nan_above_pitch), "fake_decoder", inputs, out)
    _save(graph, path)


def make_encoder(path: Path, params: SpectrogramParams, latent: int = LATENT, decoder: Path | None = None,
                 pitched: bool = True) -> None:
    """Write an encoder; logvar = 0. With ``decoder`` it inverts that decoder at ``ENCODER_PITCH`` (see
    the module doc): the mean log-level over time at the harmonic bins, centred (the recording's level
    and the note's envelope go: they are common to every harmonic), minus the lobes' own levels, times
    the pseudo-inverse of the centred timbre weights. Exact while the note stays well above the log
    floor (a note held through its 4 s).
    Without, a fixed random projection of the mean frame. ``pitched``: it also takes the note's pitch
    ``(B,)`` (format 6, as an exported harmonic encoder does), which it needs but does not use."""
    f = params.n_bins
    n = helper.make_node
    mu = "mu_free" if pitched else "mu"  # a pitched encoder adds 0 * pitch to it below
    if decoder is None:
        proj = (np.random.default_rng(3).standard_normal((f, latent)) / f).astype(np.float32)
        nodes = [_const("proj", proj), n("ReduceMean", ["log_mag"], ["m"], axes=[1], keepdims=0),
                 n("MatMul", ["m", "proj"], [mu])]
    else:
        offset, inverse = _encoder_inverse(decoder, params, latent)
        nodes = [
            _const("bins", _harmonic_bins(params)), _const("offset", offset[None, :]), _const("inverse", inverse),
            n("ReduceMean", ["log_mag"], ["mean"], axes=[1], keepdims=0),
            n("Gather", ["mean", "bins"], ["levels"], axis=1),
            n("ReduceMean", ["levels"], ["level"], axes=[1], keepdims=1),
            n("Sub", ["levels", "level"], ["centred"]), n("Sub", ["centred", "offset"], ["tilt"]),
            n("MatMul", ["tilt", "inverse"], [mu]),
        ]
    nodes.append(_const("zero", np.float32(0.0)))
    inp = [helper.make_tensor_value_info("log_mag", TensorProto.FLOAT, ["B", "T", f])]
    if pitched:  # mu + 0 * pitch: a session run without the pitch fails
        nodes += [_const("column", np.array([-1, 1], np.int64)), n("Reshape", ["pitch", "column"], ["p1"]),
                  n("Mul", ["p1", "zero"], ["p0"]), n("Add", ["mu_free", "p0"], ["mu"])]
        inp.append(helper.make_tensor_value_info("pitch", TensorProto.FLOAT, ["B"]))
    nodes.append(n("Mul", ["mu", "zero"], ["logvar"]))
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", latent]) for name in ("mu", "logvar")]
    _save(helper.make_graph(nodes, "fake_encoder", inp, outs), path)


def make_fake_preset(
    root: str | Path,
    params: SpectrogramParams | None = None,
    latent: int = LATENT,
    nan_above_pitch: float | None = None,
    time_on_max: float = 2.5,
    release_seconds: float = 0.5,
    format_version: int = 6,
    programs: tuple[int, ...] = PROGRAMS,
    mix_gain: float | None = MIX_GAIN,
    latent_map: bool = True,
    key_track: bool = False,
    tones: dict[int, list[float]] | None = None,
    key_level: bool = False,
) -> Path:
    """Create ``root`` with decoder.onnx, encoder.onnx and preset.toml; returns ``root``.

    ``programs``: one snapshot (``snap0``, ``snap1``, ...) per program number. ``mix_gain``: the
    ``[mix] gain`` of a version-2 preset, None for no ``[mix]`` table. ``latent_map``: ship a
    ``[map] file`` (``make_latent_map``). ``key_level``: every snapshot gets a level trim and a level
    per key (format 4), different per snapshot."""
    params = params or SpectrogramParams()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    make_decoder(root / "decoder.onnx", params, latent, nan_above_pitch)
    inverts = root / "decoder.onnx" if nan_above_pitch is None else None  # a NaN decoder has nothing to invert
    make_encoder(root / "encoder.onnx", params, latent, decoder=inverts, pitched=format_version >= 6)
    rng = np.random.default_rng(11)
    doc = {
        "preset": {"name": "fake", "format_version": format_version,
                   "description": "test preset built by tests/fake_preset.py",
                   "reproduce": "python -c 'from tests.fake_preset import make_fake_preset; make_fake_preset(DIR)'"},
        "audio": params.to_dict(),
        "latent": {"size": latent, "mean": [0.0] * latent, "std": [1.0] * latent},
        "pitch": {"min": 21, "max": 108},
        "decoder": {"file": "decoder.onnx", "contract": "framewise-v1", "time_on_max": time_on_max,
                    "release_seconds": release_seconds},
        "encoder": {"file": "encoder.onnx", "frame_stride": 2},
        "snapshots": [
            {"name": f"snap{i}", "program": p, "z": [float(x) for x in rng.uniform(-2, 2, latent)]}
            for i, p in enumerate(programs)
        ],
    }
    if key_track:
        for snap in doc["snapshots"]:
            z = np.array(snap["z"])
            track = [z + rng.uniform(-1.5, 1.5, latent) * (key != 60) for key in TRACK_KEYS]
            snap["track_keys"], snap["track_z"] = list(TRACK_KEYS), [[float(x) for x in row] for row in track]
    if key_level:
        for i, snap in enumerate(doc["snapshots"]):
            snap["level"] = 0.5 + 0.25 * i
            snap["key_level_keys"], snap["key_level_db"] = [36, 60, 84], [-6.0 + i, 0.0, 4.0 - i]
    for snap in doc["snapshots"]:
        if tones and snap["program"] in tones:
            snap["tone_db"] = [float(v) for v in tones[snap["program"]]]
    if latent_map:
        make_latent_map(latent).save(root / LATENT_MAP_FILE)
        doc["map"] = {"file": LATENT_MAP_FILE}
    if format_version == 1:
        doc["latent"]["knob_order"] = list(range(latent))[::-1]
    else:
        dirs = knob_directions(latent)
        doc["knobs"] = {"center": [0.0] * latent, "directions": [[float(x) for x in row] for row in dirs],
                        "scale": [KNOB_SCALE ** i for i in range(len(dirs))]}
        if mix_gain is not None:
            doc["mix"] = {"gain": mix_gain}
    (root / "preset.toml").write_bytes(tomli_w.dumps(doc).encode())
    return root
