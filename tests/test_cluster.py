"""A cluster of real processes on this box: redis-server on a free port, two workers with the tiny model
on CPU (each on a data dir of its own, as on machines that share no disk) and a front, started once
for the module; real aiortc peers through the front. Then its faults, one after the other: a worker
SIGKILLed under a stream and a render job, Redis restarted empty under load, the front restarted."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from pythonosc.udp_client import SimpleUDPClient

from server.testing.clips import make_clip
from server.testing.cluster import ClusterOnThisBox, Node, cluster_view, workers_ready
from server.testing.rtc_client import RtcClient, connect, is_plain, whep_view, whip_publish
from server.testing.servers import free_port, server_process, wait_ready
from server.testing.waiting import eventually
from tests.test_whip_whep import sdpfrag

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

PREFIX = "test"


class Events:
    """Every message of one node's /api/events, read in the background."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.seen.append(json.loads(message.data))

    def find(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["type"] == kind and all(e.get(k) == v for k, v in fields.items())]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ws.close()


@contextlib.asynccontextmanager
async def events(http: aiohttp.ClientSession, node: Node) -> AsyncIterator[Events]:
    listener = Events(await http.ws_connect(f"{node.url}/api/events"))
    try:
        yield listener
    finally:
        await listener.close()


class Cluster:
    def __init__(self, box: ClusterOnThisBox, front: Node, http: aiohttp.ClientSession, osc_port: int) -> None:
        self.box = box
        self.front = front
        self.http = http
        self.osc_port = osc_port

    def url(self, path: str) -> str:
        return self.front.url + path

    async def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body) as response:
            return response.status, await response.json(content_type=None)

    async def streams(self) -> list[dict[str, Any]]:
        status, body = await self.call("GET", self.url("/api/streams"))
        assert status == 200
        return list(body["streams"])

    async def connect(self, **options: Any) -> RtcClient:
        return await connect(self.http, self.url("/api/offer"), size=(128, 96), **options)

    async def idle(self) -> None:
        """No stream left over from an earlier test, as the workers and (by their heartbeats) the front see it."""

        async def none() -> bool:
            return not await self.streams() and not any(await _loads(self))

        await eventually(none, 15, what="no streams")

    def worker(self, worker_id: str) -> Node:
        return next(n for n in self.box.alive("worker") if n.url.endswith(f":{worker_id.rsplit('-', 1)[-1]}"))


def _data_dir(root: Path, name: str, models: Path) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "models").symlink_to(models)
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    env = {
        "STYLIZE_ENGINE_WARMUP": "false",
        "STYLIZE_CLUSTER_JOB_CLAIM_TIMEOUT_S": "2",
        "STYLIZE_JOBS_LIVE_SHARE": "1",
        "STYLIZE_MODEL_RESOLUTION": "64",
    }
    box = ClusterOnThisBox(root, _data_dir(root, "front-data", model_cache), env=env, prefix=PREFIX)
    osc_port = free_port()
    await box.start_redis()
    async with aiohttp.ClientSession() as http:
        try:
            await asyncio.gather(
                *(box.start("worker", data_dir=_data_dir(root, f"worker-{i}", model_cache)) for i in range(2))
            )
            front = await box.start("front", env={"STYLIZE_OSC_ENABLED": "true", "STYLIZE_OSC_PORT": str(osc_port)})
            running = Cluster(box, front, http, osc_port)
            await workers_ready(http, front, 2)
            yield running
        finally:
            await box.close()


