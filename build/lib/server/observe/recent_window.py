"""A short sliding window of timed values: recent rates and percentiles for /api/stats."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

# The span of "right now" in /api/stats: fps, throughput and latency percentiles.
RECENT_S = 5.0


class RecentWindow:
    """The values added in the last `seconds` (at most `limit` of them); safe to share between threads.

    Prometheus histograms answer "since start-up"; an operator watching a show wants "right now":
    frames per second over the last few seconds, and latency percentiles over the same span.
    """

    def __init__(self, seconds: float, limit: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        self.seconds = seconds
        self._clock = clock
        self._items: deque[tuple[float, float]] = deque(maxlen=limit)
        self._lock = threading.Lock()
        self._started = clock()

    def add(self, value: float = 1.0) -> None:
        now = self._clock()
        with self._lock:
            self._items.append((now, value))
            self._expire(now)

    def values(self) -> list[float]:
        with self._lock:
            self._expire(self._clock())
            return [value for _, value in self._items]

    def rate(self) -> float:
        """The values' sum per second over the window (frames/s when each value is one frame).

        While the window is younger than `seconds` the sum is divided by its age (at least 1 s, so
        a single early frame does not read as a burst).
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            total = sum(value for _, value in self._items)
        span = min(self.seconds, max(now - self._started, 1.0))
        return total / span

    def mean(self) -> float | None:
        values = self.values()
        return sum(values) / len(values) if values else None

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile, `q` in [0, 100]; None when the window is empty."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be within [0, 100], got {q}")
        values = sorted(self.values())
        if not values:
            return None
        rank = max(math.ceil(q / 100.0 * len(values)), 1)
        return values[rank - 1]

    def percentile_ms(self, q: float) -> float | None:
        """`percentile(q)` of values in seconds, in milliseconds rounded to 0.01."""
        seconds = self.percentile(q)
        return None if seconds is None else round(seconds * 1000.0, 2)

    def _expire(self, now: float) -> None:
        horizon = now - self.seconds
        while self._items and self._items[0][0] < horizon:
            self._items.popleft()
