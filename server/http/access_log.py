"""The access log: one line per request with the real client (behind a trusted proxy) and no token."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from server import keys


class AccessLogger(AbstractAccessLogger):
    """`client "METHOD /path?query" status bytes seconds`; a `?token=` is logged as `***`."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        client = request.get(keys.CLIENT) or request.remote
        url = request.rel_url
        if "token" in url.query:
            url = url.update_query(token="***")
        self.logger.info(
            '%s "%s %s" %d %d %.3fs', client, request.method, url, response.status, response.body_length, time
        )
