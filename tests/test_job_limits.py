"""A job cannot hold the render slot for an hour, and a full disk is a 507, not a 500."""

from __future__ import annotations

import asyncio
import json
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from server.config import Config
from server.testing.clips import make_clip, make_image
from server.testing.servers import start_server, stop_server
from server.testing.waiting import eventually


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
        assert r.status == 422 and "max_frames" in answer["detail"][0]["message"], answer
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


async def test_a_render_on_a_full_disk_fails_the_job_once_it_can_be_recorded(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """The disk fills up as a job starts: its output cannot be written, nor its failure recorded (SQLite
    cannot grow its log either). Once there is room again, the job is failed, not left processing."""
    running = await start_server(make_config(engine={"max_batch": 1}))
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        clip = make_clip(tmp_path / "clip.mp4", seconds=3.0, fps=10)
        async with running.http.ws_connect(running.url("/api/events")) as events:
            async with running.http.post(running.url("/api/jobs"), data=form(clip.read_bytes(), "clip.mp4")) as r:
                job = await r.json()
            assert r.status == 202, job
            async for message in events:
                event = json.loads(message.data)
                if event["type"] == "job" and event["action"] == "started" and event["job"]["id"] == job["id"]:
                    # A full disk, as the render starts: no file may grow (Python ignores SIGXFSZ).
                    resource.setrlimit(resource.RLIMIT_FSIZE, (0, limits[1]))
                    break
        await asyncio.sleep(1.0)
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)

        async def failed() -> dict[str, Any] | None:
            async with running.http.get(running.url(f"/api/jobs/{job['id']}")) as response:
                found: dict[str, Any] = await response.json()
            return found if found["status"] == "failed" else None

        done = await eventually(failed, 10, what="the job recorded as failed")
        assert done["error"]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        await stop_server(running)
