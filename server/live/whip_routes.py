"""WHIP (RFC 9725): OBS and other software publish a camera into a stream name with one HTTP POST.

`POST /api/whip/{name}` takes an SDP offer (`application/sdp`) and answers 201 with the SDP answer
and a `Location` to `DELETE` to hang up. The Location carries a secret only the publisher is given
(`/api/whip/{name}/{stream_id}/{secret}`): the stream id alone is public (`/api/streams`), and with
it anyone could hang up someone else's camera. The video is stylized like a page's camera (same engine
and batching, settings resolved by name), goes to the name's outputs, and comes back on the same
connection when the offer receives video. Candidates may trickle in by PATCH (`server.live.trickle`;
an ICE restart is refused with 422). With `[security] api_token` set, the Bearer token is required.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from pydantic import BaseModel, ConfigDict, Field

from server import keys
from server.control.model_ask import asked_model, refuse_unless_runs
from server.fields import ModelAsk, field_error
from server.http.errors import ApiError
from server.http.inputs import read_body, read_query
from server.http.names import path_name
from server.http.openapi import operation
from server.http.sdp import SDP, SDP_ANSWER, ice_server_links, read_sdp, sdp_created
from server.live import keys as live_keys
from server.live.negotiation import open_to_other_software, video_direction
from server.live.refusals import refusals_as_http
from server.live.session import Session
from server.live.trickle import (
    TRICKLE_ERRORS,
    TRICKLE_ICE_SDPFRAG,
    IceRestartRefused,
    TrickleRejected,
    add_candidates,
    parse_fragment,
)

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


class WhipQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelAsk | None = Field(
        None, description="the model (id or family) the stream asks for; default: the name's `model` setting"
    )


@routes.post("/api/whip/{name}")
@operation(
    "WHIP (RFC 9725): publish a camera into a name, an SDP offer in and the answer out",
    tag="whip",
    query=WhipQuery,
    errors={
        400: "not an offer aiortc takes",
        409: "no engine here runs the model asked for (?model=, else the name's `model` setting)",
        422: "not a name a stream can take",
        503: "server full, or no model",
    },
    description="201 with a Location to DELETE; the stylized video comes back when the offer receives video. "
    "`?model=` (else the name's `model` setting) picks the model (a cluster's worker) it runs on.",
    **SDP_ANSWER,
)
async def publish(request: web.Request) -> web.Response:
    name = path_name(request, latest=False)
    asked = asked_model(request.app[keys.SETTINGS], name, read_query(request, WhipQuery).model)
    refuse_unless_runs(request.app[keys.ENGINE].describe(), asked)
    sdp = await read_sdp(request)
    config = request.app[keys.CONFIG]

    def prepare(pc: RTCPeerConnection) -> None:
        open_to_other_software(pc, sdp, config.transport.codec)

    with refusals_as_http():
        session, answer = await request.app[live_keys.PEERS].create(
            RTCSessionDescription(sdp=sdp, type="offer"),
            remote=request.get(keys.CLIENT, request.remote),
            name=name,
            prepare=prepare,
        )
    if video_direction(session.pc) == "recvonly" and session.track is not None:
        request.app[live_keys.OUTPUTS].drain(session.id, session.track)  # nobody reads it back: outputs only
    session.secret = secrets.token_urlsafe(24)
    location = f"/api/whip/{name}/{session.id}/{session.secret}"
    created = sdp_created(answer.sdp, location, ice_server_links(config.server.ice_servers))
    created.headers["ETag"] = session_etag(session.id)
    return created


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
    session = _publisher(request)
    await request.app[live_keys.PEERS].close(session.id)
    return web.json_response({"closed": session.id})


def _publisher(request: web.Request) -> Session:
    """The session a WHIP Location names: 404 unless its name and secret match."""
    name = path_name(request, latest=False)
    stream_id = request.match_info["stream_id"]
    session = request.app[live_keys.PEERS].sessions.get(stream_id)
    given = request.match_info["secret"].encode()
    if session is None or session.name != name or not hmac.compare_digest(given, (session.secret or "").encode()):
        raise ApiError(404, "unknown session", {"name": name, "stream_id": stream_id})
    return session


@routes.patch("/api/whip/{name}/{stream_id}/{secret}")
@operation(
    "WHIP: trickle ICE candidates in (application/trickle-ice-sdpfrag); ICE restarts are refused",
    tag="whip",
    status=204,
    raw_body=TRICKLE_ICE_SDPFRAG,
    errors={404: "no such session under that name", **TRICKLE_ERRORS},
)
async def trickle(request: web.Request) -> web.Response:
    session = _publisher(request)
    return await trickle_into(request, session.pc, session.id)


def session_etag(session_id: str) -> str:
    """The entity tag of a WHIP or WHEP session: fixed, as its ICE never restarts."""
    return f'"{session_id}"'


async def trickle_into(request: web.Request, pc: RTCPeerConnection, session_id: str) -> web.Response:
    """A PATCH on a WHIP or WHEP session: its candidates handed to the connection, 204."""
    if request.content_type != TRICKLE_ICE_SDPFRAG:
        raise ApiError(415, "unsupported media type", f"send candidates as {TRICKLE_ICE_SDPFRAG}")
    wanted = request.headers.get("If-Match")
    if wanted is not None and wanted.strip() not in ("*", session_etag(session_id)):
        raise ApiError(412, "precondition failed", {"if_match": wanted, "etag": session_etag(session_id)})
    server = request.app[keys.CONFIG].server
    body = await read_body(request, server.max_body_kb * 1024, server.body_timeout_s)
    try:
        added = await add_candidates(pc, parse_fragment(body.decode("utf-8", errors="replace")))
    except IceRestartRefused as e:
        raise ApiError(422, "ICE restart not supported", [field_error("ice-ufrag", str(e))]) from e
    except TrickleRejected as e:
        raise ApiError(422, "bad trickle-ice-sdpfrag", [field_error("candidate", str(e))]) from e
    kind = "viewer" if "/whep/" in request.path else "stream"
    logger.info("ICE candidates trickled in %s=%s candidates=%d", kind, session_id, added)
    return web.Response(status=204, headers={"ETag": session_etag(session_id)})
