"""The jobs room as the app sees it: the /api/jobs routes and the render worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from server import keys
from server.jobs import keys as jobs_keys
from server.jobs import routes
from server.jobs.worker import JobWorker


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    worker = JobWorker(
        app[jobs_keys.JOBS],
        app[keys.ENGINE],
        app[keys.EVENTS],
        config.jobs,
        Path(config.server.data_dir),
        live_streams=app[jobs_keys.LIVE_STREAMS],
        on_counts=app[keys.METRICS].set_jobs,
        fetch_input=app.get(jobs_keys.FETCH_INPUT),
    )
    app[jobs_keys.JOB_WORKER] = worker
    await worker.recover()
    if app[keys.TOPOLOGY].renders_jobs:  # a cluster's front only takes, lists and cancels jobs
        worker.start()
    yield
    await worker.stop()


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_jobs_ctx]


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes.routes)
