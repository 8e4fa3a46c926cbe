"""The cluster room's app state, and what it needs from the others (handed in by `server/app.py`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from server.cluster.node import ClusterNode

CLUSTER: web.AppKey[ClusterNode] = web.AppKey("cluster.node")

# Needs. How many live streams this node runs (its registry entry's load).
LIVE_STREAMS: web.AppKey[Callable[[], int]] = web.AppKey("cluster.live_streams")
