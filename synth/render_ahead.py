"""Render ahead: the engine renders on a worker thread, a fixed lead before the audio callback
plays its blocks.

Why: rendering inside the audio callback leaves the engine the part of a period the audio
server and the other clients do not use, and any spike (a GIL wait behind the MIDI or status
thread, a busier block, the other core's noise) becomes a missed cycle. Here the callback only
copies a finished block out of a ring and posts a semaphore; a worker thread (SCHED_FIFO below
the audio server's threads where the OS allows it) renders the next ones.

The lead is ``ahead`` blocks, not necessarily whole: the ring holds ``depth = ceil(ahead)``
blocks, and the worker starts block ``k + depth`` a *hold-back* of ``(depth - ahead)`` periods
after callback k pulled block k. The hold-back is what lets the lead be fractional: an event
that arrives before the worker starts a block can still land in it, so an event is scheduled
``ahead`` blocks later than the callback would schedule it (``synth.live.SampleClock``'s lead),
no more. A block may then take up to ``ahead`` periods (the slack) as long as the mean fits
one. The default is 2 whole blocks: on our 2-core VM, 32 voices held for 15 s made late blocks
(each an audible gap) in 6 of 6 runs with a lead of 1.5 and in 1 of 6 with 2
(``benchmarks/callback_spikes``): the host steals the cores for whole periods at a time, and a
held-back worker also renders while the next callback wants the GIL. On a quieter machine 1.5
or 1 gives the same sound sooner.

The price is latency: key-to-sound is longer by exactly ``round(ahead * block)`` samples,
constant, reported as the engine's "render ahead" stage.

Block k of the engine's timeline is always played by callback k. When block k is not ready
(the worker is late: a VM or scheduler stall, or a timer driver catching up cycles it missed,
which asks for several blocks at once), the callback waits for it, but at most ``late_wait_s``
(part of a period: what the rest of the cycle can spare): a block that arrives then plays
normally, and a cycle of silence would be worse than a slightly later callback. Past that it
plays silence and counts it (``late``); the worker's block k is then never played (dropped), so
the latency never drifts, and the next block played fades in over ``FADE_IN`` samples so the
output resumes without a click. This bounded wait on the late path is the callback's only wait.
In JACK freewheel mode (an export: no deadline) the callback waits for the worker as long as it
takes, and the worker holds nothing back.

Threads: the ring has one writer (the worker) and one reader (the callback). The worker writes
a block's slot, then publishes it by advancing ``_produced``; the callback reads a slot only
below ``_produced`` and advances ``_wanted``; the worker writes only below
``_wanted + depth``, and the ring has ``depth + 1`` slots, so the slot being written is never
the one being read. Both counters are Python ints read and written under the GIL; the time of
each pull is written before ``_wanted`` moves, into a slot of its own.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable

import numpy as np
from numpy.typing import NDArray

MIN_AHEAD = 0.5  # a smaller lead leaves the worker less than half a period per block
DEFAULT_AHEAD = 2.0  # blocks of lead in live mode: 2 x 128 frames at 48 kHz = 5.3 ms of latency
# Below every JACK thread (jackd's clients run at its priority, 10 by default with -R, minus a
# few) and above every ordinary thread: the MIDI, status and UI threads and other programs.
WORKER_PRIORITY = 1
FADE_IN = 32  # samples: the block after a late one ramps in from silence
IDLE_WAKE_S = 0.1  # the worker re-checks its stop flag this often when no callback wakes it
FREEWHEEL_WAIT_S = 2.0  # in freewheel the callback waits this long at most for a block
HANDOVER_S = 0.0002  # the worker lets go of the GIL this long after a block the callback waits for
PULL_TIMES = 8  # pull times kept (a power of two above depth + 1): the worker reads one depth pulls back


class RenderAhead:
    """A worker thread that keeps ``render``'s output ``ahead`` blocks ahead of the callback.

    ``render(out)`` fills ``out (block, channels)`` float32 with the next block of the timeline
    (and must not raise: ``synth.live.LiveSynth`` turns a failure into silence). ``block_s`` is
    a block's duration (the hold-back of a fractional lead is a part of it). ``freewheeling``
    tells the callback whether the audio server runs without a deadline (JACK freewheel).
    """

    def __init__(self, render: Callable[[NDArray[np.float32]], None], block: int, channels: int = 2,
                 ahead: float = DEFAULT_AHEAD, priority: int | None = WORKER_PRIORITY,
                 freewheeling: Callable[[], bool] | None = None, late_wait_s: float = 0.0,
                 block_s: float = 0.0) -> None:
        if not ahead >= MIN_AHEAD or block < 1:
            raise ValueError(f"render ahead needs ahead >= {MIN_AHEAD} blocks and block >= 1, got {ahead}, {block}")
        if ahead != int(ahead) and not block_s > 0.0:
            raise ValueError("a fractional lead needs the block's duration (block_s)")
        self.render = render
        self.block, self.ahead = int(block), float(ahead)
        self.depth = math.ceil(self.ahead)  # blocks the ring holds ready
        # the worker starts block k + depth this long after callback k pulled (0: at once)
        self.hold_back_s = (self.depth - self.ahead) * block_s
        self._pull_times = [0.0] * PULL_TIMES  # perf_counter of each pull, by block number
        self.priority = priority
        self._freewheeling = freewheeling
        self.late_wait_s = float(late_wait_s)
        self._waiting = False  # the callback waits for a late block (the worker then hands the GIL over)
        self._ring = np.zeros((self.depth + 1, self.block, channels), np.float32)
        self._slots = list(self._ring)  # fixed views: the callback indexes a list, creating nothing
        # the gain of the block after a late one: a ramp over FADE_IN samples, then 1
        self._fade = np.ones((self.block, channels), np.float32)
        ramp = min(FADE_IN, self.block)
        self._fade[:ramp] = (np.arange(1, ramp + 1) / (ramp + 1))[:, None]
        self._produced = 0  # blocks rendered into the ring (written by the worker only)
        self._wanted = 0  # the block the callback plays next (written by the callback only)
        self._resume = False  # the last callback was late: fade the next block in
        self.late = 0  # callbacks that found their block missing and played silence
        self.realtime = False  # the worker got SCHED_FIFO
        self._wake = threading.Lock()  # released by the callback, acquired (waited on) by the worker
        self._wake.acquire()
        self._ready = threading.Lock()  # released by the worker after each block (freewheel waits)
        self._ready.acquire()
        self._stop = False
        self._thread: threading.Thread | None = None

    @property
    def delay_samples(self) -> int:
        """Samples render ahead adds between an event and its sound: ``ahead`` blocks."""
        return int(round(self.ahead * self.block))

    @property
    def ready(self) -> int:
        """Blocks rendered and not yet played."""
        return max(0, self._produced - self._wanted)

    # ------------------------------------------------------------------ worker side
    def start(self) -> None:
        """Render the first ``depth`` blocks now (before the stream starts), then start the worker."""
        if self._thread is not None:
            raise RuntimeError("render ahead already started")
        while self._produced < self.depth:
            self._render_next()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="vaesynth-render", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the worker (after the stream stopped: nothing pulls any more)."""
        thread = self._thread
        if thread is None:
            return
        self._stop = True
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # released meanwhile: the worker wakes all the same
                pass
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        self.realtime = _make_realtime(self.priority)
        while not self._stop:
            if self._produced < self._wanted + self.depth:
                self._hold_back(self._produced)
                self._render_next()
            else:
                self._wake.acquire(timeout=IDLE_WAKE_S)

    def _hold_back(self, k: int) -> None:
        """Wait until block ``k`` may start: ``hold_back_s`` after the pull that freed its slot
        (callback ``k - depth``), so events that arrived before then still land in it. A worker
        that is behind (later pulls happened already) or in freewheel starts at once."""
        if self.hold_back_s <= 0.0:
            return
        j = k - self.depth
        if j < 0 or self._wanted != j + 1 or (self._freewheeling is not None and self._freewheeling()):
            return
        left = self._pull_times[j % PULL_TIMES] + self.hold_back_s - time.perf_counter()
        if left > 0.0:
            time.sleep(left)

    def _render_next(self) -> None:
        k = self._produced
        self.render(self._slots[k % len(self._slots)])
        self._produced = k + 1  # publish after the slot is written
        if self._ready.locked():
            self._ready.release()
        if self._waiting:  # let the waiting callback take the GIL before the next block's Python runs
            time.sleep(HANDOVER_S)

    # ------------------------------------------------------------------ callback side
    def pull(self, out: NDArray[np.float32], now: float) -> bool:
        """Copy the block due now into ``out (block, channels)``; False when it was late (``out``
        is then silence). ``now`` is the callback's ``time.perf_counter()`` at entry (the time the
        sample clock marks). Waits only for a block already late: ``late_wait_s`` at most, or in
        freewheel (no deadline) as long as it takes."""
        if out.shape[0] != self.block:
            raise ValueError(f"render ahead renders blocks of {self.block} frames, the callback asked {out.shape[0]}")
        k = self._wanted
        if self._produced <= k:
            freewheel = self._freewheeling is not None and self._freewheeling()
            self._wait_for(k, FREEWHEEL_WAIT_S if freewheel else self.late_wait_s)
        self._pull_times[k % PULL_TIMES] = now  # before _wanted moves: the worker reads it then
        self._wanted = k + 1
        if self._wake.locked():
            self._wake.release()  # a slot is free: the worker renders the next block
        if self._produced <= k:
            out.fill(0.0)
            self.late += 1
            self._resume = True
            return False
        np.copyto(out, self._slots[k % len(self._slots)])
        if self._resume:
            self._resume = False
            np.multiply(out, self._fade, out=out)
        return True

    def _wait_for(self, k: int, seconds: float) -> None:
        """The late path: wait until block ``k`` is rendered, ``seconds`` at most."""
        if seconds <= 0.0:
            return
        if self._wake.locked():
            self._wake.release()
        deadline = time.perf_counter() + seconds
        self._waiting = True
        try:
            while self._produced <= k:
                left = deadline - time.perf_counter()
                if left <= 0.0 or not self._ready.acquire(timeout=left):
                    return
        finally:
            self._waiting = False


def _make_realtime(priority: int | None) -> bool:
    """Give the calling thread SCHED_FIFO at ``priority``; False where the OS refuses (no
    permission, no such policy): the worker then runs at normal priority."""
    if priority is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):
        return False
    return True
