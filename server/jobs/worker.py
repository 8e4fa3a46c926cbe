"""The render worker: one task takes pending jobs oldest first and renders them through the engine.

Media work (decoding, encoding, file moves) runs on a thread of the worker's own, never on the
event loop; so does the render loop itself (decode, submit, wait, encode: two hand-offs a frame,
to the engine's thread and back), which tells the loop of its progress now and then. Each frame
goes to the engine as `Priority.JOB` under the key `job-<id>`, one at a time, so live frames
always go first and a job never holds more than one slot of a batch. While live streams are up,
the worker also paces itself to `[jobs] live_share` of the time (decoding and encoding compete
with the live peers for the CPU, not only for the engine). Every change to a job's life (queued,
started, progress, completed, failed, cancelled, deleted) goes through here and is pushed on
/api/events as a `job` event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np

from pipeline import Priority
from server.config import JobsConfig
from server.control.events import EventHub, JobEvent
from server.engine_service import EngineStatus
from server.jobs.media import EncodeOptions, Render, RenderFailed, open_render
from server.jobs.store import Job, JobNotFound, JobRecords, gave_up
from server.jpeg import JpegEncoder
from server.recordings.replay import ReplayRender

if TYPE_CHECKING:
    from pipeline import Engine

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

JOBS_FOLDER = "jobs"
SEGMENTS_FOLDER = "segments"
# A job folder holding this file is an upload still arriving, or one a crash cut off: its job is not
# recorded yet. Only such folders are removed as orphans. A folder the records do not name and without
# it is kept: an empty or replaced database must never cost a job's files.
UPLOADING_MARKER = ".uploading"
# How often a running job's progress is saved and pushed to listeners.
PROGRESS_INTERVAL_S = 0.5
# How often finished jobs older than `[jobs] keep_hours` are looked for.
SWEEP_INTERVAL_S = 600.0
# How often a job failure the records refused (a full disk) is tried again.
RECORD_RETRY_S = 2.0
# How often the worker looks again while the engine is still loading.
ENGINE_POLL_S = 0.2
# How long a stop waits for a look for the next job to end by itself (a cluster's blocks for up to 1 s)
# before cancelling it: redis-py may never finish a blocking command cancelled midway (redis/redis-py#2028).
CLAIM_STOP_S = 5.0
# In a cluster, a folder without a job is removed only once untouched this long: a front on the same
# data dir may be receiving that upload right now.
ORPHAN_AGE_IN_CLUSTER_S = 3600.0
# How long stopping waits for the media thread's current call; a codec stuck past it is left behind.
MEDIA_STOP_TIMEOUT_S = 10.0

# Copies a job's input from the node that holds it (`Job.files_at`) to the given path.
FetchInput = Callable[[Job, Path], Awaitable[None]]


class JobCancelled(Exception):
    """The running job was cancelled or deleted; its partial output is dropped."""


@dataclass
class _Running:
    job_id: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Read by the render loop on the media thread: set when the job is cancelled, times out or the server stops.
    halt: threading.Event = field(default_factory=threading.Event)


class JobWorker:
    def __init__(
        self,
        store: JobRecords,
        engine: EngineStatus,
        events: EventHub,
        config: JobsConfig,
        data_dir: Path,
        live_streams: Callable[[], int],
        on_counts: Callable[[dict[str, int]], None] | None = None,
        fetch_input: FetchInput | None = None,
    ) -> None:
        self._store = store
        self._fetch_input = fetch_input  # in a cluster: inputs uploaded to another node come from there
        self._engine = engine
        self._events = events
        self._live_streams = live_streams
        self._on_counts = on_counts
        self._counting: set[asyncio.Task[None]] = set()
        self._config = config
        self.data_dir = data_dir
        self._jobs_dir = data_dir / JOBS_FOLDER
        self._options = EncodeOptions(video_crf=config.video_crf, video_preset=config.video_preset)
        self._jpeg = JpegEncoder(config.jpeg_quality)
        self._media_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="stylize-jobs", initializer=_lower_priority, initargs=(config.nice,)
        )
        self._wake = asyncio.Event()
        self._running: _Running | None = None
        self._task: asyncio.Task[None] | None = None
        self._claiming = False  # the task is looking for its next job (in a cluster, a blocking Redis read)
        self._stopping = False
        self._last_sweep = 0.0
        self._unrecorded: dict[str, tuple[Job, str]] = {}  # job id -> (job, error) the records refused

    # -- lifecycle ---------------------------------------------------------------------------

    async def recover(self) -> None:
        """Before serving: requeue jobs a killed server left processing, drop cut-off uploads, sweep."""
        requeued, given_up = await self._store.requeue_interrupted(self._config.max_attempts)
        if requeued:
            logger.info("requeued %d interrupted job(s): %s", len(requeued), ", ".join(requeued))
        for job in given_up:
            logger.warning("job failed id=%s: %s", job.id, job.error)
            self._publish("failed", job)
        known = await self._store.ids()
        min_age_s = ORPHAN_AGE_IN_CLUSTER_S if self._fetch_input is not None else 0.0
        removed, unknown = await self._blocking(_remove_orphans, self._jobs_dir, known, min_age_s)
        if removed:
            logger.info("removed %d job folder(s) without a job (uploads cut off)", removed)
        if unknown:
            logger.warning(
                "kept %d job folder(s) the job records do not name (a lost or replaced database?): %s",
                len(unknown),
                ", ".join(unknown),
            )
        await self.sweep()
        await self._report_counts()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jobs-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            if self._claiming:  # let the look end by itself: it returns, sees the stop, and ends the task
                await asyncio.wait({self._task}, timeout=CLAIM_STOP_S)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*self._counting, return_exceptions=True)
        # One thread, first in first out: this no-op finishes once the calls before it have.
        drained = asyncio.wrap_future(self._media_thread.submit(lambda: None))
        self._media_thread.shutdown(wait=False)
        _, stuck = await asyncio.wait({drained}, timeout=MEDIA_STOP_TIMEOUT_S)
        if stuck:
            drained.cancel()
            logger.warning("the jobs media thread is stuck after %.0f s; not waiting for it", MEDIA_STOP_TIMEOUT_S)

    # -- changes from the API ----------------------------------------------------------------

    async def submit(self, job: Job) -> None:
        await self._store.add(job)
        self._publish("queued", job)
        self._wake.set()

    async def cancel(self, job_id: str) -> Job:
        """Cancel a pending or running job (`JobNotFound`, `JobFinished`); returns once it has stopped."""
        job = await self._store.cancel(job_id)
        await self._release(job_id)
        self._publish("cancelled", job)
        return job

    async def delete(self, job_id: str) -> Job:
        """Remove a job, its row and its files, stopping it first if it is running."""
        await self._release(job_id)
        job = await self._store.delete(job_id)
        # Once more for a job the worker claimed between the first look and the row's removal.
        await self._release(job_id)
        await self._blocking(shutil.rmtree, self.folder(job), ignore_errors=True)
        self._publish("deleted", job)
        return job

    async def sweep(self, now: float | None = None, older_than_hours: float | None = None) -> list[str]:
        """Remove jobs finished more than `older_than_hours` before `now` (wall clock).

        Without `older_than_hours`, `[jobs] keep_hours` (where 0 keeps everything); given, 0 removes
        every finished job.
        """
        self._last_sweep = time.monotonic()
        hours = self._config.keep_hours if older_than_hours is None else older_than_hours
        if older_than_hours is None and hours <= 0:
            return []
        cutoff = (time.time() if now is None else now) - hours * 3600.0
        removed = []
        for job in await self._store.finished_before(cutoff):
            try:
                await self.delete(job.id)
            except JobNotFound:
                continue
            removed.append(job.id)
        if removed:
            logger.info("removed %d job(s) finished over %g hours ago", len(removed), hours)
        return removed

    def folder(self, job: Job) -> Path:
        return self.data_dir / Path(job.input_path).parent

    def _segments(self, job: Job) -> Path:
        """A video's rendered segments, kept while the job may still resume."""
        return self.folder(job) / SEGMENTS_FOLDER

    # -- the worker task ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            while not self._engine.ready:  # noqa: ASYNC110 (the engine service has no event to wait on)
                await asyncio.sleep(ENGINE_POLL_S)
            if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL_S:
                await self.sweep()
            self._wake.clear()
            if self._unrecorded:
                await self._record_failures()
            self._claiming = True
            try:
                job = await self._store.claim_next()
            finally:
                self._claiming = False
            if self._stopping:  # a job claimed just now is taken up again as one cut off by a stop is
                return
            if job is None:
                try:
                    retry_s = RECORD_RETRY_S if self._unrecorded else math.inf
                    await asyncio.wait_for(self._wake.wait(), min(SWEEP_INTERVAL_S, self._store.idle_wait_s, retry_s))
                except TimeoutError:
                    pass
                continue
            try:
                if job.attempts > self._config.max_attempts:  # taken over after its workers died each time
                    await self._fail(job, gave_up(self._config.max_attempts))
                    await self._store.release(job.id)
                    continue
                await self._process(job)
            except Exception:
                # The database refused an update: the job stays as it was and is retried at restart.
                logger.exception("job bookkeeping failed id=%s", job.id)
                await asyncio.sleep(ENGINE_POLL_S)

    async def _process(self, job: Job) -> None:
        running = _Running(job.id)
        self._running = running
        self._publish("started", job)
        logger.info(
            "job started id=%s kind=%s frames=%d attempt=%d", job.id, job.media.kind, job.frames_total, job.attempts
        )
        timeout_s = self._config.timeout_s
        ended = True  # one way or another; not when the server stops mid-render
        try:
            async with asyncio.timeout(timeout_s or None):
                frames = await self._render(job, running)
        except asyncio.CancelledError:
            ended = False  # the server is stopping: the rendered segments stay for the next start to resume from
            raise
        except TimeoutError:
            await self._fail(job, f"timed out after {timeout_s:g} s ([jobs] timeout_s)")
        except JobCancelled:
            logger.info("job cancelled id=%s", job.id)
        except RenderFailed as e:
            await self._fail(job, str(e))
        except Exception as e:
            logger.exception("job failed id=%s", job.id)
            await self._fail(job, f"rendering failed: {type(e).__name__}: {e}")
        else:
            completed = await self._store.complete(job.id, frames)
            if completed is None:  # cancelled or deleted while its last frame was written
                await self._blocking(_unlink, self.data_dir / job.output_path)
            else:
                logger.info("job completed id=%s frames=%d in %.1f s", job.id, frames, completed.processing_s or 0)
                self._publish("completed", completed)
        finally:
            if ended:
                await self._blocking(shutil.rmtree, self._segments(job), ignore_errors=True)
                await self._store.release(job.id)
            self._engine_forget(f"job-{job.id}")
            self._running = None
            running.done.set()

    async def _render(self, job: Job, running: _Running) -> int:
        engine = self._engine.engine
        key = f"job-{job.id}"
        target = self.data_dir / job.output_path
        partial = target.with_name(target.name + ".part")
        source = self.data_dir / job.input_path
        if self._fetch_input is not None and not await self._blocking(source.is_file):
            await self._fetch_input(job, source)  # uploaded to another node that shares no disk with this one
        if job.media.format == "recording":
            render: Render = await self._blocking(ReplayRender, source, partial, self._segments(job))
        else:
            render = await self._blocking(
                open_render, source, partial, job.media, self._options, self._jpeg, self._segments(job)
            )
        done = render.resume_from
        if done:
            logger.info("job resumed id=%s from frame %d of %d", job.id, done, job.frames_total)
        loop = asyncio.get_running_loop()

        def progress(frames_done: int) -> bool:
            """From the media thread, now and then: tell the owner; False when the job is no longer ours."""
            return asyncio.run_coroutine_threadsafe(self._progress(job, frames_done), loop).result()

        try:
            done = await self._blocking(self._render_frames, render, engine, key, job, done, running, progress)
            if running.cancelled.is_set():
                raise JobCancelled(job.id)
            await self._blocking(render.finish)
        except BaseException:
            running.halt.set()  # a render loop still on the media thread stops after its frame
            await self._blocking(render.close)
            await self._blocking(_unlink, partial)
            raise
        await self._blocking(render.close)
        await self._blocking(partial.replace, target)
        return done

    def _render_frames(
        self,
        render: Render,
        engine: Engine,
        key: str,
        job: Job,
        done: int,
        running: _Running,
        progress: Callable[[int], bool],
    ) -> int:
        """The render loop, on the job's media thread: decode, the engine, encode, two hand-offs a
        frame (to the engine's thread and back); the event loop hears of it every PROGRESS_INTERVAL_S."""
        reported = float("-inf")  # the first frame is reported at once: the owner sees rendering start
        stylized: np.ndarray | None = None
        while (frame := render.read()) is not None:
            if running.cancelled.is_set() or running.halt.is_set():
                raise JobCancelled(job.id)
            started = time.monotonic()
            if not frame.held or stylized is None:
                stylized = engine.submit(key, frame.data, frame.params or job.params, Priority.JOB).result()
            render.write(frame, stylized)
            done += 1
            self._yield_to_live(time.monotonic() - started, running.halt)
            if time.monotonic() - reported >= PROGRESS_INTERVAL_S:
                reported = time.monotonic()
                if not progress(done):
                    raise JobCancelled(job.id)  # cancelled or deleted elsewhere, or taken over
        return done

    async def _progress(self, job: Job, done: int) -> bool:
        if not await self._store.set_progress(job.id, done):
            return False
        self._publish("progress", dataclasses.replace(job, frames_done=done))
        return True

    def _yield_to_live(self, busy_s: float, halt: threading.Event) -> None:
        """With live streams up, rest so that this frame's work is `live_share` of the time spent."""
        share = self._config.live_share
        if share < 1.0 and self._live_streams() > 0:
            halt.wait(busy_s * (1.0 - share) / share)

    async def _fail(self, job: Job, error: str) -> None:
        logger.warning("job failed id=%s: %s", job.id, error)
        try:
            failed = await self._store.fail(job.id, error)
        except Exception as e:
            # A full disk fails the render and then the record of it: the job stayed "processing"
            # until a restart. Kept, and recorded on the worker's next turns until it lands.
            logger.error("job failure id=%s not recorded yet (%s): trying again", job.id, e)
            self._unrecorded[job.id] = (job, error)
            return
        self._unrecorded.pop(job.id, None)
        if failed is not None:
            self._publish("failed", failed)

    async def _record_failures(self) -> None:
        """Record the failures the records refused before (a full disk); those that still fail wait."""
        for job, error in list(self._unrecorded.values()):
            await self._fail(job, error)

    async def _release(self, job_id: str) -> None:
        running = self._running
        if running is not None and running.job_id == job_id:
            running.cancelled.set()
            await running.done.wait()

    def _engine_forget(self, key: str) -> None:
        if self._engine.ready:
            self._engine.engine.forget(key)

    def _publish(self, action: str, job: Job) -> None:
        self._events.publish(JobEvent(action=action, job=job.public()))
        if action != "progress" and self._on_counts is not None:
            task = asyncio.create_task(self._report_counts())
            self._counting.add(task)
            task.add_done_callback(self._counting.discard)

    async def _report_counts(self) -> None:
        if self._on_counts is not None:
            self._on_counts(await self._store.counts())

    async def _blocking(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._media_thread, lambda: work(*args, **kwargs))


def _lower_priority(nice: int) -> None:
    """Make the calling thread (and the codec threads it starts, which inherit it) background work."""
    if nice and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as e:
            logger.warning("could not lower the job thread's priority to nice %d: %s", nice, e)


def _remove_orphans(jobs_dir: Path, known: set[str], min_age_s: float = 0.0) -> tuple[int, list[str]]:
    """Remove cut-off uploads (marked, not recorded); returns how many, and the unmarked folders nobody records."""
    if not jobs_dir.is_dir():
        return 0, []
    before = time.time() - min_age_s
    unrecorded = [folder for folder in jobs_dir.iterdir() if folder.is_dir() and folder.name not in known]
    orphans = [
        folder
        for folder in unrecorded
        if (folder / UPLOADING_MARKER).exists() and (not min_age_s or folder.stat().st_mtime < before)
    ]
    for folder in orphans:
        shutil.rmtree(folder, ignore_errors=True)
    unknown = sorted(folder.name for folder in unrecorded if not (folder / UPLOADING_MARKER).exists())
    return len(orphans), unknown


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
