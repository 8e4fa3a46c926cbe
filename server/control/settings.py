"""The one settings state every control path changes: global settings plus per-stream overrides.

HTTP, OSC and the data channel all validate with `SettingsPatch` and apply through `SettingsStore`,
which tells its listeners (events, metrics) about every change with its source.

Overrides have a scope: a stream id, or a stream name's scope `name:<name>` (`name_scope()`), so a
show can style two cameras by name instead of by an id that changes on every reconnect. A stream's
effective settings are the global ones, then its name's overrides, then its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from pipeline.contract import MAX_LORAS_PER_ROW, FrameParams
from server.fields import (
    DEFAULT_NAME,
    LATEST,
    NAME_PATTERN,
    Blend,
    ControlKind,
    ControlScale,
    Feedback,
    FlickerTarget,
    Guidance,
    LoraName,
    LoraScale,
    ModelAsk,
    PastFrames,
    PresetId,
    Prompt,
    Seed,
    Steps,
    Strength,
)

logger = logging.getLogger(__name__)

# Who made a change: "page" is the server's own page (over HTTP, marked `?source=page`).
Source = Literal["http", "page", "osc", "datachannel", "preset", "config"]
NAME_SCOPE = "name:"


def name_scope(name: str) -> str:
    """The override scope of a stream name: settings, events and the database all key it this way."""
    return NAME_SCOPE + name


def scope_name(scope: str) -> str | None:
    """The stream name a scope stands for, or None for "global" and stream ids."""
    if not scope.startswith(NAME_SCOPE):
        return None
    name = scope[len(NAME_SCOPE) :]
    return name if re.fullmatch(NAME_PATTERN, name) else None


class Temporal(BaseModel):
    """Temporal memory for a stream (`pipeline.temporal`); set as a whole (a field left out is its default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feedback: Feedback = Field(0.0, description="share of the previous output in each frame's start; 0 = off")
    frames: PastFrames = Field(0, description="past frames each self-attention layer also sees (0..4; 0 = off)")
    target: FlickerTarget | None = Field(
        None, description="a flicker figure to hold by moving feedback within [0, 0.9]; null = feedback as set"
    )


class Control(BaseModel):
    """ControlNet for a stream (`pipeline.control`): structure from its camera; set as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ControlKind = Field("canny", description="the control image made from each frame: canny edges or depth")
    scale: ControlScale = Field(0.0, description="how strongly it steers the picture, 0..2; 0 = off")


class Lora(BaseModel):
    """A LoRA a stream wears (`pipeline.lora_bank`): by name, at a scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: LoraName = Field(description="a .safetensors file or folder under [lora] dir, or a hub id (org/name)")
    scale: LoraScale = Field(1.0, description="how strongly it is worn: 1 as trained, 0 not at all, negative away")


def distinct_ids(loras: list[Lora]) -> list[Lora]:
    names = [lora.id for lora in loras]
    if len(set(names)) != len(names):
        raise ValueError("names a LoRA twice: give each once, with its scale")
    return loras


Loras = Annotated[list[Lora], Field(max_length=MAX_LORAS_PER_ROW), AfterValidator(distinct_ids)]


class StyleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    prompt_b: Prompt = ""
    blend: Blend = 0.0
    strength: Strength = 0.5
    seed: Seed = 42
    guidance_scale: Guidance = 0.0
    num_inference_steps: Steps | None = None  # None: the model family's default
    preset: PresetId | None = None
    paused: bool = False
    temporal: Temporal = Temporal()
    control: Control = Control()
    loras: Loras = []
    # Not a look: what a name's (or every) new stream asks to run on (`server.control.model_ask`).
    model: ModelAsk | None = None

    def frame_params(self) -> FrameParams:
        return FrameParams(
            prompt=self.prompt,
            strength=self.strength,
            seed=self.seed,
            negative_prompt=self.negative_prompt,
            prompt_b=self.prompt_b,
            blend=self.blend,
            guidance_scale=self.guidance_scale,
            feedback=self.temporal.feedback,
            flicker_target=self.temporal.target,
            frames=self.temporal.frames,
            num_inference_steps=self.num_inference_steps or 0,
            control_kind=self.control.kind,
            control_scale=self.control.scale,
            loras=tuple((lora.id, lora.scale) for lora in self.loras),
        )


class SettingsPatch(BaseModel):
    """Some fields of `StyleSettings`; strict types (ints pass for floats), unknown fields refused.

    For a stream, a field sent as null drops that override so the stream follows global again; globally
    only `GLOBAL_NULLABLE` fields may be null.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    prompt_b: Prompt | None = None
    blend: Blend | None = None
    strength: Strength | None = None
    seed: Seed | None = None
    guidance_scale: Guidance | None = None
    num_inference_steps: Steps | None = None
    preset: PresetId | None = None
    paused: bool | None = None
    temporal: Temporal | None = None
    control: Control | None = None
    loras: Loras | None = None
    model: ModelAsk | None = None

    def values(self) -> dict[str, Any]:
        """The fields the caller sent, nulls included, as JSON values (an object setting as a dict):
        what overrides hold, events carry and the database and Redis keep."""
        return self.model_dump(include=self.model_fields_set)


class StreamSettingsPatch(SettingsPatch):
    """A running stream's own patch: everything but `model`, which only places streams yet to start."""

    @field_validator("model")
    @classmethod
    def _placed_already(cls, value: str | None) -> str | None:
        raise ValueError(
            "places new streams, so a running stream has none: set it for the name "
            "(PATCH /api/outputs/{name}/settings), globally, or send it with the offer"
        )


# Global fields whose null is a value (no preset applied; the model family's default steps; no model
# asked for) rather than "follow global".
GLOBAL_NULLABLE = frozenset({"preset", "num_inference_steps", "model"})


class UnknownStreamError(KeyError):
    """No stream with that id is registered."""


class NullGlobalError(ValueError):
    """A global field sent as null: the global settings have every field (only a stream's or a
    name's override can be dropped)."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(f"global settings cannot be null: {', '.join(fields)}")
        self.fields = fields


@dataclass(frozen=True)
class SettingsChange:
    scope: str  # "global", a stream id or a name's scope (`name:<name>`)
    source: Source
    changed: dict[str, Any]
    settings: StyleSettings
    # Made on another node of a cluster and replicated here: its own node told the events, the
    # metrics and its sender already; listeners that reach local clients (OSC feedback) still send it.
    remote: bool = False


Listener = Callable[[SettingsChange], None]


class SettingsStore:
    def __init__(self, initial: StyleSettings) -> None:
        self._global = initial
        # By scope: every registered stream (maybe empty), and each name that has overrides.
        self._overrides: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}  # stream id -> its name
        self._listeners: list[Listener] = []
        self._typed: dict[str, str] = {}  # by scope: the prompt a person last set there (a preset's subject)
        # By scope: its effective settings, made once per change (every stream reads its own every frame).
        self._effective: dict[str, StyleSettings] = {}

    @property
    def global_settings(self) -> StyleSettings:
        return self._global

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def add_stream(self, stream_id: str, name: str = DEFAULT_NAME) -> None:
        self._overrides[stream_id] = {}
        self._names[stream_id] = name
        self._effective.clear()

    def remove_stream(self, stream_id: str) -> None:
        if scope_name(stream_id) is None:
            self._effective.clear()
            self._overrides.pop(stream_id, None)
            self._names.pop(stream_id, None)
            self._typed.pop(stream_id, None)

    def has_stream(self, stream_id: str) -> bool:
        """A registered stream; a name's scope always exists (a name can be styled before it streams)."""
        return stream_id in self._overrides or scope_name(stream_id) is not None

    @staticmethod
    def scope_of_name(name: str) -> str | None:
        """The override scope of `name`, or None when no stream can take that name."""
        scope = name_scope(name)
        return scope if name != LATEST and scope_name(scope) is not None else None

    def stream_name(self, stream_id: str) -> str | None:
        return self._names.get(stream_id)

    def stream_ids(self) -> list[str]:
        """Every registered stream (not names' scopes)."""
        return list(self._names)

    def names(self) -> list[str]:
        """Every name a registered stream has or that has overrides, sorted."""
        return sorted(set(self._names.values()) | set(self.named_overrides()))

    def named_overrides(self) -> dict[str, dict[str, Any]]:
        """Every name that has overrides, with them."""
        return {name: dict(values) for scope, values in self._overrides.items() if (name := scope_name(scope))}

    def overrides(self, stream_id: str) -> dict[str, Any]:
        if scope_name(stream_id) is not None:
            return dict(self._overrides.get(stream_id, {}))
        return dict(self._stream_overrides(stream_id))

    def effective(self, stream_id: str) -> StyleSettings:
        """Global, then the name's overrides, then the stream's own (`stream_id` may be a name's scope)."""
        name = self._names.get(stream_id)
        by_name = self._overrides.get(name_scope(name)) if name is not None else None
        own = self._overrides.get(stream_id)
        if not by_name and not own:
            return self._global
        settings = self._effective.get(stream_id)
        if settings is None:
            merged = {**self._global.model_dump(), **(by_name or {}), **(own or {})}
            settings = self._effective[stream_id] = StyleSettings.model_validate(merged)
        return settings

    def restore(self, settings: StyleSettings) -> None:
        """Start from `settings` (saved by an earlier run); not a change, so nobody is told."""
        self._global = settings
        self._effective.clear()

    def restore_name(self, name: str, overrides: dict[str, Any]) -> None:
        """Start a name with `overrides` (saved by an earlier run, validated); nobody is told."""
        if overrides:
            self._overrides[name_scope(name)] = dict(overrides)
            self._effective.clear()

    def typed_prompt(self, scope: str) -> str | None:
        """The prompt in effect for `scope` ("global", a stream id or a name's scope) when a person set it
        (not a preset, not the start-up default): what the next preset's `{prompt}` slot is filled with."""
        current = self._global if scope == "global" else self.effective(scope)
        name = self._names.get(scope)
        for where in (scope, name_scope(name) if name is not None else None, "global"):
            if where is not None and self._typed.get(where) == current.prompt:
                return current.prompt
        return None

    def as_typed(self, scope: str, patch: SettingsPatch, source: Source) -> SettingsPatch:
        """A prompt set by a person, as the page sets it: it clears the preset (and, when one was applied,
        the negative prompt it brought), so the next preset fills its `{prompt}` slot with it."""
        fields = patch.model_fields_set
        if source in ("preset", "config") or patch.prompt is None or "preset" in fields:
            return patch
        current = self._global if scope == "global" else self.effective(scope)
        cleared: dict[str, Any] = {"preset": None}
        if current.preset is not None and "negative_prompt" not in fields:
            cleared["negative_prompt"] = ""
        return SettingsPatch.model_validate({**patch.values(), **cleared})

    def update_global(self, patch: SettingsPatch, source: Source) -> StyleSettings:
        patch = self.as_typed("global", patch, source)
        if source not in ("preset", "config") and patch.prompt is not None:
            self._typed["global"] = patch.prompt
        changed = patch.values()
        nulls = [name for name, value in changed.items() if value is None and name not in GLOBAL_NULLABLE]
        if nulls:
            raise NullGlobalError(sorted(nulls))
        settings = self._set_global(changed)
        self._emit(SettingsChange("global", source, changed, settings))
        return settings

    def update_stream(self, stream_id: str, patch: SettingsPatch, source: Source) -> StyleSettings:
        if not self.has_stream(stream_id):
            raise UnknownStreamError(stream_id)
        patch = self.as_typed(stream_id, patch, source)
        changed = patch.values()
        settings = self._set_overrides(stream_id, changed)
        if source not in ("preset", "config") and patch.prompt is not None:
            self._typed[stream_id] = patch.prompt
        self._emit(SettingsChange(stream_id, source, changed, settings))
        return settings

    # -- for a replica (a cluster node): changes made elsewhere -----------------------------------

    def take(self, scope: str, changed: dict[str, Any]) -> StyleSettings:
        """Set `changed` in `scope` ("global", a stream id or a name's scope) as another node made it:
        nobody is told here (`tell` does, once the caller knows the change is news)."""
        return self._set_global(changed) if scope == "global" else self._set_overrides(scope, changed)

    def tell(self, change: SettingsChange) -> None:
        """Tell the listeners of a change made elsewhere."""
        self._emit(change)

    def _set_global(self, changed: dict[str, Any]) -> StyleSettings:
        self._global = StyleSettings.model_validate({**self._global.model_dump(), **changed})
        self._effective.clear()
        return self._global

    def _set_overrides(self, stream_id: str, changed: dict[str, Any]) -> StyleSettings:
        """Set (or, for None, drop) the scope's overrides; `UnknownStreamError` for an unknown stream."""
        overrides = self._stream_overrides(stream_id)
        self._effective.clear()
        for name, value in changed.items():
            if value is None:
                overrides.pop(name, None)
            else:
                overrides[name] = value
        if not overrides and scope_name(stream_id) is not None:
            self._overrides.pop(stream_id, None)  # a name back to following global holds nothing
        return self.effective(stream_id)

    def _stream_overrides(self, stream_id: str) -> dict[str, Any]:
        try:
            return self._overrides[stream_id]
        except KeyError:
            if scope_name(stream_id) is not None:
                return self._overrides.setdefault(stream_id, {})
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
