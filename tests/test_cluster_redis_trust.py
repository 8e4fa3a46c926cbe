"""Redis is shared, not trusted: what someone with only write access to it plants is refused (a
worker entry that would get the cluster token and people's offers, a job record pointing outside
its folder or at a stranger's address), and one bad entry never stops the other nodes' view."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from pipeline.contract import FrameParams
from server.cluster.identity import NodeIdentity
from server.cluster.job_queue import RedisJobs
from server.cluster.link import RedisLink
from server.cluster.registry import Registry
from server.cluster.replicated_settings import ReplicatedSettings
from server.config import ClusterConfig
from server.control.events import EventHub
from server.control.settings import StyleSettings
from server.jobs.media import MediaInfo
from server.jobs.store import Job, JobNotFound

SECRET = "the-cluster-token"
JOB = "a" * 32


class Planted:
    """A node's registry on a real Redis, and a raw client writing what an intruder would."""

    def __init__(self, redis_url: str) -> None:
        self.prefix = f"trust-{uuid.uuid4().hex[:8]}"
        self.link = RedisLink(redis_url, self.prefix)
        self.raw = aioredis.Redis.from_url(redis_url, decode_responses=True)

    def registry(self, name: str, secret: str = SECRET) -> Registry:
        identity = NodeIdentity(id=name, role="worker", url=f"http://127.0.0.1:{len(name) + 9000}", host="box")
        settings = ReplicatedSettings(StyleSettings(), self.link, identity)
        return Registry(self.link, identity, ClusterConfig(), settings, EventHub(), secret=secret)

    async def plant_node(self, node_id: str, value: str) -> None:
        await self.raw.set(self.link.key("node", node_id), value, px=60_000)
        await self.raw.sadd(self.link.key("nodes"), node_id)


@pytest.fixture
async def planted(redis_url: str) -> AsyncIterator[Planted]:
    world = Planted(redis_url)
    await world.link.start(wait_s=10)
    yield world
    await world.raw.aclose()
    await world.link.close()


async def test_a_bad_node_entry_is_skipped_logged_once_and_the_view_goes_on(
    planted: Planted, caplog: pytest.LogCaptureFixture
) -> None:
    front, worker = planted.registry("front"), planted.registry("worker")
    await worker.beat()
    await planted.plant_node("junk", "not json {")
    await planted.plant_node("list", "[1, 2]")
    with caplog.at_level(logging.ERROR, logger="server.cluster.registry"):
        for _ in range(3):
            await front.beat()
            nodes = await front.refresh()
    assert sorted(node["id"] for node in nodes) == ["front", "worker"]
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert sorted(r.getMessage().split()[2] for r in refused) == ["junk", "list"], "each logged once"


async def test_a_planted_worker_gets_neither_offers_nor_the_token(planted: Planted) -> None:
    front, worker = planted.registry("front"), planted.registry("worker")
    await worker.beat()
    genuine = json.loads(await planted.raw.get(planted.link.key("node", "worker")))
    # The intruder copies a real entry and points it at its own address, or writes one of its own.
    await planted.plant_node("worker", json.dumps({**genuine, "url": "http://198.51.100.66:8080"}))
    forged = {**genuine, "id": "fake", "instance": "x", "url": "http://198.51.100.66:8080"}
    await planted.plant_node("fake", json.dumps({k: v for k, v in forged.items() if k != "signature"}))
    await front.refresh()
    assert front.workers() == [] and "http://198.51.100.66:8080" not in front.urls()
    # The worker's next beat puts its own, signed entry back: believed again.
    await worker.beat()
    await front.refresh()
    assert [node["id"] for node in front.workers()] == ["worker"]
    # A registry with another secret believes none of them.
    stranger = planted.registry("stranger", secret="another")
    await stranger.refresh()
    assert stranger.workers() == []


def _job(job_id: str) -> Job:
    media = MediaInfo(kind="image", format="png", width=16, height=16, frames=1)
    params = FrameParams(prompt="p", strength=0.5, seed=1)
    paths = (f"jobs/{job_id}/input", f"jobs/{job_id}/output.png")
    return Job(job_id, "pending", "a.png", None, params, media, *paths, frames_total=1, created=time.time())


@pytest.mark.parametrize(
    "tamper",
    [
        {"input_path": "/etc/passwd"},
        {"input_path": f"jobs/{JOB}/../../stylize.db"},
        {"output_path": "../outside.png"},
        {"output_path": f"jobs/{'b' * 32}/output.png"},
        {"id": "../../etc"},
    ],
    ids=["absolute", "dot-dot", "outside", "another-job", "id"],
)
async def test_a_job_record_pointing_outside_its_folder_is_refused(planted: Planted, tamper: dict[str, str]) -> None:
    jobs = RedisJobs(planted.link, "worker", "http://127.0.0.1:9001", claim_timeout_s=30)
    await jobs.add(_job(JOB))
    key = planted.link.key("job", JOB)
    data = json.loads(await planted.raw.hget(key, "data"))
    await planted.raw.hset(key, "data", json.dumps({**data, **tamper}))
    with pytest.raises(JobNotFound):
        await jobs.get(JOB)
    page, _ = await jobs.page(0, 10)
    assert page == []


async def test_a_job_held_at_a_stranger_s_address_is_not_fetched_from_there(planted: Planted) -> None:
    here = "http://127.0.0.1:9001"
    jobs = RedisJobs(planted.link, "worker", here, claim_timeout_s=30, node_urls=lambda: {here})
    await jobs.add(_job(JOB))
    assert (await jobs.get(JOB)).files_at == here
    await planted.raw.hset(planted.link.key("job", JOB), "files_at", "http://198.51.100.66:8080")
    assert (await jobs.get(JOB)).files_at is None


async def test_settings_and_streams_that_are_not_json_are_skipped_on_resync(planted: Planted) -> None:
    await planted.raw.hset(planted.link.key("settings", "global"), mapping={"strength": "0.25", "prompt": "{nope"})
    await planted.raw.sadd(planted.link.key("scopes"), "global")
    await planted.raw.hset(planted.link.key("streams"), mapping={"s1": "not json", "s2": "[1]"})
    identity = NodeIdentity(id="late", role="worker", url="http://127.0.0.1:9100", host="box")
    link = RedisLink(planted.link.url, planted.prefix)
    settings = ReplicatedSettings(StyleSettings(prompt="mine"), link, identity)
    await link.start(wait_s=10)
    try:
        assert link.up, "the resync went through"
        assert settings.global_settings.strength == 0.25 and settings.global_settings.prompt == "mine"
        assert not settings.has_stream("s1") and not settings.has_stream("s2")
    finally:
        await link.close()
