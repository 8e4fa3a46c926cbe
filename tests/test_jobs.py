"""Offline render jobs against the running server: uploads made with av, results checked with av."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from pipeline.contract import FrameParams
from server import keys
from server.config import Config
from server.db import Database
from server.jobs import keys as jobs_keys
from server.jobs.image_header import image_size
from server.jobs.media import (
    SEGMENT_FRAMES,
    EncodeOptions,
    MediaInfo,
    MediaLimits,
    MediaRejected,
    Render,
    open_render,
    probe,
)
from server.jobs.store import SCHEMA, Job, JobStore
from server.jpeg import JpegEncoder
from server.testing.clips import make_clip, make_image
from server.testing.servers import RunningServer, server_process, start_server, stop_server, wait_ready
from server.testing.waiting import eventually

FINISHED = {"completed", "failed", "cancelled"}


def form(data: bytes, filename: str, **fields: Any) -> aiohttp.FormData:
    body = aiohttp.FormData()
    for name, value in fields.items():
        body.add_field(name, str(value))
    body.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return body


async def upload(server: RunningServer, data: bytes, filename: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    async with server.http.post(server.url("/api/jobs"), data=form(data, filename, **fields)) as response:
        return response.status, await response.json()


async def submit(server: RunningServer, data: bytes, filename: str, **fields: Any) -> dict[str, Any]:
    status, job = await upload(server, data, filename, **fields)
    assert status == 202, job
    return job


async def wait_job(
    server: RunningServer, job_id: str, until: set[str] = FINISHED, within_s: float = 60.0
) -> dict[str, Any]:

    async def finished() -> dict[str, Any] | None:
        async with server.http.get(server.url(f"/api/jobs/{job_id}")) as response:
            job: dict[str, Any] = await response.json()
        return job if job["status"] in until else None

    return await eventually(finished, within_s, interval=0.05, what=f"job {job_id} in {sorted(until)}")


async def result(server: RunningServer, job_id: str, folder: Path) -> tuple[aiohttp.ClientResponse, Path]:
    async with server.http.get(server.url(f"/api/jobs/{job_id}/result")) as response:
        path = folder / f"result-{job_id}"
        path.write_bytes(await response.read())
        return response, path


@pytest.mark.parametrize(("container", "audio_codec"), [("mp4", "aac"), ("webm", "opus")])
async def test_video_job_keeps_frames_rate_duration_and_audio(
    server: RunningServer, tmp_path: Path, container: str, audio_codec: str
) -> None:
    clip = make_clip(tmp_path / f"clip.{container}", seconds=2.0, fps=10, container=container)  # type: ignore[arg-type]
    async with server.http.ws_connect(server.url("/api/events")) as events:
        job = await submit(
            server,
            clip.read_bytes(),
            f"My clip.{container}",
            prompt="ink",
            strength="0.7",
            seed="7",
            num_inference_steps="2",
            control='{"kind": "depth", "scale": 0.0}',  # off: no ControlNet is loaded here
        )
        assert job["status"] == "pending"
        assert job["kind"] == "video"
        assert job["params"]["prompt"] == "ink"
        assert job["params"]["strength"] == 0.7
        assert job["params"]["seed"] == 7
        assert job["params"]["num_inference_steps"] == 2
        assert (job["params"]["control_kind"], job["params"]["control_scale"]) == ("depth", 0.0)
        assert job["media"]["audio"] == audio_codec
        assert job["frames_total"] == 20
        actions = []
        async with asyncio.timeout(60):
            async for message in events:
                event = json.loads(message.data)
                if event["type"] == "job" and event["job"]["id"] == job["id"]:
                    actions.append(event["action"])
                    if event["job"]["status"] in FINISHED:
                        break
    assert actions[:2] == ["queued", "started"]
    assert actions[-1] == "completed"

    done = await wait_job(server, job["id"])
    assert done["frames_done"] == 20
    assert done["progress"] == 1.0
    assert done["processing_s"] > 0
    assert done["started"] >= done["created"]
    assert done["result_url"] == f"/api/jobs/{job['id']}/result"
    response, path = await result(server, job["id"], tmp_path)
    assert response.status == 200
    assert response.content_type == "video/mp4"
    kept = "" if container == "mp4" else f"-{container}"  # clip.mp4 and clip.webm download under two names
    assert f'filename="My_clip{kept}-stylized.mp4"' in response.headers["Content-Disposition"]
    with av.open(str(path)) as output:
        video = output.streams.video[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == (128, 96)
        assert video.average_rate == 10
        assert output.duration is not None
        assert output.duration / av.time_base == pytest.approx(2.0, abs=0.1)
        assert len(output.streams.audio) == 1
        assert output.streams.audio[0].codec_context.name == "aac"
        frames = list(output.decode(video=0))
    assert len(frames) == 20
    assert {frame.format.name for frame in frames} == {"yuv420p"}


@pytest.mark.parametrize(
    ("kind", "content_type", "output_codec"),
    [("png", "image/png", "png"), ("jpeg", "image/jpeg", "mjpeg"), ("webp", "image/png", "png")],
)
async def test_image_job_gives_the_same_kind_at_the_same_size(
    server: RunningServer, tmp_path: Path, kind: str, content_type: str, output_codec: str
) -> None:
    # The name says video: the kind comes from the content.
    job = await submit(server, make_image(kind, 131, 97), "still.mp4", strength="0.6")  # type: ignore[arg-type]
    assert job["kind"] == "image"
    assert job["media"]["format"] == kind
    assert job["frames_total"] == 1
    done = await wait_job(server, job["id"])
    assert done["status"] == "completed", done
    response, path = await result(server, job["id"], tmp_path)
    assert response.content_type == content_type
    with av.open(str(path)) as output:
        assert output.streams.video[0].codec_context.name == output_codec
        picture = next(output.decode(video=0))
    assert (picture.width, picture.height) == (131, 97)


async def test_bad_uploads_are_refused_with_the_right_status(server: RunningServer, tmp_path: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes.txt", "not a video " * 200)
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.5, audio=False).read_bytes()

    status, body = await upload(server, b"", "empty.mp4")
    assert (status, body["error"]) == (422, "media refused")
    status, body = await upload(server, archive.getvalue(), "movie.mp4")
    assert (status, body["error"]) == (415, "unsupported media")
    status, body = await upload(server, b"GIF89a" + bytes(64), "anim.gif")
    assert status == 415
    for strength in ("1.5", "-0.1", "abc", "nan"):
        status, body = await upload(server, clip, "clip.mp4", strength=strength)
        assert status == 422, strength
        assert body["detail"][0]["field"] == "strength"
    status, body = await upload(server, clip, "clip.mp4", seed="-1")
    assert (status, body["detail"][0]["field"]) == (422, "seed")
    status, body = await upload(server, clip, "clip.mp4", num_inference_steps="5")
    assert (status, body["detail"][0]["field"]) == (422, "num_inference_steps")
    for control in ('{"kind": "pose", "scale": 1}', '{"kind": "canny", "scale": 2.5}', "canny"):
        status, body = await upload(server, clip, "clip.mp4", control=control)
        assert (status, body["detail"][0]["field"].split(".")[0]) == (422, "control"), control
    # A LoRA that is not in the LoRA folder is refused naming it, as a live change of the look is.
    status, body = await upload(server, clip, "clip.mp4", loras='[{"id": "nope.safetensors", "scale": 0.5}]')
    assert (status, body["detail"][0]["field"]) == (422, "loras.0.id")
    status, body = await upload(server, clip, "clip.mp4", loras='{"id": "x"}')
    assert (status, body["detail"][0]["field"]) == (422, "loras")
    # The ControlNet kind asked for is not loaded here: a 409 naming the kinds loaded (none).
    status, body = await upload(server, clip, "clip.mp4", control='{"kind": "depth", "scale": 1}')
    assert (status, body["detail"]) == (409, {"field": "control.kind", "kind": "depth", "loaded": []})
    status, body = await upload(server, clip, "clip.mp4", colour="red")
    assert (status, body["detail"][0]["field"]) == (422, "colour")
    status, body = await upload(server, clip, "clip.mp4", preset="noir")
    assert (status, body["detail"][0]["field"]) == (422, "preset")
    body_without_file = aiohttp.FormData({"prompt": "x"}, default_to_multipart=True)
    async with server.http.post(server.url("/api/jobs"), data=body_without_file) as response:
        assert response.status == 422
        assert (await response.json())["detail"][0]["field"] == "file"
    async with server.http.post(server.url("/api/jobs"), json={"file": "clip.mp4"}) as response:
        assert response.status == 415
    # Nothing refused left a job or a file behind.
    async with server.http.get(server.url("/api/jobs")) as response:
        assert (await response.json())["total"] == 0
    jobs_dir = Path(server.app[keys.CONFIG].server.data_dir) / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []


async def test_limits_from_config(make_config: Callable[..., Config], tmp_path: Path) -> None:
    running = await start_server(
        make_config(jobs={"max_upload_mb": 0.25, "max_resolution": 200, "max_duration_s": 1.5})
    )
    try:
        status, body = await upload(running, bytes(400_000), "big.mp4")
        assert (status, body["error"]) == (413, "upload too large")
        # Within the Content-Length allowance for the form, but the file itself is over: caught while streaming.
        status, body = await upload(running, bytes(int(0.25 * 1024 * 1024) + 1000), "big.mp4")
        assert status == 413
        wide = make_clip(tmp_path / "wide.mp4", seconds=0.5, width=256, height=96, audio=False)
        status, body = await upload(running, wide.read_bytes(), "wide.mp4")
        assert status == 422
        assert body["detail"][0]["field"] == "file" and "256x96" in body["detail"][0]["message"]
        long = make_clip(tmp_path / "long.mp4", seconds=2.0, audio=False)
        status, body = await upload(running, long.read_bytes(), "long.mp4")
        assert status == 422
        assert "longer than" in body["detail"][0]["message"]
        status, body = await upload(running, make_image("png", 250, 20), "wide.png")
        assert status == 422
    finally:
        await stop_server(running)


async def test_a_preset_sets_the_params_and_a_prompt_fills_its_slot(server: RunningServer) -> None:
    job = await submit(server, make_image("png"), "a.png", preset="watercolor", prompt="a cat", seed="5")
    assert job["preset"] == "watercolor"
    params = job["params"]
    assert params["prompt"].startswith("a watercolor painting of a cat,")
    assert (params["strength"], params["seed"]) == (0.5, 5)  # the preset's strength, the job's seed
    job = await submit(server, make_image("png"), "a.png", preset="watercolor", strength="0.9")
    assert job["params"]["strength"] == 0.9  # a field sent with the job beats the preset
    assert "a person" in job["params"]["prompt"]  # no subject: the configured default fills the slot
    async with server.http.get(server.url("/api/settings")) as response:
        assert (await response.json())["preset"] is None  # a job's preset leaves the live settings alone
    status, body = await upload(server, make_image("png"), "a.png", preset="nope")
    assert (status, body["detail"][0]["field"]) == (422, "preset")


async def test_unknown_and_malformed_ids_and_bad_queries(server: RunningServer) -> None:
    for job_id in ("0" * 32, "not-an-id", "z" * 32, "A" * 32, "0123"):
        for method, path in (
            ("GET", f"/api/jobs/{job_id}"),
            ("GET", f"/api/jobs/{job_id}/result"),
            ("POST", f"/api/jobs/{job_id}/cancel"),
            ("DELETE", f"/api/jobs/{job_id}"),
        ):
            async with server.http.request(method, server.url(path)) as response:
                assert response.status == 404, (method, path)
                assert (await response.json())["error"] in ("unknown job", "Not Found")
    for query in ("limit=101", "limit=0", "offset=-1", "status=done", "limit=ten", "page=2"):
        async with server.http.get(server.url(f"/api/jobs?{query}")) as response:
            assert response.status == 422, query
    async with server.http.get(server.url("/api/jobs?limit=100&offset=0&status=failed")) as response:
        assert response.status == 200
        assert await response.json() == {"jobs": [], "total": 0, "offset": 0, "limit": 100}


async def test_list_cancel_delete(server: RunningServer, tmp_path: Path) -> None:
    long = make_clip(tmp_path / "long.mp4", seconds=20.0, fps=15, audio=False).read_bytes()
    running = await submit(server, long, "long.mp4")
    waiting = await submit(server, make_image("png"), "a.png")
    await wait_job(server, running["id"], until={"processing"})
    async with server.http.get(server.url("/api/jobs?status=pending")) as response:
        assert [job["id"] for job in (await response.json())["jobs"]] == [waiting["id"]]

    # Cancelling a pending job: it never runs.
    async with server.http.post(server.url(f"/api/jobs/{waiting['id']}/cancel")) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "cancelled"
    # Cancelling the running job stops it part way; its result is not to be had.
    async with server.http.post(server.url(f"/api/jobs/{running['id']}/cancel")) as response:
        assert response.status == 200
    cancelled = await wait_job(server, running["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["frames_done"] < cancelled["frames_total"]
    async with server.http.get(server.url(f"/api/jobs/{running['id']}/result")) as response:
        assert response.status == 409
    async with server.http.post(server.url(f"/api/jobs/{running['id']}/cancel")) as response:
        assert response.status == 409

    finished = await submit(server, make_image("jpeg"), "b.jpg")
    assert (await wait_job(server, finished["id"]))["status"] == "completed"
    async with server.http.post(server.url(f"/api/jobs/{finished['id']}/cancel")) as response:
        assert response.status == 409
        assert (await response.json())["detail"] == {"status": "completed"}

    async with server.http.get(server.url("/api/jobs?limit=2")) as response:
        page = await response.json()
    assert page["total"] == 3
    assert [job["id"] for job in page["jobs"]] == [finished["id"], waiting["id"]]  # newest first

    folder = Path(server.app[keys.CONFIG].server.data_dir) / "jobs" / finished["id"]
    assert (folder / "output.jpg").is_file()
    for job_id in (finished["id"], running["id"], waiting["id"]):
        async with server.http.delete(server.url(f"/api/jobs/{job_id}")) as response:
            assert response.status == 200
        async with server.http.get(server.url(f"/api/jobs/{job_id}")) as response:
            assert response.status == 404
    assert not folder.exists()
    assert list((folder.parent).iterdir()) == []


async def test_delete_stops_a_running_job(server: RunningServer, tmp_path: Path) -> None:
    long = make_clip(tmp_path / "long.mp4", seconds=20.0, fps=15, audio=False).read_bytes()
    job = await submit(server, long, "long.mp4")
    await wait_job(server, job["id"], until={"processing"})
    async with server.http.delete(server.url(f"/api/jobs/{job['id']}")) as response:
        assert response.status == 200
    assert not (Path(server.app[keys.CONFIG].server.data_dir) / "jobs" / job["id"]).exists()
    # The worker is free for the next job.
    follow = await submit(server, make_image("png"), "a.png")
    assert (await wait_job(server, follow["id"]))["status"] == "completed"


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
async def test_damaged_video_fails_readably_and_the_next_job_completes(
    server: RunningServer, tmp_path: Path, damage: str
) -> None:
    # Faststart puts the index first, so the damaged file still probes fine and fails while rendering.
    data = bytearray(make_clip(tmp_path / "clip.mp4", seconds=2.0, faststart=True).read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        middle = len(data) // 3
        data[middle : middle + 3000] = bytes((i * 97 + 13) % 256 for i in range(3000))
    broken = await submit(server, bytes(data), "broken.mp4")
    good = await submit(server, make_image("png"), "ok.png")
    failed = await wait_job(server, broken["id"])
    assert failed["status"] == "failed"
    assert failed["error"].startswith("the video"), failed["error"]
    async with server.http.get(server.url(f"/api/jobs/{broken['id']}/result")) as response:
        assert response.status == 409
    assert (await wait_job(server, good["id"]))["status"] == "completed"
    async with server.http.get(server.url("/health")) as response:
        assert response.status == 200
    # The counts behind /api/stats and the stylize_jobs gauge follow the jobs' rows.

    async def settled() -> dict[str, int] | None:
        async with server.http.get(server.url("/api/stats")) as response:
            counts: dict[str, int] = (await response.json())["jobs"]
        return counts if counts["failed"] >= 1 and counts["completed"] >= 1 and counts["processing"] == 0 else None

    counts = await eventually(settled, 5, what="job counts in /api/stats")
    async with server.http.get(server.url("/metrics")) as response:
        assert f'stylize_jobs{{status="failed"}} {float(counts["failed"])}' in await response.text()


async def test_retention_removes_old_finished_jobs(make_config: Callable[..., Config]) -> None:
    running = await start_server(make_config(jobs={"keep_hours": 0.5 / 3600}))
    try:
        job = await submit(running, make_image("png"), "a.png")
        assert (await wait_job(running, job["id"]))["status"] == "completed"
        folder = Path(running.app[keys.CONFIG].server.data_dir) / "jobs" / job["id"]
        assert folder.is_dir()
        worker = running.app[jobs_keys.JOB_WORKER]
        assert await worker.sweep() == []  # finished less than half a second ago
        assert await worker.sweep(now=time.time() + 1.0) == [job["id"]]
        async with running.http.get(running.url(f"/api/jobs/{job['id']}")) as response:
            assert response.status == 404
        assert not folder.exists()
    finally:
        await stop_server(running)


async def poll_job(
    http: aiohttp.ClientSession, base: str, job_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll a server process (which may be restarting) until `done(job)`."""

    async def reached() -> dict[str, Any] | None:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(f"{base}/api/jobs/{job_id}") as response:
                if response.status == 200:
                    job: dict[str, Any] = await response.json()
                    return job if done(job) else None
        return None

    return await eventually(reached, 90, interval=0.05, what=f"job {job_id} to reach the wanted state")