async def test_offers_spread_over_the_workers_and_every_stream_answers_from_the_front(cluster: Cluster) -> None:
    view = await cluster_view(cluster.http, cluster.front)
    assert {"id", "host", "device", "streams", "fps", "busy", "last_seen"} <= view["workers"][0].keys()
    assert [front["id"] for front in view["fronts"]] and view["redis"]["connected"]
    worker_b = cluster.box.alive("worker")[1]
    async with events(cluster.http, cluster.front) as on_front, events(cluster.http, worker_b) as on_b:
        first, second = await cluster.connect(), await cluster.connect(name="stage")
        try:
            await first.wait_frames(3)
            await second.wait_frames(3)  # media straight between each peer and its worker
            streams = {stream["id"]: stream for stream in await cluster.streams()}
            assert {first.stream_id, second.stream_id} <= streams.keys()
            assert streams[first.stream_id]["worker"] != streams[second.stream_id]["worker"], streams
            assert streams[second.stream_id]["name"] == "stage"
            # Every node's events on every node: both streams up on the front and on worker b.
            for listener in (on_front, on_b):
                await eventually(
                    lambda listener=listener: (
                        {e["stream_id"] for e in listener.find("stream", action="up")}
                        >= {first.stream_id, second.stream_id}
                    ),
                    what="both streams up",
                )

            async def balanced() -> bool:
                return await _loads(cluster) == [1, 1]

            await eventually(balanced, what="one stream on each worker in /api/cluster")
            # A stream's own routes answer through the front, wherever it runs.
            async with cluster.http.get(cluster.url(f"/api/streams/{second.stream_id}/snapshot.jpg")) as response:
                assert response.status == 200 and response.content_type == "image/jpeg"
            async with cluster.http.get(cluster.url("/api/outputs/stage/snapshot.jpg")) as response:
                assert response.status == 200
            status, body = await cluster.call("DELETE", cluster.url(f"/api/streams/{first.stream_id}"))
            assert (status, body) == (200, {"closed": first.stream_id})
            status, body = await cluster.call("DELETE", cluster.url("/api/streams/nosuchstream"))
            assert (status, body["error"]) == (404, "unknown stream")
            await eventually(lambda: on_front.find("stream", action="down", stream_id=first.stream_id), what="down")
            assert first.stream_id not in {stream["id"] for stream in await cluster.streams()}
            # The front's figures span the workers.
            async with cluster.http.get(cluster.url("/metrics")) as response:
                metrics = await response.text()
            assert "stylize_cluster_workers 2.0" in metrics and "stylize_streams_active 1.0" in metrics
            status, stats = await cluster.call("GET", cluster.url("/api/stats"))
            assert [s["worker"] for s in stats["streams"]] == [streams[second.stream_id]["worker"]]
            assert len(stats["workers"]) == 2 and stats["frames"]["out"] > 0
        finally:
            await first.close()
            await second.close()


async def test_whip_in_and_whep_out_through_the_front(cluster: Cluster) -> None:
    await cluster.idle()
    obs = await whip_publish(cluster.http, cluster.url("/api/whip/cam"), receive=False)
    try:
        await eventually(lambda: _live(cluster, "cam"), 30, what="the name live")
        # Trickle ICE reaches the session's worker; its ETag and refusals come back.
        location, offer = str(obs.answer["location"]), obs.pc.localDescription.sdp
        headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
        async with cluster.http.patch(location, data=sdpfrag(offer), headers=headers) as response:
            assert response.status == 204 and response.headers["ETag"] == f'"{obs.stream_id}"'
        async with cluster.http.patch(location, data=sdpfrag(offer, ufrag="again"), headers=headers) as response:
            assert response.status == 422 and (await response.json())["error"] == "ICE restart not supported"
        viewer = await whep_view(cluster.http, cluster.url("/api/outputs/cam/whep"))
        try:
            await viewer.wait_frames(3)  # routed to the worker the name streams on
            async with cluster.http.get(viewer.location) as response:
                assert response.status == 200
        finally:
            async with cluster.http.delete(viewer.location) as response:
                assert response.status == 200
            await viewer.close()
    finally:
        async with cluster.http.delete(str(obs.answer["location"])) as response:
            assert response.status == 200
        await obs.close()


async def _live(cluster: Cluster, name: str) -> bool:
    _, body = await cluster.call("GET", cluster.url("/api/outputs"))
    return any(o["name"] == name and o["state"] == "live" and o["frames"] > 0 for o in body["outputs"])


async def _loads(cluster: Cluster) -> list[int]:
    return sorted(w["streams"] for w in (await cluster_view(cluster.http, cluster.front))["workers"])


