"""Single-file checkpoints: one `.safetensors` in the original (LDM/kohya) layout, as most community SD 1.5
and SDXL checkpoints ship, read by diffusers' own single-file loaders (nothing here maps keys), offline.

The family is told from the file's keys by diffusers' `infer_diffusers_model_type`. The loaders need the
diffusers configs of each part: from a diffusers folder (`[model] config`), or else from the family's
architecture shipped in `pipeline/archs/`, laid out here as the folder the loaders read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    SingleFileComponentError,
    create_diffusers_clip_model_from_ldm,
    infer_diffusers_model_type,
    load_single_file_checkpoint,
)
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from pipeline.families import FAMILY_FIX, Family, FamilyError, family_named

SUFFIX = ".safetensors"
# diffusers' name for a checkpoint's kind -> the family that runs it; other kinds (inpainting, refiner...) do not fit.
MODEL_TYPES = {"v1": "sd15", "v2": "sd-turbo", "xl_base": "sdxl"}
# Every Stable Diffusion UNet in the original layout has it; diffusers says "v1" for any file it cannot place.
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
# The architecture's files, and where a diffusers folder keeps each.
ARCH_CONFIGS = {
    "unet.json": "unet/config.json",
    "autoencoder_kl.json": "vae/config.json",
    "text_encoder.json": "text_encoder/config.json",
    "text_encoder_2.json": "text_encoder_2/config.json",
    "scheduler.json": "scheduler/scheduler_config.json",
}
# What a diffusers folder named by `[model] config` must hold for a single file: configs and tokenizers, no weights.
CONFIG_PATTERNS = ["unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/*", "scheduler/*"]
SDXL_CONFIG_PATTERNS = ["text_encoder_2/config.json", "tokenizer_2/*"]


class CheckpointError(ValueError):
    """The file cannot be read, or a part of the model cannot be loaded from it; the message says which."""


def is_single_file(spec: str) -> bool:
    return spec.lower().endswith(SUFFIX)


def read_header(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as shapes only (meta tensors, no memory): enough to tell its family and that it reads."""
    if not path.is_file():
        raise CheckpointError("no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"not a readable .safetensors file ({_first_line(e)})") from e


def tell_family(spec: str, header: dict[str, torch.Tensor]) -> Family:
    """The family from the file's keys, by diffusers' own heuristics. Raises `FamilyError`."""
    if UNET_KEY not in header:
        raise FamilyError(
            f"cannot tell the family of model {spec!r}: it holds no Stable Diffusion UNet in the original "
            f"layout (no {UNET_KEY}); a diffusers or ComfyUI UNet-only file is not a single-file checkpoint"
        )
    kind = infer_diffusers_model_type(header)
    if kind not in MODEL_TYPES:
        raise FamilyError(
            f"cannot tell the family of model {spec!r}: diffusers reads it as {kind!r}, not one of "
            f"{sorted(MODEL_TYPES)} (SD 1.5, SD 2.x, SDXL). {FAMILY_FIX}"
        )
    return family_named(MODEL_TYPES[kind])


@contextmanager
def arch_configs(arch: Path) -> Iterator[Path]:
    """The architecture's configs laid out as a diffusers folder, for as long as the loaders read it."""
    with tempfile.TemporaryDirectory(prefix="single-file-configs-") as folder:
        for name, target in ARCH_CONFIGS.items():
            if (arch / name).is_file():
                (Path(folder) / target).parent.mkdir(parents=True)
                shutil.copyfile(arch / name, Path(folder) / target)
        yield Path(folder)


@dataclass
class Loaded:
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection | None
    vae: AutoencoderKL | None  # the file's own, when asked for


def load(path: Path, configs: Path, family: Family, dtype: torch.dtype, *, own_vae: bool) -> Loaded:
    """The file's parts through diffusers' single-file loaders, with the diffusers configs in `configs`.

    Raises `CheckpointError` naming the part that did not load.
    """
    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"not a readable .safetensors file ({_first_line(e)})") from e
    common: dict[str, Any] = {"config": str(configs), "torch_dtype": dtype, "local_files_only": True}

    def part(name: str, loader: Any) -> Any:
        if not (configs / name / "config.json").is_file():
            raise CheckpointError(f"{name}: no config at {configs / name / 'config.json'}")
        try:
            return loader(name)
        except (SingleFileComponentError, OSError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{name}: diffusers could not load it from the file ({_first_line(e)})") from e

    def clip(cls: type[CLIPTextModel] | type[CLIPTextModelWithProjection]) -> Any:
        return lambda name: create_diffusers_clip_model_from_ldm(cls, checkpoint, subfolder=name, **common)

    unet = part("unet", lambda name: UNet2DConditionModel.from_single_file(checkpoint, subfolder=name, **common))
    vae = (
        part("vae", lambda name: AutoencoderKL.from_single_file(checkpoint, subfolder=name, **common))
        if own_vae
        else None
    )
    text_encoder = part("text_encoder", clip(CLIPTextModel))
    text_encoder_2 = part("text_encoder_2", clip(CLIPTextModelWithProjection)) if family.pooled else None
    return Loaded(unet, text_encoder, text_encoder_2, vae)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