@pytest.mark.heavy
async def test_a_job_killed_mid_render_completes_after_a_restart(data_dir: Path, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=8.0, fps=15).read_bytes()
    log = tmp_path / "server.log"
    # One torch thread: two servers in a row on a shared CPU stay quick and predictable.
    env = {"OMP_NUM_THREADS": "1"}
    async with aiohttp.ClientSession() as http:
        async with server_process(data_dir, log, env=env) as first:
            await wait_ready(http, first.url)
            async with http.post(f"{first.url}/api/jobs", data=form(clip, "clip.mp4")) as response:
                assert response.status == 202
                job_id = (await response.json())["id"]
            seen = await poll_job(
                http, first.url, job_id, lambda job: job["frames_done"] > 0 or job["status"] in FINISHED
            )
            first.process.send_signal(signal.SIGKILL)
            await first.process.wait()
        assert seen["status"] == "processing", seen
        assert 0 < seen["frames_done"] < seen["frames_total"] == 120

        async with server_process(data_dir, log, env=env) as second:
            await wait_ready(http, second.url)
            done = await poll_job(http, second.url, job_id, lambda job: job["status"] in FINISHED)
            assert done["status"] == "completed", done
            assert done["attempts"] == 2
            assert done["frames_done"] == 120
            async with http.get(f"{second.url}/api/jobs/{job_id}/result") as response:
                assert response.status == 200
                (tmp_path / "result.mp4").write_bytes(await response.read())
    with av.open(str(tmp_path / "result.mp4")) as output:
        assert output.streams.video[0].average_rate == 15
        assert len(output.streams.audio) == 1
        assert sum(1 for _ in output.decode(video=0)) == 120
    assert not list((data_dir / "jobs" / job_id).glob("*.part")), "the killed render's partial output is gone"
    assert not (data_dir / "jobs" / job_id / "segments").exists(), "the segments are gone once joined"