async def test_an_osc_change_on_the_front_reaches_the_streams_on_every_worker(cluster: Cluster) -> None:
    await cluster.idle()
    clients = [await cluster.connect(), await cluster.connect()]
    try:
        for client in clients:
            await client.wait_frames(3)
        by_id = {stream["id"]: stream["worker"] for stream in await cluster.streams()}
        assert len({by_id[client.stream_id] for client in clients}) == 2, "one stream on each worker"
        osc = SimpleUDPClient("127.0.0.1", cluster.osc_port)
        osc.send_message("/stylize/strength", 0.0)
        for client in clients:
            worker = cluster.worker(by_id[client.stream_id])

            async def obeyed(client: RtcClient = client, worker: Node = worker) -> bool:
                status, body = await cluster.call("GET", f"{worker.url}/api/streams/{client.stream_id}/settings")
                return status == 200 and body["settings"]["strength"] == 0.0

            await eventually(obeyed, 10, what="the worker's stream at strength 0")
            seen = len(client.received)
            await eventually(
                lambda client=client, seen=seen: any(is_plain(r.frame) for r in client.received[seen:]),
                30,
                what="a frame at strength 0",
            )
        # One stream by its id, over OSC on the front, though it runs on a worker.
        target = clients[1]
        osc.send_message(f"/stylize/stream/{target.stream_id}/prompt", "only this one")
        worker = cluster.worker(by_id[target.stream_id])

        async def restyled() -> bool:
            status, body = await cluster.call("GET", f"{worker.url}/api/streams/{target.stream_id}/settings")
            return status == 200 and body["overrides"].get("prompt") == "only this one"

        await eventually(restyled, 10, what="the stream's own prompt on its worker")
    finally:
        for client in clients:
            await client.close()
        await cluster.call("PATCH", cluster.url("/api/settings"), {"strength": 0.5})


async def test_a_killed_worker_leaves_within_5_s_its_stream_comes_back_elsewhere_and_its_job_runs_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.idle()
    clients = [await cluster.connect(), await cluster.connect()]
    redis = aioredis.Redis.from_url(cluster.box.redis.url, decode_responses=True)
    async with events(cluster.http, cluster.front) as on_front:
        try:
            for client in clients:
                await client.wait_frames(3)
            clip = make_clip(tmp_path / "clip.mp4", seconds=6.0, fps=10, width=64, height=48, audio=False)
            form = aiohttp.FormData()
            form.add_field("file", clip.read_bytes(), filename="clip.mp4", content_type="video/mp4")
            async with cluster.http.post(cluster.url("/api/jobs"), data=form) as response:
                assert response.status == 202, await response.text()
                job_id = (await response.json())["id"]
            holder = await eventually(
                lambda: _rendering(redis, job_id), 60, what="a worker rendering the job, past its first frames"
            )
            victim = cluster.worker(holder)
            by_id = {stream["id"]: stream["worker"] for stream in await cluster.streams()}
            lost = next(client for client in clients if by_id[client.stream_id] == holder)
            survivor_id = next(w for w in by_id.values() if w != holder)

            victim.kill()
            await eventually(lambda: _worker_ids(cluster, holder), 5.0, interval=0.1, what=f"{holder} off /api/cluster")
            down = await eventually(
                lambda: on_front.find("stream", action="down", stream_id=lost.stream_id), 10, what="its stream down"
            )
            assert down[0]["reason"] == "worker lost"
            assert lost.stream_id not in {stream["id"] for stream in await cluster.streams()}

            # What the page does on such a stream-down event: offer again, through the front.
            again = await cluster.connect()
            clients.append(again)
            await again.wait_frames(3)
            assert {s["id"]: s["worker"] for s in await cluster.streams()}[again.stream_id] == survivor_id

            # The job: taken over by the other worker once its claim went stale, completed exactly once.
            job = await eventually(lambda: _job(cluster, job_id, "completed"), 120, interval=0.2, what="job done")
            assert job["attempts"] == 2 and job["frames_done"] == job["frames_total"] == 60
            # Its event travels worker -> Redis -> front -> WebSocket, and may land just after the status.
            completed = await eventually(
                lambda: on_front.find("job", action="completed"), 10, what="the job's completed event on the front"
            )
            assert len(completed) == 1
            async with cluster.http.get(cluster.url(f"/api/jobs/{job_id}/result")) as response:
                assert response.status == 200, await response.text()  # from the survivor's disk, through the front
                result = await response.read()
            with av.open(io.BytesIO(result)) as container:
                assert sum(1 for _ in container.decode(video=0)) == 60
        finally:
            for client in clients:
                await client.close()
            await redis.aclose()
    await cluster.box.stop(victim)


async def _rendering(redis: aioredis.Redis, job_id: str) -> str | None:
    job = await redis.hgetall(f"{PREFIX}:job:{job_id}")
    progressed = job.get("status") == "processing" and int(job.get("frames_done") or 0) > 0
    return str(job["worker"]) if progressed else None


