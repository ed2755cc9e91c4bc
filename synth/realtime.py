"""What the process does once, between ``Engine.prepare`` and the audio stream's start.

The audio callback must meet no compilation, no first-call set-up and no garbage-collector
pass. ``Engine.prepare`` compiles and warms the kernels; this module then

- forbids numba from compiling anything new (``freeze_kernels``): a call with a signature
  the warm-up did not foresee raises at once (the callback turns that into one silent block
  and a message) instead of stalling the audio for seconds while it compiles;
- moves every object that exists now out of the collector's reach (``gc.freeze``), so a
  collection triggered on another thread scans only what was made since;
- shortens the interpreter's switch interval, so the audio thread waits less for the GIL
  while the MIDI and status threads run Python.
"""
from __future__ import annotations

import gc
import sys
from types import ModuleType

# CPython's default is 0.005 s, a whole 128-frame block at 48 kHz. A thread waiting for the GIL
# (the audio callback) asks its holder (the render-ahead worker between its nogil calls, the MIDI
# and status threads) to let go after this long. Shorter is not better: at 0.1 ms the worker
# loses the GIL to the other threads more often and renders late; with the default lead of 2
# blocks and 32 voices held, two alternating pairs of 20 s runs gave 16 and 34 xruns (7 late
# blocks, 4 dropouts) at 0.1 ms against 8 and 3 (none) at 1 ms. (A lead of 1.5, whose held-back
# worker renders while the next callback comes, did better at 0.1 ms.)
SWITCH_INTERVAL_S = 0.001


def _kernel_modules() -> list[ModuleType]:
    from synth import engine, knobs, limiter, partials, phase, resample, voices

    return [engine, knobs, limiter, partials, phase, resample, voices]


def compiled_kernels() -> list[object]:
    """Every numba dispatcher of the engine's modules."""
    from numba.core.registry import CPUDispatcher

    found = []
    for module in _kernel_modules():
        found += [obj for obj in vars(module).values() if isinstance(obj, CPUDispatcher)]
    return found


def freeze_kernels() -> int:
    """Disable further numba compilation of the engine's kernels; returns how many were frozen.

    Call after ``Engine.prepare`` (warm). A kernel the warm-up never ran has no compiled
    version and would then fail on its first call, so only kernels with at least one
    signature are frozen.
    """
    n = 0
    for kernel in compiled_kernels():
        if kernel.signatures:
            kernel.disable_compile()
            n += 1
    return n


def settle_process() -> None:
    """Collect and freeze today's objects, and shorten the GIL switch interval (see module doc)."""
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
