"""OSC both ways: every settings change, from any source, goes out as the same `/stylize/...` messages.

A TouchOSC fader or a TouchDesigner panel then follows changes made on the page, over HTTP, by a
preset or by another controller. Targets are `[osc] feedback` ("host:port") and every controller
that sent `/stylize/feedback/subscribe i` (its source address, port i; `.../unsubscribe i` stops
it). A controller that just subscribed gets the current global settings at once.

Per target and address at most `[osc] feedback_rate_hz` messages a second go out, the latest value
winning (a dragged slider does not flood a phone). A change that came over OSC is not sent back to
its sender: not to a target at the sender's own address and port, nor to what the sender subscribed.
Presets stepped over OSC are sent back (the sender does not know the values they set). Sending is a
UDP socket of its own, never blocking the loop.

A UDP source address can be forged, so a subscribe must not turn into a reflector: the catch-up
(~300 bytes with the default prompt, ~8 times the subscribe, more with a long prompt) goes to a host
at most once per `CATCH_UP_INTERVAL_S`, and a host holds at most `MAX_SUBSCRIPTIONS_PER_HOST`
subscriptions. Forty forged subscribes naming eight ports of one victim were answered with 8.1 times
the bytes they took, now with 0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from server.config import split_host_port
from server.control.osc import OscRejected
from server.control.osc_namespace import current_messages, encode, messages
from server.control.settings import SettingsChange, SettingsStore

logger = logging.getLogger(__name__)

Address = tuple[str, int]  # (IP, UDP port)
SUBSCRIBE, UNSUBSCRIBE = "feedback/subscribe", "feedback/unsubscribe"
# Subscriptions kept at most; the oldest is dropped past it (a sender cannot grow the table forever).
MAX_SUBSCRIPTIONS = 64
# Subscriptions one host may hold (a controller or two per machine); its oldest goes past it.
MAX_SUBSCRIPTIONS_PER_HOST = 4
# A host is sent the current settings on subscribing at most this often (the rest hear changes only).
CATCH_UP_INTERVAL_S = 10.0


def normal(host: str) -> str:
    """One spelling per address: "::ffff:10.0.0.5" and "10.0.0.5" are the same controller."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class OscFeedback:
    def __init__(
        self,
        targets: list[str],
        rate_hz: float,
        settings: SettingsStore,
        sender: Callable[[], Address | None],
    ) -> None:
        """`sender()` is the source of the OSC datagram being applied now (`OscListener.sender`)."""
        self._configured = targets
        self._period = 1.0 / rate_hz
        self._settings = settings
        self._sender = sender
        self._static: list[Address] = []
        self._subscribed: OrderedDict[Address, Address] = OrderedDict()  # sender -> where it listens
        self._pending: dict[Address, dict[str, Any]] = {}  # target -> address -> latest value
        self._last_sent: dict[tuple[Address, str], float] = {}
        self._caught_up: dict[str, float] = {}  # host -> loop time of its last catch-up
        self._wake = asyncio.Event()
        self._transports: dict[int, asyncio.DatagramTransport] = {}  # by address family
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    @property
    def targets(self) -> list[Address]:
        return list(dict.fromkeys([*self._static, *self._subscribed.values()]))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for entry in self._configured:
            host, port = split_host_port(entry)
            try:
                found = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as e:
                logger.warning("OSC feedback target %s cannot be resolved (%s): left out", entry, e)
                continue
            self._static.append((normal(str(found[0][4][0])), port))
        for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            with contextlib.suppress(OSError):  # a machine without IPv6 sends to IPv4 targets only
                transport, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=(wildcard, 0), family=family
                )
                self._transports[family] = transport
        self._task = asyncio.create_task(self._run(), name="osc-feedback")
        if self._static:
            logger.info("OSC feedback to %s", ", ".join(f"{h}:{p}" for h, p in self._static))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for transport in self._transports.values():
            transport.close()

    # -- what to send --------------------------------------------------------------------------

    def changed(self, change: SettingsChange) -> None:
        """A `SettingsStore` listener: queue the change for every target but its sender's."""
        sent_by = self._sender() if change.source == "osc" and not change.remote else None
        origin = (normal(sent_by[0]), sent_by[1]) if sent_by is not None else None
        echo = {origin, self._subscribed.get(origin)} if origin is not None else set()
        update = messages(change)
        for target in self.targets:
            if target not in echo:
                self._pending.setdefault(target, {}).update(update)
        self._wake.set()

    def handle(self, name: str, args: list[Any]) -> bool:
        """`/stylize/feedback/subscribe i` and `.../unsubscribe i` from the OSC listener; False for others."""
        if name not in (SUBSCRIBE, UNSUBSCRIBE):
            return False
        sender = self._sender()
        port = args[0] if len(args) == 1 else None
        if isinstance(port, float) and port.is_integer():
            port = int(port)
        if sender is None or isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise OscRejected(f"/stylize/{name} takes one port number 1-65535, got {args!r}")
        source = (normal(sender[0]), sender[1])
        target = (source[0], port)
        if name == UNSUBSCRIBE:
            for key in [key for key, value in self._subscribed.items() if value == target]:
                del self._subscribed[key]
            self._pending.pop(target, None)
            logger.info("OSC feedback unsubscribed %s:%d", *target)
            return True
        self._subscribed.pop(source, None)
        self._subscribed[source] = target
        same_host = [key for key, value in self._subscribed.items() if value[0] == target[0]]
        for key in same_host[: max(0, len(same_host) - MAX_SUBSCRIPTIONS_PER_HOST)]:
            del self._subscribed[key]
        while len(self._subscribed) > MAX_SUBSCRIPTIONS:
            self._subscribed.popitem(last=False)
        now = asyncio.get_running_loop().time()
        if now - self._caught_up.get(target[0], -math.inf) >= CATCH_UP_INTERVAL_S:
            self._caught_up[target[0]] = now
            self._pending.setdefault(target, {}).update(current_messages(self._settings.global_settings))
            self._wake.set()
        for host in [host for host, when in self._caught_up.items() if now - when >= CATCH_UP_INTERVAL_S]:
            del self._caught_up[host]  # the table holds only hosts caught up lately
        logger.info("OSC feedback subscribed %s:%d (from port %d)", target[0], target[1], source[1])
        return True

    # -- sending -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = self._flush(asyncio.get_running_loop().time())
            if wait is not None:
                await asyncio.sleep(wait)
                self._wake.set()

    def _flush(self, now: float) -> float | None:
        """Send what is due; the seconds until the next held-back message is, or None."""
        due_next = math.inf
        for target, pending in list(self._pending.items()):
            for address in list(pending):
                due = self._last_sent.get((target, address), -math.inf) + self._period
                if due > now:
                    due_next = min(due_next, due)
                    continue
                self._send(target, address, pending.pop(address))
                self._last_sent[(target, address)] = now
            if not pending:
                del self._pending[target]
        for key in [key for key, when in self._last_sent.items() if when + self._period <= now]:
            del self._last_sent[key]  # long enough ago to be sent at once next time
        return None if due_next == math.inf else due_next - now

    def _send(self, target: Address, address: str, value: Any) -> None:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        transport = self._transports.get(family)
        if transport is None:
            return
        try:
            transport.sendto(encode(address, value), target)
            self.sent += 1
        except (OSError, ValueError) as e:
            logger.debug("OSC feedback to %s:%d failed: %s", target[0], target[1], e)
