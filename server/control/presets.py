"""Style presets: built-ins from `configs/presets.toml` (read-only) and custom ones kept in SQLite.

`PresetLibrary` is what HTTP and OSC call: look presets up, create/update/delete custom ones,
`apply` one to the global settings or to one stream, and `step` to the next or previous preset in a
stable order (built-ins in file order, then custom presets by id). Every apply is counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.config import CONFIGS
from server.control.events import EventHub, PresetEvent
from server.control.settings import (
    Control,
    Loras,
    SettingsPatch,
    SettingsStore,
    StyleSettings,
    Temporal,
    UnknownStreamError,
)
from server.db import AddedColumn, Database
from server.fields import Guidance, Prompt, Seed, Steps, Strength, one_line

logger = logging.getLogger(__name__)

BUILTIN_PRESETS = CONFIGS / "presets.toml"
SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"
CATEGORY = r"^[a-z0-9][a-z0-9-]{0,31}$"
SLOT = "{prompt}"
MAX_NAME = 80
# A filled template is at most MAX_TEMPLATE - len(SLOT) + MAX_SUBJECT characters: always a valid prompt.
MAX_TEMPLATE = 300
MAX_SUBJECT = 200

SCHEMA = """
CREATE TABLE IF NOT EXISTS presets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    template TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    strength REAL NOT NULL,
    guidance_scale REAL NOT NULL,
    seed INTEGER NOT NULL,
    num_inference_steps INTEGER,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS preset_usage (
    preset_id TEXT PRIMARY KEY,
    applied INTEGER NOT NULL,
    last_applied REAL NOT NULL
);
"""
# Columns added since the table first shipped (NULL in presets saved before them): temporal and
# control and loras, the preset's `Temporal`, `Control` and LoRAs as JSON; num_inference_steps, its steps.
ADDED_COLUMNS: list[AddedColumn] = [
    ("presets", "temporal", "TEXT"),
    ("presets", "num_inference_steps", "INTEGER"),
    ("presets", "control", "TEXT"),
    ("presets", "loras", "TEXT"),
]
_JSON_COLUMNS = ("temporal", "control", "loras")
_FIELDS = [
    "id", "name", "category", "template", "negative_prompt", "strength", "guidance_scale", "seed", "temporal",
    "num_inference_steps", "control", "loras",
]  # fmt: skip
_COLUMNS = ", ".join(_FIELDS)


class UnknownPresetError(LookupError):
    """No preset with that id."""


class BuiltinPresetError(Exception):
    """Built-in presets are read-only."""


class DuplicatePresetError(Exception):
    """A preset with that id exists already (built-in or custom)."""


class PresetUnavailableError(Exception):
    """The preset's LoRA or ControlNet cannot be had here; the message says which and why."""


# Why a preset cannot be applied here (its LoRA is missing, its ControlNet kind not loaded), or None.
Availability = Callable[["Preset"], str | None]


def check_template(template: str) -> str:
    """A template holds exactly one `{prompt}` slot and no other brace."""
    slots = template.count(SLOT)
    if slots != 1:
        raise ValueError(f"template must hold exactly one {SLOT} slot, found {slots}")
    rest = template.replace(SLOT, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"template has a brace outside its {SLOT} slot: {template!r}")
    return template


