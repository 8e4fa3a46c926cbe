"""Offers that never connect cannot keep people out: a client's unconnected attempts are limited
(a re-sent offer supersedes its oldest), and when every slot is taken the oldest attempt that has
not connected gives its slot to a new offer before anyone is refused. Connected peers stay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiortc import RTCPeerConnection

from server.config import Config
from server.live import keys as live_keys
from server.testing.rtc_client import connect, offer_sdp, whep_view
from server.testing.servers import RunningServer, start_server, stop_server

GRACE_S = 1.0  # an offer answers in well under this, even on a busy CPU


def slots(make_config: Callable[..., Config], **server: object) -> Config:
    # The test's own address is a trusted proxy, so X-Forwarded-For names each attacker.
    return make_config(
        server={"trusted_proxies": ["127.0.0.1"], "offer_grace_s": GRACE_S, **server},
        outputs={"max_viewers": 2},
        engine={"warmup": False},
    )


async def dead_offer(server: RunningServer, client: str) -> int:
    """An offer from `client` whose peer will never send ICE (no candidates now or later)."""
    body = {"sdp": await offer_sdp(candidates=False), "type": "offer"}
    headers = {"X-Forwarded-For": client}
    async with server.http.post(server.url("/api/offer"), json=body, headers=headers) as response:
        return response.status


async def dead_viewer(server: RunningServer, client: str) -> int:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = "".join(line + "\r\n" for line in pc.localDescription.sdp.splitlines() if not line.startswith("a=candidate"))
    await pc.close()
    headers = {"Content-Type": "application/sdp", "X-Forwarded-For": client}
    async with server.http.post(server.url("/api/outputs/stage/whep"), data=sdp, headers=headers) as response:
        return response.status


async def test_offers_that_never_connect_leave_room_for_people(make_config: Callable[..., Config]) -> None:
    running = await start_server(slots(make_config, max_peers=3))
    peers = running.app[live_keys.PEERS]
    people = []
    try:
        # One client re-sending offers holds at most max_unconnected_per_client (2) slots.
        assert [await dead_offer(running, "10.0.0.66") for _ in range(6)] == [200] * 6
        assert len(peers.sessions) == 2
        people.append(await connect(running.http, running.url("/api/offer")))
        await people[0].wait_frames(2)
        # Full: a second client's offer takes the slot of the oldest attempt past its grace.
        await asyncio.sleep(GRACE_S + 0.05)
        assert await dead_offer(running, "10.0.0.77") == 200
        assert len(peers.sessions) == 3
        await asyncio.sleep(GRACE_S + 0.05)
        people.append(await connect(running.http, running.url("/api/offer")))
        await people[1].wait_frames(2)
        assert people[0].stream_id in peers.sessions, "a connected peer is never given up"
        # Every slot connected or within its grace: refused, as before.
        assert await dead_offer(running, "10.0.0.88") == 200  # 10.0.0.77's attempt, past its grace, gives way
        assert await dead_offer(running, "10.0.0.99") == 503
        assert {people[0].stream_id, people[1].stream_id} <= set(peers.sessions)
    finally:
        for person in people:
            await person.close()
        await stop_server(running)


async def test_viewers_that_never_connect_leave_room_for_players(make_config: Callable[..., Config]) -> None:
    running = await start_server(slots(make_config), ready=False)
    viewers = running.app[live_keys.VIEWERS]
    try:
        assert [await dead_viewer(running, "10.0.0.66") for _ in range(5)] == [201] * 5
        assert len(viewers.viewers) == 2
        await asyncio.sleep(GRACE_S + 0.05)
        player = await whep_view(running.http, running.url("/api/outputs/stage/whep"))
        try:
            assert len(viewers.viewers) == 2
        finally:
            await player.close()
    finally:
        await stop_server(running)
