"""The live loop end to end: a real aiortc client against the running server over loopback."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from server import keys
from server.config import Config
from server.live import keys as live_keys
from server.testing.rtc_client import TICKS_PER_FRAME, connect, pattern_frame, read_index
from server.testing.servers import RunningServer, start_server, stop_server


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
        got = sample.frame.to_ndarray(format="rgb24", threads=1).astype(np.int16)
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
            difference = np.abs(received.frame.to_ndarray(format="rgb24", threads=1).astype(np.int16) - expected).mean()
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


class SlowTransform:
    """The engine's transform, made to take at least `seconds` a call (in the engine's own thread)."""

    def __init__(self, inner: Callable[..., Any], seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.seconds)
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_latency_stays_flat_when_the_model_is_slower_than_the_camera(
    make_config: Callable[..., Config],
) -> None:
    running = await start_server(make_config(defaults={"strength": 0.0}))
    # Slower than the camera on any machine, a GPU included: each model call takes 3 frame intervals.
    engine = running.app[keys.ENGINE].engine
    engine.runner.transform = SlowTransform(engine.runner.transform, seconds=0.1)
    client = await connect(running.http, running.url("/api/offer"))
    try:
        await client.wait_frames(15)
        calibration = client.received[5:15]
        offsets = [r.pts - read_index(r.frame) * TICKS_PER_FRAME for r in calibration]
        offset = int(np.median(offsets))

        async with running.http.patch(running.url("/api/settings"), json={"strength": 0.6}) as response:
            assert response.status == 200
        sent_before = client.source.sent
        start = len(client.received)
        # A count of frames rather than a time span, so a busy machine only makes the test longer.
        await client.wait_frames(24, timeout=90)
        slow = client.received[start + 4 :]
        sent = client.source.sent - sent_before
        lags = [r.latest_sent - round((r.pts - offset) / TICKS_PER_FRAME) for r in slow]
        assert all(lag >= 0 for lag in lags), lags
        third = len(lags) // 3
        # No queue builds up: the lag at the end is no worse than at the start (jitter aside). A queue
        # would add about one model step's worth of camera frames per output: dozens by the end.
        assert np.median(lags[-third:]) <= np.median(lags[:third]) + 15, lags
        # A busy machine may stall for a moment; a queue would be hundreds of frames behind by now.
        assert np.median(lags[-third:]) <= 60, f"frames came back far behind the newest sent: {lags}"
        # The model could not keep up, so frames were skipped and counted.
        assert len(slow) < 0.8 * sent
        stats = running.app[live_keys.PEERS].sessions[client.stream_id].stats
        assert stats.frames_dropped > 0
        assert stats.frames_in - stats.frames_out - stats.frames_dropped <= 2
    finally:
        await client.close()
        await stop_server(running)
