"""Which frames go into the next batch, and when: the engine's policy, in plain Python (no torch).

Latest frame wins: a key (a stream) has at most one frame waiting, and a newer one replaces it.
Live frames go first, then job frames, oldest first, up to `max_batch`. An idle device may wait a
little for a fuller batch, up to `max_wait_s` or until every stream that submitted within
`active_window_s` has a frame in; a device with a batch in flight never waits.

The clock is injectable, so tests can run every decision without real time passing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pipeline.contract import FrameParams, Priority

# A stream that submitted within this window is expected to submit again soon: worth waiting for.
ACTIVE_WINDOW_S = 1.0


@dataclass
class Request:
    """One frame waiting for the model, and the future its caller holds."""

    key: str
    frame: np.ndarray
    params: FrameParams
    priority: Priority
    future: Future[np.ndarray]
    arrived: float

    @cached_property
    def thumbnail(self) -> np.ndarray:
        """Every 8th luma pixel, for the similarity filter (made once per frame)."""
        height = self.frame.shape[0] * 2 // 3
        return self.frame[:height:8, ::8].astype(np.float32)


@dataclass
class Scheduler:
    max_batch: int
    max_wait_s: float
    clock: Callable[[], float] = time.perf_counter
    active_window_s: float = ACTIVE_WINDOW_S
    _pending: OrderedDict[str, Request] = field(default_factory=OrderedDict, init=False)
    _active: dict[str, float] = field(default_factory=dict, init=False)
    _known: set[str] = field(default_factory=set, init=False)  # keys not forgotten
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _stopped: bool = field(default=False, init=False)
    replaced: int = field(default=0, init=False)  # requests replaced by a newer one of the same key

    def request(self, key: str, frame: np.ndarray, params: FrameParams, priority: Priority) -> Request:
        return Request(key, frame, params, priority, Future(), self.clock())

    def put(self, request: Request) -> Request | None:
        """Queue `request`; returns the waiting request of the same key it replaced, if any (its
        future is the caller's to fail, outside the lock). Raises `RuntimeError` once closed."""
        with self._cond:
            if self._stopped:
                raise RuntimeError("scheduler closed")
            old = self._pending.pop(request.key, None)
            self._pending[request.key] = request
            self.replaced += old is not None
            self._known.add(request.key)
            if request.priority is Priority.LIVE:
                self._active[request.key] = request.arrived
            self._cond.notify_all()
        return old

    def forget(self, key: str) -> Request | None:
        """A stream left: returns its waiting request, if any; the key is no longer known."""
        with self._cond:
            self._active.pop(key, None)
            self._known.discard(key)
            return self._pending.pop(key, None)

    def known(self, key: str) -> bool:
        """Whether `key` submitted and has not been forgotten since (state kept for it is wanted)."""
        with self._cond:
            return key in self._known

    def close(self) -> list[Request]:
        """Refuse new requests; returns the waiting ones (the caller fails their futures)."""
        with self._cond:
            self._stopped = True
            waiting = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        return waiting

    @property
    def closed(self) -> bool:
        return self._stopped

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def take(self, *, wait: bool) -> list[Request] | None:
        """The next batch: live frames first, oldest first, up to `max_batch`; [] when none waits and
        `wait` is off; None once closed. With `wait`, it never returns an empty batch."""
        with self._cond:
            # A wait may end with nothing to take: the frames that woke it were withdrawn meanwhile
            # (their streams left); then it starts again, as a waiting caller has no batch in flight.
            while wait:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                deadline = self.clock() + self.max_wait_s
                while not self._stopped and not self._full_enough():
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._pending or self._stopped:
                    break
            if self._stopped:
                return None
            ordered = sorted(self._pending.values(), key=lambda r: (r.priority, r.arrived))
            batch = ordered[: self.max_batch]
            for request in batch:
                del self._pending[request.key]
            return batch

    def _full_enough(self) -> bool:
        """Every active stream has a live frame in (or the batch is full): waiting longer gains nothing."""
        live_waiting = sum(1 for r in self._pending.values() if r.priority is Priority.LIVE)
        horizon = self.clock() - self.active_window_s
        expected = sum(1 for seen in self._active.values() if seen >= horizon)
        return live_waiting >= min(expected, self.max_batch)


def resolve(future: Future[np.ndarray], result: np.ndarray) -> None:
    try:
        future.set_result(result)
    except InvalidStateError:  # replaced, closed or cancelled meanwhile: nobody waits for it
        pass


def fail(future: Future[np.ndarray], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass
