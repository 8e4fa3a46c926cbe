"""The one settings state every control path changes: global settings plus per-stream overrides.

HTTP, OSC and the data channel all validate with `SettingsPatch` and apply through `SettingsStore`,
which tells its listeners (events, metrics) about every change with its source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.contract import FrameParams
from server.fields import Blend, Guidance, PresetId, Prompt, Seed, Strength

logger = logging.getLogger(__name__)

# Who made a change: "page" is the server's own page (over HTTP, marked `?source=page`).
Source = Literal["http", "page", "osc", "datachannel", "preset", "config"]


class StyleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    prompt_b: Prompt = ""
    blend: Blend = 0.0
    strength: Strength = 0.5
    seed: Seed = 42
    guidance_scale: Guidance = 0.0
    preset: PresetId | None = None
    paused: bool = False

    def frame_params(self) -> FrameParams:
        return FrameParams(
            prompt=self.prompt,
            strength=self.strength,
            seed=self.seed,
            negative_prompt=self.negative_prompt,
            prompt_b=self.prompt_b,
            blend=self.blend,
            guidance_scale=self.guidance_scale,
        )


class SettingsPatch(BaseModel):
    """Some fields of `StyleSettings`; strict types (ints pass for floats), unknown fields refused.

    For a stream, a field sent as null drops that override so the stream follows global again.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    prompt_b: Prompt | None = None
    blend: Blend | None = None
    strength: Strength | None = None
    seed: Seed | None = None
    guidance_scale: Guidance | None = None
    preset: PresetId | None = None
    paused: bool | None = None

    def values(self) -> dict[str, Any]:
        """The fields the caller sent, nulls included."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class UnknownStreamError(KeyError):
    """No stream with that id is registered."""


@dataclass(frozen=True)
class SettingsChange:
    scope: str  # "global" or a stream id
    source: Source
    changed: dict[str, Any]
    settings: StyleSettings


Listener = Callable[[SettingsChange], None]


class SettingsStore:
    def __init__(self, initial: StyleSettings) -> None:
        self._global = initial
        self._overrides: dict[str, dict[str, Any]] = {}
        self._listeners: list[Listener] = []

    @property
    def global_settings(self) -> StyleSettings:
        return self._global

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def add_stream(self, stream_id: str) -> None:
        self._overrides[stream_id] = {}

    def remove_stream(self, stream_id: str) -> None:
        self._overrides.pop(stream_id, None)

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self._overrides

    def overrides(self, stream_id: str) -> dict[str, Any]:
        return dict(self._stream_overrides(stream_id))

    def effective(self, stream_id: str) -> StyleSettings:
        overrides = self._overrides.get(stream_id)
        if not overrides:
            return self._global
        return self._global.model_copy(update=overrides)

    def restore(self, settings: StyleSettings) -> None:
        """Start from `settings` (saved by an earlier run); not a change, so nobody is told."""
        self._global = settings

    def update_global(self, patch: SettingsPatch, source: Source) -> StyleSettings:
        changed = patch.values()
        nulls = [name for name, value in changed.items() if value is None and name != "preset"]
        if nulls:
            raise ValueError(f"global settings cannot be null: {', '.join(sorted(nulls))}")
        self._global = StyleSettings.model_validate({**self._global.model_dump(), **changed})
        self._emit(SettingsChange("global", source, changed, self._global))
        return self._global

    def update_stream(self, stream_id: str, patch: SettingsPatch, source: Source) -> StyleSettings:
        overrides = self._stream_overrides(stream_id)
        changed = patch.values()
        for name, value in changed.items():
            if value is None:
                overrides.pop(name, None)
            else:
                overrides[name] = value
        settings = self.effective(stream_id)
        self._emit(SettingsChange(stream_id, source, changed, settings))
        return settings

    def _stream_overrides(self, stream_id: str) -> dict[str, Any]:
        try:
            return self._overrides[stream_id]
        except KeyError:
            raise UnknownStreamError(stream_id) from None

    def _emit(self, change: SettingsChange) -> None:
        logger.info(
            "settings changed scope=%s source=%s fields=%s", change.scope, change.source, sorted(change.changed)
        )
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("settings listener failed scope=%s", change.scope)
