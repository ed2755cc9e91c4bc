"""The preset's frame decoder (contract "framewise-v1") behind onnxruntime.

``FrameDecoder.decode`` writes ``log_mag (B, F)`` into a caller-owned array. On the CPU it
binds the caller's numpy arrays directly (io_binding, no copies, no output allocation);
bindings for a bounded set of batch sizes up to ``max_batch`` are built and run once before
the audio starts (``bind``, ``warm_up``), so the render path creates no numpy arrays and meets
no first-call set-up.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

from synth.contract import DECODER_INPUTS, DECODER_OUTPUT
from synth.errors import VaesynthError
from synth.model_file import read_model, session_options
from synth.partials import PARTS_OUTPUTS, place_partials
from synth.preset import Preset

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class DecoderError(VaesynthError, RuntimeError):
    """The decoder could not be opened or run; one-line message."""


def _notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes the decoder is bound and warmed for: every size up to 64, then steps of 4 up to
    128, 8 up to 256 and 32 beyond, ending at ``max_batch``. A padded row costs as much as a real
    one (the network is most of a frame's cost), so the live batches (16-48 rows at 32-96 voices)
    waste none and an offline block's at most 3 %."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b += 1 if b < 64 else 4 if b < 128 else 8 if b < 256 else 32
    sizes.append(int(max_batch))
    return sizes


class FrameDecoder:
    """onnxruntime session for ``preset.decoder_path``.

    ``device``: "auto" (CUDA when present, quietly CPU otherwise), "gpu" (CUDA, or CPU with a
    one-line notice) or "cpu". ``threads``: intra-op threads (default 1: deterministic and
    leaves the other cores to the audio system).
    """

    def __init__(self, preset: Preset, device: str = "auto", threads: int | None = None, max_batch: int = 64) -> None:
        import onnxruntime as ort

        if device not in ("auto", "cpu", "gpu"):
            raise DecoderError(f"device must be auto, cpu or gpu, not {device!r}")
        self.latent_size = preset.latent_size
        self.n_bins = preset.params.n_bins
        opts = session_options(threads)
        # The checked bytes, never the path: what synth.model_file vetted (no external data) is
        # exactly what onnxruntime loads.
        model = read_model(preset.decoder_path)
        self._session = None
        if device in ("auto", "gpu"):
            if _CUDA in ort.get_available_providers():
                try:
                    sess = ort.InferenceSession(model, opts, providers=[_CUDA, _CPU])
                    if _CUDA in sess.get_providers():
                        self._session = sess
                    elif device == "gpu":
                        _notice("CUDA provider did not start; decoding on the CPU")
                except Exception as exc:  # noqa: BLE001 - any CUDA start-up failure means "use the CPU"
                    _notice(f"CUDA failed ({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__}); decoding on the CPU")
            elif device == "gpu":
                _notice("no CUDA in this onnxruntime build; decoding on the CPU")
        if self._session is None:
            try:
                self._session = ort.InferenceSession(model, opts, providers=[_CPU])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises unrelated types
                raise DecoderError(f"{preset.decoder_path}: cannot open decoder ({str(exc).strip()[:160]})") from None
        self._on_cuda = _CUDA in self._session.get_providers()
        # On the CPU, a preset's parts decoder (the network without its geometry) plus
        # synth.partials' placement is about three times faster than the full graph.
        self._parts = None
        if not self._on_cuda and preset.decoder_parts_path is not None:
            parts_model = read_model(preset.decoder_parts_path)
            try:
                self._parts = ort.InferenceSession(parts_model, opts, providers=[_CPU])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises unrelated types
                raise DecoderError(f"{preset.decoder_parts_path}: cannot open ({str(exc).strip()[:160]})") from None
            # the preset loader checked that this output has a fixed partial count
            self.n_harmonics = int(next(o.shape[-1] for o in self._parts.get_outputs() if o.name == PARTS_OUTPUTS[0]))
        self._bins_per_hz = preset.params.n_fft / preset.params.sample_rate
        self._nyquist_hz = preset.params.sample_rate / 2.0
        self._log_floor = preset.params.log_floor
        self.max_batch = 0
        self._bindings: list[Any] = []
        self._bound_to: tuple[NDArray, ...] | None = None
        self.reserve(max_batch)

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, most preferred first."""
        return list(self._session.get_providers())

    @property
    def uses_parts(self) -> bool:
        """True when frames come from the parts decoder plus ``synth.partials`` (CPU, preset has one)."""
        return self._parts is not None

    def reserve(self, max_batch: int) -> None:
        """Preallocate per-batch-size state for batches up to ``max_batch`` (not real-time safe).

        Batches are rounded up to one of a few bucket sizes (``batch_buckets``), so a bounded
        set of bindings covers every batch the engine can make and ``warm_up`` can run each
        one before the audio starts. The extra rows decode stale but finite inputs and are
        never read.
        """
        if max_batch <= self.max_batch:
            return
        self.max_batch = int(max_batch)
        if self._parts is not None:  # the parts decoder's outputs, placed by synth.partials
            self._amp = np.zeros((self.max_batch, self.n_harmonics), np.float32)
            self._inharm = np.zeros(self.max_batch, np.float32)
            self._noise = np.zeros((self.max_batch, self.n_bins), np.float32)
        self.buckets = batch_buckets(self.max_batch)
        self._bucket_of = np.zeros(self.max_batch + 1, np.int64)  # batch size -> bucket index
        j = 0
        for b in range(1, self.max_batch + 1):
            while self.buckets[j] < b:
                j += 1
            self._bucket_of[b] = j
        self._bindings = [(self._parts or self._session).io_binding() for _ in self.buckets]
        self._bound_to = None

    def bind(self, z: NDArray, pitch: NDArray, velocity: NDArray, time_on: NDArray, time_off: NDArray,
             out: NDArray) -> None:
        """Bind every bucket to row prefixes of these arrays (``z (B, L)``, others ``(B,)``,
        ``out (B, F)``, B >= ``max_batch``, C-contiguous float32). Not real-time safe: the
        engine calls it once in ``prepare``; the arrays must then keep their identity."""
        arrays = (z, pitch, velocity, time_on, time_off)
        for a in (*arrays, out):
            if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape[0] < self.max_batch:
                raise DecoderError(f"decoder buffers must be C-contiguous float32 with >= {self.max_batch} rows")
        for binding, b in zip(self._bindings, self.buckets):
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            for name, arr in zip(DECODER_INPUTS, arrays):
                binding.bind_cpu_input(name, arr[:b])
            if self._on_cuda:
                binding.bind_output(DECODER_OUTPUT, "cpu")
            elif self._parts is not None:
                for name, arr in zip(PARTS_OUTPUTS, (self._amp, self._inharm, self._noise)):
                    binding.bind_output(name, "cpu", 0, np.float32, [b, *arr.shape[1:]], arr.ctypes.data)
            else:
                binding.bind_output(DECODER_OUTPUT, "cpu", 0, np.float32, [b, self.n_bins], out.ctypes.data)
        self._bound_to = (*arrays, out)  # kept alive: the bindings point into these arrays
        self._bound_pitch, self._bound_out = pitch, out  # what a parts decode's placement reads and writes

    def warm_up(self) -> None:
        """Run every bucket once on the bound arrays, so onnxruntime's per-shape set-up (memory
        plans, kernel selection) happens now rather than in the audio callback. Call after
        ``bind`` with finite inputs in the buffers."""
        if self._bound_to is None:
            raise DecoderError("bind() the decoder buffers before warm_up()")
        session = self._parts or self._session
        for binding, b in zip(self._bindings, self.buckets):
            session.run_with_iobinding(binding)
            if self._parts is not None:
                self._place(b)

    def decode(self, z: NDArray, pitch: NDArray, velocity: NDArray, time_on: NDArray, time_off: NDArray,
               out: NDArray, batch: int | None = None) -> None:
        """Decode the first ``batch`` rows: ``z (B, L)``, the others ``(B,)`` -> ``out (B, F)`` float32.

        The arrays must be C-contiguous float32 and keep their identity between calls (the
        engine's preallocated batch buffers, bound once in ``prepare``); other arrays are bound
        here on first use (tools and tests; not real-time safe). Rows from ``batch`` up to its
        bucket size are decoded too and may be overwritten.
        """
        b = int(batch if batch is not None else z.shape[0])
        if b <= 0:
            return
        if b > self.max_batch:
            raise DecoderError(f"batch {b} exceeds the reserved {self.max_batch}")
        bound = self._bound_to
        if bound is None or any(a is not b for a, b in zip((z, pitch, velocity, time_on, time_off, out), bound)):
            self.bind(z, pitch, velocity, time_on, time_off, out)
        binding = self._bindings[self._bucket_of[b]]
        if self._on_cuda:
            size = self.buckets[self._bucket_of[b]]
            # inputs are copied to the device each run; re-bind so the new values are seen
            for name, arr in zip(DECODER_INPUTS, (z, pitch, velocity, time_on, time_off)):
                binding.bind_cpu_input(name, arr[:size])
            self._session.run_with_iobinding(binding)
            out[:size] = binding.get_outputs()[0].numpy()
        elif self._parts is not None:
            self._parts.run_with_iobinding(binding)
            self._place(b)
        else:
            self._session.run_with_iobinding(binding)

    def _place(self, rows: int) -> None:
        """Finish the first ``rows`` frames of a parts decode into the bound output."""
        place_partials(self._amp, self._inharm, self._noise, self._bound_pitch, rows, self._bins_per_hz,
                       self._nyquist_hz, self._log_floor, self._bound_out)

    def decode_array(self, z: NDArray, pitch: NDArray, velocity: NDArray, time_on: NDArray, time_off: NDArray) -> NDArray[np.float32]:
        """Convenience (allocating) form for tests and tools: returns ``(B, F)``."""
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (z, pitch, velocity, time_on, time_off)]
        feeds = dict(zip(DECODER_INPUTS, arrays))
        return self._session.run([DECODER_OUTPUT], feeds)[0]
