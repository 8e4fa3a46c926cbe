"""What start-up does when the job records and the job folders disagree: a lost, emptied or damaged
database never costs a job its files, and one unreadable row never costs the listing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.contract import FrameParams
from server.__main__ import database_intact
from server.app import SCHEMAS, database_path
from server.config import Config
from server.db import Database, DatabaseBroken
from server.jobs.media import MediaInfo
from server.jobs.store import Job, JobStore
from server.jobs.worker import JOBS_FOLDER, UPLOADING_MARKER
from server.testing.servers import start_server, stop_server


def job_folder(data_dir: Path, job_id: str, *, uploading: bool = False) -> Path:
    """A job's folder as an upload leaves it: its input, and the marker while the upload is unrecorded."""
    folder = data_dir / JOBS_FOLDER / job_id
    folder.mkdir(parents=True)
    (folder / "input").write_bytes(b"the user's clip")
    if uploading:
        (folder / UPLOADING_MARKER).touch()
    return folder


async def record(data_dir: Path, *jobs: Job) -> None:
    database = Database(data_dir / "stylize.db", schemas=SCHEMAS)
    await database.open()
    try:
        for job in jobs:
            await JobStore(database).add(job)
    finally:
        await database.close()


def finished_job(job_id: str) -> Job:
    media = MediaInfo("image", "png", 16, 16, frames=1)
    folder = f"{JOBS_FOLDER}/{job_id}"
    params = FrameParams("x", 0.5, 1)
    paths = (f"{folder}/input", f"{folder}/out.png")
    return Job(job_id, "completed", "a.png", None, params, media, *paths, 1, time.time())


async def test_start_up_removes_only_cut_off_uploads(make_config: Callable[..., Config], data_dir: Path) -> None:
    recorded = job_folder(data_dir, "a" * 32)
    await record(data_dir, finished_job("a" * 32))
    cut_off = job_folder(data_dir, "b" * 32, uploading=True)
    unknown = job_folder(data_dir, "c" * 32)  # its row is gone: only the records lost it, not the user
    running = await start_server(make_config(engine={"warmup": False}), ready=False)
    await stop_server(running)
    assert recorded.is_dir() and unknown.is_dir()
    assert not cut_off.exists()


async def test_an_emptied_database_is_refused_and_deletes_nothing(
    make_config: Callable[..., Config], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(engine={"warmup": False})
    folder = job_folder(data_dir, "a" * 32)
    await record(data_dir, finished_job("a" * 32))
    path = database_path(config)
    for companion in path.parent.glob("stylize.db-*"):
        companion.unlink()
    path.write_bytes(b"")  # what a full disk or a careless copy leaves
    with pytest.raises(DatabaseBroken, match="empty"):
        running = await start_server(config, ready=False)
        await stop_server(running)
    assert (folder / "input").read_bytes() == b"the user's clip"
    # `python -m server` says so in one line, exit 2, with the file moved aside for the next start.
    with pytest.raises(SystemExit) as exited:
        database_intact(config)
    assert exited.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "is broken: the file is empty" in message
    assert not path.exists() and len(list(path.parent.glob("stylize.db.broken-*"))) == 1
    running = await start_server(config, ready=False)
    await stop_server(running)
    assert folder.is_dir()


def test_a_damaged_database_is_named_broken(make_config: Callable[..., Config]) -> None:
    config = make_config()
    path = database_path(config)
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(SystemExit):
        database_intact(config)
    assert not path.exists()


async def test_one_unreadable_job_row_leaves_the_listing_whole(
    make_config: Callable[..., Config], data_dir: Path
) -> None:
    good, bad = "a" * 32, "b" * 32
    await record(data_dir, finished_job(good), finished_job(bad))
    with sqlite3.connect(data_dir / "stylize.db") as connection:
        connection.execute("UPDATE jobs SET params = '{\"prompt\": ', finished = 1 WHERE id = ?", (bad,))
    # Start-up sweeps finished jobs (the bad one is long finished): it starts all the same.
    running = await start_server(make_config(engine={"warmup": False}, jobs={"keep_hours": 1}), ready=False)
    try:
        status, listing = await running.call("GET", "/api/jobs")
        assert status == 200, listing
        assert [job["id"] for job in listing["jobs"]] == [good]
        status, answer = await running.call("GET", f"/api/jobs/{bad}")
        assert status == 404, answer
    finally:
        await stop_server(running)
