"""Stream outputs as pictures: GET /api/streams/{id}/snapshot.jpg and /mjpeg (for OBS browser sources)."""

from __future__ import annotations

from aiohttp import web
from av import VideoFrame

from server import keys
from server.http.errors import ApiError
from server.http.openapi import operation
from server.live import keys as live_keys
from server.live.mjpeg import JPEG_ANSWER, MJPEG_ANSWER, requested_fps, serve_mjpeg, snapshot_response
from server.live.session import Session
from server.live.track import StylizedTrack

routes = web.RouteTableDef()

OUTPUT_ERRORS = {404: "unknown stream", 503: "no stylized frame yet"}


@routes.get("/api/streams/{stream_id}/snapshot.jpg")
@operation("The stream's newest stylized frame as JPEG", tag="outputs", errors=OUTPUT_ERRORS, **JPEG_ANSWER)
async def snapshot(request: web.Request) -> web.Response:
    _, frame = _latest_output(request)
    return await snapshot_response(request.app[live_keys.JPEG], frame)


@routes.get("/api/streams/{stream_id}/mjpeg")
@operation(
    "The stream as MJPEG (multipart/x-mixed-replace), for OBS browser sources and <img>",
    tag="outputs",
    errors=OUTPUT_ERRORS,
    description="A JPEG part whenever the stream has a newer frame, at most fps a second; ?token= for an <img>.",
    **MJPEG_ANSWER,
)
async def mjpeg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace: a new JPEG part whenever the stream has a newer output, at most `?fps=`."""
    outputs = request.app[keys.CONFIG].outputs
    fps = requested_fps(request, outputs.mjpeg_fps, outputs.mjpeg_max_fps)
    track, _ = _latest_output(request)
    return await serve_mjpeg(
        request,
        request.app[live_keys.JPEG],
        fps,
        picture=lambda: track.output.newest,
        live=lambda: track.readyState == "live",
        label=f"stream={request.match_info['stream_id']}",
    )


def _session(request: web.Request) -> Session:
    stream_id = request.match_info["stream_id"]
    session = request.app[live_keys.PEERS].sessions.get(stream_id)
    if session is None:
        raise ApiError(404, "unknown stream", stream_id)
    return session


def _latest_output(request: web.Request) -> tuple[StylizedTrack, VideoFrame]:
    """The stream's output track and its newest frame: 404 for an unknown stream, 503 before a first frame."""
    session = _session(request)
    track = session.track
    frame = track.output.newest if track is not None else None
    if track is None or frame is None:
        raise ApiError(503, "no frame yet", {"stream_id": session.id, "frames_out": session.stats.frames_out})
    return track, frame
