"""What the nodes of a cluster share through a real Redis, here as several nodes in one process:
settings that converge, streams a dead node leaves behind, state written back into an empty Redis,
events, presets and the job queue (each job to one worker, taken over when its worker goes quiet)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from pipeline.contract import FrameParams
from server.cluster.events import ClusterEvents
from server.cluster.identity import NodeIdentity
from server.cluster.job_queue import RedisJobs
from server.cluster.link import RedisLink
from server.cluster.redis_presets import RedisPresets
from server.cluster.replicated_settings import ReplicatedSettings
from server.control.events import StreamEvent
from server.control.presets import NewPreset, PresetLibrary, load_builtin_presets
from server.control.settings import SettingsChange, SettingsPatch, StyleSettings, name_scope
from server.jobs.media import MediaInfo
from server.jobs.store import Job
from server.testing.waiting import eventually


class Node:
    """One node's shared state: its link, settings replica and events hub."""

    def __init__(self, url: str, prefix: str, name: str) -> None:
        self.identity = NodeIdentity(id=name, role="worker", url=f"http://{name}", host="box")
        self.link = RedisLink(url, prefix)
        self.settings = ReplicatedSettings(StyleSettings(prompt="start", strength=0.5), self.link, self.identity)
        self.events = ClusterEvents(self.link, self.identity.instance)
        self.changes: list[SettingsChange] = []
        self.settings.add_listener(self.changes.append)


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[Callable[[str], Any]]:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    started: list[Node] = []

    async def start(name: str) -> Node:
        node = Node(redis_url, prefix, name)
        await node.link.start(wait_s=10)
        assert node.link.up
        started.append(node)
        return node

    yield start
    for node in started:
        await node.link.close()


async def test_changes_on_any_node_reach_every_replica_and_end_the_same(nodes: Callable[[str], Any]) -> None:
    a, b = await nodes("a"), await nodes("b")
    a.settings.add_stream("s1", "stage")
    await eventually(lambda: b.settings.owner("s1") is not None, what="b hears of a's stream")
    assert b.settings.stream_name("s1") == "stage" and b.settings.owner("s1").node == "a"

    # A change made on b to a's stream is what a's track reads on its next frame.
    b.settings.update_stream("s1", SettingsPatch(prompt="from b"), "http")
    await eventually(lambda: a.settings.effective("s1").prompt == "from b", what="a's stream restyled from b")
    assert [c.remote for c in a.changes if c.scope == "s1"] == [True]
    assert [c.remote for c in b.changes if c.scope == "s1"] == [False]

    # Changes to the same fields from both nodes at once: every replica ends on the same values.
    for i in range(20):
        a.settings.update_global(SettingsPatch(strength=i / 40), "osc")
        b.settings.update_global(SettingsPatch(strength=0.5 + i / 40, seed=i), "http")
    b.settings.update_stream(name_scope("stage"), SettingsPatch(negative_prompt="blur"), "http")

    def same() -> bool:
        return a.settings.global_settings == b.settings.global_settings and a.settings.effective(
            "s1"
        ) == b.settings.effective("s1")

    await eventually(same, what="both replicas equal")
    assert a.settings.effective("s1").negative_prompt == "blur"
    # A third node joining later reads the state back from Redis.
    c = await nodes("c")
    assert c.settings.global_settings == a.settings.global_settings
    assert c.settings.effective("s1") == a.settings.effective("s1")


async def test_a_dead_nodes_streams_are_removed_once(nodes: Callable[[str], Any]) -> None:
    a, b, c = await nodes("a"), await nodes("b"), await nodes("c")
    a.settings.add_stream("gone", "default")
    await eventually(lambda: b.settings.owner("gone") and c.settings.owner("gone"), what="everyone knows the stream")
    alive = {b.identity.instance, c.identity.instance}  # a's instance has left the registry
    removed = await asyncio.gather(b.settings.reap(alive), c.settings.reap(alive))
    assert sorted(len(r) for r in removed) == [0, 1], "one node wins the removal and tells"
    assert not b.settings.has_stream("gone") and not c.settings.has_stream("gone")
    # The worker itself keeps serving its own stream (it registers it again when it is back in the view).
    assert a.settings.has_stream("gone")


async def test_a_redis_that_comes_back_empty_gets_the_nodes_state_back(nodes: Callable[[str], Any]) -> None:
    a, b = await nodes("a"), await nodes("b")
    a.settings.add_stream("s1", "stage")
    b.settings.update_global(SettingsPatch(prompt="the show's look", strength=0.3), "http")
    b.settings.update_stream(name_scope("stage"), SettingsPatch(seed=7), "http")
    await eventually(lambda: a.settings.global_settings.prompt == "the show's look", what="a in step")
    connections = (a.link.connections, b.link.connections)
    await a.link.redis.flushall()  # Redis restarted without its data ...
    await a.link.redis.client_kill_filter(_type="pubsub")  # ... and every node lost its connection
    await eventually(
        lambda: (a.link.connections, b.link.connections) > connections and a.link.up and b.link.up,
        what="both nodes reconnected",
    )
    fresh = await nodes("c")
    assert fresh.settings.global_settings.prompt == "the show's look"
    assert fresh.settings.effective("s1").seed == 7 and fresh.settings.owner("s1").node == "a"
    # Live again: a change made now reaches the others.
    fresh.settings.update_global(SettingsPatch(strength=0.9), "osc")
    await eventually(lambda: a.settings.effective("s1").strength == 0.9, what="a change after the outage")


