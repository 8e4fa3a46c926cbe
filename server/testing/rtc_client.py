"""In-process aiortc clients: a camera stand-in that sends numbered test frames and records the frames
that come back (over POST /api/offer like the page, or WHIP like OBS), and a WHEP viewer.

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
import yarl
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
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
    luma = frame.to_ndarray(format="gray", threads=1)
    block = frame.width // BITS
    margin = block // 5  # away from the edges a codec blurs
    index = 0
    for bit in range(BITS):
        if luma[margin : block - margin, bit * block + margin : (bit + 1) * block - margin].mean() > 128:
            index |= 1 << bit
    return index


def is_plain(frame: VideoFrame) -> bool:
    """True when a frame that came back is the untouched camera picture (strength 0)."""
    expected = pattern_frame(read_index(frame), frame.width, frame.height).astype(np.int16)
    return float(np.abs(frame.to_ndarray(format="rgb24", threads=1).astype(np.int16) - expected).mean()) < 12


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
        self._base = picture.reformat(format="yuv420p", threads=1).to_ndarray(threads=1)

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
    latest_sent: int  # the newest index the client had sent when this frame arrived (-1: it sends none)
    at: float


@dataclass(kw_only=True)
class Receiver:
    """A peer connection whose incoming video is read as it comes, into `received`."""

    pc: RTCPeerConnection
    received: list[Received] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    def newest_sent(self) -> int:
        return -1

    def read(self, remote: MediaStreamTrack) -> None:
        async def loop() -> None:
            while True:
                try:
                    frame = await remote.recv()
                except MediaStreamError:
                    return
                assert isinstance(frame, VideoFrame)
                self.received.append(Received(frame.pts or 0, frame, self.newest_sent(), time.monotonic()))

        self._reader = asyncio.create_task(loop())

    async def wait_frames(self, count: int, timeout: float = 60.0) -> None:
        target = len(self.received) + count
        await eventually(lambda: len(self.received) >= target, timeout, what=f"{target} frames received")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.pc.close()


@dataclass(kw_only=True)
class RtcClient(Receiver):
    """A camera stand-in: sends numbered frames, over POST /api/offer or WHIP, and reads what comes back."""

    source: NumberedTrack
    stream_id: str
    answer: dict[str, Any]  # the offer route's JSON; for WHIP {"sdp", "location"}
    channel: RTCDataChannel | None = None

    def newest_sent(self) -> int:
        return self.source.sent

    async def close(self) -> None:
        self.source.stop()
        await super().close()


@dataclass(kw_only=True)
class WhepViewer(Receiver):
    """A receive-only viewer of a name's output, over WHEP."""

    location: str  # the session to DELETE


def _publisher(
    fps: float, receive: bool, codec: str | None = None, audio: bool = False, size: tuple[int, int] = (WIDTH, HEIGHT)
) -> tuple[RTCPeerConnection, NumberedTrack, asyncio.Future[MediaStreamTrack]]:
    """A connection sending numbered frames (and receiving video when `receive`), and its incoming track.

    `codec` ("vp8", "h264") offers only that video codec; `audio` sends silence too, as OBS sends sound.
    """
    pc = RTCPeerConnection()
    source = NumberedTrack(fps, size=size)
    transceiver = pc.addTransceiver(source, direction="sendrecv" if receive else "sendonly")
    if codec is not None:
        wanted = f"video/{codec}".lower()
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == wanted]
        )
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    return pc, source, _incoming_track(pc)


def _incoming_track(pc: RTCPeerConnection) -> asyncio.Future[MediaStreamTrack]:
    track_ready: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and not track_ready.done():
            track_ready.set_result(track)

    return track_ready


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


class SdpRefused(RuntimeError):
    """An offer was refused: WHIP or WHEP answered other than 201, /api/offer other than 200."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"offer refused: {status} {body}")
        self.status = status
        self.body = body


async def connect(
    http: aiohttp.ClientSession,
    offer_url: str,
    *,
    fps: float = 30.0,
    size: tuple[int, int] = (WIDTH, HEIGHT),
    settings: dict[str, Any] | None = None,
    negotiate_channel: bool = False,
    name: str | None = None,
    model: str | None = None,
) -> RtcClient:
    """The page's way in: POST /api/offer with JSON (asking for a model where `model` is given)."""
    pc, source, track_ready = _publisher(fps, receive=True, size=size)
    channel = pc.createDataChannel("control") if negotiate_channel else None
    await pc.setLocalDescription(await pc.createOffer())
    body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": "offer"}
    if settings is not None:
        body["settings"] = settings
    if name is not None:
        body["name"] = name
    if model is not None:
        body["model"] = model
    async with http.post(offer_url, json=body) as response:
        if response.status != 200:
            await pc.close()
            raise SdpRefused(response.status, await response.text())
        answer = await response.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    client = RtcClient(pc=pc, source=source, stream_id=answer["stream_id"], answer=answer, channel=channel)
    client.read(await asyncio.wait_for(track_ready, 10))
    return client


async def _post_sdp(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection, token: str | None) -> tuple[str, str]:
    """Offer over WHIP/WHEP (`application/sdp`, the Bearer token if any): (answer SDP, absolute Location)."""
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
        body = await response.text()
        if response.status != 201:
            await pc.close()
            raise SdpRefused(response.status, body)
        location = str(response.url.join(yarl.URL(response.headers["Location"])))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return body, location


async def whip_publish(
    http: aiohttp.ClientSession,
    url: str,
    *,
    fps: float = 30.0,
    receive: bool = True,
    token: str | None = None,
    codec: str | None = None,
    audio: bool = False,
) -> RtcClient:
    """OBS's way in: WHIP (RFC 9725) to `url`; with `receive`, the stylized video comes back on it."""
    pc, source, track_ready = _publisher(fps, receive, codec, audio)
    sdp, location = await _post_sdp(http, url, pc, token)
    client = RtcClient(
        pc=pc, source=source, stream_id=location.rsplit("/", 2)[-2], answer={"sdp": sdp, "location": location}
    )
    if receive:
        client.read(await asyncio.wait_for(track_ready, 10))
    return client


async def whep_view(http: aiohttp.ClientSession, url: str, *, token: str | None = None) -> WhepViewer:
    """A player's way to watch: WHEP to `url`, receive-only; frames arrive once the name streams."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    track_ready = _incoming_track(pc)
    _, location = await _post_sdp(http, url, pc, token)
    viewer = WhepViewer(pc=pc, location=location)
    viewer.read(await asyncio.wait_for(track_ready, 10))
    return viewer
