"""The engine's scheduler alone, with fakes and a clock the test moves: no torch, no model, no device."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from pipeline.contract import FrameParams, Priority
from pipeline.scheduler import Request, Scheduler
from server.config import ROOT

PARAMS = FrameParams(prompt="x", strength=0.5)
FRAME = np.zeros((6, 4), dtype=np.uint8)
# Real seconds a waiting take polls the fake clock at (its wait's length): short, so tests are quick.
MAX_WAIT_S = 0.02


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _scheduler(max_batch: int = 4) -> tuple[Scheduler, FakeClock]:
    clock = FakeClock()
    return Scheduler(max_batch, MAX_WAIT_S, clock=clock), clock


def _put(scheduler: Scheduler, key: str, priority: Priority = Priority.LIVE) -> Request:
    request = scheduler.request(key, FRAME, PARAMS, priority)
    assert scheduler.put(request) is None
    return request


class _Taker:
    """`take(wait=True)` on a thread of its own, as the engine's worker calls it."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.result: list[Request] | None = None
        self._thread = threading.Thread(target=self._run, args=(scheduler,), daemon=True)
        self._done = threading.Event()
        self._thread.start()

    def _run(self, scheduler: Scheduler) -> None:
        self.result = scheduler.take(wait=True)
        self._done.set()

    def done_within(self, seconds: float) -> bool:
        return self._done.wait(seconds)


def _keys(batch: list[Request] | None) -> list[str]:
    assert batch is not None
    return [r.key for r in batch]


def test_a_newer_frame_replaces_the_waiting_one_of_its_key() -> None:
    scheduler, clock = _scheduler()
    first = _put(scheduler, "s")
    clock.advance(0.01)
    second = scheduler.request("s", FRAME, PARAMS, Priority.LIVE)
    assert scheduler.put(second) is first
    assert (scheduler.pending, scheduler.replaced) == (1, 1)
    assert scheduler.take(wait=False) == [second]


def test_live_frames_go_first_then_the_oldest_up_to_max_batch() -> None:
    scheduler, clock = _scheduler(max_batch=3)
    for key, priority in [("job-1", Priority.JOB), ("b", Priority.LIVE), ("job-2", Priority.JOB), ("a", Priority.LIVE)]:
        _put(scheduler, key, priority)
        clock.advance(0.001)
    assert _keys(scheduler.take(wait=False)) == ["b", "a", "job-1"]
    assert _keys(scheduler.take(wait=False)) == ["job-2"]
    assert scheduler.take(wait=False) == []


def test_an_idle_device_waits_until_every_active_stream_has_a_frame_in() -> None:
    scheduler, _ = _scheduler()
    _put(scheduler, "a")
    _put(scheduler, "b")
    assert _keys(scheduler.take(wait=False)) == ["a", "b"]  # both streams are active now
    _put(scheduler, "a")
    taker = _Taker(scheduler)
    assert not taker.done_within(10 * MAX_WAIT_S)  # the fake clock stands still: no deadline passes
    _put(scheduler, "b")
    assert taker.done_within(5)
    assert _keys(taker.result) == ["a", "b"]


def test_the_wait_for_a_fuller_batch_ends_at_max_wait() -> None:
    scheduler, clock = _scheduler()
    _put(scheduler, "a")
    _put(scheduler, "b")
    scheduler.take(wait=False)
    _put(scheduler, "a")
    taker = _Taker(scheduler)
    assert not taker.done_within(5 * MAX_WAIT_S)
    clock.advance(MAX_WAIT_S)
    assert taker.done_within(5)
    assert _keys(taker.result) == ["a"]


def test_a_stream_silent_past_the_active_window_is_not_waited_for() -> None:
    scheduler, clock = _scheduler()
    _put(scheduler, "a")
    _put(scheduler, "b")
    scheduler.take(wait=False)
    clock.advance(scheduler.active_window_s + 0.1)  # "b" went quiet
    _put(scheduler, "a")
    taker = _Taker(scheduler)
    assert taker.done_within(5)
    assert _keys(taker.result) == ["a"]


def test_a_frame_withdrawn_during_the_wait_sends_the_wait_back_to_the_start() -> None:
    # The bug that killed the engine thread: the waiting frame's stream left during the wait for a
    # fuller batch, and the wait ended with an empty batch and nothing in flight.
    scheduler, clock = _scheduler()
    _put(scheduler, "a")
    _put(scheduler, "b")
    scheduler.take(wait=False)
    lone = _put(scheduler, "a")
    taker = _Taker(scheduler)
    assert not taker.done_within(5 * MAX_WAIT_S)
    assert scheduler.forget("a") is lone
    clock.advance(10 * MAX_WAIT_S)  # past the deadline with nothing left to take
    assert not taker.done_within(10 * MAX_WAIT_S)  # still waiting: never an empty batch
    _put(scheduler, "b")
    assert taker.done_within(5)
    assert _keys(taker.result) == ["b"]


def test_forget_drops_the_key_and_its_waiting_frame() -> None:
    scheduler, _ = _scheduler()
    waiting = _put(scheduler, "s")
    assert scheduler.known("s")
    assert scheduler.forget("s") is waiting
    assert not scheduler.known("s") and scheduler.pending == 0
    assert scheduler.forget("s") is None


def test_close_hands_back_the_waiting_frames_wakes_the_waiter_and_refuses_more() -> None:
    scheduler, _ = _scheduler()
    taker = _Taker(scheduler)
    assert not taker.done_within(2 * MAX_WAIT_S)
    assert scheduler.close() == []
    assert taker.done_within(5) and taker.result is None
    with pytest.raises(RuntimeError):
        _put(scheduler, "s")
    assert scheduler.take(wait=False) is None


def test_close_returns_what_waited() -> None:
    scheduler, _ = _scheduler()
    waiting = [_put(scheduler, "a"), _put(scheduler, "b", Priority.JOB)]
    assert scheduler.close() == waiting


def _loads(modules: str) -> str:
    code = f"import sys, {modules}; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout


def test_the_scheduler_and_the_similarity_filter_import_no_torch() -> None:
    assert _loads("pipeline.scheduler, pipeline.similarity").strip() == "[]"
