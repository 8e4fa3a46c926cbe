"""Settings over HTTP: global, per stream, and the prompt/strength shorthands."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from server import keys
from server.control.lora_ask import LOOK_ERRORS, refuse_look
from server.control.settings import (
    NullGlobalError,
    SettingsPatch,
    Source,
    StreamSettingsPatch,
    StyleSettings,
    UnknownStreamError,
)
from server.fields import Prompt, Strength, field_error, validation_detail
from server.http.errors import ApiError
from server.http.inputs import read_model, read_query
from server.http.openapi import operation

routes = web.RouteTableDef()


class SourceQuery(BaseModel):
    """The page marks its own changes (`?source=page`), so that others can tell who paused the look."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["page"] | None = None


class PromptBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: Prompt


class StrengthBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    strength: Strength


class StreamSettings(BaseModel):
    """A stream's effective settings and the fields it overrides (the rest follow the global settings)."""

    settings: StyleSettings
    overrides: dict[str, Any]


UNKNOWN_STREAM = {404: "unknown stream"}


@routes.get("/api/settings")
@operation("The global settings", tag="settings", response=StyleSettings)
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[keys.SETTINGS].global_settings.model_dump())


@routes.patch("/api/settings")
@operation(
    "Change some global settings",
    tag="settings",
    body=SettingsPatch,
    query=SourceQuery,
    response=StyleSettings,
    errors=LOOK_ERRORS,
    description="Only the fields sent change; every change is pushed to /api/events as a settings event.",
)
async def patch_settings(request: web.Request) -> web.Response:
    source = read_query(request, SourceQuery).source or "http"
    patch = await read_model(request, SettingsPatch)
    await refuse_look(request.app, patch.values(), "global")
    return _apply_global(request, patch, source)


@routes.post("/api/settings/reset")
@operation("Put the global settings back to the config's [defaults]", tag="settings", response=StyleSettings)
async def reset_settings(request: web.Request) -> web.Response:
    """Back to the `[defaults]` of the config (the saved look is replaced)."""
    defaults = StyleSettings(**request.app[keys.CONFIG].defaults.model_dump())
    return _apply_global(request, SettingsPatch.model_validate(defaults.model_dump()))


@routes.post("/api/prompt")
@operation("Set the global prompt", tag="settings", body=PromptBody, response=StyleSettings)
async def set_prompt(request: web.Request) -> web.Response:
    body = await read_model(request, PromptBody)
    return _apply_global(request, SettingsPatch(prompt=body.prompt))


@routes.post("/api/strength")
@operation("Set the global strength", tag="settings", body=StrengthBody, response=StyleSettings)
async def set_strength(request: web.Request) -> web.Response:
    body = await read_model(request, StrengthBody)
    return _apply_global(request, SettingsPatch(strength=body.strength))


def _apply_global(request: web.Request, patch: SettingsPatch, source: Source = "http") -> web.Response:
    try:
        settings = request.app[keys.SETTINGS].update_global(patch, source)
    except NullGlobalError as e:
        detail = [field_error(name, "cannot be null in the global settings") for name in e.fields]
        raise ApiError(422, "invalid fields", detail) from e
    except ValidationError as e:  # fields valid alone that the settings refuse together
        raise ApiError(422, "invalid fields", validation_detail(e)) from e
    return web.json_response(settings.model_dump())


@routes.get("/api/streams/{stream_id}/settings")
@operation("A stream's settings and overrides", tag="streams", response=StreamSettings, errors=UNKNOWN_STREAM)
async def get_stream_settings(request: web.Request) -> web.Response:
    store = request.app[keys.SETTINGS]
    stream_id = request.match_info["stream_id"]
    try:
        overrides = store.overrides(stream_id)
    except UnknownStreamError as e:
        raise ApiError(404, "unknown stream", stream_id) from e
    return web.json_response({"settings": store.effective(stream_id).model_dump(), "overrides": overrides})


@routes.patch("/api/streams/{stream_id}/settings")
@operation(
    "Override settings for one stream",
    tag="streams",
    body=StreamSettingsPatch,
    query=SourceQuery,
    response=StreamSettings,
    errors=UNKNOWN_STREAM | LOOK_ERRORS,
    description="A field sent as null drops that override: the stream follows the global value again.",
)
async def patch_stream_settings(request: web.Request) -> web.Response:
    store = request.app[keys.SETTINGS]
    stream_id = request.match_info["stream_id"]
    if not store.has_stream(stream_id):
        raise ApiError(404, "unknown stream", stream_id)
    patch = await read_model(request, StreamSettingsPatch)
    await refuse_look(request.app, patch.values(), stream_id)
    settings = store.update_stream(stream_id, patch, read_query(request, SourceQuery).source or "http")
    return web.json_response({"settings": settings.model_dump(), "overrides": store.overrides(stream_id)})
