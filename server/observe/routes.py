"""GET /metrics (Prometheus) and GET /api/stats (JSON for /monitor and operators)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server import keys
from server.http.openapi import operation

routes = web.RouteTableDef()


@routes.get("/metrics")
@operation(
    "Prometheus metrics (stylize_...)",
    tag="observe",
    response={"type": "string"},
    media_type="text/plain",
    description="OpenMetrics when the scraper asks for it in Accept.",
)
async def metrics(request: web.Request) -> web.Response:
    # Off the loop: the GPU memory gauge asks torch at scrape time.
    body, content_type = await asyncio.to_thread(request.app[keys.METRICS].render, request.headers.get("Accept", ""))
    # The content type carries a version parameter, which aiohttp's content_type= refuses: a header.
    return web.Response(body=body, headers={"Content-Type": content_type})


@routes.get("/api/stats")
@operation(
    "Everything /monitor shows, as JSON",
    tag="observe",
    response={
        "type": "object",
        "description": "version, uptime_s, engine, frames, latency_ms, streams, jobs, presets, errors, disk, system",
    },
)
async def stats(request: web.Request) -> web.Response:
    app = request.app
    body = await app[keys.STATS].report(app[keys.ENGINE], app[keys.PEERS].sessions.values())
    return web.json_response(body)
