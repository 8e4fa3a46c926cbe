"""One stream name's output: the newest stylized frame of the newest stream of that name.

Stream ids change on every Start, reconnect and restart; names do not. MJPEG responses, snapshots
and WHEP viewers hold a `NamedOutput` rather than a stream, so they follow the name: when its
stream ends they keep the last frame, and when a stream of that name is back they go on with it.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
from av import VideoFrame


class NamedOutput:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stream_id: str | None = None  # the stream that feeds it now; None while waiting for one
        self.frame: VideoFrame | None = None  # the newest frame, kept after its stream ends
        self.frame_stream_id: str | None = None  # the stream that made `frame`
        self.version = 0  # bumps with every new frame
        self.viewers = 0  # WHEP viewers
        self.watchers = 0  # MJPEG responses
        self._planes: np.ndarray | None = None
        self._changed = asyncio.Event()

    @property
    def state(self) -> Literal["live", "waiting"]:
        return "live" if self.stream_id is not None else "waiting"

    @property
    def idle(self) -> bool:
        """Nothing feeds, shows or watches it: it may be forgotten."""
        return self.stream_id is None and self.frame is None and not self.viewers and not self.watchers

    def show(self, stream_id: str, frame: VideoFrame) -> None:
        """A stylized frame of `stream_id`: the newest of this name when that stream feeds it."""
        if stream_id != self.stream_id:
            return
        self.frame = frame
        self.frame_stream_id = stream_id
        self.version += 1
        self._planes = None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def next_frame(self, after: int) -> tuple[int, VideoFrame, str | None]:
        """The newest frame once it is newer than version `after`: (version, frame, its stream)."""
        while self.frame is None or self.version <= after:
            await self._changed.wait()
        return self.version, self.frame, self.frame_stream_id

    def planes(self) -> np.ndarray:
        """The newest frame as one yuv420p array, made once per frame for every viewer to copy."""
        if self._planes is None:
            assert self.frame is not None
            self._planes = self.frame.to_ndarray(format="yuv420p", threads=1)
        return self._planes

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "stream_id": self.stream_id,
            "state": self.state,
            "viewers": self.viewers,
            "mjpeg": self.watchers,
            "frames": self.version,
        }
