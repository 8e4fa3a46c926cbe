"""GET /api/client-config: what the page needs to connect the way the server does (ICE servers, codec)."""

from __future__ import annotations

from aiohttp import web

from server import keys

routes = web.RouteTableDef()


@routes.get("/api/client-config")
async def client_config(request: web.Request) -> web.Response:
    config = request.app[keys.CONFIG]
    # RTCIceServer dictionaries as the browser's RTCPeerConnection takes them (TURN credentials included).
    ice_servers = [server.model_dump(exclude_none=True) for server in config.server.ice_servers]
    return web.json_response({"ice_servers": ice_servers, "codec": config.transport.codec})
