"""Recordings over HTTP: start one for a name, stop, list, look at, download, bundle, delete."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server import keys
from server.control.settings import StyleSettings
from server.http.errors import ApiError, invalid
from server.http.inputs import read_model
from server.http.names import path_name
from server.http.openapi import operation
from server.jobs.media import RenderFailed
from server.jobs.store import Job, JobOut
from server.jobs.worker import JOBS_FOLDER
from server.recordings import keys as recordings_keys
from server.recordings.library import (
    RECORDING_ID,
    AlreadyRecording,
    NothingRecorded,
    RecordingLibrary,
    RecordingNotFound,
    RecordingsFull,
)
from server.recordings.replay import Plan, copy_recording

routes = web.RouteTableDef()


class Change(BaseModel):
    pts: int  # of the first frame that obeyed it, in 1/90000 s from the recording's start
    settings: dict[str, Any]


class RecordingOut(BaseModel):
    id: str
    name: str
    state: str  # waiting (for the name's stream), recording, stopped, damaged (cut short by a crash)
    stop_reason: str | None
    started_at: float
    ended_at: float | None
    frames: int
    segments: int
    duration_s: float
    changes: list[Change] | None  # left out (null) in the list
    dropped: int
    damaged_frames: int  # readable in the segment a crash cut short (not in `frames`)
    damaged_segments: list[int]  # closed segments found unreadable at start-up (not in `frames`)
    bytes: int


class RecordingList(BaseModel):
    recordings: list[RecordingOut]


class RecordingDeleted(BaseModel):
    deleted: str


class RenderBody(BaseModel):
    """POST /api/recordings/{id}/render: the show again (`replay`), or with overrides (`remaster`)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["replay", "remaster"]
    width: int | None = Field(None, ge=16, le=3840, multiple_of=2)
    height: int | None = Field(None, ge=16, le=3840, multiple_of=2)
    settings: dict[str, Any] = Field(default_factory=dict, description="set over the recorded settings from from_pts")
    from_pts: int = Field(0, ge=0, description="1/90000 s from the recording's start")

    @model_validator(mode="after")
    def _overrides_are_a_remaster(self) -> RenderBody:
        if self.mode == "replay" and (self.width or self.height or self.settings or self.from_pts):
            raise ValueError("a replay takes no overrides: send mode remaster")
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together")
        return self


UNKNOWN = {404: "unknown recording (or not an id)"}


def _library(request: web.Request) -> RecordingLibrary:
    return request.app[recordings_keys.RECORDINGS]


def _recording_id(request: web.Request) -> str:
    recording_id = request.match_info["recording_id"]
    if not RECORDING_ID.fullmatch(recording_id):
        raise ApiError(404, "unknown recording", recording_id)
    return recording_id


async def _describe(request: web.Request, recording_id: str) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(_library(request).describe, recording_id)
    except RecordingNotFound as e:
        raise ApiError(404, "unknown recording", recording_id) from e


@routes.post("/api/outputs/{name}/recordings")
@operation(
    "Start recording a name: its output, its camera frames and every settings change",
    tag="recordings",
    response=RecordingOut,
    status=201,
    errors={409: "the name is being recorded already", 422: "not a name", 507: "the recordings' disk share is full"},
    description="A name with no stream yet is recorded from its first frame (state `waiting` until then).",
)
async def start_recording(request: web.Request) -> web.Response:
    name = path_name(request)
    library = _library(request)
    try:
        meta = await library.start(name, request.app[recordings_keys.LISTEN])
    except AlreadyRecording as e:
        raise ApiError(409, "already recording", {"name": name, "id": e.recording_id}) from e
    except RecordingsFull as e:
        raise ApiError(507, "recordings full", str(e)) from e
    return web.json_response(await _describe(request, meta.id), status=201)


@routes.post("/api/recordings/{recording_id}/stop")
@operation("Stop a recording (its last segment is closed)", tag="recordings", response=RecordingOut, errors=UNKNOWN)
async def stop_recording(request: web.Request) -> web.Response:
    recording_id = _recording_id(request)
    try:
        await _library(request).stop(recording_id)
    except RecordingNotFound as e:
        raise ApiError(404, "not recording", recording_id) from e
    return web.json_response(await _describe(request, recording_id))


@routes.get("/api/recordings")
@operation("Every recording, newest first", tag="recordings", response=RecordingList)
async def list_recordings(request: web.Request) -> web.Response:
    return web.json_response({"recordings": await asyncio.to_thread(_library(request).all)})


