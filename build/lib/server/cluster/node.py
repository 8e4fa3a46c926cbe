"""One node's part in a cluster: the Redis-backed settings, events, presets and job queue the rooms
use in place of their single-process ones, its entry in the registry, its client for the other
nodes, and on a front the routing and the gathering of the workers' figures.

`app.py` makes one when `[cluster] role` is set and hands its parts to the rooms; nothing else
decides between the single-process and the cluster implementations.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp

from server.cluster.aggregate import merge_metrics, merge_stats
from server.cluster.events import ClusterEvents
from server.cluster.front import Front, WorkerEngines
from server.cluster.identity import NodeIdentity
from server.cluster.job_queue import RedisJobs
from server.cluster.link import RedisLink, redacted
from server.cluster.local import private_redis_url
from server.cluster.redis_presets import RedisPresets
from server.cluster.registry import Registry
from server.cluster.replicated_settings import ReplicatedSettings
from server.config import Config
from server.control.settings import StyleSettings
from server.http.relay import Relay
from server.jobs.store import Job

logger = logging.getLogger(__name__)

# How long a node waits for Redis at start-up before it serves on without (and keeps trying).
FIRST_CONNECT_S = 10.0
CHUNK_BYTES = 256 * 1024


class InputNotFetched(Exception):
    """A job's input could not be copied from the node that holds it."""


class ClusterNode:
    def __init__(self, config: Config, initial: StyleSettings) -> None:
        cluster = config.cluster
        self.config = config
        self.identity = NodeIdentity.from_config(config)
        self.link = RedisLink(cluster.redis_url or private_redis_url(config), cluster.prefix)
        # Each registers its (re)connection hook here, in this order: settings resync first.
        self.settings = ReplicatedSettings(initial, self.link, self.identity)
        self.events = ClusterEvents(self.link, self.identity.instance)
        self.presets = RedisPresets(self.link)
        self.jobs = RedisJobs(
            self.link, self.identity.id, self.identity.url, cluster.job_claim_timeout_s, self._node_urls
        )
        token = config.security.api_token  # every node's: the entries in the registry are signed with it
        self.registry = Registry(self.link, self.identity, cluster, self.settings, self.events, secret=token)
        self.relay = Relay(self.identity.url, config.security.api_token, cluster.relay_timeout_s)
        self.engines: WorkerEngines | None = None
        self.front: Front | None = None
        if cluster.role == "front":
            self.engines = WorkerEngines()
            self.registry.on_view.append(self.engines.update)
            self.front = Front(config, self.registry, self.settings, self.relay)

    def _node_urls(self) -> set[str]:
        """This node's address and those the registry believes: the only ones the token is sent to."""
        return self.registry.urls() | {self.identity.url}

    async def start(self) -> None:
        logger.info(
            "cluster node %s (%s) at %s, Redis %s",
            self.identity.id,
            self.identity.role,
            self.identity.url,
            redacted(self.link.url),
        )
        await self.relay.start()
        await self.link.start(FIRST_CONNECT_S)
        self.registry.start()

    async def close(self) -> None:
        await self.registry.close()
        await self.link.close()
        await self.relay.close()

    def describe(self) -> dict[str, Any]:
        """GET /api/cluster: this node, Redis, and every node in the last view."""
        nodes = self.registry.nodes
        return {
            "node": {"id": self.identity.id, "role": self.identity.role, "url": self.identity.url},
            "redis": {"url": redacted(self.link.url), "connected": self.link.up},
            "read_at": self.registry.read_at,
            "workers": [_public(node) for node in nodes if node.get("role") == "worker"],
            "fronts": [_public(node) for node in nodes if node.get("role") == "front"],
        }

    # -- a front's view of the workers ---------------------------------------------------------

    async def stats(self, local: dict[str, Any]) -> dict[str, Any]:
        if self.front is None:
            return local
        return merge_stats(local, await self.front.ask_workers("/api/stats"))

    async def metrics(self, local: bytes, accept: str) -> tuple[bytes, str] | None:
        if self.front is None:
            return None
        texts = await self.front.texts("/metrics", accept="text/plain")
        return await asyncio.to_thread(merge_metrics, local.decode(), texts, accept)

    # -- jobs ----------------------------------------------------------------------------------

    async def fetch_job_input(self, job: Job, path: Path) -> None:
        """Copy a job's upload from the node that received it (`JobWorker(fetch_input=...)`)."""
        if job.files_at is None or job.files_at == self.identity.url or job.files_at not in self._node_urls():
            raise InputNotFetched(f"job {job.id}: its input is not here and no other node holds it")
        url = f"{job.files_at}/api/jobs/{job.id}/input"
        partial = path.with_name(path.name + ".part")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        try:
            async with self.relay.session.get(url, headers=self.relay.headers()) as response:
                if response.status != 200:
                    raise InputNotFetched(f"job {job.id}: {url} answered {response.status}")
                with await asyncio.to_thread(partial.open, "wb") as out:
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        await asyncio.to_thread(out.write, chunk)
        except aiohttp.ClientError as e:
            raise InputNotFetched(f"job {job.id}: {url}: {e}") from e
        await asyncio.to_thread(partial.replace, path)
        logger.info("job %s: input fetched from %s", job.id, job.files_at)


def _public(node: dict[str, Any]) -> dict[str, Any]:
    """A registry entry as /api/cluster lists it (the engine's long description left to /api/stats)."""
    return {key: value for key, value in node.items() if key != "engine"}
