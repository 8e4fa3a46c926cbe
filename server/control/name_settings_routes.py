"""Settings by stream name over HTTP: `GET/PATCH /api/outputs/{name}/settings` (null clears a field).

A name's overrides style every stream of that name, across reconnects and restarts (they are saved
like the global settings); a stream's own overrides still come last. A name can be styled before
any stream takes it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from server import keys
from server.control.lora_ask import LOOK_ERRORS, refuse_look
from server.control.settings import SettingsPatch, SettingsStore, StyleSettings, name_scope
from server.http.inputs import read_model
from server.http.names import path_name
from server.http.openapi import operation

routes = web.RouteTableDef()


class NameSettings(BaseModel):
    name: str
    settings: StyleSettings
    overrides: dict[str, Any] = Field(description="the fields this name sets; the rest follow global")


@routes.get("/api/outputs/{name}/settings")
@operation(
    "A name's settings: effective (global under its overrides) and its overrides",
    tag="settings",
    response=NameSettings,
    errors={422: "not a name a stream can take"},
)
async def get_name_settings(request: web.Request) -> web.Response:
    name = path_name(request, latest=False)
    return _describe(request.app[keys.SETTINGS], name)


@routes.patch("/api/outputs/{name}/settings")
@operation(
    "Change a name's overrides (null clears one); saved, for every stream of that name",
    tag="settings",
    body=SettingsPatch,
    response=NameSettings,
    errors=LOOK_ERRORS,
)
async def patch_name_settings(request: web.Request) -> web.Response:
    name = path_name(request, latest=False)
    patch = await read_model(request, SettingsPatch)
    await refuse_look(request.app, patch.values(), name_scope(name))
    store = request.app[keys.SETTINGS]
    store.update_stream(name_scope(name), patch, "http")
    return _describe(store, name)


def _describe(store: SettingsStore, name: str) -> web.Response:
    scope = name_scope(name)
    return web.json_response(
        {"name": name, "settings": store.effective(scope).model_dump(), "overrides": store.overrides(scope)}
    )
