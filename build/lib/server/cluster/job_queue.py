"""Render jobs in Redis (`JobRecords`): records every node reads, and a stream every worker takes from.

- `<p>:job:<id>`: the job as a hash: `data` (what never changes, as JSON) beside `status`,
  `frames_done`, `attempts`, `worker`, `files_at` ... each changed by one script, atomically.
- `<p>:jobs`: every job id, scored by when it was created (the list, newest first).
- `<p>:jobs:queue`: a stream with one entry per job and the consumer group `workers`: each entry
  goes to exactly one worker. A worker keeps its claim fresh while it renders (every progress
  report); one whose claim went stale for `[cluster] job_claim_timeout_s` (it died, or hangs) loses
  the job to the next worker that looks (XAUTOCLAIM), which starts it again as a new attempt. Only
  the worker a job was last given to can report progress on it or finish it, so a job completes once.
- A job's files stay on the node that received the upload, then on the worker that rendered it
  (`files_at`); the others fetch them from there over HTTP (or find them where the data dir is shared).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from pipeline import FrameParams
from server.cluster.link import RedisLink, text_map, texts
from server.cluster.trust import Untrusted, job_path
from server.jobs.media import MediaInfo
from server.jobs.store import ACTIVE, STATUSES, Job, JobFinished, JobNotFound, Status

logger = logging.getLogger(__name__)

GROUP = "workers"
BLOCK_MS = 1000  # how long one look for new jobs waits
# The fields of `Job` that change as it is rendered; the rest are its `data`.
MUTABLE = ("status", "frames_done", "error", "attempts", "started", "finished", "processing_s", "files_at")

# KEYS: job. ARGV: worker, now. Returns the outcome: claimed, gone or ended.
CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if status ~= 'pending' and status ~= 'processing' then return 'ended' end
redis.call('HSET', KEYS[1], 'status', 'processing', 'worker', ARGV[1], 'started', ARGV[2], 'frames_done', 0,
  'error', '')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'claimed'
"""
# KEYS: job. ARGV: worker, frames done. 1 while the job is still this worker's to render.
PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'frames_done', ARGV[2])
return 1
"""
# KEYS: job. ARGV: worker, status, now, then field/value pairs to set. 1 if this worker finished it.
FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 0
end
local started = tonumber(redis.call('HGET', KEYS[1], 'started') or ARGV[3])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished', ARGV[3], 'processing_s', tonumber(ARGV[3]) - started)
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
# KEYS: job. ARGV: now. gone, ended, or cancelled.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if status ~= 'pending' and status ~= 'processing' then return 'ended' end
local fields = {'status', 'cancelled', 'finished', ARGV[1]}
local started = redis.call('HGET', KEYS[1], 'started')
if status == 'processing' and started and started ~= '' then
  table.insert(fields, 'processing_s')
  table.insert(fields, tonumber(ARGV[1]) - tonumber(started))
end
redis.call('HSET', KEYS[1], unpack(fields))
return 'cancelled'
"""


