"""The render-ahead ring (``synth.render_ahead``) without an audio server: callback k always
plays block k of the timeline, ``depth`` blocks are ready ahead and never more, a late block
is silence (counted, dropped, the next block fades in: latency never drifts), freewheel waits
instead, the callback side allocates nothing, a failing render is one silent block, the
engine reports the lead as a stage of its own, and a fractional lead holds the worker back so
that no event reaches a block already started. Under a real JACK server: test_live_jack.py."""
from __future__ import annotations

import threading
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest

from synth.engine import Engine, EngineStats
from synth.live import LiveSynth, SampleClock
from synth.preset import load_preset
from synth.render_ahead import FADE_IN, RenderAhead
from tests.fake_preset import make_fake_preset

BLOCK = 128


class Counter:
    """A render that fills block k of the timeline with the value k + 1 (so a block tells which
    one it is), optionally stalling on one block until released."""

    def __init__(self, stall_on: int | None = None, delay_s: float = 0.0) -> None:
        self.k = 0
        self.stall_on, self.delay_s = stall_on, delay_s
        self.release = threading.Event()
        self.stalled = threading.Event()
        self.most_ahead = 0
        self.ahead: RenderAhead | None = None

    def __call__(self, out: np.ndarray) -> None:
        if self.ahead is not None:  # how far ahead of the callback this block is being rendered
            self.most_ahead = max(self.most_ahead, self.ahead._produced - self.ahead._wanted + 1)
        if self.k == self.stall_on:
            self.stalled.set()
            self.release.wait(5.0)
        if self.delay_s:
            time.sleep(self.delay_s)
        out.fill(self.k + 1)
        self.k += 1


def _ring(render: Counter, depth: float = 2, **kw: object) -> RenderAhead:
    ahead = RenderAhead(render, BLOCK, 2, depth, priority=None, **kw)  # type: ignore[arg-type]
    render.ahead = ahead
    return ahead


