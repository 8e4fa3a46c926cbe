"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from server import keys

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    engine = request.app[keys.ENGINE]
    body = engine.describe()
    if engine.ready:
        return web.json_response(body)
    return web.json_response({"error": "not ready", **body}, status=503)
