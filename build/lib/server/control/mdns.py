"""mDNS (zeroconf) advertisement of the OSCQuery server (`_oscjson._tcp`) and OSC (`_osc._udp`).

With `[osc] mdns = true` (and an OSCQuery port), TouchDesigner, Chataigne, Vezér and TouchOSC list
this server without anyone typing an address. The addresses advertised are the OSC host's: every
interface's when it listens on all of them (0.0.0.0), else that one address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, get_all_addresses
from zeroconf.asyncio import AsyncZeroconf

logger = logging.getLogger(__name__)

OSCQUERY_SERVICE = "_oscjson._tcp.local."
OSC_SERVICE = "_osc._udp.local."
WILDCARDS = ("", "0.0.0.0", "::")


def advertised_addresses(host: str) -> list[str]:
    """The IPv4 addresses to advertise for a listener bound to `host`."""
    if host in WILDCARDS:
        return [address for address in get_all_addresses() if not ipaddress.ip_address(address).is_loopback]
    return [host]


def service_infos(host: str, query_port: int, osc_port: int, machine: str | None = None) -> list[ServiceInfo]:
    """The records to announce: OSCQuery's HTTP port and the OSC UDP port, under one instance name."""
    machine = (machine or socket.gethostname()).split(".")[0] or "stylize"
    instance = f"Stylize on {machine}"[:63]
    addresses = [socket.inet_aton(address) for address in advertised_addresses(host)]
    return [
        ServiceInfo(service, f"{instance}.{service}", port=port, addresses=addresses, server=f"{machine}.local.")
        for service, port in ((OSCQUERY_SERVICE, query_port), (OSC_SERVICE, osc_port))
    ]


class MdnsAdvertiser:
    def __init__(self, host: str, infos: list[ServiceInfo]) -> None:
        self._interfaces = InterfaceChoice.All if host in WILDCARDS else [host]
        self._infos = infos
        self._zeroconf: AsyncZeroconf | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Announce in the background: probing the name takes a second or two, nobody needs to wait."""
        self._zeroconf = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        self._task = asyncio.create_task(self._register(self._zeroconf), name="mdns-register")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._zeroconf is not None:
            await self._zeroconf.async_unregister_all_services()
            await self._zeroconf.async_close()

    async def _register(self, zeroconf: AsyncZeroconf) -> None:
        for info in self._infos:
            try:
                await (await zeroconf.async_register_service(info, allow_name_change=True))
            except Exception:
                logger.exception("mDNS: announcing %s failed", info.name)
                continue
            logger.info("mDNS: announced %s on port %d", info.name, info.port)
