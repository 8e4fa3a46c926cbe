"""`[control] models`: which ControlNet serves each kind, read without torch (the config checks it at start)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.contract import CONTROL_KINDS as KINDS

TINY = "tiny"  # `[control] models = ["tiny"]`: a random-weight ControlNet per kind (and the depth twin)
CONTROL_FIX = (
    'List ControlNets for the model\'s family in [control] models as "kind=hub id or folder" '
    f'(kinds: {", ".join(KINDS)}), or ["tiny"] with a tiny* or arch: model'
)


class ControlError(ValueError):
    """`[control]` names a kind that does not exist, or a ControlNet that does not fit the model."""


def parse_models(entries: Sequence[str]) -> dict[str, str]:
    """`["canny=lllyasviel/sd-controlnet-canny", ...]` (or `["tiny"]`) -> {kind: source}."""
    if list(entries) == [TINY]:
        return {kind: TINY for kind in KINDS}
    models: dict[str, str] = {}
    for entry in entries:
        kind, equals, source = entry.partition("=")
        kind, source = kind.strip(), source.strip()
        if not equals or not source:
            raise ControlError(f"[control] models entry {entry!r} is not kind=source. {CONTROL_FIX}")
        if kind not in KINDS:
            raise ControlError(f"[control] models entry {entry!r}: unknown kind {kind!r}. {CONTROL_FIX}")
        if kind in models:
            raise ControlError(f"[control] models names kind {kind!r} twice")
        models[kind] = source
    return models
