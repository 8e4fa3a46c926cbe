"""The style fields: their bounds declared once, and the one shape of a bad-field report.

Settings, patches, presets, job forms, suggestions and the `[defaults]` config section all type
their fields with these, so a bound cannot drift between the HTTP API, OSC and the config file.
Whichever path finds a bad field (HTTP, the data channel), it reports `{"field", "message", "type"}`.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError

from pipeline.contract import CONTROL_KINDS, MAX_CONTROL_SCALE, MAX_LORA_SCALE
from pipeline.families import MAX_STEPS, MIN_STEPS

MAX_PROMPT = 500
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 20.0


def one_line(text: str) -> str:
    """Text without control characters: a newline or an escape sequence in a prompt would forge log lines,
    OSC feedback and what the pages show, so it is refused where it comes in, naming the field."""
    for character in text:
        if unicodedata.category(character) == "Cc":
            raise ValueError(f"holds a control character (U+{ord(character):04X}); send one line of plain text")
    return text


OneLine = Annotated[str, AfterValidator(one_line)]
Prompt = Annotated[str, Field(max_length=MAX_PROMPT), AfterValidator(one_line)]
# 0 = the input untouched, 1 = fully generated.
Strength = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
# 0 = the embedding of `prompt`, 1 = that of `prompt_b`.
Blend = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# 0 (or 1) runs without guidance, as turbo models want; above 1 doubles the UNet work.
Guidance = Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)]
# UNet calls per frame; None (a setting left out): the model family's default (1 turbo, 4 LCM).
Steps = Annotated[int, Field(ge=MIN_STEPS, le=MAX_STEPS)]
PresetId = Annotated[str, Field(max_length=64)]
# Temporal memory: the share of a stream's previous output in each frame's start (0 = off), and the
# flicker figure the server holds by moving it (see the README's flicker figure).
Feedback = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
FlickerTarget = Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)]
# Cached attention: how many of a stream's own last frames its self-attention also sees (0 = off).
PastFrames = Annotated[int, Field(ge=0, le=4)]
# ControlNet: the kind of control image made from each frame, and how strongly it steers (0 = off).
ControlKind = Literal[CONTROL_KINDS]  # type: ignore[valid-type]
ControlScale = Annotated[float, Field(ge=0.0, le=MAX_CONTROL_SCALE, allow_inf_nan=False)]
# A LoRA: a .safetensors file or folder under `[lora] dir`, or a hub id (`pipeline.lora_names`), and the
# scale it is worn at (1 = as trained; negative pushes away from it).
LoraName = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(one_line)]
LoraScale = Annotated[float, Field(ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE, allow_inf_nan=False)]
# A model a new stream asks for: a model id as `[model] id` names it (hub id, folder, `tiny`...) or a
# family (`sd-turbo`, `sd15`, `sdxl`); a cluster's front places the stream on a worker running it.
ModelAsk = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(one_line)]


def field_error(field: str, message: str, kind: str = "value_error") -> dict[str, str]:
    """One bad field, as every error detail lists it."""
    return {"field": field, "message": message, "type": kind}


def validation_detail(error: ValidationError) -> list[dict[str, str]]:
    """A pydantic error as a list of `field_error` items."""
    return [
        field_error(".".join(str(part) for part in item["loc"]), item["msg"], item["type"])
        for item in error.errors(include_url=False, include_context=False, include_input=False)
    ]


# A stream's name: what outputs, per-name settings and OSC addresses (`/stylize/name/<name>/...`) are
# keyed by, so they survive reconnects. Safe in a URL path segment and in an OSC address.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEFAULT_NAME = "default"
# Not a name: the output of whichever stream started most recently.
LATEST = "latest"


def publishable(name: str) -> str:
    """A name a stream may take: any but `latest`."""
    if name == LATEST:
        raise ValueError(f"{LATEST!r} stands for the most recently started stream; a stream cannot take it")
    return name


PublishName = Annotated[str, Field(pattern=NAME_PATTERN), AfterValidator(publishable)]