async def test_events_of_every_node_reach_every_nodes_listeners_once(nodes: Callable[[str], Any]) -> None:
    a, b = await nodes("a"), await nodes("b")
    heard: dict[str, list[str]] = {"a": [], "b": []}
    queues = {name: asyncio.Queue[str | None]() for name in heard}
    a.events._queues[queues["a"]] = None
    b.events._queues[queues["b"]] = None
    a.events.publish(StreamEvent(action="up", stream_id="x", streams=1))
    b.events.publish(StreamEvent(action="down", stream_id="y", streams=0, reason="hung up"))
    for name, queue in queues.items():
        for _ in range(2):
            heard[name].append(str(await asyncio.wait_for(queue.get(), 5)))
    for messages in heard.values():
        assert sorted(json.loads(m)["stream_id"] for m in messages) == ["x", "y"]
    await asyncio.sleep(0.2)
    assert queues["a"].empty() and queues["b"].empty(), "each event once"


async def test_custom_presets_are_shared(nodes: Callable[[str], Any]) -> None:
    a, b = await nodes("a"), await nodes("b")
    builtins = await asyncio.to_thread(load_builtin_presets)
    on_a = PresetLibrary(builtins, RedisPresets(a.link), a.settings, a.events)
    on_b = PresetLibrary(builtins, RedisPresets(b.link), b.settings, b.events)
    new = NewPreset(id="ink", name="Ink", category="drawing", template="{prompt}, ink drawing", strength=0.4)
    await on_a.create(new)
    assert (await on_b.get("ink")).template == "{prompt}, ink drawing"
    applied = await on_b.apply("ink", subject="a cat")
    assert applied.settings.prompt == "a cat, ink drawing"
    await eventually(lambda: a.settings.global_settings.prompt == "a cat, ink drawing", what="applied everywhere")
    assert (await on_a.usage())["ink"] == 1
    await on_b.delete("ink")
    assert "ink" not in [p.id for p in await on_a.presets()]


# Job ids as the server makes them (uuid4().hex): a record with any other id is refused.
J1, J2 = "1" * 32, "2" * 32


def _job(job_id: str) -> Job:
    return Job(
        id=job_id,
        status="pending",
        filename="clip.mp4",
        preset=None,
        params=FrameParams(prompt="p", strength=0.5, seed=1),
        media=MediaInfo(kind="video", format="mp4", width=64, height=64, frames=10, fps=10.0),
        input_path=f"jobs/{job_id}/input",
        output_path=f"jobs/{job_id}/output.mp4",
        frames_total=10,
        created=time.time(),
    )


async def test_each_job_goes_to_one_worker_and_is_taken_over_when_its_worker_goes_quiet(
    nodes: Callable[[str], Any], tmp_path: Path
) -> None:
    front, a, b = await nodes("front"), await nodes("a"), await nodes("b")
    queue = {node: RedisJobs(node.link, node.identity.id, node.identity.url, claim_timeout_s=0.5) for node in (a, b)}
    for jobs in queue.values():
        await jobs._ensure_group()
    submitted = RedisJobs(front.link, "front", "http://front", claim_timeout_s=0.5)
    await submitted.add(_job(J1))
    assert (await submitted.get(J1)).files_at == "http://front"

    claimed = await queue[a].claim_next()
    assert claimed is not None and claimed.id == J1 and claimed.attempts == 1
    assert await queue[a].set_progress(J1, 3)
    assert await queue[b].claim_next() is None, "a job goes to one worker"

    # a goes quiet (it died): after the claim timeout b takes the job over, as a new attempt.
    await asyncio.sleep(0.6)
    taken = await queue[b].claim_next()
    assert taken is not None and taken.id == J1 and taken.attempts == 2 and taken.frames_done == 0
    assert not await queue[a].set_progress(J1, 4), "a no longer holds it"
    assert await queue[a].complete(J1, 10) is None
    done = await queue[b].complete(J1, 10)
    assert done is not None and done.status == "completed" and done.files_at == "http://b"
    await queue[b].release(J1)
    assert (await submitted.counts())["completed"] == 1
    raw = aioredis.Redis.from_url(a.link.url, decode_responses=True)
    try:
        pending = await raw.xpending(a.link.key("jobs", "queue"), "workers")
        assert pending["pending"] == 0, "the entry is acknowledged"
    finally:
        await raw.aclose()

    # A cancelled job is skipped by whoever reads it.
    await submitted.add(_job(J2))
    await submitted.cancel(J2)
    assert await queue[a].claim_next() is None
    page, total = await submitted.page(0, 10)
    assert [job.id for job in page] == [J2, J1] and total == 2
