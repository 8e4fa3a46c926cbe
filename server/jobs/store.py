"""Render jobs in SQLite: one row per job; every change is one transaction on the database thread.

A job's files live under `<data dir>/jobs/<id>/`; the rows hold their paths relative to the data
dir, so the API never builds a path from a request. Status moves pending -> processing ->
completed | failed | cancelled; a job caught in `processing` by a crash goes back to `pending`
when the next server starts. In a cluster the records live in Redis instead
(`server.cluster.job_queue`, the same `JobRecords` methods) and a job also names the node that
holds its files (`files_at`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel

from pipeline import FrameParams
from server.db import Database
from server.jobs.media import CONTENT_TYPES, SUFFIXES, MediaInfo

logger = logging.getLogger(__name__)

# A job's id, as `POST /api/jobs` makes it (uuid4().hex): the name of its folder too.
JOB_ID = re.compile(r"[0-9a-f]{32}")

Status = Literal["pending", "processing", "completed", "failed", "cancelled"]


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: str
    status: Status
    kind: str
    filename: str
    preset: str | None
    params: dict[str, Any]
    media: dict[str, Any]
    progress: float
    frames_done: int
    frames_total: int
    error: str | None
    attempts: int
    created: float
    started: float | None
    finished: float | None
    processing_s: float | None
    result_url: str | None


STATUSES: tuple[Status, ...] = get_args(Status)
ACTIVE: tuple[Status, ...] = ("pending", "processing")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    filename TEXT NOT NULL,
    preset TEXT,
    params TEXT NOT NULL,
    media TEXT NOT NULL,
    input_path TEXT NOT NULL,
    output_path TEXT NOT NULL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    processing_s REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
"""


class JobNotFound(LookupError):
    """No job has that id."""


class JobFinished(Exception):
    """The job already ended; it can no longer be cancelled."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is already {job.status}")
        self.job = job


@dataclass(frozen=True)
class Job:
    id: str
    status: Status
    filename: str  # the uploaded file's name, for the download name only
    preset: str | None
    params: FrameParams
    media: MediaInfo
    input_path: str  # relative to the data dir
    output_path: str  # relative to the data dir; the file exists once completed
    frames_total: int
    created: float
    frames_done: int = 0
    error: str | None = None
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    processing_s: float | None = None
    files_at: str | None = None  # in a cluster, the URL of the node whose data dir holds its files

    @property
    def progress(self) -> float:
        if self.status == "completed":
            return 1.0
        return min(self.frames_done / self.frames_total, 0.99) if self.frames_total else 0.0

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.media.output_format]

    @property
    def download_name(self) -> str:
        """`clip-stylized.mp4` for `clip.mp4`; `clip-webm-stylized.mp4` for `clip.webm`, so the results of
        two uploads differing only in their container do not overwrite each other in a downloads folder."""
        stem, dot, extension = self.filename.rpartition(".")
        if not dot:
            stem, extension = self.filename, ""
        stem = stem or f"job-{self.id[:8]}"
        suffix = SUFFIXES[self.media.output_format]
        kept = f"-{extension.lower()}" if extension and f".{extension.lower()}" != suffix else ""
        return f"{stem}{kept}-stylized{suffix}"

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (no file-system paths), built from its declared model."""
        return JobOut(
            id=self.id,
            status=self.status,
            kind=self.media.kind,
            filename=self.filename,
            preset=self.preset,
            params=dataclasses.asdict(self.params),
            media=dataclasses.asdict(self.media),
            progress=round(self.progress, 4),
            frames_done=self.frames_done,
            frames_total=self.frames_total,
            error=self.error,
            attempts=self.attempts,
            created=self.created,
            started=self.started,
            finished=self.finished,
            processing_s=self.processing_s,
            result_url=f"/api/jobs/{self.id}/result" if self.status == "completed" else None,
        ).model_dump()


def gave_up(max_attempts: int) -> str:
    """Why a job that was interrupted `max_attempts` times failed."""
    return (
        f"gave up after {max_attempts} attempts: the server stopped while rendering it each time ([jobs] max_attempts)"
    )


