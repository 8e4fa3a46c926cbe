"""Offline render jobs over HTTP: upload (multipart), list, look at, download, cancel, delete.

The upload streams to `<data dir>/jobs/<id>/input` chunk by chunk (writes off the loop), is
probed by content and refused with 413/415/422 before a job exists. Job ids are validated and
every file path comes from the job's row, never from the request.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import unicodedata
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, Json

from server import keys
from server.control.lora_ask import LOOK_ERRORS, refuse_look
from server.control.presets import UnknownPresetError
from server.control.settings import Control, Loras, StyleSettings
from server.fields import Prompt, Seed, Steps, Strength, field_error
from server.http.errors import ApiError, invalid, validate
from server.http.inputs import read_model, read_query
from server.http.openapi import operation
from server.http.relay import NodeUnreachable, unreachable
from server.jobs import keys as jobs_keys
from server.jobs.media import SUFFIXES, MediaInfo, MediaLimits, MediaRejected, UnsupportedMedia, probe
from server.jobs.store import JOB_ID, Job, JobFinished, JobNotFound, JobOut, Status
from server.jobs.worker import JOBS_FOLDER, UPLOADING_MARKER

routes = web.RouteTableDef()

CHUNK_BYTES = 256 * 1024
# Room in a request's Content-Length for the multipart framing and the text fields beside the file.
FORM_OVERHEAD_BYTES = 64 * 1024
FIELD_LIMIT_BYTES = 4096
MAX_FILENAME = 120
MAX_OFFSET = 2**31 - 1


class JobForm(BaseModel):
    """The text fields of POST /api/jobs; what is left out comes from the global settings."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = Field(None, min_length=1, max_length=64)
    prompt: Prompt | None = None
    strength: Strength | None = None
    seed: Seed | None = None
    num_inference_steps: Steps | None = None
    control: Json[Control] | None = Field(None, description='the ControlNet, as JSON: {"kind": "depth", "scale": 0.8}')
    loras: Json[Loras] | None = Field(None, description='the LoRAs, as JSON: [{"id": "ink.safetensors", "scale": 0.8}]')


class JobUpload(JobForm):
    """POST /api/jobs as multipart/form-data: the file, and the fields of `JobForm` beside it."""

    file: bytes = Field(description="a clip (MP4, MOV, WebM) or a picture (JPEG, PNG, WebP), known by its content")


class SweepBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    older_than_hours: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, description="default [jobs] keep_hours; 0 removes every finished job"
    )


class Swept(BaseModel):
    removed: list[str]
    older_than_hours: float


class JobPage(BaseModel):
    jobs: list[JobOut]
    total: int
    offset: int
    limit: int


class JobDeleted(BaseModel):
    deleted: str


UNKNOWN_JOB = {404: "unknown job"}


class JobQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # `skip` as the seed systems call it; bounded well inside SQLite's 64-bit integers.
    offset: int = Field(0, ge=0, le=MAX_OFFSET, validation_alias=AliasChoices("offset", "skip"))
    limit: int = Field(20, ge=1, le=100)
    status: Status | None = None


@routes.post("/api/jobs")
@routes.post("/api/jobs/")
@operation(
    "Upload a clip or a picture to render offline",
    tag="jobs",
    body=JobUpload,
    body_kind="multipart",
    response=JobOut,
    status=202,
    errors={413: "upload too large", 415: "not multipart, or not a picture or clip taken", 422: "refused media"}
    | {409: LOOK_ERRORS[409]},
    description="Fields left out come from the global settings; a preset's {prompt} slot takes the prompt sent.",
)
async def create_job(request: web.Request) -> web.Response:
    config = request.app[keys.CONFIG].jobs
    worker = request.app[jobs_keys.JOB_WORKER]
    limit = int(config.max_upload_mb * 1024 * 1024)
    if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD_BYTES:
        raise ApiError(413, "upload too large", {"limit_bytes": limit})
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "send multipart/form-data with a file field", request.content_type)
    job_id = uuid.uuid4().hex
    folder = Path(JOBS_FOLDER) / job_id  # relative to the data dir, as the job's row keeps it
    upload = worker.data_dir / folder / "input"
    marker = upload.parent / UPLOADING_MARKER
    try:
        await asyncio.to_thread(_mark_uploading, marker)
        fields, filename = await _receive(request, upload, limit)
        form = validate(JobForm, fields)
        limits = MediaLimits(config.max_duration_s, config.max_resolution)
        try:
            info = await asyncio.to_thread(probe, upload, limits)
        except UnsupportedMedia as e:
            raise ApiError(415, "unsupported media", str(e)) from e
        except MediaRejected as e:
            raise ApiError(422, "media refused", [field_error("file", str(e))]) from e
        if info.frames > config.max_frames:
            # Said at upload: a long clip would hold the render slot for as long as it takes.
            detail = f"{info.frames} frames, more than [jobs] max_frames ({config.max_frames})"
            raise invalid("file", detail)
        settings = await _job_settings(request.app, form)
        await refuse_look(request.app, settings.model_dump(include={"control", "loras"}))
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, upload.parent, ignore_errors=True)
        raise
    job = _new_job(job_id, folder, filename, form.preset, settings, info)
    await worker.submit(job)
    await asyncio.to_thread(marker.unlink)  # recorded: no longer an upload a crash could cut off
    return web.json_response(job.public(), status=202, headers={hdrs.LOCATION: f"/api/jobs/{job_id}"})


