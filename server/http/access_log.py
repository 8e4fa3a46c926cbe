"""The access log: one short line per request, except reads of what pages poll every second (DEBUG only)."""

from __future__ import annotations

import logging

from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

# Routes the page and /monitor poll: a line a second each would drown the events that matter.
POLLED = frozenset({"/readyz", "/health", "/api/stats", "/api/streams", "/api/settings", "/metrics"})


class AccessLog(AccessLogger):
    FORMAT = '%a "%r" %s %b %Tfs'

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        polled = request.path in POLLED or request.path.startswith("/static/")
        if polled and request.method in ("GET", "HEAD"):
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug("%s %s %s %.4fs", request.method, request.path_qs, response.status, time)
            return
        super().log(request, response, time)
