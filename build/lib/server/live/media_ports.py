"""`[transport] media_ports`: WebRTC media on a fixed UDP port range, for firewalls that open only it.

aiortc leaves ICE to aioice, which binds each host candidate's socket with
`loop.create_datagram_endpoint(lambda: StunProtocol(...), local_addr=(address, 0))`: an ephemeral
port, with no setting to choose it. So, as comfystream does on the same stack, the server's event
loop gets a `create_datagram_endpoint` of its own while the app runs: a socket aioice asks for on
port 0 is bound to the first free port of the range instead (counting on from the last one taken);
every other socket (OSC, STUN and TURN clients of other code) is left alone. With the range used up
the bind fails as aioice expects (`OSError`): it skips that address, and an offer with no candidate
fails to connect. Each connection takes one port per network address of the machine.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

from aioice.ice import StunProtocol

logger = logging.getLogger(__name__)

_ATTRIBUTE = "create_datagram_endpoint"


class MediaPorts:
    """Hands aioice's host sockets ports from `ports`, round-robin, skipping ones in use."""

    def __init__(self, ports: range) -> None:
        self.ports = ports
        self._next = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Bind aioice's sockets on `loop` in the range from now on; returns what puts the loop back."""
        had_own = _ATTRIBUTE in vars(loop)
        original = getattr(loop, _ATTRIBUTE)

        async def create_datagram_endpoint(
            protocol_factory: Callable[[], asyncio.BaseProtocol],
            local_addr: tuple[str, int] | None = None,
            **kwargs: Any,
        ) -> tuple[asyncio.DatagramTransport, asyncio.BaseProtocol]:
            if local_addr is None or local_addr[1] != 0:
                return await original(protocol_factory, local_addr=local_addr, **kwargs)
            protocol = protocol_factory()  # asyncio calls it once too; not yet connected, so reusable
            if not isinstance(protocol, StunProtocol):
                return await original(lambda: protocol, local_addr=local_addr, **kwargs)
            return await self._bind(original, protocol, local_addr[0], kwargs)

        setattr(loop, _ATTRIBUTE, create_datagram_endpoint)

        def uninstall() -> None:
            if had_own:
                setattr(loop, _ATTRIBUTE, original)
            else:
                delattr(loop, _ATTRIBUTE)

        return uninstall

    async def _bind(
        self, create: Any, protocol: StunProtocol, host: str, kwargs: dict[str, Any]
    ) -> tuple[asyncio.DatagramTransport, asyncio.BaseProtocol]:
        for _ in range(len(self.ports)):
            port = self.ports[self._next]
            self._next = (self._next + 1) % len(self.ports)
            try:
                transport, bound = await create(lambda: protocol, local_addr=(host, port), **kwargs)
                return transport, bound
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        logger.warning(
            "no free UDP port for media on %s in [transport] media_ports %d-%d",
            host,
            self.ports.start,
            self.ports.stop - 1,
        )
        raise OSError(errno.EADDRINUSE, f"every port of media_ports {self.ports.start}-{self.ports.stop - 1} is in use")
