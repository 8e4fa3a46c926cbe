"""Who may call: browsers only from the server's own origin (CSRF), token holders where a token is
set, each client within a rate; and who the client is behind a trusted reverse proxy.

In order, for every request:
0. The Host (a trusted proxy's `X-Forwarded-Host`) must be an IP address, a loopback name, the
   configured host or advertised URL, this machine's name, or in `[server] allowed_hosts`; else 403.
   DNS rebinding points an attacker's name at this server: the browser then takes the server for
   the attacker's origin, so the CSRF check passes and the pages' reads are the attacker's to see.
   An IP address cannot be rebound, and nobody else's name is taken.
1. The client's address: the peer's, or, when the peer is one of `[server] trusted_proxies`, the
   nearest untrusted hop of its `X-Forwarded-For` (for rate limits and logs; `request[keys.CLIENT]`).
2. CSRF: a mutating request (POST, PUT, PATCH, DELETE) or a WebSocket upgrade whose `Origin` (or,
   without one, whose `Referer`) is neither the server's own origin (scheme, host and port as the
   browser sees them: TLS and a trusted proxy's `X-Forwarded-Proto`/`-Host` count) nor one in
   `[server] cors_origins` gets 403. Requests with neither header (curl, scripts) pass.
3. The token: with `[security] api_token` set, everything under `/api/` (bar the probe aliases)
   and `/metrics` need `Authorization: Bearer <token>`, or `?token=` on a GET where a browser
   cannot set headers (WebSocket, `<img>`). Compared in constant time. A client's wrong tokens are
   rate-limited: past the burst it gets 429 before its token is even looked at.
4. The rate limit on mutating `/api/` requests, per client (429 with Retry-After).
CORS stays closed unless `cors_origins` lists origins (`"*"`: any, CSRF check included).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from yarl import URL

from server import keys
from server.config import Config, SecurityConfig, ServerConfig, address_in, networks
from server.http.errors import json_error

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Clients idle this long are forgotten so the bucket table cannot grow without bound.
BUCKET_IDLE_S = 300.0
# Under /api/ but open like /health and /readyz: the seeds' probe paths.
OPEN_API_PATHS = frozenset({"/api/health", "/api/readyz"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Origin = tuple[str, str, int]  # scheme, host, port


class TokenBuckets:
    """Per-key token buckets: `rate` requests per second, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float | None = None) -> float:
        """0 if a request may pass now (and it is counted), else the seconds until it could."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def wait(self, key: str, now: float | None = None) -> float:
        """What `take` would answer, without counting anything."""
        tokens = self._tokens(key, time.monotonic() if now is None else now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def forget(self, key: str) -> None:
        """Start `key` over with a full bucket."""
        self._buckets.pop(key, None)

    def _tokens(self, key: str, now: float) -> float:
        if len(self._buckets) > 10_000:
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < BUCKET_IDLE_S}
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate)


class TrustedProxies:
    """`[server] trusted_proxies`: whose X-Forwarded-For/-Proto/-Host are believed."""

    def __init__(self, entries: list[str]) -> None:
        self._networks = networks(entries)

    def trusts(self, address: str | None) -> bool:
        return address_in(address, self._networks)

    def client(self, request: web.Request) -> str:
        """The nearest address in the forwarding chain that is not a trusted proxy."""
        address = request.remote or "unknown"
        if not self.trusts(address):
            return address
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")]
        for hop in reversed([hop for hop in hops if hop]):
            if not self.trusts(hop):
                return hop
            address = hop
        return address

    def own_origin(self, request: web.Request) -> Origin | None:
        """The origin a browser sees this server at: its scheme, Host and port (a trusted proxy's say)."""
        scheme, host = request.scheme, self.host(request)
        if self.trusts(request.remote):
            scheme = _first(request.headers.get("X-Forwarded-Proto")) or scheme
        return origin_of(f"{scheme}://{host}")

    def host(self, request: web.Request) -> str:
        """The Host the client asked for (host and port): a trusted proxy's X-Forwarded-Host, else the header."""
        forwarded = _first(request.headers.get("X-Forwarded-Host")) if self.trusts(request.remote) else None
        return forwarded or request.host


class AllowedHosts:
    """The names a request's Host may carry (the DNS rebinding check)."""

    def __init__(self, config: Config) -> None:
        machine = socket.gethostname().lower()
        names = [config.server.host, URL(config.cluster.advertise_url).host or "", machine, f"{machine}.local"]
        names += config.server.allowed_hosts
        self.any = "*" in names
        self._names = {name.lower().rstrip(".") for name in names if name and not name.startswith("*")}
        self._domains = tuple(name[1:].lower() for name in names if name.startswith("*."))

    def allows(self, host_and_port: str) -> bool:
        if self.any:
            return True
        origin = origin_of(f"http://{host_and_port}")
        if origin is None:
            return False
        host = origin[1].strip("[]")
        return rebind_proof(host) or host in self._names or host.endswith(self._domains)


def _first(value: str | None) -> str | None:
    return value.split(",")[0].strip() if value else None


def origin_of(text: str) -> Origin | None:
    """(scheme, host, port) of an origin or URL, default ports filled in; None for "null" or junk."""
    try:
        url = URL(text)
    except ValueError:
        return None
    scheme = (url.scheme or "").lower()
    if scheme not in DEFAULT_PORTS or not url.host:
        return None
    try:
        port = url.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return scheme, url.host.lower().rstrip("."), port


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rebind_proof(host: str) -> bool:
    """An IP address (no DNS answer stands behind it) or a loopback name: no attacker's page can own it."""
    if is_loopback(host) or host.lower().endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def exposure_warning(config: Config) -> str | None:
    """The start-up warning for a server others can reach that asks nobody for a token."""
    if config.security.api_token or is_loopback(config.server.host):
        return None
    return (
        f"listening on {config.server.host or 'every address'} without [security] api_token: anyone who can "
        "reach this port can watch every stream and change the live look; set STYLIZE_SECURITY_API_TOKEN"
    )


def needs_token(path: str) -> bool:
    return (path.startswith("/api/") and path not in OPEN_API_PATHS) or path == "/metrics"


def security_middleware(config: Config) -> Middleware:
    return _Guard(config.security, config.server, AllowedHosts(config)).middleware


class _Guard:
    def __init__(self, security: SecurityConfig, server: ServerConfig, hosts: AllowedHosts) -> None:
        self._hosts = hosts
        self._token = security.api_token.encode()
        self._proxies = TrustedProxies(server.trusted_proxies)
        self._any_origin = "*" in server.cors_origins
        self._cors_origins = {origin for origin in server.cors_origins if origin != "*"}
        self._extra_origins = {o for o in map(origin_of, server.cors_origins) if o is not None}
        self._requests = (
            TokenBuckets(security.rate_limit_per_s, security.rate_limit_burst)
            if security.rate_limit_per_s > 0
            else None
        )
        self._failures = TokenBuckets(security.auth_fail_per_s, security.auth_fail_burst)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        client = self._proxies.client(request)
        request[keys.CLIENT] = client
        host = self._proxies.host(request)
        if not self._hosts.allows(host):
            logger.warning("host refused %s %s host=%r client=%s", request.method, request.path, host, client)
            return json_error(403, "host not allowed", {"host": host, "allow it with": "[server] allowed_hosts"})
        origin = request.headers.get(hdrs.ORIGIN)
        cors = origin is not None and (self._any_origin or origin in self._cors_origins)
        if request.method == "OPTIONS" and cors:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = self._refusal(request, client) or await handler(request)
        if cors and origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            # WHIP and WHEP players on other origins read where the session lives, its ICE servers and tag.
            response.headers["Access-Control-Expose-Headers"] = "Location, Link, ETag"
        return response

    def _refusal(self, request: web.Request, client: str) -> web.Response | None:
        """The answer refusing this request, or None to let it through."""
        upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        if request.method in MUTATING or upgrade:
            foreign = self._foreign_origin(request)
            if foreign is not None:
                return json_error(403, "cross-origin request refused", {"origin": foreign})
        if self._token and needs_token(request.path):
            refusal = self._check_token(request, client)
            if refusal is not None:
                return refusal
        if self._requests is not None and request.method in MUTATING and request.path.startswith("/api/"):
            wait = self._requests.take(client)
            if wait > 0:
                return _too_many(wait)
        return None

    def _foreign_origin(self, request: web.Request) -> str | None:
        """The Origin (or Referer) of a browser request from another site; None when it may pass."""
        claimed = request.headers.get(hdrs.ORIGIN)
        if claimed is None:
            referer = request.headers.get(hdrs.REFERER)
            if referer is None:
                return None  # not a browser: curl, a script, an OSC bridge
            claimed = referer
        if self._any_origin:
            return None
        origin = origin_of(claimed)
        if origin is not None and (origin == self._proxies.own_origin(request) or origin in self._extra_origins):
            return None
        return claimed if origin is None else f"{origin[0]}://{origin[1]}:{origin[2]}"

    def _check_token(self, request: web.Request, client: str) -> web.Response | None:
        scheme, _, value = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        supplied = value.strip() if scheme.lower() == "bearer" else None
        if supplied is None and request.method in ("GET", "HEAD"):
            supplied = request.query.get("token")  # a WebSocket or an <img> cannot send the header
        if supplied is not None and hmac.compare_digest(supplied.encode(), self._token):
            # Only failures count: the right token always passes (a guesser behind the same NAT or
            # proxy must not lock out the operator) and wipes the address's failures.
            self._failures.forget(client)
            return None
        wait = self._failures.wait(client)
        if wait > 0:
            return _too_many(wait, "too many failed token attempts")
        self._failures.take(client)
        logger.warning("unauthorized %s %s client=%s", request.method, request.path, client)
        response = json_error(401, "unauthorized", "send Authorization: Bearer <[security] api_token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="stylize"'
        return response


def _too_many(wait: float, error: str = "too many requests") -> web.Response:
    response = json_error(429, error, {"retry_after_s": round(wait, 3)})
    response.headers["Retry-After"] = str(max(1, round(wait)))
    return response
