"""Closed to strangers, open to clients: cross-origin requests refused (CSRF), the token guarding
everything that shows or changes a stream, wrong tokens slowed down, clients told apart behind a proxy."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server import keys
from server.config import Config, ConfigError, load_config
from server.http.access_log import AccessLog
from server.http.security import TrustedProxies, exposure_warning, needs_token, origin_of
from server.live import keys as live_keys
from server.testing.clips import make_image
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

EVIL = "http://evil.example"
TOKEN = "stage-42"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """The default security settings (no token, CORS closed), no warm-up: these tests never stream."""
    running = await start_server(make_config(engine={"warmup": False}), ready=False)
    yield running
    await stop_server(running)


@pytest.fixture
async def guarded(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(
        make_config(security={"api_token": TOKEN, "auth_fail_burst": 3}, engine={"warmup": False}), ready=False
    )
    yield running
    await stop_server(running)


def own_origin(server: RunningServer) -> str:
    return f"http://{server.server.host}:{server.server.port}"


async def settings(server: RunningServer, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with server.http.get(server.url("/api/settings"), headers=headers) as response:
        assert response.status == 200
        return dict(await response.json())


def upload_form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", make_image("png"), filename="a.png", content_type="image/png")
    return form


# -- CSRF ---------------------------------------------------------------------------------------


async def test_a_foreign_page_cannot_change_anything(server: RunningServer) -> None:
    before = await settings(server)
    foreign = {"Origin": EVIL}
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/prompt", {"data": b'{"prompt": "pwned"}', "headers": foreign | {"Content-Type": "text/plain"}}),
        ("POST", "/api/prompt", {"json": {"prompt": "pwned"}, "headers": foreign}),
        ("PATCH", "/api/settings", {"json": {"strength": 0.99}, "headers": foreign}),
        ("POST", "/api/presets/anime/apply", {"headers": foreign | {"Content-Type": "text/plain"}}),
        (
            "POST",
            "/api/presets",
            {"json": {"id": "x", "name": "x", "category": "x", "template": "{prompt}"}, "headers": foreign},
        ),
        ("POST", "/api/jobs", {"data": upload_form(), "headers": foreign}),
        ("POST", f"/api/jobs/{'0' * 32}/cancel", {"headers": foreign}),
        ("POST", "/api/offer", {"json": {"sdp": "v=0", "type": "offer"}, "headers": foreign}),
        ("DELETE", "/api/streams/someone", {"headers": foreign}),
        # No Origin, but the Referer names the foreign page.
        ("POST", "/api/prompt", {"json": {"prompt": "pwned"}, "headers": {"Referer": f"{EVIL}/page.html"}}),
        # A sandboxed frame or a data: URL sends Origin: null.
        ("POST", "/api/prompt", {"json": {"prompt": "pwned"}, "headers": {"Origin": "null"}}),
        # Same host, another port is another origin.
        ("POST", "/api/prompt", {"json": {"prompt": "pwned"}, "headers": {"Origin": "http://127.0.0.1:1"}}),
    ]
    for method, path, options in attempts:
        async with server.http.request(method, server.url(path), **options) as response:
            answer = await response.json()
        assert response.status == 403, (method, path, answer)
        assert answer["error"] == "cross-origin request refused"
    assert await settings(server) == before
    async with server.http.get(server.url("/api/jobs")) as response:
        assert (await response.json())["total"] == 0
    async with server.http.get(server.url("/api/presets/x")) as response:
        assert response.status == 404
    assert server.app[live_keys.PEERS].sessions == {}


async def test_the_page_itself_scripts_and_listed_origins_pass(make_config: Callable[..., Config]) -> None:
    running = await start_server(
        make_config(server={"cors_origins": ["http://show.example"]}, engine={"warmup": False}), ready=False
    )
    try:
        for headers in (
            {"Origin": own_origin(running)},
            {"Referer": f"{own_origin(running)}/"},
            {"Origin": "http://show.example"},
            {"Origin": "http://show.example:80"},
            {},  # curl, a script, an OSC bridge
        ):
            async with running.http.post(running.url("/api/strength"), json={"strength": 0.25}, headers=headers) as r:
                assert r.status == 200, headers
        # Reads carry no CSRF risk: a GET from anywhere is answered (CORS keeps its body from a foreign page).
        async with running.http.get(running.url("/api/settings"), headers={"Origin": EVIL}) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers
    finally:
        await stop_server(running)


async def test_the_events_websocket_refuses_a_foreign_origin(server: RunningServer) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with server.http.ws_connect(server.url("/api/events"), origin=EVIL):
            pass
    assert refused.value.status == 403
    assert server.app[keys.EVENTS].listeners == 0
    async with server.http.ws_connect(server.url("/api/events"), origin=own_origin(server)):
        await eventually(lambda: server.app[keys.EVENTS].listeners == 1)


async def test_a_rebound_name_gets_nothing_and_changes_nothing(make_config: Callable[..., Config]) -> None:
    """DNS rebinding: evil.example now resolves to this server, so the browser sends evil.example as
    both Host and Origin; they agree, and only the Host check stands between the page and the API."""
    config = make_config(server={"allowed_hosts": ["stage.example", "*.venue.example"]}, engine={"warmup": False})
    running = await start_server(config, ready=False)
    try:
        before = await settings(running)
        port = running.server.port
        rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        async with running.http.post(running.url("/api/strength"), json={"strength": 0.91}, headers=rebound) as r:
            assert r.status == 403
            assert (await r.json())["error"] == "host not allowed"
        for path in ("/api/settings", "/api/streams", "/"):
            async with running.http.get(running.url(path), headers={"Host": f"evil.example:{port}"}) as response:
                assert response.status == 403, path
        assert await settings(running) == before
        # IP addresses (loopback, the LAN's), loopback names and the listed names pass.
        for host in ("127.0.0.1", "localhost", "[::1]", "192.168.1.20", "stage.example", "cam.venue.example"):
            async with running.http.get(running.url("/api/settings"), headers={"Host": f"{host}:{port}"}) as response:
                assert response.status == 200, host
    finally:
        await stop_server(running)


def test_own_origin_is_what_the_browser_sees() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    direct = make_mocked_request("GET", "/", headers={"Host": "stage.local:8080"})
    assert proxies.own_origin(direct) == ("http", "stage.local", 8080)
    # Behind a trusted TLS-terminating proxy: its X-Forwarded-Proto and -Host are believed ...
    forwarded = {"Host": "127.0.0.1:8080", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "stage.example"}
    behind = make_mocked_request("GET", "/", headers=forwarded)
    behind = behind.clone(remote="10.1.2.3")
    assert proxies.own_origin(behind) == ("https", "stage.example", 443)
    # ... and nobody else's.
    assert proxies.own_origin(behind.clone(remote="198.51.100.7")) == ("http", "127.0.0.1", 8080)
    assert origin_of("https://Stage.Example") == ("https", "stage.example", 443)
    assert origin_of("null") is None and origin_of("file:///x") is None and origin_of("http://[::1") is None


# -- the token ----------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_the_token_guards_every_api_route_outputs_events_and_metrics(guarded: RunningServer) -> None:
    guarded_routes = []
    for route in guarded.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or not needs_token(path):
            continue
        guarded_routes.append((route.method, _concrete(path)))
    assert ("GET", "/api/streams/x/mjpeg") in guarded_routes and ("GET", "/metrics") in guarded_routes
    assert len(guarded_routes) > 25
    for method, path in guarded_routes:
        async with guarded.http.request(method, guarded.url(path), headers={"Authorization": "Bearer"}) as response:
            assert response.status in (401, 429), (method, path, response.status)
            assert response.headers.get("WWW-Authenticate", "Bearer").startswith("Bearer")
    # The wrong tries above spent this client's burst: another wrong one waits a while ...
    async with guarded.http.get(guarded.url("/api/settings"), headers={"Authorization": "Bearer no"}) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
    # ... but the right token is never locked out.
    async with guarded.http.get(guarded.url("/api/settings"), headers=BEARER) as response:
        assert response.status == 200


async def test_the_token_opens_what_it_guards(guarded: RunningServer) -> None:
    for path in ("/api/settings", "/api/streams", "/api/stats", "/api/client-config", "/api/jobs", "/metrics"):
        async with guarded.http.get(guarded.url(path), headers=BEARER) as response:
            assert response.status == 200, path
    # ?token= for what a browser cannot give a header to (an <img>, a WebSocket) ...
    async with guarded.http.get(guarded.url("/api/streams/nobody/mjpeg"), params={"token": TOKEN}) as response:
        assert response.status == 404  # past the guard: the stream is unknown
    async with guarded.http.ws_connect(guarded.url("/api/events"), params={"token": TOKEN}):
        await eventually(lambda: guarded.app[keys.EVENTS].listeners == 1)
    # ... but never for a change.
    async with guarded.http.post(guarded.url("/api/strength"), json={"strength": 0.1}, params={"token": TOKEN}) as r:
        assert r.status == 401
    async with guarded.http.post(guarded.url("/api/strength"), json={"strength": 0.1}, headers=BEARER) as r:
        assert r.status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with guarded.http.ws_connect(guarded.url("/api/events")):
            pass
    assert refused.value.status == 401


async def test_the_page_probes_and_docs_stay_open(guarded: RunningServer) -> None:
    for path in ("/", "/monitor", "/static/js/api.js", "/health", "/readyz"):
        async with guarded.http.get(guarded.url(path)) as response:
            assert response.status in (200, 503), path  # /readyz: 503 while the model loads


async def test_wrong_tokens_are_slowed_per_client_behind_a_trusted_proxy(make_config: Callable[..., Config]) -> None:
    security = {"api_token": TOKEN, "auth_fail_burst": 3, "auth_fail_per_s": 0.01}
    running = await start_server(
        make_config(security=security, server={"trusted_proxies": ["127.0.0.0/8"]}, engine={"warmup": False}),
        ready=False,
    )
    try:
        guesser = {"X-Forwarded-For": "203.0.113.5", "Authorization": "Bearer guess"}
        statuses = []
        for _ in range(6):
            async with running.http.get(running.url("/api/settings"), headers=guesser) as response:
                statuses.append(response.status)
        assert statuses == [401, 401, 401, 429, 429, 429]
        # The right token from the same address always passes (only failures count: a guesser behind
        # the operator's NAT must not lock the operator out), and starts the count over.
        operator = {"X-Forwarded-For": "203.0.113.5"} | BEARER
        async with running.http.get(running.url("/api/settings"), headers=operator) as response:
            assert response.status == 200
        statuses = []
        for _ in range(4):
            async with running.http.get(running.url("/api/settings"), headers=guesser) as response:
                statuses.append(response.status)
        assert statuses == [401, 401, 401, 429]
        # Another client behind the same proxy (the proxy's own hop appended) is served.
        other = {"X-Forwarded-For": "203.0.113.6, 127.0.0.1"} | BEARER
        async with running.http.get(running.url("/api/settings"), headers=other) as response:
            assert response.status == 200
    finally:
        await stop_server(running)


async def test_forwarded_for_is_ignored_from_untrusted_peers(make_config: Callable[..., Config]) -> None:
    running = await start_server(
        make_config(security={"rate_limit_per_s": 0.01, "rate_limit_burst": 2}, engine={"warmup": False}), ready=False
    )
    try:
        statuses = []
        for hop in range(4):  # a different claimed client each time: all one client, the peer
            headers = {"X-Forwarded-For": f"203.0.113.{hop}"}
            async with running.http.post(running.url("/api/strength"), json={"strength": 0.2}, headers=headers) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 429, 429]
    finally:
        await stop_server(running)


def test_client_address_walks_the_forwarding_chain() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    request = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.0.0.5"})
    assert proxies.client(request.clone(remote="10.0.0.1")) == "203.0.113.9"
    assert proxies.client(request.clone(remote="192.0.2.77")) == "192.0.2.77"
    assert proxies.client(make_mocked_request("GET", "/").clone(remote="::1")) == "::1"


def test_the_access_log_names_the_client_and_hides_the_token(caplog: pytest.LogCaptureFixture) -> None:
    request = make_mocked_request("GET", f"/api/streams/abc/mjpeg?fps=5&token={TOKEN}")
    request[keys.CLIENT] = "203.0.113.9"
    logger = logging.getLogger("test.access")
    with caplog.at_level(logging.INFO, logger="test.access"):
        AccessLog(logger, "").log(request, web.Response(status=200), 0.25)
    line = caplog.records[-1].getMessage()
    assert line.startswith('203.0.113.9 "GET /api/streams/abc/mjpeg?fps=5&token=***" 200 ')
    assert TOKEN not in line


async def test_a_server_beyond_loopback_without_a_token_warns_at_start(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    assert exposure_warning(make_config()) is None
    assert exposure_warning(make_config(server={"host": "0.0.0.0"}, security={"api_token": "t"})) is None
    exposed = make_config(server={"host": "0.0.0.0"}, engine={"warmup": False})
    with caplog.at_level(logging.WARNING, logger="server.http.wiring"):
        # The test server binds loopback whatever the config says; the warning reads the config.
        running = await start_server(exposed, ready=False)
        await stop_server(running)
    warnings = [r.getMessage() for r in caplog.records if r.name == "server.http.wiring"]
    assert len(warnings) == 1 and "without [security] api_token" in warnings[0]


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    with pytest.raises(ConfigError, match=r"\[server\] trusted_proxies"):
        load_config(env={}, overrides={"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.example"]}})
    assert load_config(env={}, overrides={"server": {"trusted_proxies": ["::1", "10.0.0.0/8"]}})
