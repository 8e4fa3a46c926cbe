"""The access log: one line per request, with the real client (behind a trusted proxy) and no token;
reads of what pages poll every second go to DEBUG, so the console keeps the events that matter."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from server import keys

# Routes the page and /monitor poll: a line a second each would drown the events that matter.
POLLED = frozenset({"/readyz", "/health", "/api/stats", "/api/streams", "/api/settings", "/metrics"})


class AccessLog(AbstractAccessLogger):
    """`client "METHOD /path?query" status bytes seconds`; a `?token=` is logged as `***`."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        polled = request.path in POLLED or request.path.startswith("/static/")
        level = logging.DEBUG if polled and request.method in ("GET", "HEAD") else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        client = request.get(keys.CLIENT) or request.remote
        url = request.rel_url
        if "token" in url.query:
            url = url.update_query(token="***")
        self.logger.log(
            level, '%s "%s %s" %d %d %.3fs', client, request.method, url, response.status, response.body_length, time
        )
