"""Settings over HTTP: global, per stream, and the prompt/strength shorthands."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from server import keys
from server.control.settings import SettingsPatch, UnknownStreamError
from server.fields import Prompt, Strength
from server.http.errors import ApiError
from server.http.inputs import read_model

routes = web.RouteTableDef()


class PromptBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: Prompt


class StrengthBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    strength: Strength


@routes.get("/api/settings")
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.SETTINGS].global_settings.model_dump())


@routes.patch("/api/settings")
async def patch_settings(request: web.Request) -> web.Response:
    patch = await read_model(request, SettingsPatch)
    return _apply_global(request, patch)


@routes.post("/api/prompt")
async def set_prompt(request: web.Request) -> web.Response:
    body = await read_model(request, PromptBody)
    return _apply_global(request, SettingsPatch(prompt=body.prompt))


@routes.post("/api/strength")
async def set_strength(request: web.Request) -> web.Response:
    body = await read_model(request, StrengthBody)
    return _apply_global(request, SettingsPatch(strength=body.strength))


def _apply_global(request: web.Request, patch: SettingsPatch) -> web.Response:
    try:
        settings = request.app[keys.SETTINGS].update_global(patch, "http")
    except ValueError as e:
        raise ApiError(422, "invalid fields", str(e)) from e
    return web.json_response(settings.model_dump())


@routes.get("/api/streams/{stream_id}/settings")
async def get_stream_settings(request: web.Request) -> web.Response:
    store = request.app[keys.SETTINGS]
    stream_id = request.match_info["stream_id"]
    try:
        overrides = store.overrides(stream_id)
    except UnknownStreamError as e:
        raise ApiError(404, "unknown stream", stream_id) from e
    return web.json_response({"settings": store.effective(stream_id).model_dump(), "overrides": overrides})


@routes.patch("/api/streams/{stream_id}/settings")
async def patch_stream_settings(request: web.Request) -> web.Response:
    store = request.app[keys.SETTINGS]
    stream_id = request.match_info["stream_id"]
    if not store.has_stream(stream_id):
        raise ApiError(404, "unknown stream", stream_id)
    patch = await read_model(request, SettingsPatch)
    settings = store.update_stream(stream_id, patch, "http")
    return web.json_response({"settings": settings.model_dump(), "overrides": store.overrides(stream_id)})
