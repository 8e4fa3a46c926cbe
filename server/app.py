"""The application factory: `create_app(config)` wires state, the rooms' resources and their routes.

Alone (the default), settings, events, presets and jobs live in this process and its SQLite
database. With `[cluster] role` set they live in Redis instead (`server.cluster`). The topology
(`server/topology.py`) is decided here once: a worker runs every room; a front runs every room but
the live one, whose routes it relays to its workers, and no engine. This is the composition root:
the one place that reads every room's keys, and hands each room what it needs from the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

from aiohttp import web

from server import keys
from server.cluster import keys as cluster_keys
from server.config import Config
from server.control import keys as control_keys
from server.control import presets, saved_settings
from server.control import wiring as control
from server.control.events import EVENT_TYPES, EventHub
from server.control.presets import SqlitePresets
from server.control.settings import SettingsStore, StyleSettings
from server.db import Database
from server.engine_service import EngineService
from server.http import wiring as http
from server.http.errors import error_middleware
from server.http.security import security_middleware
from server.jobs import keys as jobs_keys
from server.jobs import store as job_store
from server.jobs import wiring as jobs
from server.live import keys as live_keys
from server.live import wiring as live
from server.live.session import Session
from server.observe import keys as observe_keys
from server.observe import wiring as observe
from server.observe.metrics import Metrics
from server.recordings import keys as recordings_keys
from server.recordings import wiring as recordings
from server.recordings.recorder import Taken
from server.topology import Topology

# Each feature that keeps rows in the database adds its CREATE TABLE IF NOT EXISTS script here.
SCHEMAS: list[str] = [presets.SCHEMA, job_store.SCHEMA, saved_settings.SCHEMA]
# ... and the columns it added to its tables since they first shipped.
ADDED_COLUMNS = [*presets.ADDED_COLUMNS]


def database_path(config: Config) -> Path:
    return Path(config.server.data_dir) / "stylize.db"


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[*observe.MIDDLEWARES, error_middleware, security_middleware(config)],
        client_max_size=64 * 1024 * 1024,
    )
    topology = Topology.of(config)
    app[keys.CONFIG], app[keys.TOPOLOGY] = config, topology
    app[keys.METRICS] = Metrics()
    database = Database(database_path(config), schemas=SCHEMAS, added_columns=ADDED_COLUMNS)
    app[keys.DB] = database
    initial = StyleSettings(**config.defaults.model_dump())
    cluster = _join_cluster(app, config, initial) if topology.shares_state else None
    if cluster is None:
        app[keys.SETTINGS], app[keys.EVENTS] = SettingsStore(initial), EventHub()
        app[control_keys.PRESET_STORAGE], app[jobs_keys.JOBS] = SqlitePresets(database), job_store.JobStore(database)
    _hand_in(app, topology)
    # Start-up order (shut-down runs it backwards): observe first, so the others' start-up errors
    # show in /api/stats; the database, the cluster link and the engine before the rooms that use them.
    app.cleanup_ctx.extend(observe.CONTEXTS)
    app.cleanup_ctx.extend(http.CONTEXTS)
    app.cleanup_ctx.append(_database_ctx)
    if cluster is not None:
        app.cleanup_ctx.extend(cluster.CONTEXTS)
    if topology.runs_engine:
        app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.extend(control.CONTEXTS)
    if topology.runs_live:
        app.cleanup_ctx.extend(live.CONTEXTS)
    app.cleanup_ctx.extend(jobs.CONTEXTS)
    if topology.runs_live:
        app.cleanup_ctx.extend(recordings.CONTEXTS)
    # The API contract from every room's routes, with the /api/events message types.
    app.cleanup_ctx.append(http.document_ctx(EVENT_TYPES, version=lambda: app[observe_keys.STATS].version))
    rooms: list[ModuleType] = [observe, control, *([live, recordings] if topology.runs_live else []), jobs, http]
    if cluster is not None:
        rooms.append(cluster)  # /api/cluster; on a front, the live room's routes relayed
    for room in rooms:
        room.setup_routes(app)
    return app


def _join_cluster(app: web.Application, config: Config, initial: StyleSettings) -> ModuleType:
    """This node's part in a cluster: settings, events, presets and jobs in Redis; the cluster room.

    Imported only here: the cluster needs the Redis client, an extra a single server does without.
    """
    from server.cluster import wiring
    from server.cluster.node import ClusterNode

    node = ClusterNode(config, initial)
    app[cluster_keys.CLUSTER], app[keys.RELAY] = node, node.relay
    app[keys.SETTINGS], app[keys.EVENTS] = node.settings, node.events
    app[control_keys.PRESET_STORAGE], app[jobs_keys.JOBS] = node.presets, node.jobs
    app[jobs_keys.FETCH_INPUT] = node.fetch_job_input
    app[observe_keys.SPANNING] = node
    if node.engines is not None:
        app[keys.ENGINE] = node.engines  # a front's engine is its workers'
    return wiring


def _hand_in(app: web.Application, topology: Topology) -> None:
    """What each room needs from another, as a key of the needing room's own (read when used, so
    state a room makes at start-up is there by then)."""

    def sessions() -> dict[str, Session]:
        # None before the live room has started (a worker's first heartbeat comes earlier) and on a front.
        peers = app.get(live_keys.PEERS) if topology.runs_live else None
        return peers.sessions if peers is not None else {}

    app[jobs_keys.LIVE_STREAMS] = app[cluster_keys.LIVE_STREAMS] = lambda: len(sessions())
    app[observe_keys.STREAMS] = lambda: sessions().values()
    app[observe_keys.PRESET_USAGE] = lambda: app[control_keys.PRESETS].usage()
    app[jobs_keys.PRESET_PATCH] = lambda *patching: app[control_keys.PRESETS].patch_for(*patching)

    def listen(name: str, offer: Callable[[Taken], None]) -> Callable[[], None]:
        return app[live_keys.OUTPUTS].record(
            name, lambda take: offer(Taken(take.input, take.output, take.settings, take.settings.paused))
        )

    app[recordings_keys.LISTEN] = listen
    app[recordings_keys.SUBMIT_JOB] = lambda job: app[jobs_keys.JOB_WORKER].submit(job)
    if topology.runs_live:
        app[control_keys.RECORD] = lambda name, on: app[recordings_keys.RECORDINGS].switch(name, on, listen)


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
