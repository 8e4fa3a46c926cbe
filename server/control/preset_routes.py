"""Style presets over HTTP: list, read, create, replace, delete and apply."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from server import keys
from server.control.presets import (
    CATEGORY,
    MAX_SUBJECT,
    BuiltinPresetError,
    DuplicatePresetError,
    NewPreset,
    PresetFields,
    UnknownPresetError,
)
from server.control.settings import UnknownStreamError
from server.http.errors import ApiError
from server.http.inputs import read_model, read_query

routes = web.RouteTableDef()


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str | None = Field(None, pattern=CATEGORY)


class ApplyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str | None = Field(None, min_length=1, max_length=MAX_SUBJECT)  # the subject for the {prompt} slot
    stream_id: str | None = Field(None, min_length=1, max_length=64)


@contextmanager
def _domain_errors() -> Iterator[None]:
    try:
        yield
    except UnknownPresetError as e:
        raise ApiError(404, "unknown preset", str(e)) from e
    except UnknownStreamError as e:
        raise ApiError(404, "unknown stream", e.args[0]) from e
    except BuiltinPresetError as e:
        raise ApiError(403, "built-in presets are read-only", str(e)) from e
    except DuplicatePresetError as e:
        raise ApiError(409, "preset exists", str(e)) from e


@routes.get("/api/presets")
async def list_presets(request: web.Request) -> web.Response:
    query = read_query(request, ListQuery)
    library = request.app[keys.PRESETS]
    usage = await library.usage()
    presets = await library.presets(query.category)
    return web.json_response({"presets": [{**p.model_dump(), "usage": usage.get(p.id, 0)} for p in presets]})


@routes.get("/api/presets/{preset_id}")
async def get_preset(request: web.Request) -> web.Response:
    with _domain_errors():
        preset = await request.app[keys.PRESETS].get(request.match_info["preset_id"])
    return web.json_response(preset.model_dump())


@routes.post("/api/presets")
async def create_preset(request: web.Request) -> web.Response:
    new = await read_model(request, NewPreset)
    with _domain_errors():
        preset = await request.app[keys.PRESETS].create(new)
    return web.json_response(preset.model_dump(), status=201)


@routes.put("/api/presets/{preset_id}")
async def replace_preset(request: web.Request) -> web.Response:
    library = request.app[keys.PRESETS]
    preset_id = request.match_info["preset_id"]
    if library.is_builtin(preset_id):  # 403 whatever the body holds
        raise ApiError(403, "built-in presets are read-only", preset_id)
    fields = await read_model(request, PresetFields)
    with _domain_errors():
        preset = await library.update(preset_id, fields)
    return web.json_response(preset.model_dump())


@routes.delete("/api/presets/{preset_id}")
async def delete_preset(request: web.Request) -> web.Response:
    preset_id = request.match_info["preset_id"]
    with _domain_errors():
        await request.app[keys.PRESETS].delete(preset_id)
    return web.json_response({"deleted": preset_id})


@routes.post("/api/presets/{preset_id}/apply")
async def apply_preset(request: web.Request) -> web.Response:
    body = await read_model(request, ApplyBody) if request.body_exists else ApplyBody()
    with _domain_errors():
        applied = await request.app[keys.PRESETS].apply(request.match_info["preset_id"], body.prompt, body.stream_id)
    return web.json_response(
        {
            "preset": applied.preset.model_dump(),
            "scope": applied.scope,
            "subject": applied.subject,
            "settings": applied.settings.model_dump(),
        }
    )
