"""The application factory: `create_app(config)` wires state, resources and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from server import api_health, api_jobs, api_offer, api_settings, jobs_store, keys
from server.config import Config
from server.db import Database
from server.engine_service import EngineService
from server.errors import error_middleware
from server.events import EventHub
from server.jobs_store import JobStore
from server.jobs_worker import JobWorker
from server.peers import PeerManager
from server.settings import SettingsChange, SettingsStore, StyleSettings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Each feature that keeps rows in the database adds its CREATE TABLE IF NOT EXISTS script here.
SCHEMAS: list[str] = [jobs_store.SCHEMA]


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024 * 1024)
    app[keys.CONFIG] = config
    app[keys.SETTINGS] = SettingsStore(StyleSettings(**config.defaults.model_dump()))
    app[keys.EVENTS] = EventHub()
    app.on_shutdown.append(_close_event_listeners)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.append(_peers_ctx)
    app.cleanup_ctx.append(_settings_events_ctx)
    app.cleanup_ctx.append(_jobs_ctx)
    app.router.add_get("/api/events", app[keys.EVENTS].handle)
    app.add_routes(api_health.routes)
    app.add_routes(api_offer.routes)
    app.add_routes(api_settings.routes)
    app.add_routes(api_jobs.routes)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR)
    return app


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _close_event_listeners(app: web.Application) -> None:
    await app[keys.EVENTS].close()


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
    peers = PeerManager(app[keys.CONFIG].server, app[keys.ENGINE], app[keys.SETTINGS], app[keys.EVENTS])
    app[keys.PEERS] = peers
    yield
    await peers.close_all()


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    store = JobStore(app[keys.DB])
    peers = app[keys.PEERS]
    worker = JobWorker(
        store,
        app[keys.ENGINE],
        app[keys.EVENTS],
        config.jobs,
        Path(config.server.data_dir),
        live_streams=lambda: len(peers.sessions),
    )
    app[keys.JOBS] = store
    app[keys.JOB_WORKER] = worker
    await worker.recover()
    worker.start()
    yield
    await worker.stop()