class JobRecords(Protocol):
    """What the routes and the render worker need of the job records: SQLite (`JobStore`), or Redis in a cluster."""

    # How long the worker waits for a wake-up after `claim_next` found nothing (it is also woken by submits).
    idle_wait_s: float

    async def add(self, job: Job) -> None: ...

    async def get(self, job_id: str) -> Job: ...

    async def page(self, offset: int, limit: int, status: Status | None = None) -> tuple[list[Job], int]: ...

    async def claim_next(self) -> Job | None: ...

    async def set_progress(self, job_id: str, frames_done: int) -> bool:
        """False when the job is no longer this worker's to render (cancelled, deleted, taken over)."""
        ...

    async def complete(self, job_id: str, frames_done: int) -> Job | None: ...

    async def fail(self, job_id: str, error: str) -> Job | None: ...

    async def release(self, job_id: str) -> None:
        """The worker is done with a job it claimed, whatever came of it."""
        ...

    async def cancel(self, job_id: str) -> Job: ...

    async def delete(self, job_id: str) -> Job: ...

    async def requeue_interrupted(self, max_attempts: int) -> tuple[list[str], list[Job]]: ...

    async def finished_before(self, cutoff: float) -> list[Job]: ...

    async def counts(self) -> dict[str, int]: ...

    async def ids(self) -> set[str]: ...


def _from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        status=row["status"],
        filename=row["filename"],
        preset=row["preset"],
        params=FrameParams(**json.loads(row["params"])),
        media=MediaInfo(**json.loads(row["media"])),
        input_path=row["input_path"],
        output_path=row["output_path"],
        frames_total=row["frames_total"],
        created=row["created"],
        frames_done=row["frames_done"],
        error=row["error"],
        attempts=row["attempts"],
        started=row["started"],
        finished=row["finished"],
        processing_s=row["processing_s"],
    )


def _readable(rows: list[sqlite3.Row], unreadable: set[str]) -> list[Job]:
    """The rows that make a job; one that does not (hand-edited, written by another version) is left
    out and logged once, so it never turns a listing into a 500."""
    jobs = []
    for row in rows:
        try:
            jobs.append(_from_row(row))
        except (TypeError, ValueError, KeyError) as e:  # bad JSON, fields a job has not got or lacks
            if row["id"] not in unreadable:
                unreadable.add(row["id"])
                logger.error("job row id=%s cannot be read, left out of every answer: %s", row["id"], e)
    return jobs


def _select(connection: sqlite3.Connection, job_id: str, unreadable: set[str] | None = None) -> Job | None:
    row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    if unreadable is None:
        return _from_row(row)
    return next(iter(_readable([row], unreadable)), None)


