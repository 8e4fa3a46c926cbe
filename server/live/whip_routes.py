"""WHIP (RFC 9725): OBS and other software publish a camera into a stream name with one HTTP POST.

`POST /api/whip/{name}` takes an SDP offer (`application/sdp`) and answers 201 with the SDP answer
and a `Location` to `DELETE` to hang up. The Location carries a secret only the publisher is given
(`/api/whip/{name}/{stream_id}/{secret}`): the stream id alone is public (`/api/streams`), and with
it anyone could hang up someone else's camera. The video is stylized like a page's camera (same engine
and batching, settings resolved by name), goes to the name's outputs, and comes back on the same
connection when the offer receives video. A complete offer is expected: no trickle ICE and no ICE
restarts (PATCH is 405). With `[security] api_token` set, the Bearer token is required.
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from server import keys
from server.http.errors import ApiError
from server.http.names import path_name
from server.http.openapi import operation
from server.http.sdp import SDP, SDP_ANSWER, ice_server_links, read_sdp, sdp_created
from server.live.negotiation import open_to_other_software, video_direction
from server.live.refusals import refusals_as_http

routes = web.RouteTableDef()

NO_PATCH = "trickle ICE and ICE restarts are not supported: send a complete offer, DELETE and POST again"


@routes.post("/api/whip/{name}")
@operation(
    "WHIP (RFC 9725): publish a camera into a name, an SDP offer in and the answer out",
    tag="whip",
    errors={400: "not an offer aiortc takes", 422: "not a name a stream can take", 503: "server full, or no model"},
    description="201 with a Location to DELETE; the stylized video comes back when the offer receives video.",
    **SDP_ANSWER,
)
async def publish(request: web.Request) -> web.Response:
    name = path_name(request, latest=False)
    sdp = await read_sdp(request)
    config = request.app[keys.CONFIG]

    def prepare(pc: RTCPeerConnection) -> None:
        open_to_other_software(pc, sdp, config.transport.codec)

    with refusals_as_http():
        session, answer = await request.app[keys.PEERS].create(
            RTCSessionDescription(sdp=sdp, type="offer"),
            remote=request.get(keys.CLIENT, request.remote),
            name=name,
            prepare=prepare,
        )
    if video_direction(session.pc) == "recvonly" and session.track is not None:
        request.app[keys.OUTPUTS].drain(session.id, session.track)  # nobody reads it back: outputs only
    session.secret = secrets.token_urlsafe(24)
    location = f"/api/whip/{name}/{session.id}/{session.secret}"
    return sdp_created(answer.sdp, location, ice_server_links(config.server.ice_servers))


@routes.route("OPTIONS", "/api/whip/{name}")
@operation("WHIP: what the endpoint takes (Accept-Post) and its ICE servers (Link)", tag="whip", status=204)
async def options(request: web.Request) -> web.Response:
    path_name(request, latest=False)
    response = web.Response(status=204, headers={"Accept-Post": SDP, "Allow": "OPTIONS, POST"})
    for link in ice_server_links(request.app[keys.CONFIG].server.ice_servers):
        response.headers.add("Link", link)
    return response


@routes.delete("/api/whip/{name}/{stream_id}/{secret}")
@operation("WHIP: hang up a session (its Location)", tag="whip", errors={404: "no such session under that name"})
async def hang_up(request: web.Request) -> web.Response:
    name = path_name(request, latest=False)
    stream_id = request.match_info["stream_id"]
    peers = request.app[keys.PEERS]
    session = peers.sessions.get(stream_id)
    given = request.match_info["secret"].encode()
    if session is None or session.name != name or not hmac.compare_digest(given, (session.secret or "").encode()):
        raise ApiError(404, "unknown session", {"name": name, "stream_id": stream_id})
    await peers.close(stream_id)
    return web.json_response({"closed": stream_id})


@routes.patch("/api/whip/{name}/{stream_id}/{secret}")
@operation("WHIP: trickle ICE and ICE restarts are not supported", tag="whip", errors={405: "always"})
async def no_patch(request: web.Request) -> web.Response:
    raise ApiError(405, "method not allowed", NO_PATCH)
