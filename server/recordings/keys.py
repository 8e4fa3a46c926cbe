"""The recordings room's app state, and what it needs from the others (handed in by `server/app.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from server.jobs.store import Job
    from server.recordings.library import Listen, RecordingLibrary

RECORDINGS: web.AppKey[RecordingLibrary] = web.AppKey("recordings.library")

# Needs. A name's frames with the camera frame and the settings that made each (the live room's
# outputs by name; a name with no stream yet is waited for).
LISTEN: web.AppKey[Listen] = web.AppKey("recordings.listen")
# Queue a render job (a replay or a re-master), as the jobs room's worker takes it.
SUBMIT_JOB: web.AppKey[Callable[[Job], Awaitable[None]]] = web.AppKey("recordings.submit_job")