# -- bad input from the probes: every one a 4xx, nothing left behind ------------------------------


def damaged_mp4(tmp_path: Path, damage: str) -> bytes:
    data = bytearray(make_clip(tmp_path / "clip.mp4", seconds=0.5, faststart=True).read_bytes())
    if damage == "brand":
        data[8] = 0xFF  # the major brand no longer decodes as text
    else:
        at = data.find(b"stsd")  # the video's sample description: no codec named
        data[at : at + 4] = bytes(4)
    return bytes(data)


def huge_png(width: int = 16000, height: int = 16000) -> bytes:
    """A valid PNG of `width`x`height` one-bit pixels: small on disk, hundreds of MB decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


MALFORMED_MULTIPART = {
    "no boundary": ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\nabc\r\n--x--\r\n"),
    "wrong boundary": ("multipart/form-data; boundary=abc", b"--xyz\r\nContent-Disposition: form-data\r\n\r\n1\r\n"),
    "cut short": (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc',
    ),
    "no part headers end": ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=file"),
    "empty": ("multipart/form-data; boundary=x", b""),
    "junk header line": ("multipart/form-data; boundary=x", b"--x\r\n\x00\x01\x02\r\n\r\nabc\r\n--x--\r\n"),
}


async def test_malformed_multipart_is_a_4xx(server: RunningServer) -> None:
    for name, (content_type, body) in MALFORMED_MULTIPART.items():
        async with server.http.post(server.url("/api/jobs"), data=body, headers={"Content-Type": content_type}) as r:
            answer = await r.json()
        assert 400 <= r.status < 500, (name, answer)
    async with server.http.get(server.url("/api/jobs")) as response:
        assert (await response.json())["total"] == 0
    jobs_dir = Path(server.app[keys.CONFIG].server.data_dir) / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []


async def test_damaged_media_and_huge_pictures_are_refused_at_upload(server: RunningServer, tmp_path: Path) -> None:
    for damage in ("brand", "stsd"):
        status, body = await upload(server, damaged_mp4(tmp_path, damage), "damaged.mp4")
        assert status in (415, 422), (damage, body)
    status, body = await upload(server, huge_png(), "huge.png")
    assert (status, body["error"]) == (422, "media refused")
    assert "16000x16000" in body["detail"][0]["message"]
    async with server.http.get(server.url("/api/jobs")) as response:
        assert (await response.json())["total"] == 0


def test_a_huge_picture_is_refused_from_its_header_before_any_decode(tmp_path: Path) -> None:
    # The pixels are garbage: only the header can have told the size.
    header_only = huge_png(64, 64)[:33] + b"\x00\x00\x00\x04IDATjunk" + bytes(4)
    header_only = header_only[:16] + struct.pack(">II", 16000, 16000) + header_only[24:]
    path = tmp_path / "huge.png"
    path.write_bytes(header_only)
    with pytest.raises(MediaRejected, match="16000x16000"):
        probe(path, MediaLimits(600.0, 3840))
    assert image_size(make_image("jpeg", 131, 97)) == (131, 97)
    assert image_size(make_image("webp", 131, 97)) == (131, 97)
    assert image_size(make_image("png", 131, 97)) == (131, 97)


async def test_paging_past_what_sqlite_counts_is_422(server: RunningServer) -> None:
    for query in (f"offset={2**63}", f"skip={2**63}", "offset=99999999999999999999", "skip=-1"):
        async with server.http.get(server.url(f"/api/jobs?{query}")) as response:
            assert response.status == 422, query


# -- jobs that cannot wedge ------------------------------------------------------------------------


async def test_a_job_past_its_time_fails_and_frees_the_slot(make_config: Callable[..., Config], tmp_path: Path) -> None:
    running = await start_server(make_config(jobs={"timeout_s": 0.5}))
    try:
        # 300 frames: far more than half a second of rendering.
        long = make_clip(tmp_path / "long.mp4", seconds=20.0, fps=15, audio=False).read_bytes()
        stuck = await submit(running, long, "long.mp4")
        follow = await submit(running, make_image("png"), "a.png")
        failed = await wait_job(running, stuck["id"])
        assert failed["status"] == "failed"
        assert failed["error"] == "timed out after 0.5 s ([jobs] timeout_s)"
        assert failed["frames_done"] < failed["frames_total"]
        assert (await wait_job(running, follow["id"], until={"processing", *FINISHED}))["status"] != "pending"
        assert not list((Path(running.app[keys.CONFIG].server.data_dir) / "jobs" / stuck["id"]).glob("*.part"))
    finally:
        await stop_server(running)


async def test_a_job_interrupted_max_attempts_times_fails_with_the_reason(tmp_path: Path) -> None:
    database = Database(tmp_path / "jobs.db", schemas=[SCHEMA])
    await database.open()
    try:
        store = JobStore(database)
        media = MediaInfo("image", "png", 16, 16, frames=1)
        job = Job("a" * 32, "pending", "a.png", None, FrameParams("x", 0.5, 1), media, "in", "out", 1, time.time())
        await store.add(job)
        for attempt in (1, 2):
            claimed = await store.claim_next()
            assert claimed is not None and claimed.attempts == attempt
            assert await store.requeue_interrupted(max_attempts=3) == ([job.id], [])  # the server died mid-render
        claimed = await store.claim_next()
        assert claimed is not None and claimed.attempts == 3
        requeued, given_up = await store.requeue_interrupted(max_attempts=3)
        assert requeued == [] and [j.id for j in given_up] == [job.id]
        failed = await store.get(job.id)
        assert failed.status == "failed" and failed.error is not None and "gave up after 3 attempts" in failed.error
        assert await store.claim_next() is None
    finally:
        await database.close()


async def test_sweep_now_and_disk_use_in_stats(server: RunningServer) -> None:
    job = await submit(server, make_image("png"), "a.png")
    assert (await wait_job(server, job["id"]))["status"] == "completed"
    async with server.http.get(server.url("/api/stats")) as response:
        disk = (await response.json())["disk"]
    assert disk["jobs_bytes"] > 0 and disk["data_bytes"] >= disk["jobs_bytes"]
    assert disk["free_bytes"] > 0 and disk["total_bytes"] >= disk["free_bytes"]
    async with server.http.post(server.url("/api/jobs/sweep")) as response:
        assert (response.status, await response.json()) == (200, {"removed": [], "older_than_hours": 72.0})
    async with server.http.post(server.url("/api/jobs/sweep"), json={"older_than_hours": -1}) as response:
        assert response.status == 422
    async with server.http.post(server.url("/api/jobs/sweep"), json={"older_than_hours": 0}) as response:
        assert (await response.json())["removed"] == [job["id"]]
    async with server.http.get(server.url(f"/api/jobs/{job['id']}")) as response:
        assert response.status == 404


def test_a_stopped_video_render_resumes_from_its_last_whole_segment(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=8.0, fps=15)  # 120 frames, a bar moving 4 px a frame
    info = probe(clip, MediaLimits(600.0, 3840))
    segments, target = tmp_path / "segments", tmp_path / "out.mp4"

    def render() -> Render:
        return open_render(clip, target, info, EncodeOptions(), JpegEncoder(90), segments)

    first = render()
    assert first.resume_from == 0
    for _ in range(SEGMENT_FRAMES + 20):  # the server stops part way into the second segment
        frame = first.read()
        assert frame is not None
        first.write(frame, frame.data)  # "stylized" as itself: the pictures can be checked after
    first.close()
    assert len(list(segments.glob("seg-*.mp4"))) == 1 and not list(segments.glob("*.part"))

    second = render()
    assert second.resume_from == SEGMENT_FRAMES
    rendered = 0
    while (frame := second.read()) is not None:
        if rendered == 0:
            assert frame.pts is not None and frame.time_base is not None
            assert round(frame.pts * frame.time_base * 15) == SEGMENT_FRAMES  # the first frame not yet rendered
        second.write(frame, frame.data)
        rendered += 1
    assert rendered == 120 - SEGMENT_FRAMES
    second.finish()
    second.close()
    with av.open(str(target)) as output:
        video = output.streams.video[0]
        assert video.average_rate == 15
        assert output.duration is not None and output.duration / av.time_base == pytest.approx(8.0, abs=0.15)
        assert len(output.streams.audio) == 1
        frames = [frame.to_ndarray(format="gray") for frame in output.decode(video=0)]
    assert len(frames) == 120
    # Every frame in its place across the seam: the bright bar sits where frame i drew it.
    for index, picture in enumerate(frames):
        assert abs(int(picture.mean(axis=0).argmax()) - (index * 4) % 128) <= 3, index
