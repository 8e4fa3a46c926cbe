"""The live loop end to end: a real aiortc client against the running server over loopback."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.conftest import RunningServer
from tests.rtc_client import TICKS_PER_FRAME, connect, pattern_frame, read_index


async def test_strength_zero_returns_frames_unchanged_then_strength_restyles(server: RunningServer) -> None:
    async with server.http.patch(server.url("/api/settings"), json={"strength": 0.0}) as response:
        assert response.status == 200
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(20)
        # At strength 0 the picture is the input's: the drawn index is readable and matches pts.
        plain = client.received[5:20]
        indices = [read_index(r.frame) for r in plain]
        # RTP carries pts at 90 kHz from a random origin: the offset is constant up to rounding.
        offsets = [r.pts - index * TICKS_PER_FRAME for r, index in zip(plain, indices, strict=True)]
        offset = int(np.median(offsets))
        assert max(abs(o - offset) for o in offsets) < TICKS_PER_FRAME // 10, f"pts did not travel: {offsets}"
        sample = plain[-1]
        expected = pattern_frame(read_index(sample.frame)).astype(np.int16)
        got = sample.frame.to_ndarray(format="rgb24").astype(np.int16)
        assert np.abs(got - expected).mean() < 12, "strength 0 must leave the picture untouched"

        async with server.http.patch(server.url("/api/settings"), json={"strength": 0.8}) as response:
            assert response.status == 200
        seen = len(client.received)
        await client.wait_frames(30)
        later = client.received[seen + 10 :]
        restyled = 0
        for received in later:
            index = round((received.pts - offset) / TICKS_PER_FRAME)
            assert 0 <= index <= received.latest_sent
            expected = pattern_frame(index).astype(np.int16)
            difference = np.abs(received.frame.to_ndarray(format="rgb24").astype(np.int16) - expected).mean()
            restyled += difference > 25
        assert restyled == len(later), "strength 0.8 must change the picture"
    finally:
        await client.close()


async def test_stream_is_listed_and_hang_up_closes_it(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(3)
        async with server.http.get(server.url("/api/streams")) as response:
            streams = (await response.json())["streams"]
        assert [s["id"] for s in streams] == [client.stream_id]
        assert streams[0]["stats"]["frames_out"] >= 3
        async with server.http.delete(server.url(f"/api/streams/{client.stream_id}")) as response:
            assert response.status == 200
        async with server.http.get(server.url("/api/streams")) as response:
            assert (await response.json())["streams"] == []
        async with server.http.delete(server.url(f"/api/streams/{client.stream_id}")) as response:
            assert response.status == 404
    finally:
        await client.close()
    await asyncio.sleep(0)
