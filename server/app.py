"""The application factory: `create_app(config)` wires state, resources and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from server import api_health, api_media, api_offer, api_settings, api_transport, bitrate, keys
from server.config import Config
from server.db import Database
from server.engine_service import EngineService
from server.errors import error_middleware
from server.events import EventHub
from server.jpeg import JpegEncoder
from server.peers import PeerManager
from server.settings import SettingsChange, SettingsStore, StyleSettings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Each feature that keeps rows in the database adds its CREATE TABLE IF NOT EXISTS script here.
SCHEMAS: list[str] = []


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024 * 1024)
    app[keys.CONFIG] = config
    app[keys.SETTINGS] = SettingsStore(StyleSettings(**config.defaults.model_dump()))
    app[keys.EVENTS] = EventHub()
    app.on_shutdown.append(_close_event_listeners)
    app.on_shutdown.append(_end_mjpeg_streams)
    app.cleanup_ctx.append(_bitrate_ctx)
    app.cleanup_ctx.append(_jpeg_ctx)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.append(_peers_ctx)
    app.cleanup_ctx.append(_settings_events_ctx)
    app.router.add_get("/api/events", app[keys.EVENTS].handle)
    app.add_routes(api_health.routes)
    app.add_routes(api_offer.routes)
    app.add_routes(api_settings.routes)
    app.add_routes(api_media.routes)
    app.add_routes(api_transport.routes)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR)
    return app


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _close_event_listeners(app: web.Application) -> None:
    await app[keys.EVENTS].close()


async def _end_mjpeg_streams(app: web.Application) -> None:
    app[keys.JPEG].stop_streams()


async def _bitrate_ctx(app: web.Application) -> AsyncIterator[None]:
    previous = bitrate.apply(bitrate.Bitrates.from_config(app[keys.CONFIG].transport))
    yield
    bitrate.restore(previous)


async def _jpeg_ctx(app: web.Application) -> AsyncIterator[None]:
    encoder = JpegEncoder(quality=app[keys.CONFIG].media.jpeg_quality)
    app[keys.JPEG] = encoder
    yield
    encoder.close()


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    database = Database(Path(app[keys.CONFIG].server.data_dir) / "stylize.db", schemas=SCHEMAS)
    await database.open()
    app[keys.DB] = database
    yield
    await database.close()


async def _settings_events_ctx(app: web.Application) -> AsyncIterator[None]:
    events = app[keys.EVENTS]

    def publish(change: SettingsChange) -> None:
        events.publish(
            "settings",
            scope=change.scope,
            source=change.source,
            changed=change.changed,
            settings=change.settings.model_dump(),
        )

    store = app[keys.SETTINGS]
    store.add_listener(publish)
    yield
    store.remove_listener(publish)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    service = EngineService(app[keys.CONFIG])
    app[keys.ENGINE] = service
    service.start()
    yield
    service.stop()


async def _peers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    peers = PeerManager(config.server, app[keys.ENGINE], app[keys.SETTINGS], app[keys.EVENTS], config.transport)
    app[keys.PEERS] = peers
    yield
    await peers.close_all()
