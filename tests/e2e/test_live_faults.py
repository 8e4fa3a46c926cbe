"""Faults on the live path cost frames, not streams; a stream that keeps failing ends with its reason."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from server import keys
from server.config import Config
from server.control.settings import SettingsStore
from server.live import keys as live_keys
from server.testing.rtc_client import connect, offer_sdp
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


class FlakyTransform:
    """The engine's transform failing on some calls: `fails(call_number)` says which."""

    def __init__(self, inner: Callable[..., Any], fails: Callable[[int], bool]) -> None:
        self.inner = inner
        self.fails = fails
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.fails(self.calls):
            raise RuntimeError(f"injected failure on call {self.calls}")
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> Any:
    running = await start_server(make_config(server={"max_failed_frames": 4}, engine={"max_batch": 1}))
    yield running
    await stop_server(running)


def _inject(server: RunningServer, fails: Callable[[int], bool]) -> FlakyTransform:
    engine = server.app[keys.ENGINE].engine
    flaky = FlakyTransform(engine.runner.transform, fails)
    engine.runner.transform = flaky
    return flaky


def _dropped(server: RunningServer, reason: str) -> float:
    return server.app[keys.METRICS].value("stylize_frames_dropped_total", {"reason": reason})


async def test_a_failed_batch_costs_its_frames_and_the_stream_carries_on(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(3)
        flaky = _inject(server, lambda call: call % 3 == 0)  # every third model call fails
        await eventually(lambda: _dropped(server, "error") >= 3, 30, what="three failed frames")
        before = len(client.received)
        await client.wait_frames(10)  # frames keep coming between the failures
        assert len(client.received) >= before + 10
        assert flaky.calls >= 9
        assert client.stream_id in server.app[live_keys.PEERS].sessions
    finally:
        await client.close()


async def test_a_stream_whose_frames_keep_failing_ends_with_the_reason(server: RunningServer) -> None:
    async with server.http.ws_connect(server.url("/api/events")) as events:
        await eventually(lambda: server.app[keys.EVENTS].listeners, what="an events listener")
        client = await connect(server.http, server.url("/api/offer"))
        try:
            await client.wait_frames(2)
            _inject(server, lambda call: True)
            down = None
            while down is None:
                message = await events.receive(timeout=30)
                assert message.type == aiohttp.WSMsgType.TEXT
                event = json.loads(message.data)
                if event["type"] == "stream" and event["action"] == "down":
                    down = event
            assert down["stream_id"] == client.stream_id
            assert down["reason"].startswith("4 frames in a row failed (RuntimeError: injected failure")
            assert client.stream_id not in server.app[live_keys.PEERS].sessions
            assert _dropped(server, "error") >= 4
        finally:
            await client.close()


async def test_an_offer_that_fails_for_a_server_fault_is_500_not_400(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the server")

    monkeypatch.setattr(SettingsStore, "update_stream", broken)
    body = {"sdp": await offer_sdp(), "type": "offer", "settings": {"strength": 0.3}}
    with caplog.at_level(logging.ERROR):
        async with server.http.post(server.url("/api/offer"), json=body) as response:
            assert response.status == 500
    assert "offer failed" in caplog.text and "a bug in the server" in caplog.text  # with its traceback
    assert server.app[live_keys.PEERS].sessions == {}
    async with server.http.post(server.url("/api/offer"), json={"sdp": "v=0 nonsense", "type": "offer"}) as response:
        assert response.status == 400  # a bad SDP is still the caller's