def _mark_uploading(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


async def _receive(request: web.Request, upload: Path, limit: int) -> tuple[dict[str, str], str]:
    """Stream the `file` part to `upload` and collect the text fields: 400 for a malformed body, 408 when it stalls."""
    stall_s = request.app[keys.CONFIG].server.body_timeout_s
    try:
        return await _read_form(request, upload, limit, stall_s)
    except (ValueError, HttpProcessingError) as e:  # aiohttp's reader: no boundary, a body cut short, bad headers
        raise ApiError(400, "malformed multipart body", str(e)) from e
    except TimeoutError as e:
        raise ApiError(408, "request body timed out", {"stalled_s": stall_s}) from e


async def _read_form(request: web.Request, upload: Path, limit: int, stall_s: float) -> tuple[dict[str, str], str]:
    reader = await request.multipart()
    fields: dict[str, str] = {}
    filename: str | None = None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise invalid("file", "nested multipart bodies are not taken")
        name = part.name or ""
        if name == "file":
            if filename is not None:
                raise invalid("file", "send one file per job")
            filename = _clean_filename(part.filename or "")
            await _save(part, upload, limit, stall_s)
        elif name in fields:
            raise invalid(name, "sent twice")
        else:
            fields[name] = await _read_field(part, name, stall_s)
    if filename is None:
        raise invalid("file", "a file field is required")
    return fields, filename


async def _save(part: BodyPartReader, path: Path, limit: int, stall_s: float) -> None:
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    handle = await asyncio.to_thread(path.open, "wb")
    try:
        size = 0
        while chunk := await asyncio.wait_for(part.read_chunk(CHUNK_BYTES), stall_s):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "upload too large", {"limit_bytes": limit})
            await asyncio.to_thread(handle.write, chunk)
    finally:
        await asyncio.to_thread(handle.close)


async def _read_field(part: BodyPartReader, name: str, stall_s: float) -> str:
    data = bytearray()
    while chunk := await asyncio.wait_for(part.read_chunk(FIELD_LIMIT_BYTES), stall_s):
        data += chunk
        if len(data) > FIELD_LIMIT_BYTES:
            raise invalid(name, f"longer than {FIELD_LIMIT_BYTES} bytes")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError) as e:
        raise invalid(name, "not valid text") from e


