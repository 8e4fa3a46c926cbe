"""The cluster's bus (Redis) going away: a `--workers N` front starts its private redis-server again
like a worker, and while Redis is away a front answers 503 to changes that would reach no worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from server.cluster import keys as cluster_keys
from server.cluster.local import LocalCluster
from server.cluster.redis_server import RedisServer
from server.config import Config
from server.testing.servers import free_port, start_server, stop_server
from server.testing.waiting import eventually


async def _answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


async def test_a_killed_private_redis_is_started_again(make_config: Callable[..., Config]) -> None:
    config = make_config(cluster={"workers": 1})
    # The front's private Redis alone: no worker processes (a test needs none to see Redis come back).
    config = config.model_copy(update={"cluster": config.cluster.model_copy(update={"workers": 0})})
    local = LocalCluster(config)
    await local.start()
    try:
        redis = local.redis
        assert redis is not None and redis.pid is not None
        first = redis.pid
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: redis.pid not in (None, first), 15, what="a new redis-server")
        assert await eventually(lambda: _answers(redis.url), 10, what="the new redis-server answering")
    finally:
        await local.stop()


async def test_a_front_answers_503_to_changes_while_redis_is_away(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis", port=free_port())
    await redis.start()
    config = make_config(cluster={"role": "front", "redis_url": redis.url}, engine={"warmup": False})
    front = await start_server(config, ready=False)
    node = front.app[cluster_keys.CLUSTER]
    try:
        await eventually(lambda: node.link.up, 10, what="the front's link to Redis")
        assert (await front.call("PATCH", "/api/settings", {"strength": 0.3}))[0] == 200
        await redis.stop()
        await eventually(lambda: not node.link.up, 10, what="the front noticing Redis gone")
        status, answer = await front.call("PATCH", "/api/settings", {"strength": 0.7})
        assert (status, answer["error"]) == (503, "cluster bus down")
        assert (await front.call("GET", "/api/settings"))[0] == 200, "reads are answered from the last state"
        await redis.start()
        await eventually(lambda: node.link.up, 15, what="the front back on Redis")
        assert (await front.call("PATCH", "/api/settings", {"strength": 0.7}))[0] == 200
    finally:
        await stop_server(front)
        await redis.stop()
