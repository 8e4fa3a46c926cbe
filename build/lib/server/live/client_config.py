"""GET /api/client-config: what the page needs to connect the way the server does (ICE servers, codec)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from server import keys
from server.http.openapi import operation

routes = web.RouteTableDef()


class ClientConfig(BaseModel):
    ice_servers: list[dict[str, Any]]
    codec: str


@routes.get("/api/client-config")
@operation(
    "ICE servers (TURN credentials included) and codec for the page",
    tag="streams",
    response=ClientConfig,
    description="Behind the token when one is set: TURN credentials are for clients only.",
)
async def client_config(request: web.Request) -> web.Response:
    config = request.app[keys.CONFIG]
    # RTCIceServer dictionaries as the browser's RTCPeerConnection takes them (TURN credentials included).
    ice_servers = [server.model_dump(exclude_none=True) for server in config.server.ice_servers]
    return web.json_response({"ice_servers": ice_servers, "codec": config.transport.codec})
