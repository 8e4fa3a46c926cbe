"""SDP over HTTP as WHIP (RFC 9725) and WHEP speak it: `application/sdp` in, `application/sdp` out."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.config import IceServer
from server.http.errors import ApiError
from server.http.inputs import read_body

SDP = "application/sdp"
# How a route answers with SDP, for `@operation`.
SDP_ANSWER = {"status": 201, "response": {"type": "string"}, "media_type": SDP, "raw_body": SDP}


async def read_sdp(request: web.Request) -> str:
    """The offer in the body: 415 for another content type, 413 or 408 as for any body, 400 if not SDP."""
    if request.content_type != SDP:
        raise ApiError(415, "unsupported media type", f"send the offer as {SDP}, not {request.content_type!r}")
    server = request.app[keys.CONFIG].server
    body = await read_body(request, server.max_body_kb * 1024, server.body_timeout_s)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "offer is not SDP", f"not UTF-8: {e}") from e
    if not text.startswith("v=0") or "\nm=" not in text.replace("\r\n", "\n"):
        raise ApiError(400, "offer is not SDP", "an SDP offer starts with v=0 and has m= lines")
    return text


def sdp_created(sdp: str, location: str, links: list[str] | None = None) -> web.Response:
    """201 Created: the answer, and where the session lives (`DELETE` it to hang up)."""
    response = web.Response(status=201, text=sdp, content_type=SDP)
    response.headers["Location"] = location
    for link in links or []:
        response.headers.add("Link", link)
    return response


def ice_server_links(servers: list[IceServer]) -> list[str]:
    """`[server] ice_servers` as the `Link: <...>; rel="ice-server"` headers WHIP and WHEP clients read."""
    links = []
    for server in servers:
        for url in [server.urls] if isinstance(server.urls, str) else server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += f'; username="{server.username}"; credential="{server.credential}"; credential-type="password"'
            links.append(link)
    return links
