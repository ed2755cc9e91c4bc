"""The preset's frame decoder (contract "framewise-v1") behind onnxruntime.

``FrameDecoder.decode`` writes ``log_mag (B, F)`` into a caller-owned array. On the CPU it
binds the caller's numpy arrays directly (io_binding, no copies, no output allocation);
bindings for every batch size up to ``max_batch`` are built in advance, so the render path
creates no numpy arrays.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

from synth.preset import DECODER_INPUTS, DECODER_OUTPUT, Preset

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class DecoderError(RuntimeError):
    """The decoder could not be opened or run; one-line message."""


def _notice(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # A fixed thread count and sequential execution make the output bit-identical run to run.
    opts.intra_op_num_threads = int(threads) if threads else 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.enable_mem_pattern = True
    return opts


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
        opts = _session_options(threads)
        self._session = None
        if device in ("auto", "gpu"):
            if _CUDA in ort.get_available_providers():
                try:
                    sess = ort.InferenceSession(str(preset.decoder_path), opts, providers=[_CUDA, _CPU])
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
                self._session = ort.InferenceSession(str(preset.decoder_path), opts, providers=[_CPU])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises unrelated types
                raise DecoderError(f"{preset.decoder_path}: cannot open decoder ({str(exc).strip()[:160]})") from None
        self._on_cuda = _CUDA in self._session.get_providers()
        self.max_batch = 0
        self._bindings: list[Any] = []
        self._bound_to: tuple[NDArray, ...] | None = None
        self.reserve(max_batch)

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, most preferred first."""
        return list(self._session.get_providers())

    def reserve(self, max_batch: int) -> None:
        """Preallocate per-batch-size state for batches up to ``max_batch`` (not real-time safe)."""
        if max_batch <= self.max_batch:
            return
        self.max_batch = int(max_batch)
        self._bindings = [self._session.io_binding() for _ in range(self.max_batch + 1)]
        self._bound_to = None

    def _bind_all(self, arrays: tuple[NDArray, ...], out: NDArray) -> None:
        """Bind every batch size to row prefixes of the caller's arrays (done once per array set)."""
        for b in range(1, self.max_batch + 1):
            binding = self._bindings[b]
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            for name, arr in zip(DECODER_INPUTS, arrays):
                binding.bind_cpu_input(name, arr[:b])
            if self._on_cuda:
                binding.bind_output(DECODER_OUTPUT, "cpu")
            else:
                binding.bind_output(DECODER_OUTPUT, "cpu", 0, np.float32, [b, self.n_bins], out.ctypes.data)
        self._bound_to = (*arrays, out)  # kept alive: the bindings point into these arrays

    def decode(self, z: NDArray, pitch: NDArray, velocity: NDArray, time_on: NDArray, time_off: NDArray,
               out: NDArray, batch: int | None = None) -> None:
        """Decode the first ``batch`` rows: ``z (B, L)``, the others ``(B,)`` -> ``out (B, F)`` float32.

        The arrays must be C-contiguous float32 and keep their identity between calls (the
        engine's preallocated batch buffers); bindings are rebuilt only when they change.
        """
        b = int(batch if batch is not None else z.shape[0])
        if b <= 0:
            return
        if b > self.max_batch:
            raise DecoderError(f"batch {b} exceeds the reserved {self.max_batch}")
        arrays = (z, pitch, velocity, time_on, time_off)
        bound = self._bound_to
        if bound is None or any(a is not b for a, b in zip((z, pitch, velocity, time_on, time_off, out), bound)):
            self._bind_all(arrays, out)
        binding = self._bindings[b]
        if self._on_cuda:
            # inputs are copied to the device each run; re-bind so the new values are seen
            for name, arr in zip(DECODER_INPUTS, arrays):
                binding.bind_cpu_input(name, arr[:b])
            self._session.run_with_iobinding(binding)
            out[:b] = binding.get_outputs()[0].numpy()
        else:
            self._session.run_with_iobinding(binding)

    def decode_array(self, z: NDArray, pitch: NDArray, velocity: NDArray, time_on: NDArray, time_off: NDArray) -> NDArray[np.float32]:
        """Convenience (allocating) form for tests and tools: returns ``(B, F)``."""
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (z, pitch, velocity, time_on, time_off)]
        feeds = dict(zip(DECODER_INPUTS, arrays))
        return self._session.run([DECODER_OUTPUT], feeds)[0]
