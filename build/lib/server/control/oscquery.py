"""OSCQuery: what the OSC listener understands, as JSON over HTTP, with LISTEN over a WebSocket.

TouchDesigner, Chataigne and Vezér discover a server's parameters this way (the OSCQuery proposal,
vidvox/oscqueryproposal). It is an aiohttp site of its own on `[osc] host`, port `[osc] query_port`
(0, the default, leaves it off):

- `GET /` (or any path of the address space, `/stylize/strength`) is the JSON of that node and all
  under it; `?VALUE` (or `TYPE`, `RANGE`, `ACCESS`, `DESCRIPTION`, `FULL_PATH`, `CONTENTS`) only that
  attribute; `?HOST_INFO` the server: OSC port and transport, the extensions it has. An unknown path
  is 404, an attribute this server does not have 400.
- A WebSocket on the same port takes `{"COMMAND": "LISTEN", "DATA": "/stylize/strength"}` (and
  `IGNORE`) and sends each change of a listened value, whatever made it, as a binary OSC message.

Senders off `[osc] allow` get 403, as OSC drops their datagrams. So does a web page: controllers
send no `Origin`, browsers always do on a WebSocket (which no CORS guards) and on cross-site reads,
so any page open on the machine could LISTEN to the live prompt. A `Host` that is not an IP address,
a loopback name or `[osc] host` is refused too (a rebound name makes a page same-origin).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from server.config import OscConfig
from server.control.osc import OscListener
from server.control.osc_namespace import encode, find, namespace, value_at
from server.control.settings import SettingsChange, SettingsStore
from server.http.security import origin_of, rebind_proof

logger = logging.getLogger(__name__)

ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "VALUE", "RANGE", "ACCESS", "DESCRIPTION")
EXTENSIONS = {
    **{attribute: True for attribute in ("ACCESS", "VALUE", "RANGE", "DESCRIPTION", "LISTEN")},
    **{attribute: False for attribute in ("TAGS", "EXTENDED_TYPE", "UNIT", "CRITICAL", "CLIPMODE", "OVERLOADS")},
    **{event: False for event in ("PATH_CHANGED", "PATH_ADDED", "PATH_REMOVED", "PATH_RENAMED", "HTML")},
}
WILDCARDS = ("", "0.0.0.0", "::")
READABLE = 1  # the ACCESS bit for "may be retrieved"


class _Listening:
    """One WebSocket client: the paths it listens to, their last values sent, what waits to go."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.values: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}
        self.wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write(), name="oscquery-listen")

    async def close(self) -> None:
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        await self.ws.close()

    def update(self, store: SettingsStore) -> None:
        for path, last in self.values.items():
            now = value_at(store, path)
            if now is not None and now != last:
                self.values[path] = self.pending[path] = now
        if self.pending:
            self.wake.set()

    async def _write(self) -> None:
        """Send what changed, newest value per path: a slow client skips values, it never queues them."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            pending, self.pending = self.pending, {}
            for path, value in pending.items():
                await self.ws.send_bytes(encode(path, value))


class OscQueryServer:
    def __init__(
        self,
        config: OscConfig,
        settings: SettingsStore,
        osc: OscListener,
        preset_ids: Callable[[], Awaitable[list[str]]],
    ) -> None:
        self._config = config
        self._settings = settings
        self._osc = osc
        self._preset_ids = preset_ids
        self._clients: set[_Listening] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0  # the TCP port bound, known once started

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.query_port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        logger.info("OSCQuery on http://%s:%d/", self._config.host, self.port)

    async def close(self) -> None:
        for client in list(self._clients):
            await client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def changed(self, change: SettingsChange) -> None:
        """A `SettingsStore` listener: push listened values that this change moved."""
        for client in self._clients:
            client.update(self._settings)

    def listened(self) -> set[str]:
        """Every path some WebSocket client listens to now."""
        return {path for client in self._clients for path in client.values}

    def host_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "NAME": "Stylize",
            "EXTENSIONS": EXTENSIONS,
            "OSC_PORT": self._osc.port,
            "OSC_TRANSPORT": "UDP",
        }
        if self._config.host not in WILDCARDS:
            info["OSC_IP"] = self._config.host
        return info

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if not self._osc.allows(request.remote or ""):
            return web.json_response({"error": "forbidden", "detail": "not on [osc] allow"}, status=403)
        if "Origin" in request.headers:
            detail = {"origin": request.headers["Origin"], "why": "OSCQuery is for controllers, not web pages"}
            return web.json_response({"error": "forbidden", "detail": detail}, status=403)
        if not self._known_host(request.host):
            return web.json_response({"error": "host not allowed", "detail": request.host}, status=403)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._listen(request)
        if "HOST_INFO" in request.query:
            return web.json_response(self.host_info())
        tree = namespace(self._settings, self._settings.names(), await self._preset_ids())
        node = find(tree, request.path)
        if node is None:
            return web.json_response({"error": "no such path", "detail": request.path}, status=404)
        if not request.query:
            return web.json_response(node)
        attribute = next(iter(request.query))
        if attribute not in ATTRIBUTES:
            return web.json_response({"error": "attribute not supported", "detail": attribute}, status=400)
        if attribute == "VALUE" and not node.get("ACCESS", 0) & READABLE:
            return web.Response(status=204)
        return web.json_response({attribute: node[attribute]} if attribute in node else {})

    def _known_host(self, host_and_port: str) -> bool:
        origin = origin_of(f"http://{host_and_port}")
        if origin is None:
            return False
        host = origin[1].strip("[]")
        return rebind_proof(host) or host == self._config.host.lower()

    async def _listen(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        client = _Listening(ws)
        self._clients.add(client)
        try:
            await self._read_commands(client)
        finally:
            self._clients.discard(client)
            await client.close()
        return ws

    async def _read_commands(self, client: _Listening) -> None:
        """Until the client goes: its text messages are commands; binary OSC from it is not applied here
        (send OSC over UDP, like every controller)."""
        async for message in client.ws:
            if message.type == WSMsgType.TEXT:
                self._command(client, message.data)
            elif message.type == WSMsgType.ERROR:
                return

    def _command(self, client: _Listening, text: str) -> None:
        try:
            command = json.loads(text)
        except json.JSONDecodeError:
            return
        if not isinstance(command, dict) or not isinstance(command.get("DATA"), str):
            return
        path = command["DATA"]
        if command.get("COMMAND") == "LISTEN":
            value = value_at(self._settings, path)
            if value is not None:
                client.values[path] = value  # from here on, each change of it is sent
        elif command.get("COMMAND") == "IGNORE":
            client.values.pop(path, None)
            client.pending.pop(path, None)
