"""Style presets over HTTP: list, read, create, replace, delete, apply and preview."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from server import keys
from server.control import keys as control_keys
from server.control.lora_ask import LOOK_ERRORS, refuse_bad_loras
from server.control.presets import (
    CATEGORY,
    MAX_SUBJECT,
    BuiltinPresetError,
    DuplicatePresetError,
    NewPreset,
    Preset,
    PresetFields,
    PresetLibrary,
    PresetUnavailableError,
    UnknownPresetError,
)
from server.control.settings import StyleSettings, UnknownStreamError, name_scope
from server.fields import OneLine, PublishName
from server.http.errors import ApiError
from server.http.inputs import read_model, read_query
from server.http.openapi import operation

routes = web.RouteTableDef()


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str | None = Field(None, pattern=CATEGORY)


class ApplyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: OneLine | None = Field(
        None,
        min_length=1,
        max_length=MAX_SUBJECT,
        validation_alias=AliasChoices("prompt", "user_prompt"),
        description="fills the {prompt} slot (user_prompt: the seed systems' name, as preview takes)",
    )
    stream_id: str | None = Field(None, min_length=1, max_length=64, description="apply to this stream only")
    name: PublishName | None = Field(None, description="apply to this name (its every stream, saved) only")

    @model_validator(mode="after")
    def _one_scope(self) -> ApplyBody:
        if self.stream_id is not None and self.name is not None:
            raise ValueError("send stream_id or name, not both")
        return self

    @property
    def scope(self) -> str | None:
        """The scope the preset goes to: a stream id, a name's scope, or None for global."""
        return name_scope(self.name) if self.name is not None else self.stream_id


class PreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: OneLine | None = Field(
        None,
        min_length=1,
        max_length=MAX_SUBJECT,
        validation_alias=AliasChoices("prompt", "user_prompt"),
        description="fills the {prompt} slot (user_prompt: the seed systems' name)",
    )


class ListedPreset(Preset):
    available: bool = Field(
        description="whether it can be applied here: its LoRAs can be had, its ControlNet is loaded"
    )
    unavailable_reason: str | None = Field(description="why not, when it cannot")


class PresetList(BaseModel):
    presets: list[dict[str, Any]] = Field(
        description="each preset with its usage count, and whether it can be applied here (available, and if not why)"
    )


class Deleted(BaseModel):
    deleted: str


class Applied(BaseModel):
    preset: Preset
    scope: str = Field(description='"global" or the stream id')
    subject: str
    settings: StyleSettings


class PreviewParameters(BaseModel):
    strength: float
    guidance_scale: float
    cfg_scale: float = Field(description="guidance_scale under the seed systems' name")
    seed: int


class Preview(BaseModel):
    preset: str
    subject: str
    prompt: str
    negative_prompt: str
    parameters: PreviewParameters


PRESET_ERRORS = {404: "unknown preset"}


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
    except PresetUnavailableError as e:
        raise ApiError(409, "preset unavailable", str(e)) from e


def _listed(library: PresetLibrary, preset: Preset) -> dict[str, Any]:
    """A preset as listed: with whether it can be applied here, and why not (its LoRA or ControlNet)."""
    why = library.unavailable(preset)
    return {**preset.model_dump(), "available": why is None, "unavailable_reason": why}


@routes.get("/api/presets")
@routes.get("/api/presets/")
@operation("Every preset, built-ins first", tag="presets", query=ListQuery, response=PresetList)
async def list_presets(request: web.Request) -> web.Response:
    query = read_query(request, ListQuery)
    library = request.app[control_keys.PRESETS]
    usage = await library.usage()
    presets = await library.presets(query.category)
    return web.json_response({"presets": [{**_listed(library, p), "usage": usage.get(p.id, 0)} for p in presets]})


@routes.get("/api/presets/{preset_id}")
@operation("One preset", tag="presets", response=ListedPreset, errors=PRESET_ERRORS)
async def get_preset(request: web.Request) -> web.Response:
    library = request.app[control_keys.PRESETS]
    with _domain_errors():
        preset = await library.get(request.match_info["preset_id"])
    return web.json_response(_listed(library, preset))


