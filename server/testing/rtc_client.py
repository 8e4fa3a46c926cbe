"""An in-process aiortc client: sends numbered test frames, records the frames that come back.

Each sent frame carries its index twice: as pts (index * 3000 at 90 kHz, i.e. 30 fps) and as a
16-bit pattern of black and white blocks that survives VP8, so at strength 0 the index can be read
back from the pixels.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from server.testing.waiting import eventually

WIDTH, HEIGHT = 320, 240
BITS = 16  # blocks across the top rows, each a square of width / 16 pixels
TICKS_PER_FRAME = 3000
TIME_BASE = fractions.Fraction(1, 90000)


def pattern_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """RGB test picture: a gradient with the index as black/white blocks in the top strip."""
    block = width // BITS
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = x
    image[..., 1] = y
    image[..., 2] = (x + y) / 2
    for bit in range(BITS):
        value = 255 if index >> bit & 1 else 0
        image[:block, bit * block : (bit + 1) * block] = value
    return image


def read_index(frame: VideoFrame) -> int:
    luma = frame.to_ndarray(format="gray")
    block = frame.width // BITS
    margin = block // 5  # away from the edges a codec blurs
    index = 0
    for bit in range(BITS):
        if luma[margin : block - margin, bit * block + margin : (bit + 1) * block - margin].mean() > 128:
            index |= 1 << bit
    return index


class NumberedTrack(MediaStreamTrack):
    """A camera stand-in at `fps`: frame i has pts i * 3000 and its index drawn into the picture."""

    kind = "video"

    def __init__(self, fps: float = 30.0, count: int | None = None, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
        super().__init__()
        self.fps = fps
        self.count = count
        self.size = size
        self.sent = -1
        self.sent_at: dict[int, float] = {}
        self._start: float | None = None
        # pattern_frame(0) as yuv420p, converted once: a frame is this with its white blocks painted in
        # luma (black and white both have neutral chroma), so a load generator's frames cost a copy.
        picture = VideoFrame.from_ndarray(pattern_frame(0, *size), format="rgb24")
        self._base = picture.reformat(format="yuv420p").to_ndarray()

    async def recv(self) -> VideoFrame:
        if self.count is not None and self.sent + 1 >= self.count:
            self.stop()
            raise MediaStreamError
        index = self.sent + 1
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + index / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = VideoFrame.from_ndarray(self._numbered(index), format="yuv420p")
        frame.pts = index * TICKS_PER_FRAME
        frame.time_base = TIME_BASE
        self.sent = index
        self.sent_at[index] = time.monotonic()
        return frame

    def _numbered(self, index: int) -> np.ndarray:
        yuv = self._base.copy()
        block = self.size[0] // BITS
        for bit in range(BITS):
            if index >> bit & 1:
                yuv[:block, bit * block : (bit + 1) * block] = 235  # white in BT.601 limited range
        return yuv


@dataclass
class Received:
    pts: int
    frame: VideoFrame
    latest_sent: int  # the newest index the client had sent when this frame arrived
    at: float


@dataclass
class RtcClient:
    pc: RTCPeerConnection
    source: NumberedTrack
    stream_id: str
    answer: dict[str, Any]
    channel: RTCDataChannel | None = None
    received: list[Received] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def wait_frames(self, count: int, timeout: float = 60.0) -> None:
        target = len(self.received) + count
        await eventually(lambda: len(self.received) >= target, timeout, what=f"{target} frames received")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.source.stop()
        await self.pc.close()


async def offer_sdp(*, candidates: bool = True) -> str:
    """An SDP offer for one video transceiver, its peer closed at once; without `candidates`, as a peer
    that never sends ICE makes it (no candidates, and none will follow)."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    if candidates:
        return sdp
    return "".join(line + "\r\n" for line in sdp.splitlines() if not line.startswith("a=candidate"))


async def connect(
    http: aiohttp.ClientSession,
    offer_url: str,
    *,
    fps: float = 30.0,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    settings: dict[str, Any] | None = None,
    negotiate_channel: bool = False,
) -> RtcClient:
    pc = RTCPeerConnection()
    source = NumberedTrack(fps, size=size)
    pc.addTrack(source)
    channel = pc.createDataChannel("control") if negotiate_channel else None
    track_ready: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if not track_ready.done():
            track_ready.set_result(track)

    await pc.setLocalDescription(await pc.createOffer())
    body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": "offer"}
    if settings is not None:
        body["settings"] = settings
    async with http.post(offer_url, json=body) as response:
        answer = await response.json()
        if response.status != 200:
            await pc.close()
            raise RuntimeError(f"offer refused: {response.status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    client = RtcClient(pc, source, answer["stream_id"], answer, channel)
    remote = await asyncio.wait_for(track_ready, 10)

    async def read() -> None:
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, VideoFrame)
            client.received.append(Received(frame.pts or 0, frame, source.sent, time.monotonic()))

    client._reader = asyncio.create_task(read())
    return client
