"""`python -m server` as a real process on a free port, for tests and benchmarks that need one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    url: str  # http://127.0.0.1:<port>


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def server_process(
    data_dir: Path, log: Path, *, model: str = "tiny", env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Start a server on `data_dir` (OSC off, output appended to `log`); stopped and reaped on the way out."""
    port = free_port()
    variables = {**os.environ, "STYLIZE_OSC_ENABLED": "false", **(env or {})}
    command = [sys.executable, "-m", "server", "--model", model, "--data-dir", str(data_dir), "--port", str(port)]
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=variables, stdout=output, stderr=output)
    try:
        scheme = "https" if variables.get("STYLIZE_SERVER_TLS_CERT") else "http"
        yield ServerProcess(process, f"{scheme}://127.0.0.1:{port}")
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
        await process.wait()


async def wait_ready(http: aiohttp.ClientSession, url: str, within_s: float = 120.0) -> None:
    """Poll /readyz until the server has its model loaded and warmed up."""
    async with asyncio.timeout(within_s):
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
