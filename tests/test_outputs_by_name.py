"""Outputs by stream name: MJPEG and snapshots that follow a name across reconnects, `latest`, the list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from av import VideoFrame

from server.config import Config
from server.live import keys as live_keys
from server.live.outputs import waiting_card
from server.testing.mjpeg import MjpegReader, decode_jpeg
from server.testing.rtc_client import HEIGHT, WIDTH, RtcClient, connect, read_index
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 1}, defaults={"strength": 0.0}))
    yield running
    await stop_server(running)


async def outputs(server: RunningServer) -> dict[str, dict[str, Any]]:
    async with server.http.get(server.url("/api/outputs")) as response:
        assert response.status == 200
        return {output["name"]: output for output in (await response.json())["outputs"]}


async def stream_picture(reader: MjpegReader, older_than: int | None = None) -> int:
    """Read parts until one is a stream's frame (not the waiting card), older than `older_than` if given."""
    for _ in range(300):
        picture = decode_jpeg(await reader.next_part())
        if picture.shape == (HEIGHT, WIDTH, 3):
            index = read_index(VideoFrame.from_ndarray(picture, format="rgb24"))
            if older_than is None or index < older_than:
                return index
    raise AssertionError("no frame of the stream came")


async def test_a_names_mjpeg_waits_then_follows_its_newest_stream_across_a_reconnect(server: RunningServer) -> None:
    clients: list[RtcClient] = []
    async with server.http.get(server.url("/api/outputs/stage/mjpeg?fps=30")) as response:
        assert response.status == 200
        reader = MjpegReader(response)
        card = decode_jpeg(await reader.next_part())
        assert card.shape == (512, 512, 3) and card.mean() < 60, "before any stream: the waiting card"
        assert (await outputs(server))["stage"]["mjpeg"] == 1
        try:
            clients.append(await connect(server.http, server.url("/api/offer"), name="stage"))
            first = clients[0]
            # Frames of the first stream, until it has been going a second (indices at strength 0).
            index = await stream_picture(reader)
            while index < 30:
                index = await stream_picture(reader)
            listed = await outputs(server)
            assert listed["stage"]["stream_id"] == first.stream_id and listed["stage"]["state"] == "live"
            assert listed["latest"]["stream_id"] == first.stream_id

            async with server.http.delete(server.url(f"/api/streams/{first.stream_id}")) as hang_up:
                assert hang_up.status == 200
            waiting = await outputs(server)
            assert waiting["stage"]["stream_id"] is None and waiting["stage"]["state"] == "waiting"

            # The same response, not ended: the performer reconnects and its new stream (counting from 0) shows.
            clients.append(await connect(server.http, server.url("/api/offer"), name="stage"))
            second = clients[1]
            assert second.stream_id != first.stream_id
            await stream_picture(reader, older_than=index - 10)
            assert (await outputs(server))["stage"]["stream_id"] == second.stream_id

            async with server.http.get(server.url("/api/outputs/stage/snapshot.jpg")) as snapshot:
                assert snapshot.status == 200 and snapshot.content_type == "image/jpeg"
                assert decode_jpeg(await snapshot.read()).shape == (HEIGHT, WIDTH, 3)
        finally:
            for client in clients:
                await client.close()

    async def viewer_gone() -> bool:
        return (await outputs(server))["stage"]["mjpeg"] == 0

    await eventually(viewer_gone, what="the MJPEG viewer to be let go")


async def test_latest_is_the_most_recently_started_stream(server: RunningServer) -> None:
    one = await connect(server.http, server.url("/api/offer"), name="one")
    two = await connect(server.http, server.url("/api/offer"), name="two")
    try:
        listed = await outputs(server)
        assert [name for name in listed] == ["latest", "one", "two"]
        assert listed["latest"]["stream_id"] == two.stream_id
        assert "whip" not in listed["latest"]["urls"] and listed["one"]["urls"]["whip"] == "/api/whip/one"
        async with server.http.get(server.url("/api/streams")) as response:
            names = {s["id"]: s["name"] for s in (await response.json())["streams"]}
        assert names == {one.stream_id: "one", two.stream_id: "two"}
        async with server.http.delete(server.url(f"/api/streams/{two.stream_id}")) as response:
            assert response.status == 200
        assert (await outputs(server))["latest"]["stream_id"] == one.stream_id
    finally:
        await one.close()
        await two.close()


async def test_bad_names_are_422_naming_the_field(server: RunningServer) -> None:
    for name in ("bad!", ".hidden", "a%20b", "x" * 65, "-dash"):
        for method, path in (
            ("GET", f"/api/outputs/{name}/mjpeg"),
            ("GET", f"/api/outputs/{name}/snapshot.jpg"),
            ("GET", f"/api/outputs/{name}/settings"),
            ("PATCH", f"/api/outputs/{name}/settings"),
            ("GET", f"/view/{name}"),
        ):
            async with server.http.request(method, server.url(path), json={}) as response:
                assert response.status == 422, (method, path)
                assert (await response.json())["detail"][0]["field"] == "name"
    assert await outputs(server) == {}


async def test_bad_output_requests_change_nothing(server: RunningServer) -> None:
    async with server.http.get(server.url("/api/outputs/nobody/snapshot.jpg")) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "unknown name"
    async with server.http.get(server.url("/api/outputs/nobody/mjpeg?fps=0")) as response:
        assert response.status == 422
    for name in ("latest", "no spaces"):
        async with server.http.post(server.url("/api/offer"), json={"sdp": "v=0", "type": "offer", "name": name}) as r:
            assert r.status == 422
            assert (await r.json())["detail"][0]["field"] == "name"
    async with server.http.patch(server.url("/api/outputs/latest/settings"), json={"strength": 0.1}) as response:
        assert response.status == 422
    async with server.http.patch(server.url("/api/outputs/cam/settings"), json={"strength": 2}) as response:
        assert response.status == 422
    async with server.http.get(server.url("/view/stage")) as response:
        assert response.status == 200 and response.content_type == "text/html"
    assert server.app[live_keys.PEERS].sessions == {}
    assert await outputs(server) == {}


def test_the_waiting_card_is_dark_with_light_dots() -> None:
    card = waiting_card(64, 64).to_ndarray(format="rgb24")
    assert card[0, 0].tolist() == [24, 24, 24]
    assert card[32, 32].tolist() == [170, 170, 170]
    assert np.count_nonzero(card[..., 0] == 170) > 3
