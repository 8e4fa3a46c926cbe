"""Model families, and how a model's own config tells which one it belongs to (no torch here).

- `sd-turbo`: SD 2.x-class (one OpenCLIP text encoder, 1024-wide cross-attention), distilled to 1 step;
- `sd15`: SD 1.5-class (one CLIP ViT-L text encoder, 768-wide cross-attention), made fast with LCM
  (an LCM-distilled checkpoint), 4 steps by default;
- `sdxl`: SDXL-class (two text encoders, pooled embeddings, size micro-conditioning: the UNet's
  `addition_embed_type` is `text_time`), SDXL-Turbo's 1 step by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AUTO = "auto"
SDXL = "sdxl"
FAMILY_FIX = "Set [model] family (STYLIZE_MODEL_FAMILY) to one of sd-turbo, sd15, sdxl"
MIN_STEPS = 1
MAX_STEPS = 4


class FamilyError(ValueError):
    """The family is unknown or cannot be told from the model's config; the message says which and the fix."""


@dataclass(frozen=True)
class Family:
    name: str
    default_steps: int  # what a frame runs when no setting asks for a number of steps
    tiny_vae: str  # the tiny VAE a hub model runs with by default ([model] vae = "auto")
    text_encoders: int  # 2 for SDXL: pooled embeddings and micro-conditioning come with the second
    arch: str  # its architecture in `pipeline/archs/`: the configs a single-file checkpoint of it loads with
    # The hub repository whose tokenizers a single-file checkpoint uses (CLIP's vocabulary is too big to ship).
    reference: str

    @property
    def pooled(self) -> bool:
        return self.text_encoders == 2


FAMILIES = {
    "sd-turbo": Family("sd-turbo", 1, "madebyollin/taesd", 1, "sd-turbo", "stabilityai/sd-turbo"),
    "sd15": Family("sd15", 4, "madebyollin/taesd", 1, "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    SDXL: Family(SDXL, 1, "madebyollin/taesdxl", 2, "sdxl-turbo", "stabilityai/sdxl-turbo"),
}


def family_named(name: str) -> Family:
    family = FAMILIES.get(name)
    if family is None:
        raise FamilyError(f"unknown model family {name!r}. {FAMILY_FIX}")
    return family


def detect_family(
    spec: str, unet_config: dict[str, Any], scheduler_config: dict[str, Any], index: dict[str, Any] | None = None
) -> Family:
    """The family from the model's own configs: the UNet's added conditioning and cross-attention
    width, the pipeline class in model_index.json, and an LCM scheduler for a distilled SD 1.5."""
    if unet_config.get("addition_embed_type") == "text_time" or "XL" in str((index or {}).get("_class_name", "")):
        return FAMILIES[SDXL]
    width = unet_config.get("cross_attention_dim")
    if width == 768:
        return FAMILIES["sd15"]
    if width == 1024:
        return FAMILIES["sd-turbo"]
    if scheduler_config.get("_class_name") == "LCMScheduler":
        return FAMILIES["sd15"]
    raise FamilyError(
        f"cannot tell the family of model {spec!r}: its UNet has cross_attention_dim {width!r} "
        f"(SD 1.5: 768, SD 2.x: 1024) and no SDXL text_time conditioning. {FAMILY_FIX}"
    )
