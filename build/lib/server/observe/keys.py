"""The observe room's app state, and what it needs from the others (handed in by `server/app.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from server.observe.stats import StatsReporter, Stream


class Spanning(Protocol):
    """A cluster's view over its nodes: each merge returns the local figures as they are on a
    worker, and spanned over the workers on a front (None: keep the local metrics)."""

    async def stats(self, local: dict[str, Any]) -> dict[str, Any]: ...

    async def metrics(self, local: bytes, accept: str) -> tuple[bytes, str] | None: ...


STATS: web.AppKey[StatsReporter] = web.AppKey("observe.stats")

# Needs. The live streams of this process (none on a cluster's front).
STREAMS: web.AppKey[Callable[[], Iterable[Stream]]] = web.AppKey("observe.streams")
# How many times each preset was applied.
PRESET_USAGE: web.AppKey[Callable[[], Awaitable[dict[str, int]]]] = web.AppKey("observe.preset_usage")
# Only in a cluster.
SPANNING: web.AppKey[Spanning] = web.AppKey("observe.spanning")