class JobStore:
    """Job records in the server's SQLite database."""

    idle_wait_s = math.inf  # only a submit (or the sweep) wakes the worker

    def __init__(self, database: Database) -> None:
        self._db = database
        self._unreadable: set[str] = set()  # ids of rows logged as unreadable (once each)

    async def add(self, job: Job) -> None:
        params = json.dumps(dataclasses.asdict(job.params))
        media = json.dumps(dataclasses.asdict(job.media))

        def insert(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO jobs (id, status, filename, preset, params, media, input_path, output_path,"
                " frames_total, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.status,
                    job.filename,
                    job.preset,
                    params,
                    media,
                    job.input_path,
                    job.output_path,
                    job.frames_total,
                    job.created,
                ),
            )

        await self._db.run(insert)

    async def get(self, job_id: str) -> Job:
        job = await self._db.run(lambda connection: _select(connection, job_id, self._unreadable))
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def page(self, offset: int, limit: int, status: Status | None = None) -> tuple[list[Job], int]:
        """Jobs newest first, and how many there are in all (with that status)."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())

        def select(connection: sqlite3.Connection) -> tuple[list[Job], int]:
            total = connection.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = connection.execute(
                f"SELECT * FROM jobs {where} ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            return _readable(rows, self._unreadable), total

        return await self._db.run(select)

    async def claim_next(self) -> Job | None:
        """The oldest pending job, now marked processing; None when nothing waits."""

        def claim(connection: sqlite3.Connection) -> Job | None:
            while row := connection.execute(
                "SELECT id FROM jobs WHERE status = 'pending' ORDER BY created, rowid LIMIT 1"
            ).fetchone():
                connection.execute(
                    "UPDATE jobs SET status = 'processing', started = ?, frames_done = 0, error = NULL,"
                    " attempts = attempts + 1 WHERE id = ?",
                    (time.time(), row["id"]),
                )
                job = _select(connection, row["id"], self._unreadable)
                if job is not None:
                    return job
                # A row that makes no job cannot be rendered: failed, so the queue moves on.
                connection.execute(
                    "UPDATE jobs SET status = 'failed', finished = ?, error = 'its record cannot be read' WHERE id = ?",
                    (time.time(), row["id"]),
                )
            return None

        return await self._db.run(claim)

    async def set_progress(self, job_id: str, frames_done: int) -> bool:
        updated = await self._db.run(
            lambda connection: (
                connection.execute(
                    "UPDATE jobs SET frames_done = ? WHERE id = ? AND status = 'processing'", (frames_done, job_id)
                ).rowcount
            )
        )
        return bool(updated)

    async def release(self, job_id: str) -> None:
        """Nothing to let go of: the row's status says it all."""

    async def complete(self, job_id: str, frames_done: int) -> Job | None:
        """Mark a processing job completed; None when it is no longer processing (cancelled meanwhile)."""
        return await self._finish(
            job_id,
            "completed",
            "frames_done = :frames, frames_total = :frames, error = NULL",
            {"frames": frames_done},
        )

    async def fail(self, job_id: str, error: str) -> Job | None:
        return await self._finish(job_id, "failed", "error = :error", {"error": error})

    async def _finish(self, job_id: str, status: Status, assignments: str, values: dict[str, Any]) -> Job | None:
        def finish(connection: sqlite3.Connection) -> Job | None:
            cursor = connection.execute(
                f"UPDATE jobs SET status = :status, finished = :now, processing_s = :now - started, {assignments}"
                " WHERE id = :id AND status = 'processing'",
                {"status": status, "now": time.time(), "id": job_id, **values},
            )
            return _select(connection, job_id) if cursor.rowcount else None

        return await self._db.run(finish)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a pending or processing job; `JobNotFound`, or `JobFinished` when it already ended."""

        def cancel(connection: sqlite3.Connection) -> Job:
            job = _select(connection, job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status not in ACTIVE:
                raise JobFinished(job)
            now = time.time()
            processing_s = now - job.started if job.status == "processing" and job.started else None
            connection.execute(
                "UPDATE jobs SET status = 'cancelled', finished = ?, processing_s = ? WHERE id = ?",
                (now, processing_s, job_id),
            )
            return dataclasses.replace(job, status="cancelled", finished=now, processing_s=processing_s)

        return await self._db.run(cancel)

    async def delete(self, job_id: str) -> Job:
        def delete(connection: sqlite3.Connection) -> Job:
            job = _select(connection, job_id)
            if job is None:
                raise JobNotFound(job_id)
            connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return job

        return await self._db.run(delete)

    async def requeue_interrupted(self, max_attempts: int) -> tuple[list[str], list[Job]]:
        """At start-up: jobs left `processing` by a server that died go back to the queue, unless they
        have been tried `max_attempts` times (a job that crashes the server would crash it at every
        start): those fail, saying so. Returns (requeued ids, jobs given up)."""

        def requeue(connection: sqlite3.Connection) -> tuple[list[str], list[Job]]:
            rows = connection.execute("SELECT id, attempts FROM jobs WHERE status = 'processing'").fetchall()
            requeued = [row["id"] for row in rows if row["attempts"] < max_attempts]
            given_up = [row["id"] for row in rows if row["attempts"] >= max_attempts]
            connection.executemany("UPDATE jobs SET status = 'pending' WHERE id = ?", [(i,) for i in requeued])
            now = time.time()
            error = gave_up(max_attempts)
            connection.executemany(
                "UPDATE jobs SET status = 'failed', finished = ?, processing_s = ? - started, error = ? WHERE id = ?",
                [(now, now, error, job_id) for job_id in given_up],
            )
            jobs = (_select(connection, i, self._unreadable) for i in given_up)
            return requeued, [job for job in jobs if job is not None]

        return await self._db.run(requeue)

    async def finished_before(self, cutoff: float) -> list[Job]:
        def select(connection: sqlite3.Connection) -> list[Job]:
            rows = connection.execute(
                "SELECT * FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') AND finished < ?",
                (cutoff,),
            ).fetchall()
            return _readable(rows, self._unreadable)

        return await self._db.run(select)

    async def counts(self) -> dict[str, int]:
        """How many jobs there are in each status, every status listed."""
        rows = await self._db.run(
            lambda connection: connection.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        )
        return dict.fromkeys(STATUSES, 0) | {row["status"]: row["n"] for row in rows}

    async def ids(self) -> set[str]:
        rows = await self._db.run(lambda connection: connection.execute("SELECT id FROM jobs").fetchall())
        return {row["id"] for row in rows}
