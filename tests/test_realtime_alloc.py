"""The render path allocates nothing from the first block after ``prepare`` on: not for the first
note-on and its first decode, not for a voice steal, not under a steady stream of events.

Three views, since no single one sees everything: tracemalloc sees Python and numpy memory,
numba's runtime counts the arrays its kernels allocate (tracemalloc cannot see those), and the
process's resident memory catches what onnxruntime's arenas or anything else would grow.
"""
from __future__ import annotations

import gc
import resource
import tracemalloc

import numpy as np
import pytest
from numba.core import types
from numba.core.registry import CPUDispatcher
from numba.core.runtime import _nrt_python, rtsys

from synth.engine import Engine
from synth.preset import Preset, load_preset
from tests.fake_preset import make_fake_preset

SR, BLOCK = 48000, 128
ON, OFF, CC, PC, BEND = 0x90, 0x80, 0xB0, 0xC0, 0xE0


@pytest.fixture(scope="module")
def preset(tmp_path_factory: pytest.TempPathFactory) -> Preset:
    return load_preset(make_fake_preset(tmp_path_factory.mktemp("alloc") / "fake"))


def _performance(eng: Engine, start: int, bars: int) -> None:
    """Notes (more than the polyphony: steals), releases, knobs, bend and program changes."""
    t = start
    for i in range(bars):
        for j in range(6):
            eng.push(t + 700 * j, ON, 40 + (7 * i + 5 * j) % 40, 60 + j * 10)
        eng.push(t + 2000, CC, 70 + i % 8, (37 * i) % 128)
        eng.push(t + 2100, BEND, 0, (11 * i) % 128)
        eng.push(t + 2500, PC, (13 * i) % 128, 0)
        for j in range(6):
            eng.push(t + 5000 + 300 * j, OFF, 40 + (7 * i + 5 * j) % 40, 0)
        t += 6000


def _nrt_allocations() -> int:
    _nrt_python.memsys_enable_stats()  # off by default; counting starts here
    stats = rtsys.get_allocation_stats()
    return stats.alloc + stats.mi_alloc


class _CountingKernel:
    """A numba kernel that records how many runtime allocations each call made beyond the two
    per array argument that passing a numpy array into numba always costs (its MemInfo wrapper)."""

    def __init__(self, kernel: object, excess: dict[str, int]) -> None:
        self.kernel, self.excess = kernel, excess
        (sig,) = kernel.signatures  # type: ignore[attr-defined]
        self.boundary = 2 * sum(isinstance(t, types.Array) for t in sig)

    def __call__(self, *args: object) -> object:
        before = _nrt_allocations()
        result = self.kernel(*args)  # type: ignore[operator]
        extra = _nrt_allocations() - before - self.boundary
        name = self.kernel.__name__  # type: ignore[attr-defined]
        self.excess[name] = max(self.excess.get(name, 0), extra)
        return result


def _count_kernel_allocations(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Swap every compiled engine kernel, where its callers look it up, for a counting one."""
    from synth import decoder, engine, knobs, limiter, phase, resample, voices

    excess: dict[str, int] = {}
    for module in (decoder, engine, knobs, limiter, phase, resample, voices):
        for name, obj in list(vars(module).items()):
            if isinstance(obj, CPUDispatcher) and len(obj.signatures) == 1:
                monkeypatch.setattr(module, name, _CountingKernel(obj, excess))
    return excess


def _traced_blocks(eng: Engine, out: np.ndarray, blocks: int) -> tuple[int, int, str]:
    """(largest allocation peak of one ``process`` call, bytes the calls kept, where the most was
    kept) under tracemalloc."""
    # Left out: this test's own books, and what onnxruntime's binding holds on to for a while
    # (a few kB that come and go between passes, never growing; the resident-memory test below
    # would catch a real leak there).
    ours = [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "*/onnxruntime/*")]
    tracemalloc.start(8)
    try:
        gc.collect()
        first = tracemalloc.take_snapshot().filter_traces(ours)
        worst = 0
        for _ in range(blocks):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            eng.process(out)
            worst = max(worst, tracemalloc.get_traced_memory()[1] - before)
        gc.collect()  # garbage a later collection frees is not kept
        last = tracemalloc.take_snapshot().filter_traces(ours)
    finally:
        tracemalloc.stop()
    where = " | ".join(f"{d.size_diff} B at " + " < ".join(f"{f.filename.split('/')[-1]}:{f.lineno}"
                                                          for f in list(d.traceback)[::-1][:5])
                       for d in last.compare_to(first, "traceback")[:4])
    return worst, sum(d.size_diff for d in last.compare_to(first, "filename")), where


def _fresh_engine(preset: Preset) -> Engine:
    eng = Engine(preset, polyphony=4, device="cpu", shed_load=True)
    eng.prepare(SR, BLOCK)  # warm: nothing may be left to set up on the first real note
    _performance(eng, 0, 4)  # the very first events after prepare: note-on, first decode, steals
    return eng


def test_no_kernel_allocates_from_the_first_note(preset: Preset, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = _fresh_engine(preset)
    excess = _count_kernel_allocations(monkeypatch)
    out = np.zeros((BLOCK, 2), np.float32)
    for _ in range(4 * 6000 // BLOCK + 40):
        eng.process(out)
    assert eng.stats.stolen_voices > 0, "the performance never stole a voice"
    assert len(excess) >= 8, f"only these kernels ran: {sorted(excess)}"
    allocating = {name: n for name, n in excess.items() if n > 0}
    assert not allocating, f"numba kernels allocated arrays in the render path: {allocating}"


def test_first_note_steal_and_events_allocate_nothing(preset: Preset) -> None:
    eng = _fresh_engine(preset)
    out = np.zeros((BLOCK, 2), np.float32)
    blocks = 4 * 6000 // BLOCK + 40
    worst_first, _, _ = _traced_blocks(eng, out, blocks)
    assert eng.stats.stolen_voices > 0, "the performance never stole a voice"
    # The same performance again: now nothing may be kept either (a leak, or a cache still filling).
    _performance(eng, eng.sample_time, 4)
    worst_again, kept, where = _traced_blocks(eng, out, blocks)
    # Python's own small objects (views, argument tuples, floats) peak at about 2 kB in one call;
    # any working array (decoder rows 16 kB, spectra 32 kB, frames 64 kB) would be far above.
    worst = max(worst_first, worst_again)
    assert worst < 4096, f"one process() call allocated up to {worst} bytes at once"
    assert kept < 1024, f"process() kept {kept} bytes: {where}"


def test_resident_memory_flat_over_many_blocks(preset: Preset) -> None:
    eng = Engine(preset, polyphony=8, device="cpu")
    eng.prepare(SR, BLOCK)
    out = np.zeros((BLOCK, 2), np.float32)
    _performance(eng, 0, 10)
    for _ in range(10 * 6000 // BLOCK):
        eng.process(out)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    _performance(eng, eng.sample_time, 100)
    for _ in range(100 * 6000 // BLOCK):
        eng.process(out)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert grown < 1024, f"peak resident memory grew {grown} kB over 4700 blocks"
