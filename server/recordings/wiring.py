"""The recordings room as the app sees it: the /api/recordings routes and the library of recordings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from server import keys
from server.recordings import keys as recordings_keys
from server.recordings import routes
from server.recordings.library import RecordingLibrary


async def _recordings_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    folder = Path(config.recordings.dir) if config.recordings.dir else Path(config.server.data_dir) / "recordings"
    library = RecordingLibrary(folder, config.recordings, app[keys.EVENTS])
    await asyncio.to_thread(library.recover)
    app[recordings_keys.RECORDINGS] = library
    yield
    await library.close()


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_recordings_ctx]


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes.routes)
