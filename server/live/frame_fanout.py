"""The one way stylized frames reach their consumers: a stream's track publishes each frame once,
and everything that shows it (the name's outputs, MJPEG, snapshots, WHEP viewers) reads the newest.

Modelled on aiortc's `MediaRelay`, but with the publisher in charge: nobody's reading paces the
track, and each consumer keeps only the newest frame (a slow one skips frames, never queues them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from av import VideoFrame

Subscriber = Callable[[VideoFrame, str], None]


class FrameFanout:
    def __init__(self) -> None:
        self.newest: VideoFrame | None = None
        self.source: str | None = None  # who made `newest` (a stream id)
        self.version = 0  # bumps with every frame
        self._planes: np.ndarray | None = None
        self._changed = asyncio.Event()
        self._subscribers: list[Subscriber] = []

    def publish(self, frame: VideoFrame, source: str) -> None:
        """On the loop: `frame` is the newest; waiting readers wake, subscribers are told (they must not block)."""
        self.newest, self.source = frame, source
        self.version += 1
        self._planes = None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for subscriber in list(self._subscribers):
            subscriber(frame, source)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Tell `subscriber` of every frame from now on; returns what ends that."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    async def next_frame(self, after: int) -> tuple[int, VideoFrame, str | None]:
        """The newest frame once it is newer than version `after`: (version, frame, its source)."""
        while self.newest is None or self.version <= after:
            await self._changed.wait()
        return self.version, self.newest, self.source

    def planes(self) -> np.ndarray:
        """The newest frame as one yuv420p array, made once per frame for every reader to copy."""
        if self._planes is None:
            assert self.newest is not None
            self._planes = self.newest.to_ndarray(format="yuv420p", threads=1)
        return self._planes
