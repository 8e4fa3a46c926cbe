"""The observe room as the app sees it: /metrics and /api/stats, and the resources behind them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from server import keys
from server.observe import keys as observe_keys
from server.observe import routes
from server.observe.http_metrics import http_metrics_middleware
from server.observe.stats import RecentErrors, StatsReporter, package_version


async def _stats_ctx(app: web.Application) -> AsyncIterator[None]:
    """First in, so start-up errors of the resources after it show in /api/stats."""
    errors = RecentErrors()
    root = logging.getLogger()
    root.addHandler(errors)
    reporter = StatsReporter(
        app[keys.METRICS],
        version=await asyncio.to_thread(package_version),
        errors=errors,
        data_dir=Path(app[keys.CONFIG].server.data_dir),
    )
    reporter.presets = app.get(observe_keys.PRESET_USAGE)
    app[observe_keys.STATS] = reporter
    app[keys.EVENTS].add_watcher(reporter.activity.see)
    yield
    app[keys.EVENTS].remove_watcher(reporter.activity.see)
    root.removeHandler(errors)
    await asyncio.to_thread(reporter.probe.close)


async def _settings_metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    count = app[keys.METRICS].count_control_update
    store = app[keys.SETTINGS]
    store.add_listener(count)
    yield
    store.remove_listener(count)


# Outermost: it sees the final status of every request, the JSON errors and 500s included.
MIDDLEWARES = [http_metrics_middleware]

CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_stats_ctx, _settings_metrics_ctx]


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes.routes)
