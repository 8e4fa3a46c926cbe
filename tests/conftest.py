"""Shared fixtures: the tiny model built once, and a real server (real sockets) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.models import ensure_tiny_model
from server.config import Config, load_config
from server.testing.servers import RunningServer, start_server, stop_server


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
