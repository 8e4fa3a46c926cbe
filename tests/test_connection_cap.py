"""Idle sockets cannot take the server's file descriptors: `python -m server` under a small
`ulimit -n`, more idle connections than the limit allows, and the server still answers, closing
idle connections to make room and saying so at most once a second."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from server.children import stop_child
from server.config import ROOT
from server.testing.servers import free_port
from server.testing.waiting import eventually

# Server processes of its own: run alone, after the rest (`make test`).
pytestmark = pytest.mark.heavy

SOFT_LIMIT = 400  # descriptors the server may open: its connection cap is this less a reserve of 256
IDLE_SOCKETS = 450  # more than the whole limit


def _small_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


async def test_idle_sockets_past_the_fd_limit_leave_the_server_answering(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "STYLIZE_OSC_ENABLED": "false", "STYLIZE_ENGINE_WARMUP": "false"}
    command = [sys.executable, "-m", "server", "--model", "tiny", "--data-dir", str(data_dir), "--port", str(port)]
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env, stdout=output, stderr=output, preexec_fn=_small_fd_limit
        )
    idle: list[asyncio.StreamWriter] = []
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def serving() -> bool:  # the HTTP side is what is tested: no need to wait for the model
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/health") as response:
                        return response.status == 200
                return False

            await eventually(serving, 60, interval=0.1, what="the server answering /health")
            flooded = time.monotonic()
            for _ in range(IDLE_SOCKETS):
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    idle.append(writer)
            started = time.monotonic()
            async with http.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=10)) as response:
                assert response.status == 200
            assert time.monotonic() - started < 5
            await asyncio.sleep(1.5)
            async with http.get(f"{base}/api/settings", timeout=aiohttp.ClientTimeout(total=10)) as response:
                assert response.status == 200
            seconds = time.monotonic() - flooded
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "out of system resource" not in text
        cap_lines = [line for line in text.splitlines() if "connections at the cap" in line]
        assert 1 <= len(cap_lines) <= seconds + 1, f"{len(cap_lines)} lines in {seconds:.1f} s"
    finally:
        for writer in idle:
            writer.close()
        await stop_child(process, 30)
