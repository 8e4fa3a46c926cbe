"""JPEG pictures of video frames: libjpeg-turbo (PyTurboJPEG), or libavcodec's mjpeg where it cannot load.

`JpegEncoder` is the blocking encoder, used by render jobs on their own thread; `JpegOutput` runs
it on worker threads for the HTTP outputs (snapshot.jpg, MJPEG), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import av
from turbojpeg import TJPF_RGB, TJSAMP_420, TurboJPEG

logger = logging.getLogger(__name__)


class JpegEncoder:
    def __init__(self, quality: int) -> None:
        self.quality = quality
        self._turbo: TurboJPEG | None
        try:
            self._turbo = TurboJPEG()
        except (OSError, RuntimeError) as e:
            # PyTurboJPEG 2.x refuses libjpeg-turbo 2.1 (Debian 12 and 13): JPEG keeps working, slower.
            reason = str(e).strip().splitlines()[0]
            logger.warning("libjpeg-turbo unavailable, JPEG uses libavcodec's mjpeg: %s", reason)
            self._turbo = None

    def encode(self, frame: av.VideoFrame) -> bytes:
        if self._turbo is not None:
            rgb = frame.to_ndarray(format="rgb24", threads=1)
            return bytes(
                self._turbo.encode(rgb, quality=self.quality, pixel_format=TJPF_RGB, jpeg_subsample=TJSAMP_420)
            )
        codec = av.CodecContext.create("mjpeg", "w")
        assert isinstance(codec, av.VideoCodecContext)
        codec.width = frame.width
        codec.height = frame.height
        codec.pix_fmt = "yuvj420p"
        # mjpeg's quantiser scale runs 1 (best) to 31; map quality 100..0 onto it.
        codec.qmin = codec.qmax = max(1, min(31, round((100 - self.quality) * 0.3) + 1))
        frame = frame.reformat(format="yuvj420p", threads=1)
        return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])


class JpegOutput:
    """Encodes stream outputs on worker threads; `stopping` tells long MJPEG responses the server is going down."""

    def __init__(self, quality: int = 85, workers: int = 2) -> None:
        self.encoder = JpegEncoder(quality)
        self.stopping = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jpeg")

    async def encode(self, frame: av.VideoFrame) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.encoder.encode, frame)

    def stop_streams(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
