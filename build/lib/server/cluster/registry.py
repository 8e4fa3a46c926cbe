"""The cluster's nodes, as Redis knows them: each node writes its entry every `[cluster] heartbeat_s`
with a time to live of `node_ttl_s`, so a node that stops (SIGKILLed, its machine gone) drops out
of every node's view within that time.

- `<p>:node:<id>`: the node's entry as JSON (id, instance, role, url, host, pid, started,
  last_seen, and for a worker its load: device, engine state, streams, max_peers, fps, busy).
- `<p>:nodes`: the ids that have entries (cleaned of expired ones as they are read).

Every node reads the view on each beat; streams whose worker instance has left it are closed for
the cluster (`ReplicatedSettings.reap`) and the node that won each removal tells `/api/events` the
stream is down ("worker lost"), so the page reconnects and lands on a live worker. While Redis is
unreachable the last view is kept (the workers it names still serve) and nothing is reaped.

An entry is believed only as `server.cluster.trust.node_entry` reads it (well formed; signed with
the cluster's secret when there is one); one that is not is left out of the view and logged once,
and the others are read as before: one bad value never stops a node's beat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Pipeline

from server.cluster.identity import NodeIdentity
from server.cluster.link import ERRORS, RedisLink, texts
from server.cluster.replicated_settings import ReplicatedSettings
from server.cluster.trust import Untrusted, node_entry, signed
from server.config import ClusterConfig
from server.control.events import EventHub, StreamEvent

logger = logging.getLogger(__name__)

LOST = "worker lost"


class Registry:
    def __init__(
        self,
        link: RedisLink,
        identity: NodeIdentity,
        config: ClusterConfig,
        settings: ReplicatedSettings,
        events: EventHub,
        secret: str = "",
    ) -> None:
        self._link = link
        self._secret = secret.encode()  # the cluster's shared token: entries are signed with it
        self._refused: dict[str, str] = {}  # node id -> the entry refused (logged once, again if it changes)
        self._identity = identity
        self._config = config
        self._settings = settings
        self._events = events
        self._nodes_key = link.key("nodes")
        self.describe: Callable[[], dict[str, Any]] = dict  # this node's load, set by whoever knows it
        self.on_view: list[Callable[[list[dict[str, Any]]], None]] = []
        self.nodes: list[dict[str, Any]] = []  # the last view read, every node's entry, by id
        self.read_at: float | None = None  # wall-clock time of that view
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        link.on_connect(self.beat)

    def urls(self) -> set[str]:
        """Where the nodes in the view are: the only addresses the cluster's token is sent to."""
        return {node["url"] for node in self.nodes}

    def workers(self) -> list[dict[str, Any]]:
        return [node for node in self.nodes if node.get("role") == "worker"]

    def worker(self, node_id: str) -> dict[str, Any] | None:
        return next((node for node in self.workers() if node["id"] == node_id), None)

    def entry(self) -> dict[str, Any]:
        me = self._identity
        return {
            "id": me.id,
            "instance": me.instance,
            "role": me.role,
            "url": me.url,
            "host": me.host,
            "pid": me.pid,
            "started": me.started,
            "last_seen": time.time(),
            **self.describe(),
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-registry")

    async def close(self) -> None:
        """Stop beating and leave the view at once (a stopped node is not waited out)."""
        self._closing = True  # as well as the cancel, which a Redis call under way may swallow
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._link.up:
            key, node_id = self._link.key("node", self._identity.id), self._identity.id

            def leave(pipe: Pipeline) -> None:
                pipe.delete(key)
                pipe.srem(self._nodes_key, node_id)

            try:
                await self._link.transaction(leave)
            except ERRORS as e:
                logger.warning("could not leave the view (%s): it expires in %g s", e, self._config.node_ttl_s)

    async def _run(self) -> None:
        while not self._closing:
            if self._link.up:
                try:
                    await self.beat()
                    await self.refresh()
                except ERRORS as e:
                    logger.debug("registry beat failed: %s", e)
            await asyncio.sleep(self._config.heartbeat_s)

    async def beat(self) -> None:
        entry = json.dumps(signed(self.entry(), self._secret))
        key, node_id = self._link.key("node", self._identity.id), self._identity.id
        ttl_ms = int(self._config.node_ttl_s * 1000)

        def write(pipe: Pipeline) -> None:
            pipe.set(key, entry, px=ttl_ms)
            pipe.sadd(self._nodes_key, node_id)

        await self._link.transaction(write)

    def _believed(self, node_id: str, raw: Any) -> dict[str, Any] | None:
        if raw is None:
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        try:
            entry = node_entry(text, self._secret)
            if entry["id"] != node_id:
                raise Untrusted(f"it names node {entry['id']!r}")
        except Untrusted as e:
            if self._refused.get(node_id) != text:
                self._refused[node_id] = text
                logger.error("node entry %s in Redis refused: %s", node_id, e)
            return None
        self._refused.pop(node_id, None)
        return entry

    async def refresh(self) -> list[dict[str, Any]]:
        """Read every node's entry; close the streams of workers that left."""
        redis = self._link.redis
        ids = sorted(texts(await redis.smembers(self._nodes_key)))
        entries = await redis.mget([self._link.key("node", node_id) for node_id in ids]) if ids else []
        gone = [node_id for node_id, entry in zip(ids, entries, strict=True) if entry is None]
        if gone:
            await redis.srem(self._nodes_key, *gone)
        self.nodes = [
            node
            for node in (self._believed(node_id, entry) for node_id, entry in zip(ids, entries, strict=True))
            if node is not None
        ]
        self.read_at = time.time()
        for listener in self.on_view:
            listener(self.nodes)
        alive = {node["instance"] for node in self.workers()}
        for stream_id, name in await self._settings.reap(alive):
            logger.info("stream down stream=%s name=%s reason=%s", stream_id, name, LOST)
            streams = len(self._settings.streams())
            self._events.publish(StreamEvent(action="down", stream_id=stream_id, reason=LOST, streams=streams))
        return self.nodes