def _wait_ready(ahead: RenderAhead, blocks: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while ahead.ready < blocks:
        assert time.monotonic() < deadline, f"the worker did not fill {blocks} blocks"
        time.sleep(0.0005)


def test_callback_k_plays_block_k_with_depth_blocks_ready_and_never_more() -> None:
    render = Counter()
    ahead = _ring(render, depth=3)
    out = np.zeros((BLOCK, 2), np.float32)
    ahead.start()
    try:
        assert ahead.ready == 3, "start() renders the first depth blocks before the stream runs"
        for k in range(40):
            _wait_ready(ahead, 3)
            time.sleep(0.001)  # give the worker every chance to run further ahead than it may
            assert ahead.ready == 3
            assert ahead.pull(out, time.perf_counter())
            assert np.all(out == k + 1), f"callback {k} played block {out[0, 0] - 1:.0f}"
    finally:
        ahead.stop()
    assert render.most_ahead <= 3 and ahead.late == 0
    assert ahead.delay_samples == 3 * BLOCK


def test_a_late_block_is_silence_dropped_and_the_next_fades_in() -> None:
    render = Counter(stall_on=5)
    ahead = _ring(render, depth=2)
    out = np.zeros((BLOCK, 2), np.float32)
    ahead.start()
    try:
        for k in range(3):
            _wait_ready(ahead, 2)
            assert ahead.pull(out, time.perf_counter()) and out[0, 0] == k + 1
        _wait_ready(ahead, 2)
        assert ahead.pull(out, time.perf_counter()) and out[0, 0] == 4  # block 3; the worker now starts block 5 and stalls
        assert render.stalled.wait(5.0)
        assert ahead.pull(out, time.perf_counter()) and out[0, 0] == 5  # block 4 was ready before the stall
        assert not ahead.pull(out, time.perf_counter()), "block 5 is stalled: the callback must not wait for it"
        assert np.all(out == 0.0) and ahead.late == 1
        render.release.set()
        _wait_ready(ahead, 1)
        assert ahead.pull(out, time.perf_counter()), "the worker catches up"
        # callback 6 plays block 6 (value 7): block 5 came too late and is never played
        assert out[-1, 0] == 7, f"callback 6 played block {out[-1, 0] - 1:.0f}: the latency drifted"
        assert 0 < out[0, 0] < 7 * 0.1 and np.all(np.diff(out[:FADE_IN + 1, 0]) > 0), "no fade-in after silence"
        assert np.all(out[FADE_IN:] == 7)
        _wait_ready(ahead, 1)
        assert ahead.pull(out, time.perf_counter()) and np.all(out == 8), "the fade-in is for one block only"
    finally:
        render.release.set()
        ahead.stop()
    assert ahead.late == 1


def test_freewheel_waits_for_the_worker_instead_of_playing_silence() -> None:
    render = Counter(delay_s=0.002)  # slower than the callbacks come
    ahead = _ring(render, depth=2, freewheeling=lambda: True)
    out = np.zeros((BLOCK, 2), np.float32)
    ahead.start()
    try:
        for k in range(30):
            assert ahead.pull(out, time.perf_counter()) and np.all(out == k + 1)
    finally:
        ahead.stop()
    assert ahead.late == 0


def test_real_time_never_waits_for_a_slow_worker() -> None:
    render = Counter(delay_s=0.005)
    ahead = _ring(render, depth=1, freewheeling=lambda: False)
    out = np.zeros((BLOCK, 2), np.float32)
    ahead.start()
    try:
        ahead.pull(out, time.perf_counter())  # the primed block
        started = time.perf_counter()
        played = [ahead.pull(out, time.perf_counter()) for _ in range(20)]
        took = time.perf_counter() - started
    finally:
        ahead.stop()
    assert took < 0.02, f"20 pulls took {took * 1000:.1f} ms: the callback waited for the worker"
    assert not all(played) and ahead.late == played.count(False)


def test_a_late_block_is_waited_for_within_the_late_wait_and_no_longer() -> None:
    render = Counter(delay_s=0.004)  # slower than the callbacks come
    ahead = _ring(render, depth=1, late_wait_s=0.05)
    out = np.zeros((BLOCK, 2), np.float32)
    ahead.start()
    try:
        for k in range(10):  # each block is late, but arrives within the wait: played, in order
            assert ahead.pull(out, time.perf_counter()) and np.all(out == k + 1)
        ahead.late_wait_s = 0.001
        render.delay_s = 0.02
        started = time.perf_counter()
        assert not ahead.pull(out, time.perf_counter()) and np.all(out == 0.0), "a block later than the wait must be silence"
        took = time.perf_counter() - started
    finally:
        ahead.stop()
    assert took < 0.006, f"the callback waited {took * 1000:.1f} ms for a 1 ms late wait"
    assert ahead.late == 1


def test_the_callback_side_allocates_nothing() -> None:
    render = Counter()
    ahead = _ring(render, depth=2)  # not started: blocks are made by hand, so only pull is traced
    ahead._render_next()
    ahead._render_next()
    out = np.zeros((BLOCK, 2), np.float32)
    ahead.pull(out, time.perf_counter())
    ahead._wanted = ahead._produced = 10**6  # a long-running stream: counters are not small cached ints
    now = time.perf_counter()  # the callback's own entry time (it takes it for the sample clock anyway)
    tracemalloc.start()
    try:
        for k in range(200):
            # every 7th block late: the silence and fade-in paths too
            ahead._produced = ahead._wanted + (0 if k % 7 == 0 else 1)
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            ahead.pull(out, now)
            grew = tracemalloc.get_traced_memory()[1] - before
            # Python ints for the advanced counters (32 bytes each, a few alive at the peak) are all
            # CPython cannot avoid; an array view or slice costs 160 bytes or more (object, shape, strides)
            assert grew < 150, f"pull {k} allocated {grew} bytes"
    finally:
        tracemalloc.stop()
    assert ahead.late == 200 // 7 + 1


@dataclass
class Flags:
    output_underflow: bool = False


class FlakyEngine:
    """Renders 0.5, except on the blocks listed in ``fail_on`` where it raises."""

    def __init__(self, fail_on: set[int]) -> None:
        self.fail_on, self.calls = fail_on, 0
        self.stats = EngineStats()
        self.render_ahead = 0

    def process(self, out: np.ndarray) -> None:
        self.calls += 1
        out.fill(0.5)
        if self.calls in self.fail_on:
            raise FloatingPointError(f"block {self.calls} went wrong")

    def set_render_ahead(self, samples: int) -> None:
        self.render_ahead = samples


def test_a_failing_render_on_the_worker_is_one_silent_block_reported_once() -> None:
    engine = FlakyEngine({4})
    synth = LiveSynth(engine, 48000)
    synth.start_render_ahead(BLOCK, blocks=2)
    out = np.zeros((BLOCK, 2), np.float32)
    try:
        played = []
        for _ in range(8):
            _wait_ready(synth.ahead, 1)
            synth.audio_callback(out, BLOCK, None, Flags())
            played.append(float(out[0, 0]))
    finally:
        synth.stop_render_ahead()
    assert played == [0.5, 0.5, 0.5, 0.0, 0.5, 0.5, 0.5, 0.5], played
    assert isinstance(synth.fault, FloatingPointError) and synth.stats.faults == 1
    assert synth.late_blocks == 0 and synth.stats.frames == 8 * BLOCK
    assert engine.render_ahead == 2 * BLOCK and synth.clock.lead == 2 * BLOCK
    bad = np.zeros((BLOCK // 2, 2), np.float32)
    synth.audio_callback(bad, BLOCK // 2, None, Flags())  # a block the ring cannot serve: silence, no raise
    assert np.all(bad == 0.0) and synth.stats.faults == 2


class SlowEngine(FlakyEngine):
    """Renders 0.5, taking ``seconds`` over block ``slow``."""

    def __init__(self, slow: int, seconds: float) -> None:
        super().__init__(set())
        self.slow, self.seconds = slow, seconds

    def process(self, out: np.ndarray) -> None:
        super().process(out)
        if self.calls == self.slow:
            time.sleep(self.seconds)


def test_a_late_block_shows_on_the_status_line_counted_once() -> None:
    synth = LiveSynth(SlowEngine(slow=3, seconds=0.2), 48000)
    synth.start_render_ahead(BLOCK, blocks=2)
    out = np.zeros((BLOCK, 2), np.float32)
    try:
        _wait_ready(synth.ahead, 2)
        played = []
        for _ in range(3):  # the first pull frees the slot of block 2, which takes 0.2 s
            synth.audio_callback(out, BLOCK, None, Flags())
            played.append(float(out[0, 0]))
    finally:
        synth.stop_render_ahead()
    assert played == [0.5, 0.5, 0.0], played
    assert synth.late_blocks == 1 and "late blocks 1" in synth.status_line()


def test_clock_schedules_events_past_the_blocks_rendered_ahead() -> None:
    clock = SampleClock(48000)
    clock.mark_block(10 * BLOCK, 1.0, BLOCK)
    plain = clock.to_sample(1.0 + 0.0005)
    clock.lead = 2 * BLOCK
    assert clock.to_sample(1.0 + 0.0005) - plain == 2 * BLOCK
    assert clock.to_sample(0.5) == 13 * BLOCK, "a past event lands on the first block not yet rendered"
    clock.freewheeling = lambda: True  # an export: the wall clock says nothing about sample time
    assert clock.to_sample(1.0 + 0.0005) == 13 * BLOCK


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    eng = Engine(load_preset(make_fake_preset(tmp_path_factory.mktemp("ahead") / "fake")), device="cpu")
    eng.prepare(48000, BLOCK, warm=False)
    return eng


def test_a_block_may_take_the_rings_slack_before_it_counts_as_a_spike(tmp_path) -> None:  # noqa: ANN001
    eng = Engine(load_preset(make_fake_preset(tmp_path / "fake")), device="cpu", shed_load=True)
    eng.prepare(48000, BLOCK, warm=False)
    governor = eng._governor
    assert governor is not None and governor.spike_load == 1.0
    synth = LiveSynth(eng, 48000)
    synth.start_render_ahead(BLOCK, blocks=2)
    synth.stop_render_ahead()
    assert governor.spike_load == 2.0
    synth = LiveSynth(eng, 48000)
    synth.start_render_ahead(BLOCK, blocks=1.5)  # the slack of a fractional lead
    synth.stop_render_ahead()
    assert governor.spike_load == 1.5
    assert synth.ahead is not None and synth.ahead.late_wait_s > 0.0


def test_engine_reports_render_ahead_as_a_stage_of_its_latency(engine: Engine) -> None:
    before = dict(engine.stage_delays)
    assert "render ahead" not in before
    synth = LiveSynth(engine, 48000)
    synth.start_render_ahead(BLOCK, blocks=2)
    synth.stop_render_ahead()
    stages = engine.stage_delays
    assert stages == {**before, "render ahead": 2 * BLOCK}
    assert engine.latency_samples == sum(before.values()) + 2 * BLOCK


def test_a_fractional_lead_holds_each_block_back_from_the_pull_that_freed_its_slot() -> None:
    period = 0.02  # long blocks, so the hold-back is measurable on a busy machine
    starts: dict[int, float] = {}
    render = Counter()
    ahead = RenderAhead(lambda out: (starts.setdefault(render.k, time.perf_counter()), render(out)), BLOCK, 2,
                        1.5, priority=None, block_s=period)
    assert ahead.depth == 2 and ahead.delay_samples == 3 * BLOCK // 2
    assert ahead.hold_back_s == pytest.approx(period / 2)
    out = np.zeros((BLOCK, 2), np.float32)
    pulls = []
    ahead.start()
    try:
        for k in range(12):
            _wait_ready(ahead, 2)
            pulls.append(time.perf_counter())
            assert ahead.pull(out, pulls[-1]) and np.all(out == k + 1)
            time.sleep(period)
    finally:
        ahead.stop()
    waited = np.array([starts[k + 2] - pulls[k] for k in range(11)])
    # block k + 2 may start only half a period after callback k: an event that came before
    # then was scheduled into it
    assert waited.min() >= period / 2 - 1e-4, f"a block started {waited.min() * 1000:.2f} ms after its pull"
    assert np.median(waited) < period, "the worker held back much longer than asked"


def test_the_hold_back_is_skipped_when_the_worker_is_behind_or_freewheeling() -> None:
    free = [False]
    ahead = _ring(Counter(), depth=1.5, block_s=20.0, freewheeling=lambda: free[0])  # a 10 s hold-back
    ahead._produced, ahead._wanted = 5, 5  # block 5's slot was freed by pull 3, and pull 4 came already
    ahead._pull_times[3 % len(ahead._pull_times)] = time.perf_counter()
    started = time.perf_counter()
    ahead._hold_back(5)  # behind: at once
    ahead._produced = 6  # block 6: freed by pull 4 just now, but in freewheel nothing is held back
    ahead._pull_times[4 % len(ahead._pull_times)] = time.perf_counter()
    free[0] = True
    ahead._hold_back(6)
    assert time.perf_counter() - started < 1.0
    free[0] = False
    ahead._pull_times[4 % len(ahead._pull_times)] = time.perf_counter() - 9.995  # pulled 10 s ago, nearly
    ahead._hold_back(6)
    took = time.perf_counter() - started
    assert 0.003 < took < 1.0, f"held back {took:.3f} s where 5 ms of the 10 s were left"


class RecordingEngine(FlakyEngine):
    """Records when each block starts rendering and when each event was queued, for what sample."""

    def __init__(self) -> None:
        super().__init__(set())
        self.block_started: list[float] = []
        self.pushed: list[tuple[int, float]] = []

    def process(self, out: np.ndarray) -> None:
        self.block_started.append(time.perf_counter())
        super().process(out)

    def push_event(self, sample: int, message: bytes) -> bool:
        self.pushed.append((sample, time.perf_counter()))
        return True


@pytest.mark.parametrize("blocks", [1.5, 2.0, 1.25])
def test_no_event_is_scheduled_into_a_block_the_worker_has_started(blocks: float) -> None:
    engine = RecordingEngine()
    rate = 48000
    synth = LiveSynth(engine, rate)
    synth.start_render_ahead(BLOCK, blocks=blocks)
    assert synth.clock.lead == round(blocks * BLOCK) == engine.render_ahead
    out = np.zeros((BLOCK, 2), np.float32)
    stop = threading.Event()

    def callbacks() -> None:  # the audio server's cycles, one per period
        period = BLOCK / rate
        due = time.perf_counter()
        while not stop.is_set():
            synth.audio_callback(out, BLOCK, None, Flags())
            due += period
            time.sleep(max(0.0, due - time.perf_counter()))

    server = threading.Thread(target=callbacks, daemon=True)
    server.start()
    rng = np.random.default_rng(7)
    try:
        time.sleep(0.02)
        for _ in range(300):  # keys at every offset within the cycle
            synth.push_control([0x90, 60, 100])
            time.sleep(float(rng.uniform(0.0, 2 * BLOCK / rate)))
    finally:
        stop.set()
        server.join(2.0)
        synth.stop_render_ahead()
    started = engine.block_started
    late = [(s, t) for s, t in engine.pushed if s // BLOCK < len(started) and started[s // BLOCK] < t]
    assert len(engine.pushed) == 300 and not late, (
        f"{len(late)} of 300 events were scheduled into a block already being rendered")


def test_the_render_ahead_option_takes_fractions_and_refuses_what_cannot_work() -> None:
    import argparse

    from synth.live import AudioConfig, LiveError, render_ahead_blocks

    jack = AudioConfig(device=0, sample_rate=48000, blocksize=128, under_jack=True)
    assert render_ahead_blocks(argparse.Namespace(render_ahead=1.5), jack) == 1.5
    assert render_ahead_blocks(argparse.Namespace(render_ahead=0.0), jack) == 0.0
    assert render_ahead_blocks(argparse.Namespace(), jack) == 2.0, "the default lead"
    for bad in (0.25, -1.0, 9.0, float("nan")):
        with pytest.raises(LiveError, match="--render-ahead"):
            render_ahead_blocks(argparse.Namespace(render_ahead=bad), jack)
    # a callback whose block length may vary cannot be served from a ring of fixed blocks
    free = AudioConfig(device=0, sample_rate=48000, blocksize=0, under_jack=False)
    assert render_ahead_blocks(argparse.Namespace(render_ahead=2.0), free) == 0.0
