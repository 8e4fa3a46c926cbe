"""Whether the LoRAs a change asks for can be worn here, checked before the change is taken.

Each LoRA is read once, off the event loop, by the engine's own reader (`Engine.load_lora`: a name
outside `[lora] dir`, one that is not there, a corrupt file, another family's LoRA, one whose layers the
slots do not cover): a 422 naming `loras.<i>.id` and why. What it reads stays on the host, so the
stream's first frame with it only copies it into a device slot. More different LoRAs in use by the
streams (with this change) than `[lora] slots` is a 409: the engine could not place them all. While the
model loads, or on a cluster's front (its workers read them), only the names are checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline.lora_names import LoraNameError, lora_missing, lora_source
from server import keys
from server.control.control_ask import refuse_unloaded_control, unloaded_kind
from server.control.presets import Preset
from server.control.settings import SettingsStore, name_scope
from server.engine_service import EngineService, lora_folder
from server.fields import field_error
from server.http.errors import ApiError

# The statuses a change of the look may get besides its fields' own 422s (OpenAPI's `errors`).
LOOK_ERRORS = {
    409: "the ControlNet kind is not loaded, or more different LoRAs would be in use than [lora] slots",
    422: "a LoRA that cannot be worn with this model (or another bad field)",
}


async def refuse_look(app: web.Application, values: Mapping[str, Any], scope: str | None = None) -> None:
    """What a change of the look passes before it is taken: its ControlNet kind is loaded here, and its
    LoRAs can be worn (`scope`: where the change goes, "global", a stream id or a name's scope; None
    for a look that joins the others, a new stream's or a render job's)."""
    refuse_unloaded_control(app[keys.ENGINE].describe(), values)
    await refuse_bad_loras(app, values, scope)


async def refuse_bad_loras(app: web.Application, values: Mapping[str, Any], scope: str | None = None) -> None:
    """A change's values (`SettingsPatch.values()`) whose LoRAs cannot be worn: a 422 or a 409, nothing taken."""
    loras = values.get("loras")
    if not loras:
        return
    names = [str(lora["id"]) for lora in loras]
    config = app[keys.CONFIG]
    problems = await _read_all(app[keys.ENGINE], names, lora_folder(config))
    if problems:
        raise ApiError(422, "invalid fields", [field_error(f"loras.{i}.id", why) for i, why in problems])
    in_use = loras_in_use(app[keys.SETTINGS], scope, set(names))
    if len(in_use) > config.lora.slots:
        raise ApiError(
            409,
            "more different LoRAs in use than [lora] slots",
            {"field": "loras", "in_use": sorted(in_use), "slots": config.lora.slots},
        )


def loras_in_use(settings: SettingsStore, scope: str | None, names: set[str]) -> set[str]:
    """The LoRAs worn once `names` are set at `scope`: the global ones (render jobs wear them) and each
    stream's, whose own setting wins over its name's, which wins over the global one. A `scope` of None
    adds `names` to what is worn (a new stream, a render job)."""

    def own(at: str) -> set[str] | None:
        """What `at` (a stream or a name's scope) sets itself once the change is in; None: it follows."""
        if at == scope:
            return names
        held = settings.overrides(at).get("loras")
        return None if held is None else {lora["id"] for lora in held}

    global_ = names if scope == "global" else {lora.id for lora in settings.global_settings.loras}
    in_use = global_ | (names if scope is None else set())
    for stream in settings.stream_ids():
        name = settings.stream_name(stream)
        levels = (own(stream), own(name_scope(name)) if name is not None else None, global_)
        in_use |= next(level for level in levels if level is not None)
    return in_use


async def _read_all(service: Any, names: list[str], folder: Path) -> list[tuple[int, str]]:
    """Each name's problem (index, why): read by the engine where one is loaded here, else the name checked."""
    if isinstance(service, EngineService) and service.ready:
        from pipeline import LoraError

        engine = service.engine
        loop = asyncio.get_running_loop()
        problems = []
        for index, name in enumerate(names):
            try:
                await loop.run_in_executor(None, engine.load_lora, name)
            except LoraError as e:
                problems.append((index, e.problem))
        return problems
    problems = []
    for index, name in enumerate(names):
        try:
            lora_source(name, folder)
        except LoraNameError as e:
            problems.append((index, str(e)))
    return problems


def preset_unavailable(app: web.Application) -> Callable[[Preset], str | None]:
    """Why a preset cannot be applied here (`PresetLibrary(unavailable=...)`): its ControlNet kind is not
    loaded, or one of its LoRAs is not in `[lora] dir` (nor a hub id in the hub cache). Reads no weights."""
    folder = lora_folder(app[keys.CONFIG])

    def why(preset: Preset) -> str | None:
        if preset.control is not None:
            kind = unloaded_kind(app[keys.ENGINE].describe(), preset.control.model_dump())
            if kind is not None:
                return f"its ControlNet kind {kind!r} is not loaded ([control] models)"
        for lora in preset.loras or []:
            missing = lora_missing(lora.id, folder)
            if missing is not None:
                return missing
        return None

    return why
