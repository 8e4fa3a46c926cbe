"""JPEG pictures of video frames, encoded by libjpeg-turbo on worker threads, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from av import VideoFrame
from turbojpeg import TJPF_RGB, TJSAMP_420, TurboJPEG

logger = logging.getLogger(__name__)


class JpegUnavailable(Exception):
    """libjpeg-turbo could not be loaded; the message says why."""


class JpegEncoder:
    """Encodes `VideoFrame`s to JPEG; `stopping` tells long MJPEG responses that the server is going down.

    A missing or mismatched libjpeg-turbo does not stop the server: it is logged once at start-up and
    every `encode()` raises `JpegUnavailable` with the reason.
    """

    def __init__(self, quality: int = 85, workers: int = 2) -> None:
        self.quality = quality
        self.stopping = asyncio.Event()
        self.unavailable = ""
        self._turbo: TurboJPEG | None = None
        try:
            self._turbo = TurboJPEG()
        except (OSError, RuntimeError) as e:
            self.unavailable = str(e).strip().splitlines()[0]
            logger.error(
                "JPEG output off (snapshot.jpg and mjpeg answer 503): %s; install libturbojpeg0 and PyTurboJPEG<2",
                self.unavailable,
            )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jpeg")

    async def encode(self, frame: VideoFrame) -> bytes:
        if self._turbo is None:
            raise JpegUnavailable(self.unavailable)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, self._turbo, frame)

    def _encode(self, turbo: TurboJPEG, frame: VideoFrame) -> bytes:
        # RGB in, 4:2:0 out: the same call in PyTurboJPEG 1.x and 2.x, for any frame size.
        rgb = frame.to_ndarray(format="rgb24")
        jpeg: bytes = turbo.encode(rgb, quality=self.quality, pixel_format=TJPF_RGB, jpeg_subsample=TJSAMP_420)
        return jpeg

    def stop_streams(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
