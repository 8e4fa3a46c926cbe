"""The pages and probes: `/`, `/monitor`, the static files, `/health` and `/readyz` (also under /api/)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from server import keys
from server.http.openapi import operation
from server.package_data import package_folder

STATIC_DIR = package_folder("static")

routes = web.RouteTableDef()

PAGE = {"response": {"type": "string"}, "media_type": "text/html"}


class Health(BaseModel):
    status: str = Field(description='"ok" while the server answers')
    model_loaded: bool = Field(description="the model is loaded and warmed up (what /readyz says with 200)")


@routes.get("/")
@operation("The page: camera in, stylized video out", tag="pages", **PAGE)
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


@routes.get("/monitor")
@operation("The monitor dashboard (reads /api/stats)", tag="pages", **PAGE)
async def monitor(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "monitor.html")


@routes.get("/health")
@routes.get("/api/health")
@operation("Liveness: the server answers", tag="probes", response=Health)
async def health(request: web.Request) -> web.Response:
    return web.json_response(Health(status="ok", model_loaded=request.app[keys.ENGINE].ready).model_dump())


@routes.get("/readyz")
@routes.get("/api/readyz")
@operation(
    "Readiness: 200 once the model is loaded and warmed up",
    tag="probes",
    response={"type": "object", "description": "state, model, device, dtype ..."},
    extra_responses={503: ("not ready: state and reason", {"type": "object"})},
)
async def readyz(request: web.Request) -> web.Response:
    engine = request.app[keys.ENGINE]
    body: dict[str, Any] = engine.describe()
    if engine.ready:
        return web.json_response(body)
    return web.json_response({"error": "not ready", **body}, status=503)


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes)
    app.router.add_static("/static/", STATIC_DIR)
