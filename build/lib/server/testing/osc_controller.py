"""A controller on real UDP sockets, as TouchOSC or TouchDesigner is: python-osc listens on `port` and
records every message that arrives; `send` goes out from a socket of its own (the server sees that
socket's address as the sender)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import AsyncIOOSCUDPServer

from server.testing.waiting import eventually


class OscController:
    def __init__(self, server_port: int, host: str = "127.0.0.1") -> None:
        self.messages: list[tuple[str, list[Any]]] = []
        self._host = host
        self._server = (host, server_port)
        self._sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._transport: asyncio.BaseTransport | None = None
        self.port = 0

    async def start(self) -> None:
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(lambda address, *args: self.messages.append((address, list(args))))
        server = AsyncIOOSCUDPServer((self._host, 0), dispatcher, asyncio.get_running_loop())  # type: ignore[arg-type]
        self._transport, _ = await server.create_serve_endpoint()
        self.port = int(self._transport.get_extra_info("sockname")[1])

    def send(self, address: str, *args: Any) -> None:
        message = OscMessageBuilder(address=address)
        for arg in args:
            message.add_arg(arg)
        self._sender.sendto(message.build().dgram, self._server)

    def received(self, address: str) -> list[list[Any]]:
        return [args for got, args in self.messages if got == address]

    async def wait_for(self, address: str, value: Any = None, timeout: float = 10.0) -> list[Any]:
        """The newest arguments `address` came with, once it came (with `value` first, if given)."""

        def arrived() -> list[Any] | None:
            found = [args for args in self.received(address) if value is None or _same(args[0], value)]
            return found[-1] if found else None

        found = await eventually(arrived, timeout, what=f"{address} {value!r} to arrive at the controller")
        assert found is not None
        return found

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._sender.close()


def _same(got: Any, wanted: Any) -> bool:
    """OSC floats are 32-bit: 0.3 comes back as 0.30000001192..."""
    if isinstance(wanted, float) and isinstance(got, float):
        return abs(got - wanted) < 1e-6
    return bool(got == wanted)
