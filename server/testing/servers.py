"""Servers for tests and benchmarks: the app in this process on real sockets, or `python -m server`
as a process of its own (what a benchmark must use: a load generator never shares the server's GIL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.children import stop_child
from server.config import ROOT, Config
from server.http import keys as http_keys
from server.testing.waiting import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(http: aiohttp.ClientSession, url: str, within_s: float = 120.0) -> None:
    """Poll `<url>/readyz` until the server has its model loaded and warmed up."""

    async def ready() -> bool:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(f"{url}/readyz") as response:
                return response.status == 200
        return False

    await eventually(ready, within_s, interval=0.05, what=f"{url}/readyz answering 200")


# -- in this process ---------------------------------------------------------------------------


class RunningServer:
    """`create_app(config)` served on a real socket, with an HTTP client session for it."""

    def __init__(self, app: web.Application, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.app = app
        self.server = server
        self.http = http

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A JSON request (`body` sent as JSON unless None): the status and the decoded answer."""
        async with self.http.request(method, self.url(path), json=body) as response:
            return response.status, await response.json()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        await wait_ready(self.http, self.url("").rstrip("/"), timeout)


async def start_server(config: Config, *, ready: bool = True) -> RunningServer:
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1", port=config.server.port or None)
    await server.start_server()
    # Imported here: the contract check needs the test tools (jsonschema), the benchmarks do not.
    from server.testing.contract import checked_session

    running = RunningServer(app, server, checked_session(lambda: app.get(http_keys.OPENAPI)))
    if ready:
        await running.wait_ready()
    return running


async def stop_server(running: RunningServer) -> None:
    await running.http.close()
    await running.server.close()


# -- as a process of its own -------------------------------------------------------------------


def on_cpus(cpus: set[int] | None) -> Callable[[], None] | None:
    """A child's pre-exec step that keeps it (and every thread it starts) on `cpus`; None: anywhere."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    url: str  # http://127.0.0.1:<port>


@contextlib.asynccontextmanager
async def server_process(
    data_dir: Path,
    log: Path,
    *,
    model: str = "tiny",
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    cpus: set[int] | None = None,
    cwd: Path = ROOT,
) -> AsyncIterator[ServerProcess]:
    """Start a server on `data_dir` (OSC off, output appended to `log`, on `cpus` when given, in `cwd`);
    stopped and reaped on the way out."""
    port = port or free_port()
    variables = {**os.environ, "STYLIZE_OSC_ENABLED": "false", **(env or {})}
    command = [sys.executable, "-m", "server", "--model", model, "--data-dir", str(data_dir), "--port", str(port)]
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=variables, stdout=output, stderr=output, preexec_fn=on_cpus(cpus)
        )
    try:
        scheme = "https" if variables.get("STYLIZE_SERVER_TLS_CERT") else "http"
        yield ServerProcess(process, f"{scheme}://127.0.0.1:{port}")
    finally:
        await stop_child(process, 30)
