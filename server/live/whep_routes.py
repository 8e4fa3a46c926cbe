"""WHEP: `POST /api/outputs/{name}/whep` plays a name's stylized output to any number of viewers.

The offer (`application/sdp`, receive-only) is answered 201 with the SDP answer and a `Location` to
`DELETE` to stop. Viewers share the name's frames; they start no model work, may connect before the
name streams, and keep playing across the performer's reconnects. `[outputs] max_viewers` bounds
them (503 past it). Like WHIP: candidates may trickle in by PATCH (no ICE restarts), the Bearer
token when one is set.
"""

from __future__ import annotations

from aiohttp import web
from aiortc import RTCSessionDescription

from server import keys
from server.http.errors import ApiError
from server.http.names import path_name
from server.http.openapi import operation
from server.http.sdp import SDP, SDP_ANSWER, ice_server_links, read_sdp, sdp_created
from server.live import keys as live_keys
from server.live.trickle import TRICKLE_ERRORS, TRICKLE_ICE_SDPFRAG
from server.live.viewers import Viewer, ViewerRejected, ViewersFull
from server.live.whip_routes import session_etag, trickle_into

routes = web.RouteTableDef()


@routes.post("/api/outputs/{name}/whep")
@operation(
    "WHEP: watch a name's stylized output, a receive-only SDP offer in and the answer out",
    tag="outputs",
    errors={400: "the offer takes no video", 422: "not a name", 503: "[outputs] max_viewers reached"},
    description="201 with a Location to DELETE. Viewers share the name's frames and start no model work.",
    **SDP_ANSWER,
)
async def watch(request: web.Request) -> web.Response:
    name = path_name(request)
    sdp = await read_sdp(request)
    try:
        offer = RTCSessionDescription(sdp=sdp, type="offer")
        viewer, answer = await request.app[live_keys.VIEWERS].create(name, offer, request.get(keys.CLIENT))
    except ViewersFull as e:
        raise ApiError(503, "too many viewers", str(e)) from e
    except ViewerRejected as e:
        raise ApiError(400, "offer rejected", str(e)) from e
    links = ice_server_links(request.app[keys.CONFIG].server.ice_servers)
    created = sdp_created(answer.sdp, f"/api/outputs/{name}/whep/{viewer.id}", links)
    created.headers["ETag"] = session_etag(viewer.id)
    return created


@routes.route("OPTIONS", "/api/outputs/{name}/whep")
@operation("WHEP: what the endpoint takes (Accept-Post) and its ICE servers (Link)", tag="outputs", status=204)
async def options(request: web.Request) -> web.Response:
    path_name(request)
    response = web.Response(status=204, headers={"Accept-Post": SDP, "Allow": "OPTIONS, POST"})
    for link in ice_server_links(request.app[keys.CONFIG].server.ice_servers):
        response.headers.add("Link", link)
    return response


@routes.get("/api/outputs/{name}/whep/{viewer_id}")
@operation("WHEP: whether the server still knows a viewer", tag="outputs", errors={404: "unknown viewer"})
async def viewer_state(request: web.Request) -> web.Response:
    """Not part of WHEP: lets a player that gets no frames tell "no stream now" from "server restarted" (404)."""
    return web.json_response(_viewer(request).describe())


@routes.delete("/api/outputs/{name}/whep/{viewer_id}")
@operation("WHEP: stop watching", tag="outputs", errors={404: "unknown viewer"})
async def stop_watching(request: web.Request) -> web.Response:
    viewer = _viewer(request)
    await request.app[live_keys.VIEWERS].close(viewer.id)
    return web.json_response({"closed": viewer.id})


@routes.patch("/api/outputs/{name}/whep/{viewer_id}")
@operation(
    "WHEP: trickle ICE candidates in (application/trickle-ice-sdpfrag); ICE restarts are refused",
    tag="outputs",
    status=204,
    raw_body=TRICKLE_ICE_SDPFRAG,
    errors={404: "unknown viewer", **TRICKLE_ERRORS},
)
async def trickle(request: web.Request) -> web.Response:
    viewer = _viewer(request)
    return await trickle_into(request, viewer.pc, viewer.id)


def _viewer(request: web.Request) -> Viewer:
    name = path_name(request)
    viewer_id = request.match_info["viewer_id"]
    viewer = request.app[live_keys.VIEWERS].viewers.get(viewer_id)
    if viewer is None or viewer.name != name:
        raise ApiError(404, "unknown viewer", {"name": name, "viewer_id": viewer_id})
    return viewer
