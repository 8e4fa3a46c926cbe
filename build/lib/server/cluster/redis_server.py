"""A redis-server process of this server's own (Debian's `redis-server` package), its data in a folder.

A `--workers N` front without `[cluster] redis_url` runs one on a Unix socket under the data dir;
the tests and `bench.cluster` run one on a free TCP port. Its append-only file keeps the cluster's
settings, presets and jobs across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.children import stop_child

logger = logging.getLogger(__name__)

BINARY = "redis-server"
# A Unix socket path must fit in sockaddr_un (108 bytes on Linux).
MAX_SOCKET_PATH = 100


class RedisNotStarted(Exception):
    """redis-server is missing, or did not answer in time; the message says which and what to do."""


def socket_path(folder: Path) -> Path:
    """Where the private Redis listens: in `folder`, or in the temp dir when that path is too long."""
    path = folder.resolve() / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"stylize-redis-{digest}.sock"


class RedisServer:
    def __init__(self, folder: Path, *, port: int = 0, unix_socket: Path | None = None) -> None:
        self.folder = folder
        self.port = port
        self.unix_socket = unix_socket
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, within_s: float = 10.0) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            raise RedisNotStarted(
                f"{BINARY} not found: install it (Debian: apt-get install redis-server, or make system-deps), "
                "or point [cluster] redis_url at a running Redis"
            )
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder.resolve())]
        command += ["--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", "redis.log"]
        if self.unix_socket is not None:
            command += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        self._process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1.0)
        try:
            async with asyncio.timeout(within_s):
                while not await _answers(client):
                    if self._process.returncode is not None:
                        raise RedisNotStarted(
                            f"{BINARY} exited with {self._process.returncode}: see {self.folder / 'redis.log'}"
                        )
                    await asyncio.sleep(0.05)
        except TimeoutError as e:
            await self.stop()
            log = self.folder / "redis.log"
            raise RedisNotStarted(f"{BINARY} did not answer within {within_s:g} s: see {log}") from e
        finally:
            await client.aclose()
        logger.info("redis-server pid=%d at %s, data in %s", self._process.pid, self.url, self.folder)

    async def wait(self) -> int | None:
        """Until the process exits (its exit status), or None when none runs."""
        process = self._process
        return None if process is None else await process.wait()

    async def stop(self) -> None:
        """SIGTERM (Redis writes its append-only file out and exits), then wait for it."""
        process, self._process = self._process, None
        if process is not None:
            await stop_child(process, 30)


async def _answers(client: aioredis.Redis) -> bool:
    with contextlib.suppress(RedisError, OSError):
        return bool(await client.ping())
    return False
