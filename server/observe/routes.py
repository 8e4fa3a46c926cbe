"""GET /metrics (Prometheus) and GET /api/stats (JSON for /monitor and operators)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server import keys

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    # Off the loop: the GPU memory gauge asks torch at scrape time.
    body, content_type = await asyncio.to_thread(request.app[keys.METRICS].render, request.headers.get("Accept", ""))
    # The content type carries a version parameter, which aiohttp's content_type= refuses: a header.
    return web.Response(body=body, headers={"Content-Type": content_type})


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    app = request.app
    body = await app[keys.STATS].report(app[keys.ENGINE], app[keys.PEERS].sessions.values())
    return web.json_response(body)
