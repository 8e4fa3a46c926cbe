"""The application factory: `create_app(config)` wires state, resources and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from server import (
    api_health,
    api_jobs,
    api_media,
    api_metrics,
    api_offer,
    api_presets,
    api_settings,
    api_stats,
    api_suggestions,
    api_transport,
    bitrate,
    jobs_store,
    keys,
)
from server.config import Config
from server.db import Database
from server.engine_service import EngineService
from server.errors import error_middleware
from server.events import EventHub
from server.jobs_store import JobStore
from server.jobs_worker import JobWorker
from server.jpeg import JpegOutput
from server.metrics import Metrics
from server.osc import start_osc
from server.peers import PeerManager
from server.presets import SCHEMA as PRESETS_SCHEMA
from server.presets import PresetLibrary, load_builtin_presets
from server.security import security_middleware
from server.settings import SettingsChange, SettingsStore, StyleSettings
from server.stats import RecentErrors, StatsReporter, package_version
from server.suggestions import PromptSuggestions

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Each feature that keeps rows in the database adds its CREATE TABLE IF NOT EXISTS script here.
SCHEMAS: list[str] = [PRESETS_SCHEMA, jobs_store.SCHEMA]


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, security_middleware(config.security, config.server.cors_origins)],
        client_max_size=64 * 1024 * 1024,
    )
    app[keys.CONFIG] = config
    app[keys.SETTINGS] = SettingsStore(StyleSettings(**config.defaults.model_dump()))
    app[keys.EVENTS] = EventHub()
    app[keys.METRICS] = Metrics()
    app.on_shutdown.append(_close_event_listeners)
    app.on_shutdown.append(_end_mjpeg_streams)
    app.cleanup_ctx.append(_stats_ctx)
    app.cleanup_ctx.append(_bitrate_ctx)
    app.cleanup_ctx.append(_jpeg_ctx)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_presets_ctx)
    app.cleanup_ctx.append(_suggestions_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.append(_peers_ctx)
    app.cleanup_ctx.append(_settings_events_ctx)
    app.cleanup_ctx.append(_osc_ctx)
    app.cleanup_ctx.append(_settings_metrics_ctx)
    app.cleanup_ctx.append(_jobs_ctx)
    app.router.add_get("/api/events", app[keys.EVENTS].handle)
    app.add_routes(api_health.routes)
    app.add_routes(api_offer.routes)
    app.add_routes(api_settings.routes)
    app.add_routes(api_presets.routes)
    app.add_routes(api_suggestions.routes)
    app.add_routes(api_metrics.routes)
    app.add_routes(api_stats.routes)
    app.add_routes(api_jobs.routes)
    app.add_routes(api_media.routes)
    app.add_routes(api_transport.routes)
    app.router.add_get("/", _index)
    app.router.add_get("/monitor", _monitor)
    app.router.add_static("/static/", STATIC_DIR)
    return app


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _monitor(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "monitor.html")


async def _close_event_listeners(app: web.Application) -> None:
    await app[keys.EVENTS].close()


async def _stats_ctx(app: web.Application) -> AsyncIterator[None]:
    """First in, so start-up errors of the resources after it show in /api/stats."""
    errors = RecentErrors()
    root = logging.getLogger()
    root.addHandler(errors)
    reporter = StatsReporter(app[keys.METRICS], version=await asyncio.to_thread(package_version), errors=errors)
    app[keys.STATS] = reporter
    yield
    root.removeHandler(errors)
    await asyncio.to_thread(reporter.probe.close)


async def _end_mjpeg_streams(app: web.Application) -> None:
    app[keys.JPEG].stop_streams()


async def _bitrate_ctx(app: web.Application) -> AsyncIterator[None]:
    previous = bitrate.apply(bitrate.Bitrates.from_config(app[keys.CONFIG].transport))
    yield
    bitrate.restore(previous)


async def _jpeg_ctx(app: web.Application) -> AsyncIterator[None]:
    encoder = JpegOutput(quality=app[keys.CONFIG].media.jpeg_quality)
    app[keys.JPEG] = encoder
    yield
    encoder.close()


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    database = Database(Path(app[keys.CONFIG].server.data_dir) / "stylize.db", schemas=SCHEMAS)
    await database.open()
    app[keys.DB] = database
    yield
    await database.close()


async def _presets_ctx(app: web.Application) -> AsyncIterator[None]:
    builtins = await asyncio.to_thread(load_builtin_presets)
    app[keys.PRESETS] = PresetLibrary(
        builtins,
        app[keys.DB],
        app[keys.SETTINGS],
        app[keys.EVENTS],
        default_subject=app[keys.CONFIG].presets.default_subject,
    )
    app[keys.STATS].presets = app[keys.PRESETS].usage
    yield


async def _suggestions_ctx(app: web.Application) -> AsyncIterator[None]:
    app[keys.SUGGESTIONS] = await asyncio.to_thread(PromptSuggestions.load)
    yield


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


async def _osc_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG].osc
    if not config.enabled:
        yield
        return
    transport, listener = await start_osc(
        config, app[keys.SETTINGS], app[keys.PRESETS], on_reject=app[keys.METRICS].osc_rejected.inc
    )
    app[keys.OSC] = listener
    yield
    transport.close()
    await listener.close()


async def _settings_metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    count = app[keys.METRICS].count_control_update
    store = app[keys.SETTINGS]
    store.add_listener(count)
    yield
    store.remove_listener(count)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    service = EngineService(app[keys.CONFIG], on_batch=app[keys.METRICS].observe_batch)
    app[keys.ENGINE] = service
    service.start()
    yield
    service.stop()


async def _peers_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    peers = PeerManager(
        config.server, app[keys.ENGINE], app[keys.SETTINGS], app[keys.EVENTS], app[keys.METRICS], config.transport
    )
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
        on_counts=app[keys.METRICS].set_jobs,
    )
    app[keys.JOBS] = store
    app[keys.JOB_WORKER] = worker
    await worker.recover()
    worker.start()
    yield
    await worker.stop()
