"""A job cannot hold the render slot for an hour, and a full disk is a 507, not a 500."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from pathlib import Path

import aiohttp

from server.config import Config
from server.testing.clips import make_clip, make_image
from server.testing.servers import start_server, stop_server


def form(data: bytes, filename: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return body


async def test_a_clip_past_max_frames_is_refused_at_upload(make_config: Callable[..., Config], tmp_path: Path) -> None:
    running = await start_server(make_config(jobs={"max_frames": 10}, engine={"warmup": False}), ready=False)
    try:
        clip = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=10)  # 20 frames
        async with running.http.post(running.url("/api/jobs"), data=form(clip.read_bytes(), "clip.mp4")) as r:
            answer = await r.json()
        assert r.status == 422 and "max_frames" in answer["detail"], answer
        async with running.http.post(running.url("/api/jobs"), data=form(make_image("png"), "a.png")) as r:
            assert r.status == 202
    finally:
        await stop_server(running)


async def test_an_upload_onto_a_full_disk_is_507_and_leaves_nothing(
    make_config: Callable[..., Config], data_dir: Path
) -> None:
    running = await start_server(make_config(engine={"warmup": False}), ready=False)
    # A file-size limit makes the upload's write fail as a full disk does (EFBIG; Python ignores SIGXFSZ).
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, limits[1]))
        try:
            upload = form(os.urandom(1024 * 1024), "clip.mp4")
            async with running.http.post(running.url("/api/jobs"), data=upload) as response:
                answer = await response.json()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        assert (response.status, answer["error"]) == (507, "insufficient storage"), answer
        assert not any((data_dir / "jobs").iterdir())
        async with running.http.post(running.url("/api/jobs"), data=form(make_image("png"), "a.png")) as response:
            assert response.status == 202
    finally:
        await stop_server(running)