async def _worker_ids(cluster: Cluster, gone: str) -> bool:
    return gone not in {w["id"] for w in (await cluster_view(cluster.http, cluster.front))["workers"]}


async def _job(cluster: Cluster, job_id: str, status: str) -> dict[str, Any] | None:
    code, job = await cluster.call("GET", cluster.url(f"/api/jobs/{job_id}"))
    assert code == 200
    assert job["status"] in ("pending", "processing", status), job
    return dict(job) if job["status"] == status else None


async def test_streams_run_on_through_a_redis_restart_and_the_nodes_resync(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.call("PATCH", cluster.url("/api/settings"), {"prompt": "before the outage", "seed": 11})
    client = await cluster.connect()
    try:
        await client.wait_frames(3)
        worker = cluster.worker({s["id"]: s["worker"] for s in await cluster.streams()}[client.stream_id])
        await cluster.box.redis.stop()
        seen = len(client.received)
        await client.wait_frames(15)  # the stream does not need Redis
        assert len(client.received) >= seen + 15
        # Redis comes back without its data: the nodes reconnect, write their state back and resync.
        await cluster.box.start_redis(tmp_path / "empty")

        async def resynced() -> bool:
            view = await cluster_view(cluster.http, cluster.front)
            status, _ = await cluster.call("GET", cluster.url(f"/api/streams/{client.stream_id}/settings"))
            return view["redis"]["connected"] and len(view["workers"]) == 1 and status == 200

        await eventually(resynced, 30, interval=0.2, what="the front and the worker back in step")
        _, settings = await cluster.call("GET", cluster.url("/api/settings"))
        assert (settings["prompt"], settings["seed"]) == ("before the outage", 11)
        await cluster.call("PATCH", cluster.url("/api/settings"), {"seed": 12})

        async def followed() -> bool:
            status, body = await cluster.call("GET", f"{worker.url}/api/streams/{client.stream_id}/settings")
            return status == 200 and body["settings"]["seed"] == 12

        await eventually(followed, 10, what="a change after the outage reaching the worker's stream")
        before = len(client.received)
        await client.wait_frames(5)
        assert len(client.received) > before
    finally:
        await client.close()


async def test_a_front_restart_leaves_the_workers_streams_running(cluster: Cluster) -> None:
    client = await cluster.connect()
    try:
        await client.wait_frames(3)
        port = cluster.front.port
        cluster.front.kill()
        await cluster.box.stop(cluster.front)
        seen = len(client.received)
        await client.wait_frames(10)  # media never went through the front
        assert len(client.received) >= seen + 10
        cluster.front = await cluster.box.start("front", port=port)
        assert client.stream_id in {stream["id"] for stream in await cluster.streams()}
        status, body = await cluster.call("DELETE", cluster.url(f"/api/streams/{client.stream_id}"))
        assert (status, body) == (200, {"closed": client.stream_id})
    finally:
        await client.close()


@pytest.mark.asyncio(loop_scope="function")
async def test_workers_n_runs_its_own_redis_and_workers_and_stops_them(tmp_path: Path, model_cache: Path) -> None:
    data = _data_dir(tmp_path, "data", model_cache)
    env = {
        "STYLIZE_CLUSTER_WORKERS": "2",
        "STYLIZE_ENGINE_WARMUP": "false",
        "STYLIZE_MODEL_RESOLUTION": "64",
        "STYLIZE_MODEL_DEVICE": "cpu",
    }
    async with aiohttp.ClientSession() as http:
        async with server_process(data, tmp_path / "front.log", env=env) as front:
            await wait_ready(http, front.url)
            async with http.get(f"{front.url}/api/cluster") as response:
                view = await response.json()
            assert view["redis"]["url"].startswith("unix://") and view["redis"]["url"].endswith("redis.sock")

            async def two_ready() -> list[Any]:
                async with http.get(f"{front.url}/api/cluster") as response:
                    workers = (await response.json())["workers"]
                return workers if sum(w["state"] == "ready" for w in workers) == 2 else []

            workers = await eventually(two_ready, 60, interval=0.1, what="two workers")
            client = await connect(http, f"{front.url}/api/offer", size=(128, 96))
            try:
                await client.wait_frames(3)
            finally:
                await client.close()
        # Stopping the front stopped its workers (and its Redis).
        for worker in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(worker["pid"], 0)
    assert (data / "redis" / "appendonlydir").is_dir()