def _clean_filename(name: str) -> str:
    """The uploaded name without folders or control characters; only ever shown, never opened.

    Clients percent-escape awkward characters in a multipart filename (browsers `"` and line
    breaks, aiohttp everything), so escapes are undone first.
    """
    name = unquote(name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[-MAX_FILENAME:] or "upload"


async def _job_settings(app: web.Application, form: JobForm) -> StyleSettings:
    """Global settings, then the preset's, then the fields sent with the job."""
    values: dict[str, Any] = app[keys.SETTINGS].global_settings.model_dump()
    fields = form.model_dump(exclude_none=True, exclude={"preset"})
    if form.preset is not None:
        # As with POST /api/presets/{id}/apply, a prompt sent with a preset fills its {prompt} slot.
        subject = fields.pop("prompt", None)
        try:
            patch = await app[jobs_keys.PRESET_PATCH](form.preset, subject, app[keys.SETTINGS].global_settings)
        except UnknownPresetError as e:
            raise invalid("preset", f"no preset {form.preset!r}") from e
        values.update({name: value for name, value in patch.values().items() if value is not None})
    values.update(fields)
    return validate(StyleSettings, values)


def _new_job(
    job_id: str, folder: Path, filename: str, preset: str | None, settings: StyleSettings, info: MediaInfo
) -> Job:
    return Job(
        id=job_id,
        status="pending",
        filename=filename,
        preset=preset,
        params=settings.frame_params(),
        media=info,
        input_path=str(folder / "input"),
        output_path=str(folder / f"output{SUFFIXES[info.output_format]}"),
        frames_total=info.frames,
        created=time.time(),
    )


@routes.get("/api/jobs")
@routes.get("/api/jobs/")
@operation("Jobs, newest first", tag="jobs", query=JobQuery, response=JobPage)
async def list_jobs(request: web.Request) -> web.Response:
    query = read_query(request, JobQuery)
    jobs, total = await request.app[jobs_keys.JOBS].page(query.offset, query.limit, query.status)
    return web.json_response(
        {"jobs": [job.public() for job in jobs], "total": total, "offset": query.offset, "limit": query.limit}
    )


@routes.get("/api/jobs/{job_id}")
@operation("One job", tag="jobs", response=JobOut, errors=UNKNOWN_JOB)
async def get_job(request: web.Request) -> web.Response:
    return web.json_response((await _job(request)).public())


@routes.get("/api/jobs/{job_id}/result")
@operation(
    "Download a completed job's result (MP4, JPEG or PNG)",
    tag="jobs",
    response={"type": "string", "format": "binary"},
    media_type="application/octet-stream",
    errors={**UNKNOWN_JOB, 409: "the job has not completed"},
)
async def get_result(request: web.Request) -> web.StreamResponse:
    job = await _job(request)
    if job.status != "completed":
        raise ApiError(409, "job not completed", {"status": job.status})
    return await _file(request, job, job.output_path, job.content_type, _attachment(job.download_name))


@routes.get("/api/jobs/{job_id}/input")
@operation(
    "Download a job's upload as it was received (the worker that renders it fetches it so)",
    tag="jobs",
    response={"type": "string", "format": "binary"},
    media_type="application/octet-stream",
    errors=UNKNOWN_JOB,
)
async def get_input(request: web.Request) -> web.StreamResponse:
    job = await _job(request)
    return await _file(request, job, job.input_path, "application/octet-stream", _attachment(job.filename))


async def _file(
    request: web.Request, job: Job, relative: str, content_type: str, disposition: str
) -> web.StreamResponse:
    """One of the job's files from this node's data dir, or, in a cluster, from the node that holds it."""
    path = request.app[jobs_keys.JOB_WORKER].data_dir / relative
    if await asyncio.to_thread(path.is_file):
        return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: content_type, hdrs.CONTENT_DISPOSITION: disposition})
    relay = request.app.get(keys.RELAY)
    if relay is None or job.files_at is None or job.files_at == relay.here:
        raise ApiError(404, "file missing", job.id)
    try:
        return await relay.forward(request, job.files_at)
    except NodeUnreachable as e:
        raise unreachable(e) from e


def _attachment(name: str) -> str:
    fallback = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.") or "result"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"


@routes.post("/api/jobs/{job_id}/cancel")
@operation(
    "Cancel a pending or running job", tag="jobs", response=JobOut, errors={**UNKNOWN_JOB, 409: "already finished"}
)
async def cancel_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    try:
        job = await request.app[jobs_keys.JOB_WORKER].cancel(job_id)
    except JobNotFound as e:
        raise ApiError(404, "unknown job", job_id) from e
    except JobFinished as e:
        raise ApiError(409, "job already finished", {"status": e.job.status}) from e
    return web.json_response(job.public())


@routes.delete("/api/jobs/{job_id}")
@operation("Delete a job and its files (stopping it first)", tag="jobs", response=JobDeleted, errors=UNKNOWN_JOB)
async def delete_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    try:
        await request.app[jobs_keys.JOB_WORKER].delete(job_id)
    except JobNotFound as e:
        raise ApiError(404, "unknown job", job_id) from e
    return web.json_response({"deleted": job_id})


@routes.post("/api/jobs/sweep")
@operation(
    "Remove finished jobs older than keep_hours now",
    tag="jobs",
    body=SweepBody,
    body_required=False,
    response=Swept,
)
async def sweep_jobs(request: web.Request) -> web.Response:
    body = await read_model(request, SweepBody) if request.body_exists else SweepBody()
    hours = body.older_than_hours
    if hours is None:
        hours = request.app[keys.CONFIG].jobs.keep_hours
    removed = await request.app[jobs_keys.JOB_WORKER].sweep(older_than_hours=hours)
    return web.json_response(Swept(removed=removed, older_than_hours=hours).model_dump())


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(404, "unknown job", job_id)
    return job_id


async def _job(request: web.Request) -> Job:
    job_id = _job_id(request)
    try:
        return await request.app[jobs_keys.JOBS].get(job_id)
    except JobNotFound as e:
        raise ApiError(404, "unknown job", job_id) from e
