"""Recordings per name with real peers: start/stop, the files, the changes at their pts, bad input."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from server.config import Config
from server.control import keys as control_keys
from server.testing.osc_controller import OscController
from server.testing.rtc_client import HEIGHT, WIDTH, connect
from server.testing.servers import RunningServer, server_process, start_server, stop_server, wait_ready
from server.testing.waiting import eventually


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[RunningServer]:
    running = await start_server(make_config(engine={"max_batch": 1}, recordings={"segment_s": 0.5}))
    yield running
    await stop_server(running)


async def recording(server: RunningServer, recording_id: str) -> dict[str, Any]:
    status, body = await server.call("GET", f"/api/recordings/{recording_id}")
    assert status == 200, body
    return body


def decoded(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data)) as container:
        return list(container.decode(video=0))


async def test_a_name_is_recorded_from_its_first_frame_with_each_change_at_its_pts(server: RunningServer) -> None:
    status, started = await server.call("POST", "/api/outputs/stage/recordings")
    assert status == 201 and started["state"] == "waiting" and started["name"] == "stage"
    status, refused = await server.call("POST", "/api/outputs/stage/recordings")
    assert status == 409 and refused["detail"]["id"] == started["id"]

    client = await connect(server.http, server.url("/api/offer"), name="stage")
    controller = OscController(server.app[control_keys.OSC].port)
    await controller.start()
    try:
        await eventually(lambda: _frames_at_least(server, started["id"], 20), timeout=60, what="a first closed segment")
        status, _ = await server.call("PATCH", "/api/outputs/stage/settings", {"prompt": "a red fox"})
        assert status == 200
        await eventually(lambda: _frames_at_least(server, started["id"], 45), timeout=60, what="more frames")
        controller.send("/stylize/name/stage/strength", 0.25)
        await eventually(lambda: _frames_at_least(server, started["id"], 70), timeout=60, what="more frames")
    finally:
        controller.close()
        await client.close()
    status, stopped = await server.call("POST", f"/api/recordings/{started['id']}/stop")
    assert status == 200 and stopped["state"] == "stopped" and stopped["stop_reason"] is None
    assert stopped["frames"] >= 70 and stopped["segments"] >= 3 and stopped["duration_s"] > 2.0
    # Each change once, at the first frame that obeyed it: HTTP's prompt, then OSC's strength.
    seen = [(c["settings"]["prompt"], c["settings"]["strength"]) for c in stopped["changes"]]
    assert seen[1:] == [("a red fox", seen[0][1]), ("a red fox", 0.25)] and seen[0][0] != "a red fox", seen
    pts = [change["pts"] for change in stopped["changes"]]
    assert pts[0] == 0 and 0 < pts[1] < pts[2] < stopped["duration_s"] * 90000
    change_pts = pts[1]

    async with server.http.get(server.url(f"/api/recordings/{started['id']}/output.mp4")) as response:
        assert response.status == 200 and response.content_type == "video/mp4"
        frames = decoded(await response.read())
    assert len(frames) == stopped["frames"] and (frames[0].width, frames[0].height) == (WIDTH, HEIGHT)
    assert [f.pts for f in frames] == sorted(f.pts for f in frames)

    # The show again through the engine, each change at its pts: the same frames (same encoder, same input).
    replayed = await rendered(server, started["id"], {"mode": "replay"})
    assert len(replayed) == len(frames)
    for shown, again in zip(frames, replayed, strict=True):
        assert again.pts == shown.pts
        assert np.array_equal(again.to_ndarray(format="yuv420p"), shown.to_ndarray(format="yuv420p")), shown.pts

    # Re-mastered larger, another prompt from the change's pts on: same frames, at the same pts.
    remaster = {"mode": "remaster", "width": 2 * WIDTH, "height": 2 * HEIGHT, "from_pts": change_pts}
    remastered = await rendered(server, started["id"], {**remaster, "settings": {"prompt": "a blue whale"}})
    assert [f.pts for f in remastered] == [f.pts for f in frames]
    assert (remastered[0].width, remastered[0].height) == (2 * WIDTH, 2 * HEIGHT)
    # At the show's size: the show's frames up to that pts, another picture from the frame at it on.
    override = {"mode": "remaster", "from_pts": change_pts, "settings": {"prompt": "a blue whale"}}
    for shown, again in zip(frames, await rendered(server, started["id"], override), strict=True):
        same = np.array_equal(again.to_ndarray(format="yuv420p"), shown.to_ndarray(format="yuv420p"))
        assert same == (shown.pts < change_pts), shown.pts

    # Re-mastered with more steps and temporal memory on (settings that landed beside recording): the
    # whole show restyled, every frame at its pts.
    richer = {"mode": "remaster", "settings": {"num_inference_steps": 2, "temporal": {"feedback": 0.5, "frames": 1}}}
    richer_frames = await rendered(server, started["id"], richer)
    assert [f.pts for f in richer_frames] == [f.pts for f in frames]
    assert not any(
        np.array_equal(again.to_ndarray(format="yuv420p"), shown.to_ndarray(format="yuv420p"))
        for shown, again in zip(frames, richer_frames, strict=True)
    )

    async with server.http.get(server.url(f"/api/recordings/{started['id']}/bundle")) as response:
        assert response.status == 200
        with tarfile.open(fileobj=io.BytesIO(await response.read())) as tar:
            names = tar.getnames()
    assert f"{started['id']}/changes.jsonl" in names and f"{started['id']}/seg-00000/input.mkv" in names

    status, listed = await server.call("GET", "/api/recordings")
    assert status == 200 and [r["id"] for r in listed["recordings"]] == [started["id"]]
    status, _ = await server.call("POST", f"/api/recordings/{started['id']}/stop")
    assert status == 404
    status, deleted = await server.call("DELETE", f"/api/recordings/{started['id']}")
    assert status == 200 and deleted == {"deleted": started["id"]}
    status, _ = await server.call("GET", f"/api/recordings/{started['id']}")
    assert status == 404


async def rendered(server: RunningServer, recording_id: str, body: dict[str, Any]) -> list[av.VideoFrame]:
    status, job = await server.call("POST", f"/api/recordings/{recording_id}/render", body)
    assert status == 202, job

    async def completed() -> bool:
        status, now = await server.call("GET", f"/api/jobs/{job['id']}")
        assert status == 200 and now["status"] in ("pending", "processing", "completed"), now
        return bool(now["status"] == "completed")

    await eventually(completed, timeout=120, what="the render job")
    async with server.http.get(server.url(f"/api/jobs/{job['id']}/result")) as response:
        assert response.status == 200
        return decoded(await response.read())


async def _frames_at_least(server: RunningServer, recording_id: str, count: int) -> bool:
    return (await recording(server, recording_id))["frames"] >= count


@pytest.mark.parametrize("recording_id", ["..", "..%2F..%2Fstylize.db", "0123456789ag", "ABCDEF012345"])
async def test_ids_that_are_not_ids_are_unknown(server: RunningServer, recording_id: str) -> None:
    for method, path in [("GET", ""), ("POST", "/stop"), ("DELETE", ""), ("GET", "/output.mp4")]:
        async with server.http.request(method, server.url(f"/api/recordings/{recording_id}{path}")) as response:
            assert response.status == 404, (method, path)


async def test_osc_records_a_name_and_drops_what_is_not_a_switch(server: RunningServer) -> None:
    listener = server.app[control_keys.OSC]
    controller = OscController(listener.port)
    await controller.start()
    events = await server.http.ws_connect(server.url("/api/events?types=recording&name=band"))
    try:
        controller.send("/stylize/name/band/record", True)

        async def listed() -> list[dict[str, Any]]:
            return [r for r in (await server.call("GET", "/api/recordings"))[1]["recordings"] if r["name"] == "band"]

        [started] = await eventually(listed, what="the OSC recording")
        assert started["state"] == "waiting"
        controller.send("/stylize/name/band/record", 1)  # again: a toggle's state, not a second recording
        rejected = listener.rejected
        controller.send("/stylize/name/band/record", 2)
        controller.send("/stylize/name/band/record")
        await eventually(lambda: listener.rejected == rejected + 2, what="two drops")
        status, _ = await server.call("POST", "/api/outputs/band/recordings")
        assert status == 409
        controller.send("/stylize/name/band/record", 0.0)
        await eventually(lambda: _state(server, started["id"], "stopped"), what="stopped over OSC")
        assert len(await listed()) == 1
        heard = []
        async with asyncio.timeout(10):
            while len(heard) < 2:
                event = json.loads((await events.receive()).data)
                heard.append((event["action"], event["recording"]["id"], event["recording"]["state"]))
        assert heard == [("started", started["id"], "waiting"), ("stopped", started["id"], "stopped")]
    finally:
        await events.close()
        controller.close()


async def _state(server: RunningServer, recording_id: str, state: str) -> bool:
    return (await recording(server, recording_id))["state"] == state


@pytest.mark.heavy
async def test_a_recording_killed_mid_segment_keeps_its_closed_segments_playable(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    env = {"STYLIZE_RECORDINGS_SEGMENT_S": "0.5", "STYLIZE_ENGINE_MAX_BATCH": "1"}
    async with aiohttp.ClientSession() as http:
        async with server_process(data_dir, log, env=env) as first:
            await wait_ready(http, first.url)
            async with http.post(f"{first.url}/api/outputs/stage/recordings") as response:
                assert response.status == 201
                recording_id = (await response.json())["id"]
            client = await connect(http, f"{first.url}/api/offer", name="stage")
            try:

                async def two_segments() -> bool:
                    async with http.get(f"{first.url}/api/recordings/{recording_id}") as response:
                        return bool((await response.json())["segments"] >= 2)

                await eventually(two_segments, timeout=60, what="two closed segments")
                first.process.send_signal(signal.SIGKILL)
                await first.process.wait()
            finally:
                await client.close()

        async with server_process(data_dir, log, env=env) as second:
            await wait_ready(http, second.url)
            async with http.get(f"{second.url}/api/recordings/{recording_id}") as response:
                after = await response.json()
            assert after["state"] in ("damaged", "stopped") and after["segments"] >= 2, after
            assert after["stop_reason"] == "the server stopped while recording"
            async with http.get(f"{second.url}/api/recordings/{recording_id}/output.mp4") as response:
                assert response.status == 200
                frames = decoded(await response.read())
            assert len(frames) == after["frames"] > 0
            async with http.post(f"{second.url}/api/outputs/stage/recordings") as response:
                assert response.status == 201, "the name is free again"


async def test_a_full_share_stops_the_recording_cleanly_and_refuses_the_next(
    make_config: Callable[..., Config],
) -> None:
    # 400 kB: a few segments of a 320x240 stream (FFV1 input is most of it).
    running = await start_server(make_config(engine={"max_batch": 1}, recordings={"segment_s": 0.3, "max_gb": 4e-4}))
    try:
        status, started = await running.call("POST", "/api/outputs/stage/recordings")
        assert status == 201
        client = await connect(running.http, running.url("/api/offer"), name="stage")
        try:
            await eventually(lambda: _state(running, started["id"], "stopped"), timeout=60, what="a full share")
        finally:
            await client.close()
        stopped = await recording(running, started["id"])
        assert "full" in stopped["stop_reason"] and stopped["frames"] > 0, stopped
        async with running.http.get(running.url(f"/api/recordings/{started['id']}/output.mp4")) as response:
            assert response.status == 200
            assert len(decoded(await response.read())) == stopped["frames"]
        status, refused = await running.call("POST", "/api/outputs/stage/recordings")
        assert status == 507, refused
        status, _ = await running.call("POST", f"/api/recordings/{started['id']}/stop")
        assert status == 404, "it stopped by itself"
    finally:
        await stop_server(running)


async def test_a_corrupt_segment_at_start_up_is_listed_damaged_with_the_frames_that_read(
    make_config: Callable[..., Config], data_dir: Path
) -> None:
    config = make_config(engine={"max_batch": 1}, recordings={"segment_s": 0.3})
    running = await start_server(config)
    try:
        status, started = await running.call("POST", "/api/outputs/stage/recordings")
        client = await connect(running.http, running.url("/api/offer"), name="stage")
        try:
            await eventually(lambda: _segments_at_least(running, started["id"], 3), timeout=60, what="3 segments")
        finally:
            await client.close()
        status, stopped = await running.call("POST", f"/api/recordings/{started['id']}/stop")
        assert status == 200
    finally:
        await stop_server(running)

    # As a crash would leave it (still `recording`), with its second segment's video cut in half.
    folder = data_dir / "recordings" / started["id"]
    state = json.loads((folder / "recording.json").read_text())
    (folder / "recording.json").write_text(json.dumps({**state, "state": "recording"}))
    second = folder / "seg-00001" / "output.mp4"
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    second_frames = len((folder / "seg-00001" / "frames.jsonl").read_text().splitlines())

    running = await start_server(config)
    try:
        after = await recording(running, started["id"])
        assert after["state"] == "damaged" and after["damaged_segments"] == [1], after
        assert after["frames"] == stopped["frames"] - second_frames
        async with running.http.get(running.url(f"/api/recordings/{started['id']}/output.mp4")) as response:
            assert response.status == 200
            assert len(decoded(await response.read())) == after["frames"]
    finally:
        await stop_server(running)


async def _segments_at_least(server: RunningServer, recording_id: str, count: int) -> bool:
    return (await recording(server, recording_id))["segments"] >= count


async def test_a_render_of_nothing_or_with_bad_fields_is_refused(server: RunningServer) -> None:
    status, started = await server.call("POST", "/api/outputs/nobody/recordings")
    assert status == 201 and started["state"] == "waiting"
    path = f"/api/recordings/{started['id']}/render"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"mode": "replay", "width": 640, "height": 480}, "a replay takes no overrides"),
        ({"mode": "remaster", "width": 640}, "width and height go together"),
        ({"mode": "remaster", "width": 641, "height": 480}, "multiple of 2"),
        ({"mode": "again"}, "mode"),
        ({"mode": "remaster", "settings": {"strength": 7}}, "strength"),
        ({"mode": "remaster", "settings": {"num_inference_steps": 9}}, "num_inference_steps"),
    ]
    for body, said in bad:
        status, refused = await server.call("POST", path, body)
        assert status == 422 and said in json.dumps(refused), (body, refused)
    status, refused = await server.call("POST", path, {"mode": "replay"})
    assert status == 409 and refused["error"] == "nothing recorded yet"
    async with server.http.get(server.url(f"/api/recordings/{started['id']}/output.mp4")) as response:
        assert response.status == 409
    status, _ = await server.call("POST", "/api/recordings/0123456789ab/render", {"mode": "replay"})
    assert status == 404
    status, refused = await server.call("POST", "/api/outputs/no%20name/recordings")
    assert status == 422 and refused["detail"][0]["field"] == "name"
    status, deleted = await server.call("DELETE", f"/api/recordings/{started['id']}")
    assert (status, deleted) == (200, {"deleted": started["id"]}), "a waiting recording is stopped, then deleted"
