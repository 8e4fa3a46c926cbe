"""`python -m server --workers N`: this process is the front; it starts N worker processes on this
box, each pinned to a GPU (`CUDA_VISIBLE_DEVICES`, round robin: N above the GPU count puts two or
more on one), and, without `[cluster] redis_url`, a private redis-server on a Unix socket under the
data dir. `auto` is one worker per visible GPU (one on a CPU machine), counted by torch in a
subprocess: the front never imports torch (nor counts, with `[model] device = "cpu"`).

Each worker is `python -m server` with this front's whole configuration in its environment
(`STYLIZE_<SECTION>_<KEY>`), as the worker role on 127.0.0.1 (only the front talks to its HTTP
API; browsers reach its media directly over ICE). A worker that exits is started again after a
back-off (1 s doubling to 30 s), and so is the private redis-server (killed, it took the cluster's
bus with it for good: the front's changes never reached a worker again); stopping the front stops
them, then Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from server.children import stop_child
from server.cluster.redis_server import RedisNotStarted, RedisServer, socket_path
from server.config import ENV_ALIASES, ROOT, Config

logger = logging.getLogger(__name__)

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
# A worker that ran this long before it exited is restarted after the first back-off again.
STABLE_S = 60.0
STOP_WAIT_S = 30.0


def private_redis_folder(config: Config) -> Path:
    return Path(config.server.data_dir) / "redis"


def private_redis_url(config: Config) -> str:
    """The Redis a `--workers N` front without `redis_url` runs for its workers."""
    return f"unix://{socket_path(private_redis_folder(config))}"


def environment(config: Config) -> dict[str, str]:
    """`config` as `STYLIZE_<SECTION>_<KEY>` variables: a child process loads exactly it back."""
    variables = {}
    for section, values in config.model_dump(mode="json").items():
        for key, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            variables[f"STYLIZE_{section}_{key}".upper()] = text
    return variables


def gpu_count() -> int:
    """Visible CUDA devices, asked of torch in a process of its own (0 where torch sees none)."""
    import subprocess

    try:
        found = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return int(found.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as e:
        logger.warning("could not count GPUs (%s): one worker", e)
        return 0


class LocalCluster:
    def __init__(self, config: Config) -> None:
        self._config = config
        self.redis = (
            None
            if config.cluster.redis_url
            else RedisServer(private_redis_folder(config), unix_socket=socket_path(private_redis_folder(config)))
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.redis is not None:
            await self.redis.start()
            self._tasks.append(asyncio.create_task(self._keep_redis(self.redis), name="private-redis"))
        gpus = 0 if self._config.model.device == "cpu" else await asyncio.to_thread(gpu_count)
        workers = self._config.cluster.workers
        count = max(1, gpus) if workers == "auto" else int(workers)
        logger.info("starting %d worker(s) on this box%s", count, f" over {gpus} GPU(s)" if gpus else " (CPU)")
        for index in range(count):
            device = str(index % gpus) if gpus else None
            self._tasks.append(asyncio.create_task(self._keep(index, device), name=f"worker-{index}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            await self.redis.stop()

    async def _keep(self, index: int, device: str | None) -> None:
        """Run worker `index`, again after a back-off whenever it exits; stop it when cancelled."""
        port = self._port(index)
        attempt = 0
        while True:
            started = time.monotonic()
            process = await self._spawn(index, port, device)
            try:
                code = await process.wait()
            except asyncio.CancelledError:
                await stop_child(process, STOP_WAIT_S)
                raise
            attempt = 0 if time.monotonic() - started > STABLE_S else attempt + 1
            delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** max(0, attempt - 1))
            logger.warning("worker %d (pid %d) exited with %s; again in %g s", index, process.pid, code, delay)
            await asyncio.sleep(delay)

    async def _keep_redis(self, redis: RedisServer) -> None:
        """Start the private redis-server again after a back-off whenever it exits; cancelled, leave it to `stop`."""
        attempt = 0
        while True:
            started = time.monotonic()
            code = await redis.wait()
            attempt = 0 if time.monotonic() - started > STABLE_S else attempt + 1
            delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** max(0, attempt - 1))
            logger.warning("redis-server exited with %s; again in %g s", code, delay)
            await asyncio.sleep(delay)
            try:
                await redis.start()
            except RedisNotStarted as e:
                logger.warning("redis-server did not start again: %s", e)

    def _port(self, index: int) -> int:
        base = self._config.cluster.worker_port
        if base:
            return base + index
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    async def _spawn(self, index: int, port: int, device: str | None) -> asyncio.subprocess.Process:
        inherited = {name: value for name, value in os.environ.items() if name not in ENV_ALIASES}
        variables: dict[str, Any] = {**inherited, **environment(self._config)}
        variables.update(
            STYLIZE_CLUSTER_ROLE="worker",
            STYLIZE_CLUSTER_WORKERS="0",
            STYLIZE_CLUSTER_REDIS_URL=self._config.cluster.redis_url or private_redis_url(self._config),
            STYLIZE_CLUSTER_NODE_ID="",
            STYLIZE_CLUSTER_ADVERTISE_URL="",
            STYLIZE_SERVER_HOST="127.0.0.1",
            STYLIZE_SERVER_PORT=str(port),
            STYLIZE_OSC_ENABLED="false",
        )
        if device is not None:
            variables["CUDA_VISIBLE_DEVICES"] = device
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "server", cwd=ROOT, env=variables)
        logger.info("worker %d pid=%d on 127.0.0.1:%d%s", index, process.pid, port, f" GPU {device}" if device else "")
        return process
