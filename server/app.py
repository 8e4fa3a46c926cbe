"""The application factory: `create_app(config)` wires state, the rooms' resources and their routes.

Alone (the default), settings, events, presets and jobs live in this process and its SQLite
database. With `[cluster] role` set they live in Redis instead (`server.cluster`): this is the one
place that chooses. A worker runs every room; a front runs every room but the live one, whose
routes it relays to its workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from server import keys
from server.cluster import room as cluster
from server.cluster.node import ClusterNode
from server.config import Config
from server.control import presets, saved_settings
from server.control import room as control
from server.control.events import EVENT_TYPES, EventHub
from server.control.presets import SqlitePresets
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


def database_path(config: Config) -> Path:
    return Path(config.server.data_dir) / "stylize.db"


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[*observe.MIDDLEWARES, error_middleware, security_middleware(config)],
        client_max_size=64 * 1024 * 1024,
    )
    app[keys.CONFIG] = config
    app[keys.METRICS] = Metrics()
    database = Database(database_path(config), schemas=SCHEMAS)
    app[keys.DB] = database
    initial = StyleSettings(**config.defaults.model_dump())
    if config.cluster.enabled:
        node = ClusterNode(config, initial)
        app[keys.CLUSTER] = node
        app[keys.SETTINGS], app[keys.EVENTS] = node.settings, node.events
        app[keys.PRESET_STORAGE], app[keys.JOBS] = node.presets, node.jobs
    else:
        app[keys.SETTINGS], app[keys.EVENTS] = SettingsStore(initial), EventHub()
        app[keys.PRESET_STORAGE], app[keys.JOBS] = SqlitePresets(database), job_store.JobStore(database)
    front = config.cluster.role == "front"
    # Start-up order (shut-down runs it backwards): observe first, so the others' start-up errors
    # show in /api/stats; the database, the cluster link and the engine before the rooms that use them.
    app.cleanup_ctx.extend(observe.CONTEXTS)
    app.cleanup_ctx.extend(http.CONTEXTS)
    app.cleanup_ctx.append(_database_ctx)
    if config.cluster.enabled:
        app.cleanup_ctx.extend(cluster.CONTEXTS)
    if not front:  # a front's engine is its workers'
        app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.extend(control.CONTEXTS)
    if not front:
        app.cleanup_ctx.extend(live.CONTEXTS)
    app.cleanup_ctx.extend(jobs.CONTEXTS)
    # The API contract from every room's routes, with the /api/events message types.
    app.cleanup_ctx.append(http.document_ctx(EVENT_TYPES))
    rooms = [observe, control, *([] if front else [live]), jobs, http]
    if config.cluster.enabled:
        rooms.append(cluster)  # /api/cluster; on a front, the live room's routes relayed
    for room in rooms:
        room.setup_routes(app)
    return app


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    database = app[keys.DB]
    await database.open()
    yield
    await database.close()


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    service = EngineService(app[keys.CONFIG], on_batch=app[keys.METRICS].observe_batch)
    app[keys.ENGINE] = service
    service.start()
    yield
    # Off the loop: stopping waits for the loader, which may be part-way through loading weights.
    await asyncio.to_thread(service.stop)
