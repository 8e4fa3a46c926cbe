"""Frame conversions under concurrency: PyAV 17+ converts with several threads of its own by default,
and two threads converting at once can deadlock. Every conversion here passes `threads=1`."""

from __future__ import annotations

import ast
import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from av import VideoFrame

from server.config import Config
from server.jpeg import JpegEncoder
from server.testing.mjpeg import MjpegReader, decode_jpeg
from server.testing.rtc_client import HEIGHT, WIDTH, connect
from server.testing.servers import RunningServer, start_server, stop_server
from server.testing.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
CONVERSIONS = {"to_ndarray", "reformat"}


def test_every_conversion_in_the_code_is_single_threaded() -> None:
    unsafe = []
    for folder in ("server", "pipeline", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    if node.func.attr in CONVERSIONS:
                        threads = [k.value for k in node.keywords if k.arg == "threads"]
                        if not (threads and isinstance(threads[0], ast.Constant) and threads[0].value == 1):
                            unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unsafe, f"conversions without threads=1: {unsafe}"


def test_four_threads_encode_jpegs_at_once_without_hanging() -> None:
    encoder = JpegEncoder(85)
    rng = np.random.default_rng(0)
    frame = VideoFrame.from_ndarray(rng.integers(0, 255, (768 * 3 // 2, 1024), dtype=np.uint8), format="yuv420p")
    done: list[bytes] = []

    def work() -> None:
        for _ in range(60):
            done.append(encoder.encode(frame))

    # Daemon threads: if the conversions deadlock, the test fails instead of hanging the session.
    workers = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers), "JPEG encoding hung with several threads"
    assert len(done) == 240 and len(set(done)) == 1


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 1}, defaults={"strength": 0.0}))
    yield running
    await stop_server(running)


async def test_several_mjpeg_readers_and_snapshots_of_one_stream(server: RunningServer) -> None:
    client = await connect(server.http, server.url("/api/offer"), name="stage")
    snapshot_url = server.url(f"/api/streams/{client.stream_id}/snapshot.jpg")

    async def has_output() -> bool:
        async with server.http.get(snapshot_url) as response:
            return response.status == 200

    async def read_mjpeg() -> int:
        async with server.http.get(server.url("/api/outputs/stage/mjpeg?fps=30")) as response:
            reader = MjpegReader(response)
            pictures = [decode_jpeg(part) for part in await reader.parts(20, timeout=10)]
            return sum(picture.shape == (HEIGHT, WIDTH, 3) for picture in pictures)

    async def take_snapshots() -> int:
        taken = 0
        for _ in range(20):
            async with server.http.get(snapshot_url) as response:
                assert response.status == 200
                taken += decode_jpeg(await response.read()).shape == (HEIGHT, WIDTH, 3)
        return taken

    try:
        await eventually(has_output, what="the stream's first output")
        counts = await asyncio.wait_for(
            asyncio.gather(*(read_mjpeg() for _ in range(4)), *(take_snapshots() for _ in range(2))), 60
        )
        assert all(count > 0 for count in counts[:4]), f"MJPEG readers saw no stream frame: {counts}"
        assert counts[4:] == [20, 20]
    finally:
        await client.close()
