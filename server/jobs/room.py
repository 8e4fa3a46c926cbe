"""The jobs room as the app sees it: the /api/jobs routes and the render worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from server import keys
from server.jobs import routes
from server.jobs.worker import JobWorker


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    peers = app.get(keys.PEERS)  # none on a cluster's front: it renders nothing
    cluster = app.get(keys.CLUSTER)
    worker = JobWorker(
        app[keys.JOBS],
        app[keys.ENGINE],
        app[keys.EVENTS],
        config.jobs,
        Path(config.server.data_dir),
        live_streams=lambda: len(peers.sessions) if peers is not None else 0,
        on_counts=app[keys.METRICS].set_jobs,
        fetch_input=cluster.fetch_job_input if cluster is not None else None,
    )
    app[keys.JOB_WORKER] = worker
    await worker.recover()
    if peers is not None:  # where an engine runs; a front only takes, lists and cancels jobs
        worker.start()
    yield
    await worker.stop()


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_jobs_ctx]


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes.routes)
