"""GET /openapi.json (the contract, built once at start-up from the routes) and GET /docs, Swagger UI
served from the swagger-ui-bundle package: nothing from a CDN, so it works offline at a venue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from pydantic import BaseModel
from swagger_ui_bundle import swagger_ui_path

from server.http import keys as http_keys
from server.http.openapi import openapi_document, operation
from server.package_data import package_folder

DOCS_PAGE = package_folder("static") / "docs.html"
UI_PREFIX = "/docs/ui"

routes = web.RouteTableDef()


def document_ctx(
    event_types: list[type[BaseModel]], version: Callable[[], str]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context building the document at start-up, when every room has added its routes;
    `event_types` are the models of the /api/events messages, `version` the server's."""

    async def build(app: web.Application) -> AsyncIterator[None]:
        app[http_keys.OPENAPI] = openapi_document(app, title="Stylize", version=version(), events=event_types)
        yield

    return build


@routes.get("/openapi.json")
@operation("This document: the API contract, OpenAPI 3.1", tag="docs", response={"type": "object"})
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[http_keys.OPENAPI])


@routes.get("/docs")
@operation(
    "Interactive API docs (Swagger UI, served offline)", tag="docs", response={"type": "string"}, media_type="text/html"
)
async def docs(request: web.Request) -> web.FileResponse:
    return web.FileResponse(DOCS_PAGE)


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes)
    app.router.add_static(UI_PREFIX, swagger_ui_path)
