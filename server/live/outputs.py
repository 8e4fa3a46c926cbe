"""Every stream name's output, and `latest` (whichever stream started most recently).

The peers tell `NamedOutputs` when a stream starts (with its stylized track) and ends; the track
tells it of every frame it makes. The newest stream of a name feeds that name; when it ends, the
next newest live stream of the name takes over, or the name waits (keeping its last frame) for one.

A publisher that does not receive its own stylized video (a send-only WHIP client) has nobody
reading its track; `drain` reads it, so its frames are counted as sent rather than dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator

import numpy as np
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from server.fields import LATEST
from server.live.named_output import NamedOutput
from server.live.track import StylizedTrack, TakeListener

logger = logging.getLogger(__name__)


class NamedOutputs:
    def __init__(self) -> None:
        self._outputs: dict[str, NamedOutput] = {}
        self._live: dict[str, str] = {}  # stream id -> name, oldest first
        self._drains: dict[str, asyncio.Task[None]] = {}
        self.waiting_jpeg = b""  # the card MJPEG shows while a name has never had a frame

    def get(self, name: str) -> NamedOutput:
        output = self._outputs.get(name)
        if output is None:
            output = self._outputs[name] = NamedOutput(name)
        return output

    def find(self, name: str) -> NamedOutput | None:
        return self._outputs.get(name)

    def describe(self) -> list[dict[str, object]]:
        """Every name this run has seen (`latest` first), with its stream, state and viewers."""
        latest = self._outputs.get(LATEST)
        others = sorted((o for o in self._outputs.values() if o.name != LATEST), key=lambda o: o.name)
        return [output.describe() for output in ([latest] if latest else []) + others]

    # -- streams --------------------------------------------------------------------------------

    def stream_started(self, stream_id: str, name: str, track: StylizedTrack) -> None:
        self._live[stream_id] = name
        for key in (name, LATEST):
            self.get(key).stream_id = stream_id
        for key in (name, LATEST):
            track.output.subscribe(self.get(key).show)
            track.takes.append(functools.partial(self.get(key).take, stream_id=stream_id))
        logger.info("output follows stream=%s name=%s", stream_id, name)

    async def stream_ended(self, stream_id: str) -> None:
        name = self._live.pop(stream_id, None)
        drain = self._drains.pop(stream_id, None)
        if drain is not None:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
        if name is None:
            return
        for key in (name, LATEST):
            output = self._outputs.get(key)
            if output is not None and output.stream_id == stream_id:
                newer = [sid for sid, n in self._live.items() if key == LATEST or n == key]
                output.stream_id = newer[-1] if newer else None
            self._forget_if_idle(key)

    def drain(self, stream_id: str, track: StylizedTrack) -> None:
        """Read `track` for a publisher that does not receive it (frames still reach the name)."""
        self._drains[stream_id] = asyncio.create_task(_read_all(track), name=f"drain-{stream_id}")

    async def close(self) -> None:
        drains = list(self._drains.values())
        self._drains.clear()
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)

    # -- viewers --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, name: str) -> Iterator[NamedOutput]:
        """An MJPEG response's hold on a name's output."""
        output = self.get(name)
        output.watchers += 1
        try:
            yield output
        finally:
            output.watchers -= 1
            self._forget_if_idle(name)

    def viewer_joined(self, name: str) -> NamedOutput:
        output = self.get(name)
        output.viewers += 1
        return output

    def viewer_left(self, name: str) -> None:
        output = self._outputs.get(name)
        if output is not None:
            output.viewers -= 1
            self._forget_if_idle(name)

    def record(self, name: str, listener: TakeListener) -> Callable[[], None]:
        """Tell `listener` of every frame of `name` with its input and settings (a stream of that name
        may come later); returns what ends that."""
        output = self.get(name)
        output.recorders.append(listener)

        def end() -> None:
            if listener in output.recorders:
                output.recorders.remove(listener)
            self._forget_if_idle(name)

        return end

    def _forget_if_idle(self, name: str) -> None:
        output = self._outputs.get(name)
        if output is not None and output.idle:
            del self._outputs[name]


async def _read_all(track: StylizedTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def waiting_card(width: int = 512, height: int = 512) -> VideoFrame:
    """What a name's MJPEG shows before it ever had a frame: three light dots on a dark card."""
    image = np.full((height, width, 3), 24, dtype=np.uint8)
    rows, columns = np.ogrid[:height, :width]
    radius = max(2, width // 48)
    for step in (-1, 0, 1):
        centre_x, centre_y = width // 2 + step * radius * 4, height // 2
        image[(columns - centre_x) ** 2 + (rows - centre_y) ** 2 <= radius**2] = 170
    return VideoFrame.from_ndarray(image, format="rgb24")
