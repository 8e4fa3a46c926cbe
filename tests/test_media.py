"""snapshot.jpg and the MJPEG stream of a live stream's stylized output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection
from av import VideoFrame

from server.app import create_app
from server.config import Config
from server.live import keys as live_keys
from server.live.mjpeg import BOUNDARY
from server.live.session import Session
from server.testing.mjpeg import MjpegReader
from server.testing.mjpeg import decode_jpeg as decode
from server.testing.rtc_client import HEIGHT, WIDTH, connect, read_index
from server.testing.servers import RunningServer, start_server, stop_server, wait_ready
from server.testing.waiting import eventually


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    """The shared fixture's server with one-frame batches: one stream needs no more, and start-up is faster."""
    running = await start_server(make_config(engine={"max_batch": 1}))
    yield running
    await stop_server(running)


async def read_parts(response: aiohttp.ClientResponse, count: int) -> list[bytes]:
    return await MjpegReader(response).parts(count)


async def test_snapshot_decodes_to_the_stream_output_size(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(3)
        track = server.app[live_keys.PEERS].sessions[client.stream_id].track
        newest = track.output.newest if track is not None else None
        assert newest is not None
        output_size = (newest.height, newest.width)
        async with server.http.get(server.url(f"/api/streams/{client.stream_id}/snapshot.jpg")) as response:
            assert response.status == 200
            assert response.content_type == "image/jpeg"
            assert response.headers["Cache-Control"] == "no-store"
            picture = decode(await response.read())
        assert picture.shape == (*output_size, 3)
        assert output_size == (HEIGHT, WIDTH)
    finally:
        await client.close()


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, seconds: float = 5.0) -> None:
    await eventually(lambda: text in caplog.text, seconds, what=f"the log line {text!r}")


async def test_mjpeg_yields_successive_newer_frames(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.live.mjpeg")
    # At strength 0 the output is the input, so each part's frame index can be read from its pixels.
    async with server.http.patch(server.url("/api/settings"), json={"strength": 0.0}) as response:
        assert response.status == 200
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(2)
        url = server.url(f"/api/streams/{client.stream_id}/mjpeg?fps=30")
        async with server.http.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            parts = await read_parts(response, 4)
        pictures = [decode(part) for part in parts]
        assert all(p.shape == (HEIGHT, WIDTH, 3) for p in pictures)
        indices = [read_index(VideoFrame.from_ndarray(p, format="rgb24")) for p in pictures]
        assert indices == sorted(set(indices)), f"each part must be a newer frame: {indices}"
        # The test server cancels handlers whose client left.
        await wait_for_log(caplog, "parts=4 reason=cancelled")
    finally:
        await client.close()


async def test_mjpeg_notices_the_viewer_leave_where_handlers_are_not_cancelled(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    """`web.run_app` (what `python -m server` uses) does not cancel a handler when its client leaves."""
    caplog.set_level(logging.INFO, logger="server.live.mjpeg")
    runner = web.AppRunner(create_app(make_config(engine={"max_batch": 1})), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    http = aiohttp.ClientSession()
    client = None
    try:
        await wait_ready(http, base)
        client = await connect(http, f"{base}/api/offer")
        await client.wait_frames(2)
        async with http.get(f"{base}/api/streams/{client.stream_id}/mjpeg?fps=30") as response:
            await read_parts(response, 2)
        await wait_for_log(caplog, "reason=viewer left")
    finally:
        if client is not None:
            await client.close()
        await http.close()
        await runner.cleanup()


async def test_mjpeg_ends_with_the_closing_boundary_when_the_stream_closes(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"))
    try:
        await client.wait_frames(2)
        async with server.http.get(server.url(f"/api/streams/{client.stream_id}/mjpeg")) as response:
            assert len(await read_parts(response, 1)) == 1
            async with server.http.delete(server.url(f"/api/streams/{client.stream_id}")) as hang_up:
                assert hang_up.status == 200
            rest = await asyncio.wait_for(response.content.read(), 10)
        assert rest.endswith(f"--{BOUNDARY}--\r\n".encode())
    finally:
        await client.close()


async def test_bad_requests_unknown_streams_and_streams_without_output(server: RunningServer) -> None:
    for fps in ("0", "-3", "fast", "nan"):
        async with server.http.get(server.url(f"/api/streams/nope/mjpeg?fps={fps}")) as response:
            assert response.status == 422
            assert (await response.json())["detail"][0]["field"] == "fps"

    for path in ("/api/streams/nope/snapshot.jpg", "/api/streams/nope/mjpeg"):
        async with server.http.get(server.url(path)) as response:
            assert response.status == 404
            assert await response.json() == {"error": "unknown stream", "detail": "nope"}

    # A stream whose camera track has not arrived yet has nothing to show.
    pc = RTCPeerConnection()
    sessions = server.app[live_keys.PEERS].sessions
    sessions["waiting"] = Session(id="waiting", pc=pc)
    try:
        for path in ("/api/streams/waiting/snapshot.jpg", "/api/streams/waiting/mjpeg"):
            async with server.http.get(server.url(path)) as response:
                assert response.status == 503
                assert (await response.json())["error"] == "no frame yet"
    finally:
        del sessions["waiting"]
        await pc.close()
