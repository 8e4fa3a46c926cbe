"""Whether the ControlNet a change asks for is loaded here.

A `control` with a scale above 0 whose kind `[control] models` did not load would run without it:
the change is refused with a 409 naming the kinds loaded, so the caller knows at once. Only an engine
that has loaded says which kinds it holds; while it loads (or on a front without the answer) the
change is let through, and a kind not loaded runs as no control.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.http.errors import ApiError


def unloaded_kind(described: Mapping[str, Any], control: Mapping[str, Any] | None) -> str | None:
    """The kind `control` asks for that the engine (its `describe()`) has not loaded, or None."""
    loaded = described.get("control")
    if control is None or not control.get("scale") or described.get("state") != "ready" or loaded is None:
        return None
    kind = str(control.get("kind"))
    return None if kind in loaded else kind


def refuse_unloaded_control(described: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """A patch's values (`SettingsPatch.values()`) asking for a ControlNet not loaded: a 409."""
    kind = unloaded_kind(described, values.get("control"))
    if kind is not None:
        raise ApiError(
            409,
            "ControlNet not loaded",
            {"field": "control.kind", "kind": kind, "loaded": list(described.get("control") or [])},
        )
