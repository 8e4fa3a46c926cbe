"""The control plane beyond OSC: per-stream settings, the data channel, auth, rate limit and CORS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
from aiortc import RTCDataChannel

from pipeline import FrameParams
from server import keys
from server.config import Config
from server.http.security import TokenBuckets
from server.testing.rtc_client import connect, pattern_frame, read_index
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


async def test_two_peers_each_get_their_own_picture(server: RunningServer) -> None:
    engine = server.app[keys.ENGINE].engine
    submitted: dict[str, set[tuple[str, float]]] = {}
    original = engine.submit

    def spy(key: str, frame: np.ndarray, params: FrameParams, *args: object) -> Future[np.ndarray]:
        submitted.setdefault(key, set()).add((params.prompt, params.strength))
        return original(key, frame, params, *args)  # type: ignore[arg-type]

    engine.submit = spy  # type: ignore[method-assign]
    plain = await connect(server.http, server.url("/api/offer"), settings={"strength": 0.0, "prompt": "plain"})
    styled = await connect(server.http, server.url("/api/offer"), settings={"strength": 0.9, "prompt": "neon"})
    try:
        await plain.wait_frames(20)
        await styled.wait_frames(20)
        assert submitted[plain.stream_id] == {("plain", 0.0)}
        assert submitted[styled.stream_id] == {("neon", 0.9)}
        # The untouched stream reads back its own numbered frames; the styled one never shows them.
        for received in plain.received[-10:]:
            expected = pattern_frame(read_index(received.frame)).astype(np.int16)
            assert np.abs(received.frame.to_ndarray(format="rgb24", threads=1).astype(np.int16) - expected).mean() < 12
        for received in styled.received[-10:]:
            index = read_index(received.frame)
            expected = pattern_frame(index).astype(np.int16)
            assert np.abs(received.frame.to_ndarray(format="rgb24", threads=1).astype(np.int16) - expected).mean() > 25
    finally:
        engine.submit = original  # type: ignore[method-assign]
        await plain.close()
        await styled.close()


async def test_stream_overrides_follow_global_until_cleared(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        url = server.url(f"/api/streams/{client.stream_id}/settings")
        async with server.http.patch(url, json={"prompt": "mine", "strength": 0.2}) as response:
            assert response.status == 200
        async with server.http.patch(server.url("/api/settings"), json={"prompt": "everyone", "seed": 9}) as r:
            assert r.status == 200
        async with server.http.get(url) as response:
            body = await response.json()
        assert (body["settings"]["prompt"], body["settings"]["seed"]) == ("mine", 9)
        async with server.http.patch(url, json={"prompt": None}) as response:
            body = await response.json()
        assert body["settings"]["prompt"] == "everyone"
        assert body["overrides"] == {"strength": 0.2}
        async with server.http.patch(url, json={"strength": 7}) as response:
            assert response.status == 422
        async with server.http.get(server.url("/api/streams")) as response:
            listed = (await response.json())["streams"]
        assert listed[0]["overrides"] == {"strength": 0.2}
    finally:
        await client.close()


async def test_data_channel_control_applies_to_its_stream(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"), negotiate_channel=True)
    try:
        channel = client.channel
        assert channel is not None
        replies: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        channel.on("message", lambda message: replies.put_nowait(json.loads(message)))
        await _open(channel)
        channel.send(json.dumps({"prompt": "from the page", "strength": 0.35}))
        reply = await asyncio.wait_for(replies.get(), 10)
        assert reply["type"] == "settings"
        assert reply["overrides"] == {"prompt": "from the page", "strength": 0.35}
        store = server.app[keys.SETTINGS]
        assert store.effective(client.stream_id).prompt == "from the page"
        assert store.global_settings.prompt != "from the page"
        for bad in ("not json", "[1]", json.dumps({"strength": 3}), json.dumps({"volume": 1})):
            channel.send(bad)
            reply = await asyncio.wait_for(replies.get(), 10)
            assert reply["type"] == "error", bad
        assert store.effective(client.stream_id).strength == 0.35
    finally:
        await client.close()


async def _open(channel: RTCDataChannel) -> None:
    await eventually(lambda: channel.readyState == "open", 5, what="the data channel open")


async def test_rate_limit_answers_429(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(security={"rate_limit_per_s": 1.0, "rate_limit_burst": 3}))
    try:
        statuses = []
        for _ in range(5):
            async with running.http.post(running.url("/api/strength"), json={"strength": 0.5}) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert "Retry-After" in response.headers
        assert statuses[:3] == [200, 200, 200]
        assert 429 in statuses[3:]
        async with running.http.get(running.url("/api/settings")) as response:
            assert response.status == 200
    finally:
        await stop_server(running)


def test_token_buckets_refill() -> None:
    buckets = TokenBuckets(rate=2.0, burst=2)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == 0.5
    assert buckets.take("b", now=0.0) == 0.0
    assert buckets.take("a", now=0.5) == 0.0


async def test_cors_is_closed_unless_origins_are_listed(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(server={"cors_origins": ["http://show.example"]}))
    try:
        url = running.url("/api/settings")
        async with running.http.get(url, headers={"Origin": "http://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers
        async with running.http.get(url, headers={"Origin": "http://show.example"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "http://show.example"
        headers = {"Origin": "http://show.example", "Access-Control-Request-Method": "PATCH"}
        async with running.http.options(url, headers=headers) as response:
            assert response.status == 204
            assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    finally:
        await stop_server(running)
