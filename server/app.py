"""The application factory: `create_app(config)` wires state, the rooms' resources and their routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from server import keys
from server.config import Config
from server.control import presets, saved_settings
from server.control import room as control
from server.control.events import EVENT_TYPES, EventHub
from server.control.settings import SettingsStore, StyleSettings
from server.db import Database
from server.engine_service import EngineService
from server.http import room as http
from server.http.errors import error_middleware
from server.http.security import security_middleware
from server.jobs import room as jobs
from server.jobs import store as job_store
from server.live import room as live
from server.observe import room as observe
from server.observe.metrics import Metrics

# Each feature that keeps rows in the database adds its CREATE TABLE IF NOT EXISTS script here.
SCHEMAS: list[str] = [presets.SCHEMA, job_store.SCHEMA, saved_settings.SCHEMA]


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[*observe.MIDDLEWARES, error_middleware, security_middleware(config)],
        client_max_size=64 * 1024 * 1024,
    )
    app[keys.CONFIG] = config
    app[keys.SETTINGS] = SettingsStore(StyleSettings(**config.defaults.model_dump()))
    app[keys.EVENTS] = EventHub()
    app[keys.METRICS] = Metrics()
    # Start-up order (shut-down runs it backwards): observe first, so the others' start-up errors
    # show in /api/stats; the database and the engine before the rooms that use them.
    app.cleanup_ctx.extend(observe.CONTEXTS)
    app.cleanup_ctx.extend(http.CONTEXTS)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.extend(control.CONTEXTS)
    app.cleanup_ctx.extend(live.CONTEXTS)
    app.cleanup_ctx.extend(jobs.CONTEXTS)
    # The API contract from every room's routes, with the /api/events message types.
    app.cleanup_ctx.append(http.document_ctx(EVENT_TYPES))
    for room in (observe, control, live, jobs, http):
        room.setup_routes(app)
    return app


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    database = Database(Path(app[keys.CONFIG].server.data_dir) / "stylize.db", schemas=SCHEMAS)
    await database.open()
    app[keys.DB] = database
    yield
    await database.close()


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    service = EngineService(app[keys.CONFIG], on_batch=app[keys.METRICS].observe_batch)
    app[keys.ENGINE] = service
    service.start()
    yield
    # Off the loop: stopping waits for the loader, which may be part-way through loading weights.
    await asyncio.to_thread(service.stop)
