"""Sessions that never connect, or stop sending frames, are closed and their slot freed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server.config import Config
from server.live import keys as live_keys
from server.testing.rtc_client import connect, offer_sdp
from server.testing.servers import RunningServer, start_server, stop_server

CONNECT_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 1.0


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(
        make_config(
            server={"max_peers": 2, "connect_timeout_s": CONNECT_TIMEOUT_S, "idle_timeout_s": IDLE_TIMEOUT_S},
            engine={"max_batch": 1},
        )
    )
    yield running
    await stop_server(running)


async def next_stream_down(events: Any) -> dict[str, Any]:
    async with asyncio.timeout(30):
        async for message in events:
            event = json.loads(message.data)
            if event["type"] == "stream" and event["action"] == "down":
                return dict(event)
    raise AssertionError("the events socket closed")


async def test_offers_that_never_connect_give_their_slots_back(server: RunningServer) -> None:
    peers = server.app[live_keys.PEERS]
    async with server.http.ws_connect(server.url("/api/events")) as events:
        for _ in range(2):
            async with server.http.post(
                server.url("/api/offer"), json={"sdp": await offer_sdp(candidates=False), "type": "offer"}
            ) as response:
                assert response.status == 200
        assert len(peers.sessions) == 2  # every slot taken by a peer that will never connect
        downs = [await next_stream_down(events), await next_stream_down(events)]
    assert {event["reason"] for event in downs} == {"not connected in time"}
    assert peers.sessions == {}
    # The slots are free for a real peer.
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(3)
    finally:
        await client.close()


async def test_a_peer_that_stops_sending_frames_is_closed(server: RunningServer) -> None:
    peers = server.app[live_keys.PEERS]
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(3)
        async with server.http.ws_connect(server.url("/api/events")) as events:
            client.source.count = client.source.sent + 1  # the camera goes quiet; the connection stays up
            down = await next_stream_down(events)
        assert (down["stream_id"], down["reason"]) == (client.stream_id, "no frames")
        assert client.stream_id not in peers.sessions
    finally:
        await client.close()


async def test_a_steady_peer_stays(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        # Well past both timeouts (counted in frames rather than seconds: ~3-6 s at 15-30 fps).
        await client.wait_frames(90)
        assert client.stream_id in server.app[live_keys.PEERS].sessions
    finally:
        await client.close()
