"""Outputs by stream name, stable across reconnects and restarts: list, snapshot, MJPEG and `/view/{name}`.

`GET /api/outputs` lists the names this run has seen (and those with saved settings), each with the
stream that feeds it, its state and its viewers. `latest` names whichever stream started most
recently. A name's MJPEG keeps its connection: it shows the last frame, or a waiting card, until a
stream of that name is back. `/view/{name}` is a full-screen page playing the name over WHEP.
"""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.fields import LATEST
from server.http.errors import ApiError
from server.http.names import path_name
from server.http.openapi import operation
from server.http.pages import STATIC_DIR
from server.live import keys as live_keys
from server.live.mjpeg import JPEG_ANSWER, MJPEG_ANSWER, requested_fps, serve_mjpeg, snapshot_response

routes = web.RouteTableDef()

# An unchanged picture (a name without a stream) is sent again this often, so viewers and proxies
# in between see a live connection.
MJPEG_RESEND_S = 2.0


def output_urls(name: str) -> dict[str, str]:
    """Where a name's outputs are (and, for a name a stream can take, its WHIP ingest and settings)."""
    base = f"/api/outputs/{name}"
    urls = {
        "view": f"/view/{name}",
        "mjpeg": f"{base}/mjpeg",
        "snapshot": f"{base}/snapshot.jpg",
        "whep": f"{base}/whep",
    }
    if name != LATEST:
        urls.update(whip=f"/api/whip/{name}", settings=f"{base}/settings")
    return urls


@routes.get("/api/outputs")
@operation(
    "Outputs by stream name: each name's stream, state, viewers, overrides and URLs (latest first)",
    tag="outputs",
    response={"type": "object", "properties": {"outputs": {"type": "array", "items": {"type": "object"}}}},
)
async def list_outputs(request: web.Request) -> web.Response:
    named = request.app[keys.SETTINGS].named_overrides()
    outputs = request.app[live_keys.OUTPUTS].describe()
    listed = {str(output["name"]) for output in outputs}
    for name in sorted(set(named) - listed):  # styled by name, not streamed since the start
        outputs.append({"name": name, "stream_id": None, "state": "waiting", "viewers": 0, "mjpeg": 0, "frames": 0})
    for output in outputs:
        name = str(output["name"])
        output.update(overrides=named.get(name, {}), urls=output_urls(name))
    return web.json_response({"outputs": outputs})


@routes.get("/api/outputs/{name}/snapshot.jpg")
@operation(
    "A name's newest stylized frame as JPEG",
    tag="outputs",
    errors={404: "no stream had that name since start", 422: "not a name", 503: "no frame yet"},
    **JPEG_ANSWER,
)
async def snapshot(request: web.Request) -> web.Response:
    name = path_name(request)
    output = request.app[live_keys.OUTPUTS].find(name)
    if output is None:
        raise ApiError(404, "unknown name", {"name": name, "why": "no stream of that name since the server started"})
    if output.frame is None:
        raise ApiError(503, "no frame yet", {"name": name, "stream_id": output.stream_id})
    return await snapshot_response(request.app[live_keys.JPEG], output.frame)


@routes.get("/api/outputs/{name}/mjpeg")
@operation(
    "A name as MJPEG that follows its newest stream through reconnects (a waiting card until one comes)",
    tag="outputs",
    errors={422: "not a name, or a bad fps"},
    **MJPEG_ANSWER,
)
async def mjpeg(request: web.Request) -> web.StreamResponse:
    name = path_name(request)
    config = request.app[keys.CONFIG].outputs
    fps = requested_fps(request, config.mjpeg_fps, config.mjpeg_max_fps)
    registry = request.app[live_keys.OUTPUTS]
    with registry.watching(name) as output:
        return await serve_mjpeg(
            request,
            request.app[live_keys.JPEG],
            fps,
            picture=lambda: output.frame if output.frame is not None else registry.waiting_jpeg,
            live=lambda: True,  # until the viewer leaves or the server stops
            label=f"name={name}",
            resend_after_s=MJPEG_RESEND_S,
        )


@routes.get("/view/{name}")
@operation(
    "A full-screen page playing a name over WHEP, reconnecting by itself",
    tag="pages",
    response={"type": "string"},
    media_type="text/html",
    errors={422: "not a name"},
)
async def view_page(request: web.Request) -> web.FileResponse:
    path_name(request)
    return web.FileResponse(STATIC_DIR / "view.html")
