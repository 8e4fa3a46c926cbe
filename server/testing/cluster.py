"""A cluster on this box for tests and benchmarks: a redis-server on a free port (its data in a folder),
worker processes and front processes (`python -m server --role ...`), each started, killed and
started again at will: on one shared data dir as `make cluster` runs them, or each node on a data
dir of its own, as on machines that share no disk."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from server.cluster.redis_server import RedisServer
from server.testing.servers import ServerProcess, free_port, server_process, wait_ready
from server.testing.waiting import eventually


@dataclass
class Node:
    role: str
    url: str
    port: int
    log: Path
    process: ServerProcess
    stack: contextlib.AsyncExitStack = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def kill(self) -> None:
        """SIGKILL: no goodbye, no clean-up (what a crash or the OOM killer does)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Stopped as an operator stops it (SIGTERM, then waited for), or reaped after a kill."""
        await self.stack.aclose()


class ClusterOnThisBox:
    def __init__(
        self,
        root: Path,
        data_dir: Path,
        *,
        model: str = "tiny",
        env: Mapping[str, str] | None = None,
        prefix: str = "stylize",
    ) -> None:
        self.root = root
        self.data_dir = data_dir
        self.model = model
        self.redis = RedisServer(root / "redis", port=free_port())
        self.env = {
            "STYLIZE_CLUSTER_REDIS_URL": self.redis.url,
            "STYLIZE_CLUSTER_PREFIX": prefix,
            "STYLIZE_SECURITY_RATE_LIMIT_PER_S": "0",
            **(env or {}),
        }
        self.nodes: list[Node] = []

    async def start_redis(self, folder: Path | None = None) -> None:
        """Start (or start again) the cluster's Redis on its port, its data in `folder` (default: as before)."""
        if folder is not None:
            self.redis.folder = folder
        await self.redis.start()

    async def start(
        self,
        role: str,
        *,
        port: int | None = None,
        ready: bool = True,
        env: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        model: str | None = None,
    ) -> Node:
        """A worker or a front as a process of its own (running `model`, default the box's); waited for
        until its /readyz says 200."""
        stack = contextlib.AsyncExitStack()
        port = port or free_port()
        log = self.root / f"{role}-{port}.log"
        variables = {**self.env, "STYLIZE_CLUSTER_ROLE": role, **(env or {})}
        process = await stack.enter_async_context(
            server_process(data_dir or self.data_dir, log, model=model or self.model, env=variables, port=port)
        )
        node = Node(role, process.url, port, log, process, stack)
        self.nodes.append(node)
        if ready:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, node.url, within_s=120)
        return node

    def alive(self, role: str | None = None) -> list[Node]:
        return [n for n in self.nodes if n.process.process.returncode is None and role in (None, n.role)]

    async def stop(self, node: Node) -> None:
        await node.stop()
        self.nodes.remove(node)

    async def close(self) -> None:
        for node in list(reversed(self.nodes)):
            await self.stop(node)
        await self.redis.stop()


async def cluster_view(http: aiohttp.ClientSession, front: Node) -> dict[str, Any]:
    async with http.get(f"{front.url}/api/cluster") as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def workers_ready(http: aiohttp.ClientSession, front: Node, count: int, within_s: float = 60.0) -> list[Any]:
    """Wait until the front's view holds `count` ready workers; their entries."""

    async def ready() -> list[Any]:
        workers = (await cluster_view(http, front))["workers"]
        ready = [w for w in workers if w["state"] == "ready"]
        return ready if len(ready) == count else []

    found: list[Any] = await eventually(ready, within_s, interval=0.1, what=f"{count} ready workers")
    return found
