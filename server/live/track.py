"""The stylized output track: newest camera frame -> engine -> back out with the input's pts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from pipeline.contract import EngineClosed, FrameReplaced
from server.control.settings import StyleSettings
from server.live.mailbox import LatestMailbox, MailboxClosed
from server.live.stream_stats import StreamStats
from server.observe.metrics import DropReason, Metrics

if TYPE_CHECKING:
    from pipeline import Engine

logger = logging.getLogger(__name__)

_Timed = tuple[float, VideoFrame]  # (arrival, camera frame)
_Result = tuple[float, float, VideoFrame]  # (camera frame's arrival, result ready, stylized frame)


class StylizedTrack(MediaStreamTrack):
    """Reads the caller's camera track and serves its stylized frames.

    A reader task keeps only the newest camera frame (aiortc's receive queue is unbounded, so it
    must be drained), a pump task sends it through the engine, and `recv()` hands out the newest
    result. Frames replaced before they were used are counted as dropped. The stream's `stats`
    and the server-wide `metrics` both see every frame in, out and dropped.
    """

    kind = "video"

    def __init__(
        self,
        source: MediaStreamTrack,
        stream_id: str,
        engine: Engine,
        settings: Callable[[], StyleSettings],
        stats: StreamStats,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self._source = source
        self._stream_id = stream_id
        self._engine = engine
        self._settings = settings
        self._stats = stats
        self._metrics = metrics if metrics is not None else Metrics()
        self._inputs: LatestMailbox[_Timed] = LatestMailbox()
        self._outputs: LatestMailbox[_Result] = LatestMailbox()
        self._tasks: list[asyncio.Task[None]] = []
        self.latest_output: VideoFrame | None = None
        # Told of every stylized frame as it is made (the name's outputs: MJPEG, WHEP viewers); must not block.
        self.output_listeners: list[Callable[[VideoFrame], None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read(), name=f"read-{self._stream_id}"),
            asyncio.create_task(self._pump(), name=f"pump-{self._stream_id}"),
        ]

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            arrived, ready, frame = await self._outputs.get()
        except MailboxClosed:
            self.stop()
            raise MediaStreamError from None
        now = time.perf_counter()
        self._stats.frame_out(now - arrived)
        self._metrics.frame_sent(latency_s=now - arrived, send_s=now - ready)
        return frame

    def stop(self) -> None:
        super().stop()
        for task in self._tasks:
            task.cancel()
        self._outputs.close()

    async def aclose(self) -> None:
        """Stop and wait for the tasks to end."""
        self.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._source.recv()
                if not isinstance(frame, VideoFrame):
                    continue
                self._stats.frame_in()
                self._metrics.frame_received()
                if self._inputs.put((time.perf_counter(), frame)):
                    self._drop("receive")
        except MediaStreamError:
            logger.info("camera track ended stream=%s", self._stream_id)
        finally:
            self._inputs.close()

    async def _pump(self) -> None:
        last: np.ndarray | None = None
        try:
            while True:
                arrived, frame = await self._inputs.get()
                settings = self._settings()
                if settings.paused and last is not None:
                    output = last
                else:
                    try:
                        output = await self._stylize(frame, settings, arrived)
                    except FrameReplaced:
                        self._drop("engine")
                        continue
                    last = output
                ready = time.perf_counter()
                result = VideoFrame.from_ndarray(output, format="yuv420p")
                result.pts = frame.pts
                result.time_base = frame.time_base
                self.latest_output = result
                for listener in self.output_listeners:
                    listener(result)
                if self._outputs.put((arrived, ready, result)):
                    self._drop("send")
        except (MailboxClosed, EngineClosed):
            pass
        except Exception:
            logger.exception("stylizing failed stream=%s", self._stream_id)
        finally:
            self._outputs.close()

    async def _stylize(self, frame: VideoFrame, settings: StyleSettings, arrived: float) -> np.ndarray:
        if frame.width % 2 or frame.height % 2:
            frame = frame.reformat(width=frame.width // 2 * 2, height=frame.height // 2 * 2)
        data = frame.to_ndarray(format="yuv420p")
        self._metrics.observe_stage("receive", time.perf_counter() - arrived)
        future = self._engine.submit(self._stream_id, data, settings.frame_params())
        return await asyncio.wrap_future(future)

    def _drop(self, reason: DropReason) -> None:
        self._stats.frame_dropped()
        self._metrics.frame_dropped(reason)