@routes.get("/api/recordings/{recording_id}")
@operation("One recording with its settings changes", tag="recordings", response=RecordingOut, errors=UNKNOWN)
async def get_recording(request: web.Request) -> web.Response:
    return web.json_response(await _describe(request, _recording_id(request)))


@routes.get("/api/recordings/{recording_id}/output.mp4")
@operation(
    "The stylized output recorded so far (H.264 MP4, every closed segment)",
    tag="recordings",
    response={"type": "string", "format": "binary"},
    media_type="video/mp4",
    errors={**UNKNOWN, 409: "nothing recorded yet"},
)
async def get_output(request: web.Request) -> web.StreamResponse:
    recording_id = _recording_id(request)
    try:
        path = await asyncio.to_thread(_library(request).output, recording_id)
    except RecordingNotFound as e:
        raise ApiError(404, "unknown recording", recording_id) from e
    except NothingRecorded as e:
        raise ApiError(409, "nothing recorded yet", str(e)) from e
    return web.FileResponse(path, headers={"Content-Type": "video/mp4"})


@routes.get("/api/recordings/{recording_id}/bundle")
@operation(
    "Everything a recording holds (segments of input and output, frames, changes, state) as one tar",
    tag="recordings",
    response={"type": "string", "format": "binary"},
    media_type="application/x-tar",
    errors=UNKNOWN,
)
async def get_bundle(request: web.Request) -> web.StreamResponse:
    recording_id = _recording_id(request)
    try:
        path = await asyncio.to_thread(_library(request).bundle, recording_id)
    except RecordingNotFound as e:
        raise ApiError(404, "unknown recording", recording_id) from e
    response = web.FileResponse(
        path,
        headers={
            "Content-Type": "application/x-tar",
            "Content-Disposition": f'attachment; filename="recording-{recording_id}.tar"',
        },
    )
    try:
        await response.prepare(request)  # sends the whole file
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    return response


@routes.post("/api/recordings/{recording_id}/render")
@operation(
    "Render a recording again as a job: its camera frames through the engine, its changes at their pts",
    tag="recordings",
    body=RenderBody,
    response=JobOut,
    status=202,
    errors={**UNKNOWN, 409: "nothing recorded yet", 422: "invalid fields"},
    description="Then the usual /api/jobs/{id} routes. A re-master's `settings` apply from `from_pts` on.",
)
async def render_recording(request: web.Request) -> web.Response:
    recording_id = _recording_id(request)
    body = await read_model(request, RenderBody)
    try:
        StyleSettings(**body.settings)
    except (ValidationError, TypeError) as e:
        raise invalid("settings", str(e)) from e
    config = request.app[keys.CONFIG]
    recording = await asyncio.to_thread(_library(request).folder_of, recording_id)
    if recording is None:
        raise ApiError(404, "unknown recording", recording_id)
    plan = Plan(body.mode, body.width, body.height, body.settings, body.from_pts, config.recordings.video_crf)
    job_id = uuid.uuid4().hex
    folder = Path(JOBS_FOLDER) / job_id  # relative to the data dir, as the job's row keeps it
    data_dir = Path(config.server.data_dir)
    try:
        info = await asyncio.to_thread(copy_recording, recording, data_dir / folder / "input", plan)
    except RenderFailed as e:
        await asyncio.to_thread(shutil.rmtree, data_dir / folder, ignore_errors=True)
        raise ApiError(409, "nothing recorded yet", str(e)) from e
    job = Job(
        id=job_id,
        status="pending",
        filename=f"recording-{recording_id}-{body.mode}.mp4",
        preset=None,
        params=StyleSettings().frame_params(),  # each frame's own come from the recording's timeline
        media=info,
        input_path=str(folder / "input"),
        output_path=str(folder / "output.mp4"),
        frames_total=info.frames,
        created=time.time(),
    )
    await request.app[recordings_keys.SUBMIT_JOB](job)
    return web.json_response(job.public(), status=202, headers={hdrs.LOCATION: f"/api/jobs/{job_id}"})


@routes.delete("/api/recordings/{recording_id}")
@operation(
    "Delete a recording and its files (stopping it first)", tag="recordings", response=RecordingDeleted, errors=UNKNOWN
)
async def delete_recording(request: web.Request) -> web.Response:
    recording_id = _recording_id(request)
    try:
        await _library(request).delete(recording_id)
    except RecordingNotFound as e:
        raise ApiError(404, "unknown recording", recording_id) from e
    return web.json_response({"deleted": recording_id})
