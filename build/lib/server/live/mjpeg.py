"""MJPEG over HTTP (multipart/x-mixed-replace): a new JPEG part whenever the picture changes, at most `fps`.

One loop serves both kinds of output: a stream's (it ends with the closing boundary when the stream
closes) and a name's (it never ends by itself: it shows the last frame or a waiting card until a
stream of that name is back). Encoding runs on the JPEG workers, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from av import VideoFrame
from pydantic import BaseModel, ConfigDict, Field

from server.http.errors import invalid
from server.jpeg import JpegOutput

logger = logging.getLogger(__name__)

BOUNDARY = "stylize-frame"
MIN_FPS = 1.0

# What a viewer sees now: a frame to encode, a JPEG made already (the waiting card), or nothing yet.
Picture = VideoFrame | bytes | None


class MjpegQuery(BaseModel):
    """Documents ?fps= (checked by `requested_fps`: capped at [outputs] mjpeg_max_fps)."""

    model_config = ConfigDict(extra="allow")
    fps: float | None = Field(None, ge=1.0, description="frames a second; default [outputs] mjpeg_fps")


# What `@operation` says of the routes that answer with a JPEG, or with MJPEG.
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
JPEG_ANSWER: dict[str, Any] = {"response": BINARY, "media_type": "image/jpeg"}
MJPEG_ANSWER: dict[str, Any] = {"query": MjpegQuery, "response": BINARY, "media_type": "multipart/x-mixed-replace"}


async def snapshot_response(encoder: JpegOutput, frame: VideoFrame) -> web.Response:
    """One frame as a JPEG nobody caches."""
    jpeg = await encoder.encode(frame)
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def serve_mjpeg(
    request: web.Request,
    encoder: JpegOutput,
    fps: float,
    picture: Callable[[], Picture],
    live: Callable[[], bool],
    label: str,
    resend_after_s: float | None = None,
) -> web.StreamResponse:
    """Parts while `live()`; `resend_after_s` sends an unchanged picture again (idle viewers keep it)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    interval = 1.0 / fps
    sent: Picture = None
    jpeg = b""
    sent_at = loop.time()
    parts = 0
    ended = "stream closed"
    try:
        while live() and not encoder.stopping.is_set():
            if request.transport is None or request.transport.is_closing():
                ended = "viewer left"
                return response
            started = loop.time()
            current = picture()
            stale = resend_after_s is not None and bool(jpeg) and started - sent_at >= resend_after_s
            if current is not None and (current is not sent or stale):
                if current is not sent:
                    jpeg = current if isinstance(current, bytes) else await encoder.encode(current)
                header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                await response.write(header.encode() + jpeg + b"\r\n")
                sent, sent_at = current, started
                parts += 1
            await asyncio.sleep(max(0.0, started + interval - loop.time()))
        if encoder.stopping.is_set():
            ended = "server stopping"
        await response.write(f"--{BOUNDARY}--\r\n".encode())
        await response.write_eof()
    except ConnectionError:
        ended = "viewer left"
    except asyncio.CancelledError:
        ended = "cancelled"  # the viewer left (where aiohttp cancels handlers then) or the server stops
        raise
    finally:
        logger.info("mjpeg ended %s parts=%d reason=%s", label, parts, ended)
    return response


def requested_fps(request: web.Request, default: float, highest: float) -> float:
    """`?fps=` within [1, highest] (higher asks are capped); `default` without it."""
    raw = request.query.get("fps")
    if raw is None:
        return min(default, highest)
    try:
        fps = float(raw)
    except ValueError:
        fps = float("nan")
    if not fps >= MIN_FPS:  # also catches nan
        raise invalid("fps", f"must be a number >= {MIN_FPS:g}, got {raw!r}")
    return min(fps, highest)
