"""Bearer-token auth, a per-client rate limit on mutating requests, and CORS (closed by default)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.config import SecurityConfig
from server.http.errors import json_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Clients idle this long are forgotten so the bucket table cannot grow without bound.
BUCKET_IDLE_S = 300.0


class TokenBuckets:
    """Per-key token buckets: `rate` requests per second, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0 if a request may pass now, else the seconds until it could."""
        now = time.monotonic() if now is None else now
        if len(self._buckets) > 10_000:
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < BUCKET_IDLE_S}
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0


def security_middleware(
    config: SecurityConfig, cors_origins: list[str]
) -> Callable[..., Awaitable[web.StreamResponse]]:
    token = config.api_token.encode()
    buckets = TokenBuckets(config.rate_limit_per_s, config.rate_limit_burst) if config.rate_limit_per_s > 0 else None
    allowed_origins = frozenset(cors_origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        cors = origin is not None and (origin in allowed_origins or "*" in allowed_origins)
        if request.method == "OPTIONS" and cors:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        elif request.method in MUTATING and request.path.startswith("/api/"):
            response = await _guarded(request, handler)
        else:
            response = await handler(request)
        if cors and origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token:
            supplied = request.headers.get("Authorization", "")
            scheme, _, value = supplied.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token):
                response = json_error(401, "unauthorized", "send Authorization: Bearer <[security] api_token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="stylize"'
                return response
        if buckets is not None:
            wait = buckets.take(request.remote or "unknown")
            if wait > 0:
                response = json_error(429, "too many requests", {"retry_after_s": round(wait, 3)})
                response.headers["Retry-After"] = str(max(1, round(wait)))
                return response
        return await handler(request)

    return middleware
