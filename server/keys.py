"""The core app state every room may read, declared once as typed `web.AppKey`s.

Each room declares the keys of the state it creates in its own `keys` module, and reads only those
and these (tests/test_layout.py checks it). What a room needs from another is handed in by the
composition root (`server/app.py`) through a key of the needing room's own. The core is what the
root makes before any room: the config, this process's place in the deployment, the database, the
engine, and the three buses every room uses (settings, events, metrics), whose implementation the
topology decides (in-process, or Redis in a cluster); and per request, the client's address.

The types are imported for the type checker only, so importing this module loads nothing but aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from server.config import Config
    from server.control.events import EventHub
    from server.control.settings import SettingsStore
    from server.db import Database
    from server.engine_service import EngineStatus
    from server.observe.metrics import Metrics
    from server.topology import Topology

CONFIG: web.AppKey[Config] = web.AppKey("config")
TOPOLOGY: web.AppKey[Topology] = web.AppKey("topology")
DB: web.AppKey[Database] = web.AppKey("db")
# The local engine service, or on a cluster's front its view of the workers' engines.
ENGINE: web.AppKey[EngineStatus] = web.AppKey("engine")
SETTINGS: web.AppKey[SettingsStore] = web.AppKey("settings")
EVENTS: web.AppKey[EventHub] = web.AppKey("events")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")


class Relay(Protocol):
    """The client for the other nodes of a cluster (`server.http.relay.Relay`): a request whose file
    or stream lives on another node is answered from there."""

    here: str  # this node's own URL

    async def forward(self, request: web.Request, base_url: str, body: bytes | None = None) -> web.StreamResponse: ...


# Only in a cluster: the client for the other nodes (files and routes that live elsewhere).
RELAY: web.AppKey[Relay] = web.AppKey("relay")

# Per request: the client's address as the security middleware found it (a trusted proxy's
# X-Forwarded-For believed); the live room's admission counts attempts by it.
CLIENT: web.RequestKey[str] = web.RequestKey("client")
