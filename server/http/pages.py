"""The pages and probes: `/`, `/monitor`, the static files, `/health` and `/readyz`."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.config import ROOT

STATIC_DIR = ROOT / "static"

routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


@routes.get("/monitor")
async def monitor(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "monitor.html")


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


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes)
    app.router.add_static("/static/", STATIC_DIR)
