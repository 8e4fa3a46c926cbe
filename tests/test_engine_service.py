"""The engine service: the loader loads, the engine's own thread warms up and serves, and stop()
leaves no thread of either behind."""

from __future__ import annotations

import threading
from collections.abc import Callable

from server import keys
from server.config import Config
from tests.conftest import start_server, stop_server


def _engine_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name in ("stylize-loader", "stylize-engine")}


async def test_stopping_while_the_model_loads_leaves_no_thread_behind(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(), ready=False)
    await stop_server(running)
    assert _engine_threads() == set()


async def test_ready_after_the_engine_thread_warmed_every_bucket(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(engine={"warmup": True, "max_batch": 4}))
    try:
        async with running.http.get(running.url("/readyz")) as response:
            assert response.status == 200
        engine = running.app[keys.ENGINE].engine
        assert engine.ready and engine.buckets == [1, 2, 4]
        assert "stylize-engine" in _engine_threads()
    finally:
        await stop_server(running)
    assert _engine_threads() == set()
