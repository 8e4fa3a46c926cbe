"""The stylized output track: every camera frame -> engine -> back out with the input's pts."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from pipeline.contract import EngineClosed, FrameReplaced
from server.control.settings import StyleSettings
from server.live.frame_counts import FrameCounts
from server.live.frame_fanout import FrameFanout
from server.live.mailbox import LatestMailbox, MailboxClosed
from server.observe.metrics import DropReason

if TYPE_CHECKING:
    from pipeline import Engine

logger = logging.getLogger(__name__)

_Result = tuple[float, float, VideoFrame]  # (camera frame's arrival, result ready, stylized frame)


@dataclass(frozen=True, slots=True)
class Take:
    """One stylized frame with what made it: the camera frame the engine saw and the settings it obeyed."""

    input: VideoFrame
    output: VideoFrame
    settings: StyleSettings


TakeListener = Callable[[Take], None]


class StylizedTrack(MediaStreamTrack):
    """Reads the caller's camera track and serves its stylized frames.

    A reader task hands every camera frame to the engine the moment it arrives (aiortc's receive
    queue is unbounded, so it must be drained), so the engine always has this stream's newest frame
    waiting; the engine replaces a frame that is still waiting when a newer one comes (counted as an
    `engine` drop), which is the one latest-frame policy. Results come back on the event loop in
    order and `recv()` hands out the newest (`send` drops). A frame the engine fails on is an `error`
    drop; `max_failed` of them in a row end the stream through `on_failed` with the reason.
    """

    kind = "video"

    def __init__(
        self,
        source: MediaStreamTrack,
        stream_id: str,
        engine: Engine,
        settings: Callable[[], StyleSettings],
        counts: FrameCounts,
        *,
        max_failed: int = 15,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self._source = source
        self._stream_id = stream_id
        self._engine = engine
        self._settings = settings
        self._counts = counts
        self._max_failed = max_failed
        self._on_failed = on_failed
        self._failed_in_a_row = 0
        self._outputs: LatestMailbox[_Result] = LatestMailbox()
        self._reader: asyncio.Task[None] | None = None
        self._loop_thread = 0  # the event loop's thread, known once started
        self._last: np.ndarray | None = None  # the newest stylized picture, for `paused`
        # Every stylized frame, published once: the name's outputs, MJPEG, snapshots and viewers read it.
        self.output = FrameFanout()
        # Who is told of every frame with its input and settings (a recording); nobody, mostly.
        self.takes: list[TakeListener] = []

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._reader = asyncio.create_task(self._read(), name=f"read-{self._stream_id}")

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            arrived, ready, frame = await self._outputs.get()
        except MailboxClosed:
            self.stop()
            raise MediaStreamError from None
        now = time.perf_counter()
        self._counts.sent(latency_s=now - arrived, send_s=now - ready)
        return frame

    def stop(self) -> None:
        super().stop()
        if self._reader is not None:
            self._reader.cancel()
        self._outputs.close()

    async def aclose(self) -> None:
        """Stop and wait for the reader to end."""
        self.stop()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self._source.recv()
                if not isinstance(frame, VideoFrame):
                    continue
                arrived = time.perf_counter()
                self._counts.received()
                settings = self._settings()
                if frame.width % 2 or frame.height % 2:
                    frame = frame.reformat(width=frame.width // 2 * 2, height=frame.height // 2 * 2, threads=1)
                if settings.paused and self._last is not None:
                    self._emit(frame, self._last, arrived, settings)
                    continue
                future = self._submit(frame, settings, arrived)
                # The engine's thread resolves the future; the answer is handled back on the loop.
                future.add_done_callback(functools.partial(self._hand_back, loop, frame, arrived, settings))
        except (MediaStreamError, EngineClosed):
            logger.info("camera track ended stream=%s", self._stream_id)
        except Exception:
            logger.exception("reading the camera failed stream=%s", self._stream_id)
        finally:
            self._outputs.close()

    def flicker(self) -> float | None:
        """This stream's flicker figure (`pipeline.flicker`), None until two frames went through the model."""
        return self._engine.flicker.of(self._stream_id)

    def temporal(self) -> dict[str, object] | None:
        """What this stream's temporal memory runs with now: feedback, target and the controller's state."""
        return self._engine.temporal.describe(self._stream_id)

    def _submit(self, frame: VideoFrame, settings: StyleSettings, arrived: float) -> Future[np.ndarray]:
        data = frame.to_ndarray(format="yuv420p", threads=1)
        self._counts.converted(time.perf_counter() - arrived)
        return self._engine.submit(self._stream_id, data, settings.frame_params())

    def _hand_back(
        self,
        loop: asyncio.AbstractEventLoop,
        frame: VideoFrame,
        arrived: float,
        settings: StyleSettings,
        future: Future[np.ndarray],
    ) -> None:
        if loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            # Replaced by the stream's next frame, inside its submit on the loop: no wake-up to send.
            loop.call_soon(self._finished, future, frame, arrived, settings)
        else:
            loop.call_soon_threadsafe(self._finished, future, frame, arrived, settings)

    def _finished(self, future: Future[np.ndarray], frame: VideoFrame, arrived: float, settings: StyleSettings) -> None:
        """On the loop, in submission order: the engine's answer for one camera frame."""
        if self.readyState != "live":
            return
        try:
            output = future.result()
        except FrameReplaced:
            self._drop("engine")
            return
        except EngineClosed:
            return
        except Exception as e:
            self._failed(e)
            return
        self._failed_in_a_row = 0
        self._last = output
        self._emit(frame, output, arrived, settings)

    def _emit(self, frame: VideoFrame, output: np.ndarray, arrived: float, settings: StyleSettings) -> None:
        # Zero copy: the engine never writes a result again once it is handed out.
        result = VideoFrame.from_numpy_buffer(output, format="yuv420p")
        result.pts = frame.pts
        result.time_base = frame.time_base
        self.output.publish(result, self._stream_id)
        for listener in list(self.takes):
            listener(Take(frame, result, settings))
        if self._outputs.put((arrived, time.perf_counter(), result)):
            self._drop("send")

    def _failed(self, error: Exception) -> None:
        self._drop("error")
        self._failed_in_a_row += 1
        if self._failed_in_a_row == 1:  # the run's first; the stream's end (if it comes) is logged by its peer
            logger.warning("frame failed stream=%s: %s: %s", self._stream_id, type(error).__name__, error)
        if self._failed_in_a_row >= self._max_failed and self._on_failed is not None:
            self._on_failed(f"{self._failed_in_a_row} frames in a row failed ({type(error).__name__}: {error})")
            self._on_failed = None  # once

    def _drop(self, reason: DropReason) -> None:
        self._counts.dropped(reason)
