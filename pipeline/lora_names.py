"""Which LoRA a name means: a `.safetensors` file or a folder under `[lora] dir`, or a hub id, and never a
path outside that folder (a name is what a person sends over HTTP or OSC, or a preset names). No torch
here: the server checks names on its event loop's side."""

from __future__ import annotations

from pathlib import Path

from pipeline import hub

# A LoRA repository: its weights (diffusers' or kohya's layout, in one .safetensors file).
LORA_PATTERNS = ["*.safetensors"]


class LoraNameError(ValueError):
    """The name is outside the LoRA folder, or is neither there nor a hub id."""


def lora_source(name: str, folder: Path) -> str:
    """What `read_lora` takes for `name`: the file or folder `folder / name` (resolved, links followed,
    and refused when that leaves the folder), else `name` itself where it is a hub id (`org/name`)."""
    root = folder.resolve()
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or not candidate.is_relative_to(root):
        raise LoraNameError(f"{name!r} is outside the LoRA folder {root} ([lora] dir)")
    if candidate.exists():
        return str(candidate)
    if name.count("/") == 1 and hub.is_hub_id(name):
        return name
    raise LoraNameError(f"no {name!r} in the LoRA folder {root} ([lora] dir), and not a hub id (org/name)")


def lora_missing(name: str, folder: Path) -> str | None:
    """Why the LoRA `name` cannot be had on this machine now (None: it can): not in the folder, or a hub
    id not in the hub cache. Reads no weights (cheap enough for every listed preset)."""
    try:
        source = lora_source(name, folder)
    except LoraNameError as e:
        return str(e)
    if Path(source).exists() or hub.cached(source, LORA_PATTERNS) is not None:
        return None
    return f"hub LoRA {name!r} is not in the hub cache: fetch it with `python -m server download`"
