"""The application factory: `create_app(config)` wires state, resources and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from server import api_health, api_offer, api_settings, keys
from server.config import Config
from server.engine_service import EngineService
from server.errors import error_middleware
from server.peers import PeerManager
from server.settings import SettingsStore, StyleSettings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024 * 1024)
    app[keys.CONFIG] = config
    app[keys.SETTINGS] = SettingsStore(StyleSettings(**config.defaults.model_dump()))
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.append(_peers_ctx)
    app.add_routes(api_health.routes)
    app.add_routes(api_offer.routes)
    app.add_routes(api_settings.routes)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR)
    return app


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    service = EngineService(app[keys.CONFIG])
    app[keys.ENGINE] = service
    service.start()
    yield
    service.stop()


async def _peers_ctx(app: web.Application) -> AsyncIterator[None]:
    peers = PeerManager(app[keys.CONFIG].server, app[keys.ENGINE], app[keys.SETTINGS])
    app[keys.PEERS] = peers
    yield
    await peers.close_all()
