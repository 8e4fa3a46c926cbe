"""Shared fixtures: the tiny model built once, and a real server (real sockets) per test."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.models import ensure_tiny_model
from server.config import Config, load_config
from server.testing.servers import RunningServer, free_port, start_server, stop_server


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the built tiny model; test data dirs link to its models folder."""
    root = tmp_path_factory.mktemp("model-cache")
    ensure_tiny_model(root / "models" / "tiny")
    return root / "models"


@pytest.fixture
def data_dir(tmp_path: Path, model_cache: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "models").symlink_to(model_cache)
    return folder


@pytest.fixture
def make_config(data_dir: Path) -> Callable[..., Config]:
    """Config for the tiny model on free ports; keyword args are {section: {key: value}}."""

    def make(**sections: dict[str, Any]) -> Config:
        overrides: dict[str, dict[str, Any]] = {
            "server": {"port": 0, "data_dir": str(data_dir)},
            "model": {"id": "tiny"},
            "osc": {"port": 0},
        }
        for section, values in sections.items():
            overrides.setdefault(section, {}).update(values)
        return load_config(env={}, overrides=overrides)

    return make


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config())
    yield running
    await stop_server(running)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's package) on a free port for the session; tests keep apart by key prefix."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: make system-deps installs it (apt-get install redis-server)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"redis-server on port {port} did not answer")
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=30)
