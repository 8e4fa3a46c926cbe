"""The seam between presets and the features that take a preset id (render jobs first).

A presets feature registers a `PresetResolver` under `keys.PRESET_RESOLVER` in `create_app`; it
turns a preset id into the settings that preset applies. Without one registered, a request naming
a preset is refused with a clear 422 rather than guessed at.
"""

from __future__ import annotations

from typing import Protocol

from server.settings import SettingsPatch


class PresetResolver(Protocol):
    async def __call__(self, preset_id: str) -> SettingsPatch | None:
        """The settings the preset applies, or None when no preset has that id."""
        ...