@routes.post("/api/presets")
@routes.post("/api/presets/")
@operation(
    "Create a custom preset",
    tag="presets",
    body=NewPreset,
    response=Preset,
    status=201,
    errors={409: "a preset with that id exists (built-in or custom)"},
)
async def create_preset(request: web.Request) -> web.Response:
    new = await read_model(request, NewPreset)
    with _domain_errors():
        preset = await request.app[control_keys.PRESETS].create(new)
    return web.json_response(preset.model_dump(), status=201)


@routes.put("/api/presets/{preset_id}")
@operation(
    "Replace a custom preset",
    tag="presets",
    body=PresetFields,
    response=Preset,
    errors={**PRESET_ERRORS, 403: "built-in presets are read-only"},
)
async def replace_preset(request: web.Request) -> web.Response:
    library = request.app[control_keys.PRESETS]
    preset_id = request.match_info["preset_id"]
    if library.is_builtin(preset_id):  # 403 whatever the body holds
        raise ApiError(403, "built-in presets are read-only", preset_id)
    fields = await read_model(request, PresetFields)
    with _domain_errors():
        preset = await library.update(preset_id, fields)
    return web.json_response(preset.model_dump())


@routes.delete("/api/presets/{preset_id}")
@operation(
    "Delete a custom preset",
    tag="presets",
    response=Deleted,
    errors={**PRESET_ERRORS, 403: "built-in presets are read-only"},
)
async def delete_preset(request: web.Request) -> web.Response:
    preset_id = request.match_info["preset_id"]
    with _domain_errors():
        await request.app[control_keys.PRESETS].delete(preset_id)
    return web.json_response({"deleted": preset_id})


@routes.post("/api/presets/{preset_id}/apply")
@routes.post("/api/presets/apply/{preset_id}")  # the seed systems' path
@operation(
    "Apply a preset to the live look (global, or one stream)",
    tag="presets",
    body=ApplyBody,
    body_required=False,
    response=Applied,
    errors={404: "unknown preset or stream", 409: "the preset's LoRA or ControlNet cannot be had here"} | LOOK_ERRORS,
    description="Without a prompt the subject of the current prompt is kept (else [presets] default_subject).",
)
async def apply_preset(request: web.Request) -> web.Response:
    body = await read_model(request, ApplyBody) if request.body_exists else ApplyBody()
    library = request.app[control_keys.PRESETS]
    with _domain_errors():
        preset = await library.get(request.match_info["preset_id"])
        if preset.loras and library.unavailable(preset) is None:  # read before it is worn: a broken one is a 422
            loras = {"loras": [lora.model_dump() for lora in preset.loras]}
            await refuse_bad_loras(request.app, loras, body.scope or "global")
        applied = await library.apply(preset.id, body.prompt, body.scope)
    return web.json_response(
        {
            "preset": applied.preset.model_dump(),
            "scope": applied.scope,
            "subject": applied.subject,
            "settings": applied.settings.model_dump(),
        }
    )


@routes.post("/api/presets/{preset_id}/preview")
@operation(
    "What applying a preset would set, without touching the live look",
    tag="presets",
    body=PreviewBody,
    body_required=False,
    response=Preview,
    errors=PRESET_ERRORS,
)
async def preview_preset(request: web.Request) -> web.Response:
    body = await read_model(request, PreviewBody) if request.body_exists else PreviewBody()
    library = request.app[control_keys.PRESETS]
    preset_id = request.match_info["preset_id"]
    with _domain_errors():
        patch = await library.patch_for(preset_id, body.prompt, request.app[keys.SETTINGS].global_settings)
        preset = await library.get(preset_id)
    prompt = patch.prompt or ""
    guidance = patch.guidance_scale or 0.0
    preview = Preview(
        preset=preset.id,
        subject=preset.subject_of(prompt) or "",
        prompt=prompt,
        negative_prompt=patch.negative_prompt or "",
        parameters=PreviewParameters(
            strength=preset.strength, guidance_scale=guidance, cfg_scale=guidance, seed=preset.seed
        ),
    )
    return web.json_response(preview.model_dump())
