"""Stream outputs as pictures: GET /api/streams/{id}/snapshot.jpg and /mjpeg (for OBS browser sources)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from av import VideoFrame
from pydantic import BaseModel, ConfigDict, Field

from server import keys
from server.http.errors import ApiError, invalid
from server.http.openapi import operation
from server.live.session import Session
from server.live.track import StylizedTrack

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


class MjpegQuery(BaseModel):
    """Documents ?fps= (checked by `_fps`: capped at [outputs] mjpeg_max_fps)."""

    model_config = ConfigDict(extra="allow")
    fps: float | None = Field(None, ge=1.0, description="frames a second; default [outputs] mjpeg_fps")


BOUNDARY = "stylize-frame"
MIN_FPS = 1.0
OUTPUT_ERRORS = {404: "unknown stream", 503: "no stylized frame yet"}


@routes.get("/api/streams/{stream_id}/snapshot.jpg")
@operation(
    "The stream's newest stylized frame as JPEG",
    tag="outputs",
    response={"type": "string", "format": "binary"},
    media_type="image/jpeg",
    errors=OUTPUT_ERRORS,
)
async def snapshot(request: web.Request) -> web.Response:
    _, frame = _latest_output(request)
    jpeg = await request.app[keys.JPEG].encode(frame)
    return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


@routes.get("/api/streams/{stream_id}/mjpeg")
@operation(
    "The stream as MJPEG (multipart/x-mixed-replace), for OBS browser sources and <img>",
    tag="outputs",
    query=MjpegQuery,
    response={"type": "string", "format": "binary"},
    media_type="multipart/x-mixed-replace",
    errors=OUTPUT_ERRORS,
    description="A JPEG part whenever the stream has a newer frame, at most fps a second; ?token= for an <img>.",
)
async def mjpeg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace: a new JPEG part whenever the stream has a newer output, at most `?fps=`."""
    fps = _fps(request)
    track, _ = _latest_output(request)
    encoder = request.app[keys.JPEG]
    response = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    interval = 1.0 / fps
    sent = None
    parts = 0
    ended = "stream closed"
    try:
        while track.readyState == "live" and not encoder.stopping.is_set():
            if request.transport is None or request.transport.is_closing():
                ended = "viewer left"
                return response
            started = loop.time()
            frame = track.latest_output
            if frame is not None and frame is not sent:
                jpeg = await encoder.encode(frame)
                header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                await response.write(header.encode() + jpeg + b"\r\n")
                sent = frame
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
        logger.info("mjpeg ended stream=%s parts=%d reason=%s", request.match_info["stream_id"], parts, ended)
    return response


def _session(request: web.Request) -> Session:
    stream_id = request.match_info["stream_id"]
    session = request.app[keys.PEERS].sessions.get(stream_id)
    if session is None:
        raise ApiError(404, "unknown stream", stream_id)
    return session


def _latest_output(request: web.Request) -> tuple[StylizedTrack, VideoFrame]:
    """The stream's output track and its newest frame: 404 for an unknown stream, 503 before a first frame."""
    session = _session(request)
    track = session.track
    frame = track.latest_output if track is not None else None
    if track is None or frame is None:
        raise ApiError(503, "no frame yet", {"stream_id": session.id, "frames_out": session.stats.frames_out})
    return track, frame


def _fps(request: web.Request) -> float:
    """`?fps=` within [1, mjpeg_max_fps] (higher asks are capped); the configured default without it."""
    outputs = request.app[keys.CONFIG].outputs
    raw = request.query.get("fps")
    if raw is None:
        return min(outputs.mjpeg_fps, outputs.mjpeg_max_fps)
    try:
        fps = float(raw)
    except ValueError:
        fps = float("nan")
    if not fps >= MIN_FPS:  # also catches nan
        raise invalid("fps", f"must be a number >= {MIN_FPS:g}, got {raw!r}")
    return min(fps, outputs.mjpeg_max_fps)