class RedisJobs:
    idle_wait_s = 0.0  # `claim_next` itself waits on the stream for new jobs

    def __init__(
        self,
        link: RedisLink,
        worker: str,
        here: str,
        claim_timeout_s: float,
        node_urls: Callable[[], set[str]] | None = None,
    ) -> None:
        self._link = link
        # Where the registry says nodes are: a record's `files_at` elsewhere is not believed (the
        # token would go with the request for its files).
        self._node_urls = node_urls or (lambda: {here})
        self._untrusted: set[str] = set()  # job ids whose record was refused (logged once each)
        self._redis = link.redis
        self._worker = worker  # the consumer name: the node's id, so a restarted worker takes its own back first
        self._here = here  # this node's URL: where the files of what it receives or renders stay
        self._claim_timeout_ms = int(claim_timeout_s * 1000)
        self._index = link.key("jobs")
        self._queue = link.key("jobs", "queue")
        self._entries: dict[str, str] = {}  # job id -> its stream entry, while this node holds it
        self._claim = self._redis.register_script(CLAIM)
        self._progress = self._redis.register_script(PROGRESS)
        self._finish = self._redis.register_script(FINISH)
        self._cancel = self._redis.register_script(CANCEL)
        link.on_connect(self._ensure_group)

    def _key(self, job_id: str) -> str:
        return self._link.key("job", job_id)

    async def _ensure_group(self) -> None:
        """The queue and its group exist (Redis may have come back empty)."""
        try:
            await self._redis.xgroup_create(self._queue, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- records -------------------------------------------------------------------------------

    async def add(self, job: Job) -> None:
        job = dataclasses.replace(job, files_at=self._here)
        fields: dict[Any, str] = _fields(job)

        def write(pipe: Pipeline) -> None:
            pipe.hset(self._key(job.id), mapping=fields)
            pipe.zadd(self._index, {job.id: job.created})
            pipe.xadd(self._queue, {"id": job.id})

        await self._link.transaction(write)

    async def get(self, job_id: str) -> Job:
        job = self._job(job_id, text_map(await self._redis.hgetall(self._key(job_id))))
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def _jobs(self, ids: list[str]) -> list[Job]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._key(job_id))
            stored = await pipe.execute()
        jobs = (self._job(job_id, text_map(values)) for job_id, values in zip(ids, stored, strict=True))
        return [job for job in jobs if job is not None]

    def _job(self, job_id: str, stored: dict[str, str]) -> Job | None:
        """The record as a job, or None (logged once) when it is not one a node of this cluster wrote."""
        try:
            job = _job(job_id, stored)
        except (Untrusted, TypeError, ValueError, KeyError) as e:
            if job_id not in self._untrusted:
                self._untrusted.add(job_id)
                logger.error("job record %s in Redis refused: %s", job_id, e)
            return None
        if job is not None and job.files_at is not None and job.files_at not in self._node_urls():
            job = dataclasses.replace(job, files_at=None)  # no registered node there: its files are nowhere
        return job

    async def page(self, offset: int, limit: int, status: Status | None = None) -> tuple[list[Job], int]:
        ids = texts(await self._redis.zrevrange(self._index, 0, -1))
        if status is not None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self._key(job_id), "status")
                statuses = await pipe.execute()
            ids = [job_id for job_id, found in zip(ids, statuses, strict=True) if found == status]
        return await self._jobs(ids[offset : offset + limit]), len(ids)

    async def finished_before(self, cutoff: float) -> list[Job]:
        jobs = await self._jobs(texts(await self._redis.zrange(self._index, 0, -1)))
        return [job for job in jobs if job.status not in ACTIVE and job.finished is not None and job.finished < cutoff]

    async def counts(self) -> dict[str, int]:
        ids = texts(await self._redis.zrange(self._index, 0, -1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._key(job_id), "status")
            statuses = await pipe.execute()
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for status in statuses:
            if status in counts:
                counts[status] += 1
        return counts

    async def ids(self) -> set[str]:
        return set(texts(await self._redis.zrange(self._index, 0, -1)))

    async def cancel(self, job_id: str) -> Job:
        outcome = await self._cancel(keys=[self._key(job_id)], args=[time.time()])
        if outcome == "gone":
            raise JobNotFound(job_id)
        job = await self.get(job_id)
        if outcome == "ended":
            raise JobFinished(job)
        return job

    async def delete(self, job_id: str) -> Job:
        job = await self.get(job_id)

        def write(pipe: Pipeline) -> None:
            pipe.delete(self._key(job_id))
            pipe.zrem(self._index, job_id)

        await self._link.transaction(write)
        return job

    async def requeue_interrupted(self, max_attempts: int) -> tuple[list[str], list[Job]]:
        """Nothing to do at start-up: a job a dead worker held goes back through the stream (claim_next)."""
        return [], []

    # -- the worker's side ---------------------------------------------------------------------

    async def claim_next(self) -> Job | None:
        """This worker's next job: one it held before a restart, one a dead worker held, or a new one."""
        for entry_id, job_id in await self._candidates():
            outcome = await self._claim(keys=[self._key(job_id)], args=[self._worker, time.time()])
            if outcome == "claimed":
                try:
                    job = await self.get(job_id)
                except JobNotFound:  # a record refused as untrusted: nothing to render
                    await self._done(entry_id)
                    continue
                self._entries[job_id] = entry_id
                return job
            await self._done(entry_id)  # cancelled or deleted before anyone rendered it
        return None

    async def _candidates(self) -> list[tuple[str, str]]:
        try:
            own = await self._redis.xreadgroup(GROUP, self._worker, {self._queue: "0"}, count=1)
            entries = _entries(own)
            if not entries:
                _, stale, *_ = await self._redis.xautoclaim(
                    self._queue, GROUP, self._worker, self._claim_timeout_ms, count=1
                )
                entries = [(entry_id, fields) for entry_id, fields in stale]
                for entry_id, _ in entries:
                    logger.info("job entry %s taken over: its worker stopped renewing its claim", entry_id)
            if not entries:
                new = await self._redis.xreadgroup(GROUP, self._worker, {self._queue: ">"}, count=1, block=BLOCK_MS)
                entries = _entries(new)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self._ensure_group()
            return []
        found = []
        for entry_id, fields in entries:
            if fields and fields.get("id"):
                found.append((entry_id, str(fields["id"])))
            else:
                await self._done(entry_id)  # an entry trimmed away
        return found

    async def set_progress(self, job_id: str, frames_done: int) -> bool:
        """Report progress and renew this worker's claim on the job; False once it is not this worker's."""
        if not await self._progress(keys=[self._key(job_id)], args=[self._worker, frames_done]):
            return False
        entry_id = self._entries.get(job_id)
        if entry_id is not None:
            await self._redis.xclaim(self._queue, GROUP, self._worker, 0, [entry_id], justid=True)
        return True

    async def complete(self, job_id: str, frames_done: int) -> Job | None:
        fields = ["frames_done", frames_done, "frames_total", frames_done, "error", "", "files_at", self._here]
        return await self._end(job_id, "completed", fields)

    async def fail(self, job_id: str, error: str) -> Job | None:
        return await self._end(job_id, "failed", ["error", error])

    async def _end(self, job_id: str, status: Status, fields: list[Any]) -> Job | None:
        finished = await self._finish(keys=[self._key(job_id)], args=[self._worker, status, time.time(), *fields])
        if not finished:
            return None
        return await self.get(job_id)

    async def release(self, job_id: str) -> None:
        entry_id = self._entries.pop(job_id, None)
        if entry_id is not None:
            await self._done(entry_id)

    async def _done(self, entry_id: str) -> None:
        def write(pipe: Pipeline) -> None:
            pipe.xack(self._queue, GROUP, entry_id)
            pipe.xdel(self._queue, entry_id)

        await self._link.transaction(write)


def _entries(response: Any) -> list[tuple[str, dict[str, Any] | None]]:
    """XREADGROUP's answer for the one stream read: [(entry id, fields)]."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3
        return [(entry_id, fields) for entry_id, fields in next(iter(response.values()))[0]]
    return [(entry_id, fields) for entry_id, fields in response[0][1]]


def _fields(job: Job) -> dict[str, str]:
    data = {
        "id": job.id,
        "filename": job.filename,
        "preset": job.preset,
        "params": dataclasses.asdict(job.params),
        "media": dataclasses.asdict(job.media),
        "input_path": job.input_path,
        "output_path": job.output_path,
        "frames_total": job.frames_total,
        "created": job.created,
    }
    fields = {"data": json.dumps(data), "worker": ""}
    for name in MUTABLE:
        value = getattr(job, name)
        fields[name] = "" if value is None else str(value)
    return fields


def _job(job_id: str, stored: dict[str, str]) -> Job | None:
    if not stored or "data" not in stored:
        return None
    data = json.loads(stored["data"])
    if not isinstance(data, dict) or data.get("id") != job_id:
        raise Untrusted(f"its data names another job ({str(data)[:80]!r})")
    if stored.get("status") not in STATUSES:
        raise Untrusted(f"status {stored.get('status')!r}")

    def number(name: str) -> float | None:
        value = stored.get(name, "")
        return float(value) if value else None

    return Job(
        id=data["id"],
        status=stored["status"],  # type: ignore[arg-type]
        filename=data["filename"],
        preset=data["preset"],
        params=FrameParams(**data["params"]),
        media=MediaInfo(**data["media"]),
        input_path=job_path(job_id, data["input_path"]),
        output_path=job_path(job_id, data["output_path"]),
        frames_total=int(stored.get("frames_total") or data["frames_total"]),
        created=float(data["created"]),
        frames_done=int(stored.get("frames_done") or 0),
        error=stored.get("error") or None,
        attempts=int(stored.get("attempts") or 0),
        started=number("started"),
        finished=number("finished"),
        processing_s=number("processing_s"),
        files_at=stored.get("files_at") or None,
    )
