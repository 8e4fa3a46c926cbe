"""The jobs room's app state, and what it needs from the others (handed in by `server/app.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from server.control.settings import SettingsPatch, StyleSettings
    from server.jobs.store import Job, JobRecords
    from server.jobs.worker import JobWorker

# Where job records are kept: SQLite alone, Redis in a cluster (the composition root chooses).
JOBS: web.AppKey[JobRecords] = web.AppKey("jobs.records")
JOB_WORKER: web.AppKey[JobWorker] = web.AppKey("jobs.worker")

# Needs. What a preset sets over the given settings, with a subject for its {prompt} slot (raises
# `UnknownPresetError`): a job's `preset` field.
PRESET_PATCH: web.AppKey[Callable[[str, str | None, StyleSettings], Awaitable[SettingsPatch]]] = web.AppKey(
    "jobs.preset_patch"
)
# How many live streams run here (renders leave them room).
LIVE_STREAMS: web.AppKey[Callable[[], int]] = web.AppKey("jobs.live_streams")
# In a cluster: copy a job's upload from the node that took it.
FETCH_INPUT: web.AppKey[Callable[[Job, Path], Awaitable[None]]] = web.AppKey("jobs.fetch_input")
