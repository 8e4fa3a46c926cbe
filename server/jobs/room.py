"""The jobs room as the app sees it: the /api/jobs routes and the render worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from server import keys
from server.jobs import routes
from server.jobs.store import JobStore
from server.jobs.worker import JobWorker


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


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_jobs_ctx]


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes.routes)
