"""The http edge as the app sees it: the pages and probes, the API contract and its docs, and a
start-up word on exposure."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from server import keys
from server.http import api_docs, pages
from server.http.api_docs import document_ctx
from server.http.security import exposure_warning

logger = logging.getLogger(__name__)


async def _exposure_ctx(app: web.Application) -> AsyncIterator[None]:
    warning = exposure_warning(app[keys.CONFIG])
    if warning is not None:
        logger.warning(warning)
    yield


CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = [_exposure_ctx]

__all__ = ["CONTEXTS", "document_ctx", "setup_routes"]


def setup_routes(app: web.Application) -> None:
    pages.setup_routes(app)
    api_docs.setup_routes(app)
