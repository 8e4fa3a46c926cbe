"""GET /api/stats: uptime, engine, streams, frames, jobs, presets, errors and host, as JSON."""

from __future__ import annotations

from aiohttp import web

from server import keys

routes = web.RouteTableDef()


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    app = request.app
    body = await app[keys.STATS].report(app[keys.ENGINE], app[keys.PEERS].sessions.values())
    return web.json_response(body)