class PresetParameters(BaseModel):
    """The seed systems' `parameters` object: the same fields under their names (`cfg_scale` is guidance)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cfg_scale: Guidance | None = None
    guidance_scale: Guidance | None = None
    strength: Strength | None = None
    seed: Seed | None = None
    negative_prompt: Prompt | None = None
    num_inference_steps: Steps | None = None


class PresetFields(BaseModel):
    """What a custom preset's owner sets (the body of PUT; POST adds the id).

    The seed systems' shapes are taken too: `prompt_template` for `template`, and a `parameters`
    object whose fields (`cfg_scale` for `guidance_scale`) fill the flat ones it does not repeat.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=MAX_NAME)
    category: str = Field(pattern=CATEGORY)
    template: Annotated[
        str,
        Field(max_length=MAX_TEMPLATE, description="holds exactly one {prompt} slot (or send prompt_template)"),
        AfterValidator(one_line),
        AfterValidator(check_template),
    ]
    negative_prompt: Prompt = ""
    strength: Strength = 0.5
    guidance_scale: Guidance = 0.0
    seed: Seed = 42
    temporal: Temporal | None = Field(None, description="temporal memory the look brings; null: leaves it as it is")
    num_inference_steps: Steps | None = Field(None, description="steps it sets; null leaves the steps as they are")
    control: Control | None = Field(None, description="the ControlNet the look brings; null: leaves it as it is")
    loras: Loras | None = Field(None, description="the LoRAs the look wears ([] none); null: leaves them as they are")
    prompt_template: str | None = Field(None, exclude=True, description="the seed systems' name for template")
    parameters: PresetParameters | None = Field(None, exclude=True, description="the seed systems' parameters")

    @model_validator(mode="before")
    @classmethod
    def _seed_shapes(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not ({"prompt_template", "parameters"} & data.keys()):
            return data
        data = dict(data)
        if "prompt_template" in data:
            if "template" in data:
                raise ValueError("send template or prompt_template, not both")
            data["template"] = data.pop("prompt_template")
        parameters = data.pop("parameters", None)
        if parameters is not None:
            values = PresetParameters.model_validate(parameters).model_dump(exclude_none=True)
            if "cfg_scale" in values:
                values.setdefault("guidance_scale", values.pop("cfg_scale"))
                values.pop("cfg_scale", None)
            for name, value in values.items():
                data.setdefault(name, value)
        return data


class NewPreset(PresetFields):
    """The body of POST /api/presets."""

    id: str = Field(pattern=SLUG)


class Preset(NewPreset):
    model_config = ConfigDict(frozen=True)

    builtin: bool = False

    def fill(self, subject: str) -> str:
        return self.template.replace(SLOT, subject)

    def subject_of(self, prompt: str) -> str | None:
        """The subject this preset's template was filled with to give `prompt`, if it was."""
        prefix, suffix = self.template.split(SLOT)
        if len(prompt) < len(prefix) + len(suffix) or not (prompt.startswith(prefix) and prompt.endswith(suffix)):
            return None
        subject = prompt[len(prefix) : len(prompt) - len(suffix)].strip()
        return subject if 0 < len(subject) <= MAX_SUBJECT else None


def preset_patch(preset: Preset, subject: str) -> SettingsPatch:
    look: dict[str, Any] = {
        "prompt": preset.fill(subject),
        "negative_prompt": preset.negative_prompt,
        "strength": preset.strength,
        "guidance_scale": preset.guidance_scale,
        "seed": preset.seed,
        "preset": preset.id,
    }
    if preset.temporal is not None:  # a preset without one leaves the scope's temporal memory alone
        look["temporal"] = preset.temporal.model_dump()
    if preset.num_inference_steps is not None:  # a preset without steps leaves them as they are
        look["num_inference_steps"] = preset.num_inference_steps
    if preset.control is not None:
        look["control"] = preset.control.model_dump()
    if preset.loras is not None:
        look["loras"] = [lora.model_dump() for lora in preset.loras]
    return SettingsPatch.model_validate(look)


@dataclass(frozen=True)
class AppliedPreset:
    preset: Preset
    scope: str  # "global" or a stream id
    subject: str
    settings: StyleSettings  # the scope's settings after the apply, prompt filled in


def load_builtin_presets(path: Path = BUILTIN_PRESETS) -> list[Preset]:
    """Read and validate the built-in presets file (blocking: call it off the event loop)."""
    with path.open("rb") as f:
        entries = tomllib.load(f).get("preset", [])
    presets: list[Preset] = []
    for index, entry in enumerate(entries):
        try:
            preset = Preset.model_validate({**entry, "builtin": True})
        except ValidationError as e:
            raise ValueError(f"{path}: preset #{index + 1} ({entry.get('id')!r}) is invalid: {e}") from e
        if any(p.id == preset.id for p in presets):
            raise ValueError(f"{path}: preset id {preset.id!r} appears twice")
        presets.append(preset)
    if not presets:
        raise ValueError(f"{path}: no [[preset]] entries")
    return presets


class PresetStorage(Protocol):
    """Where custom presets and their apply counts are kept: SQLite here, Redis in a cluster."""

    async def customs(self) -> list[Preset]:
        """Every custom preset, by id."""
        ...

    async def find(self, preset_id: str) -> Preset | None: ...

    async def insert(self, preset: Preset) -> bool:
        """False when a preset with its id exists already."""
        ...

    async def replace(self, preset: Preset) -> bool:
        """False when no preset has its id."""
        ...

    async def remove(self, preset_id: str) -> bool:
        """Remove the preset and its count; False when there was none."""
        ...

    async def count_apply(self, preset_id: str) -> None: ...

    async def usage(self) -> tuple[list[Preset], dict[str, int]]:
        """The custom presets and how many times each preset was applied, read together."""
        ...


class SqlitePresets:
    """Custom presets and apply counts in the server's SQLite database (`SCHEMA`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def customs(self) -> list[Preset]:
        return await self._db.run(_read_customs)

    async def find(self, preset_id: str) -> Preset | None:
        row = await self._db.run(
            lambda conn: conn.execute(f"SELECT {_COLUMNS} FROM presets WHERE id = ?", (preset_id,)).fetchone()
        )
        return None if row is None else _from_row(row)

    async def insert(self, preset: Preset) -> bool:
        def insert(conn: sqlite3.Connection) -> bool:
            now = time.time()
            values = _to_row(preset)
            try:
                conn.execute(
                    f"INSERT INTO presets ({_COLUMNS}, created, updated) "
                    f"VALUES ({', '.join(f':{field}' for field in _FIELDS)}, :created, :updated)",
                    {**values, "created": now, "updated": now},
                )
            except sqlite3.IntegrityError:
                return False
            return True

        return await self._db.run(insert)

    async def replace(self, preset: Preset) -> bool:
        values = {**_to_row(preset), "updated": time.time()}
        changed = await self._db.run(
            lambda conn: (
                conn.execute(
                    f"UPDATE presets SET {', '.join(f'{field} = :{field}' for field in _FIELDS[1:])}, "
                    "updated = :updated WHERE id = :id",
                    values,
                ).rowcount
            )
        )
        return bool(changed)

    async def remove(self, preset_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM preset_usage WHERE preset_id = ?", (preset_id,))
            return conn.execute("DELETE FROM presets WHERE id = ?", (preset_id,)).rowcount

        return bool(await self._db.run(remove))

    async def count_apply(self, preset_id: str) -> None:
        await self._db.run(lambda conn: _count_apply(conn, preset_id))

    async def usage(self) -> tuple[list[Preset], dict[str, int]]:
        def read(conn: sqlite3.Connection) -> tuple[list[Preset], dict[str, int]]:
            counts = dict(conn.execute("SELECT preset_id, applied FROM preset_usage").fetchall())
            return _read_customs(conn), counts

        return await self._db.run(read)


class PresetLibrary:
    def __init__(
        self,
        builtins: list[Preset],
        storage: PresetStorage,
        settings: SettingsStore,
        events: EventHub,
        default_subject: str = "a person",
        unavailable: Availability = lambda preset: None,
    ) -> None:
        self._builtins = {preset.id: preset for preset in builtins}  # keeps file order
        self.unavailable = unavailable
        self._storage = storage
        self._settings = settings
        self._events = events
        self._default_subject = default_subject
        # Applies read the current settings, then await the database: one at a time, so that two
        # quick /stylize/preset/next messages step twice instead of landing on the same preset.
        self._apply_lock = asyncio.Lock()

    def is_builtin(self, preset_id: str) -> bool:
        return preset_id in self._builtins

    async def presets(self, category: str | None = None) -> list[Preset]:
        """Every preset in the stable order: built-ins in file order, then custom ones by id."""
        ordered = [*self._builtins.values(), *self._customs(await self._storage.customs())]
        return [p for p in ordered if category is None or p.category == category]

    async def get(self, preset_id: str) -> Preset:
        builtin = self._builtins.get(preset_id)
        if builtin is not None:
            return builtin
        preset = await self._storage.find(preset_id)
        if preset is None:
            raise UnknownPresetError(f"no preset {preset_id!r}")
        return preset

    async def usage(self) -> dict[str, int]:
        """How many times each preset has been applied, every preset listed, in the stable order."""
        customs, counts = await self._storage.usage()
        return {preset.id: counts.get(preset.id, 0) for preset in [*self._builtins.values(), *self._customs(customs)]}

    async def create(self, new: NewPreset) -> Preset:
        if new.id in self._builtins:
            raise DuplicatePresetError(f"{new.id!r} is a built-in preset")
        preset = Preset.model_validate(new.model_dump())
        if not await self._storage.insert(preset):
            raise DuplicatePresetError(f"preset {new.id!r} exists already")
        logger.info("preset created id=%s", preset.id)
        self._events.publish(PresetEvent(action="created", preset_id=preset.id, preset=preset.model_dump()))
        return preset

    async def update(self, preset_id: str, fields: PresetFields) -> Preset:
        if preset_id in self._builtins:
            raise BuiltinPresetError(f"{preset_id!r} is a built-in preset and read-only")
        preset = Preset.model_validate({**fields.model_dump(), "id": preset_id})
        if not await self._storage.replace(preset):
            raise UnknownPresetError(f"no preset {preset_id!r}")
        logger.info("preset updated id=%s", preset_id)
        self._events.publish(PresetEvent(action="updated", preset_id=preset_id, preset=preset.model_dump()))
        return preset

    async def delete(self, preset_id: str) -> None:
        if preset_id in self._builtins:
            raise BuiltinPresetError(f"{preset_id!r} is a built-in preset and read-only")
        if not await self._storage.remove(preset_id):
            raise UnknownPresetError(f"no preset {preset_id!r}")
        logger.info("preset deleted id=%s", preset_id)
        self._events.publish(PresetEvent(action="deleted", preset_id=preset_id))

    async def apply(self, preset_id: str, subject: str | None = None, stream_id: str | None = None) -> AppliedPreset:
        """Apply a preset to the global settings, or to one stream's; `subject` fills its `{prompt}` slot.

        Without a subject, the one the current prompt was made with (when it came from a preset) is
        kept, else the configured default. Raises `UnknownPresetError`, `UnknownStreamError`,
        `PresetUnavailableError`.
        """
        async with self._apply_lock:
            current = self._current(stream_id)
            preset = await self.get(preset_id)
            why = self.unavailable(preset)
            if why is not None:
                raise PresetUnavailableError(f"preset {preset_id!r} cannot be applied here: {why}")
            return await self._apply(preset, subject, stream_id, current)

    async def step(self, direction: int, stream_id: str | None = None) -> AppliedPreset:
        """Apply the preset `direction` places after the current one (-1: the previous), wrapping, among
        the presets that can be applied here.

        With no current preset (or one since deleted), +1 gives the first preset and -1 the last.
        """
        if direction == 0:
            raise ValueError("direction must be non-zero, got 0")
        async with self._apply_lock:
            current = self._current(stream_id)
            ordered = [preset for preset in await self.presets() if self.unavailable(preset) is None]
            ids = [preset.id for preset in ordered]
            if current.preset in ids:
                index = (ids.index(current.preset) + direction) % len(ids)
            else:
                index = 0 if direction > 0 else len(ids) - 1
            return await self._apply(ordered[index], None, stream_id, current)

    def _current(self, stream_id: str | None) -> StyleSettings:
        if stream_id is None:
            return self._settings.global_settings
        if not self._settings.has_stream(stream_id):
            raise UnknownStreamError(stream_id)
        return self._settings.effective(stream_id)

    async def patch_for(self, preset_id: str, subject: str | None, current: StyleSettings) -> SettingsPatch:
        """What applying the preset over `current` would set, without applying it (render jobs).

        Raises `UnknownPresetError`.
        """
        preset = await self.get(preset_id)
        return preset_patch(preset, subject or await self._current_subject(current) or self._default_subject)

    async def _apply(
        self, preset: Preset, subject: str | None, stream_id: str | None, current: StyleSettings
    ) -> AppliedPreset:
        if subject is None:
            subject = await self._current_subject(current, stream_id or "global") or self._default_subject
        patch = preset_patch(preset, subject)
        if stream_id is None:
            settings = self._settings.update_global(patch, "preset")
        else:
            settings = self._settings.update_stream(stream_id, patch, "preset")
        await self._storage.count_apply(preset.id)
        scope = stream_id or "global"
        logger.info("preset applied id=%s scope=%s", preset.id, scope)
        self._events.publish(
            PresetEvent(action="applied", preset_id=preset.id, scope=scope, subject=subject, prompt=settings.prompt)
        )
        return AppliedPreset(preset, scope, subject, settings)

    async def _current_subject(self, current: StyleSettings, scope: str | None = None) -> str | None:
        """What the current prompt was made from: a prompt a person set (as the page keeps what was typed),
        else the subject of the preset that made it."""
        typed = self._settings.typed_prompt(scope) if scope is not None else None
        if typed is not None and len(typed.strip()) <= MAX_SUBJECT:
            return typed.strip() or None
        if current.preset is None:
            return None
        try:
            preset = await self.get(current.preset)
        except UnknownPresetError:
            return None
        return preset.subject_of(current.prompt)

    def _customs(self, customs: list[Preset]) -> list[Preset]:
        # A built-in id wins over a custom preset saved before that built-in shipped.
        return [preset for preset in customs if preset.id not in self._builtins]


def _read_customs(conn: sqlite3.Connection) -> list[Preset]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM presets ORDER BY id").fetchall()
    return [_from_row(row) for row in rows]


def _to_row(preset: Preset) -> dict[str, Any]:
    values = preset.model_dump(exclude={"builtin"})
    for column in _JSON_COLUMNS:
        values[column] = json.dumps(values[column]) if values[column] is not None else None
    return values


def _from_row(row: sqlite3.Row) -> Preset:
    values = dict(row)
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column]) if values[column] is not None else None
    return Preset.model_validate(values)


def _count_apply(conn: sqlite3.Connection, preset_id: str) -> None:
    conn.execute(
        "INSERT INTO preset_usage (preset_id, applied, last_applied) VALUES (?, 1, ?) "
        "ON CONFLICT (preset_id) DO UPDATE SET applied = applied + 1, last_applied = excluded.last_applied",
        (preset_id, time.time()),
    )
