"""Shared fixtures: the tiny model built once, and a real server (real sockets) per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pipeline.models import ensure_tiny_model
from server.app import create_app
from server.config import Config, load_config


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


class RunningServer:
    def __init__(self, app: web.Application, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.app = app
        self.server = server
        self.http = http

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def wait_ready(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            async with self.http.get(self.url("/readyz")) as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError("server never became ready")


async def start_server(config: Config, *, ready: bool = True) -> RunningServer:
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1", port=config.server.port or None)
    await server.start_server()
    running = RunningServer(app, server, aiohttp.ClientSession())
    if ready:
        await running.wait_ready()
    return running


async def stop_server(running: RunningServer) -> None:
    await running.http.close()
    await running.server.close()


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config())
    yield running
    await stop_server(running)
