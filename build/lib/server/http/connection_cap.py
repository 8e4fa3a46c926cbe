"""At most so many HTTP connections, kept below the process's file-descriptor limit.

With `ulimit -n 1024`, ~1,010 idle sockets left the server no descriptor to accept with, to open
a file or a WebRTC socket: it stopped serving, and the accept loop's failures wrote ~296k
tracebacks in 30 s (rotating the log history away). Here the listening socket's protocol factory
counts aiohttp's connections first: at the cap, the oldest connection that is idle (no request in
flight: `busy_middleware` marks those that have one) is closed to make room; with none idle, the
new one is closed at once. Either way the condition is logged at most once a second. Idle
connections also close after `[server] idle_connection_s` (aiohttp's keep-alive timeout, which runs
from the connection's start).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

# Descriptors kept for everything but HTTP connections: WebRTC sockets, the database, logs, model
# files, and the connections accepted in one go before any is closed (`ACCEPT_BACKLOG`).
RESERVED_FDS = 256
# asyncio accepts up to the listen backlog in one go, before a closed socket's descriptor is freed.
ACCEPT_BACKLOG = 32
LOG_INTERVAL_S = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def connection_limit(configured: int) -> int:
    """`[server] max_connections`, or with 0 the descriptor limit less a reserve (a quarter at least)."""
    if configured:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 16384
    return max(16, soft - max(RESERVED_FDS, soft // 4))


class _Refused(asyncio.Protocol):
    """A connection past the cap with nothing to give way: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionCap:
    """The protocol factory for the listening socket, in front of aiohttp's `web.Server`."""

    def __init__(self, limit: int) -> None:
        self._server: web.Server | None = None  # aiohttp's, once its runner is set up (`attach`)
        self.limit = limit
        self.busy: set[RequestHandler] = set()  # connections with a request in flight
        self.evicted = 0
        self.refused = 0
        self._logged_at = -LOG_INTERVAL_S

    def attach(self, server: web.Server | None) -> None:
        """aiohttp's server, from its runner once set up (`AppRunner.server`)."""
        if server is None:
            raise RuntimeError("the runner is not set up: it has no server yet")
        self._server = server

    def __call__(self) -> asyncio.Protocol:
        if self._server is None:
            raise RuntimeError("ConnectionCap used before attach(server)")
        # In the order they came, those whose socket is still open: aiohttp lists a closed connection
        # until its task ends, and taking one of those for room freed no descriptor (EMFILE under load).
        connections = [connection for connection in self._server.connections if connection.transport is not None]
        if len(connections) < self.limit:
            return self._server()
        idle = next((connection for connection in connections if connection not in self.busy), None)
        if idle is not None:
            idle.force_close()  # its socket goes now, not after a keep-alive wait
            self.evicted += 1
            self._log("closed an idle connection to make room")
            return self._server()
        self.refused += 1
        self._log("refused a connection: every one is busy")
        return _Refused()

    def _log(self, what: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_S:
            self._logged_at = now
            logger.warning(
                "HTTP connections at the cap of %d ([server] max_connections): %s (%d closed idle, %d refused so far)",
                self.limit,
                what,
                self.evicted,
                self.refused,
            )

    def busy_middleware(self) -> Middleware:
        @web.middleware
        async def mark(request: web.Request, handler: Handler) -> web.StreamResponse:
            protocol = request.protocol
            self.busy.add(protocol)
            try:
                return await handler(request)
            finally:
                self.busy.discard(protocol)

        return mark
