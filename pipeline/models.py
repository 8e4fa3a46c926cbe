"""Model specs -> loaded diffusers components, always through `from_pretrained`.

Specs:
- a Hugging Face id or a local diffusers folder (default `stabilityai/sd-turbo`), with the tiny VAE
  named by `vae_id` (default `madebyollin/taesd`);
- `tiny`: a small random-weight model of the same family, built once under `<data_dir>/models/tiny`
  in diffusers format and loaded back from there, so tests exercise the real loading path;
- `arch:<name>`: the real architecture from `configs/models/<name>/` with random weights, for
  measuring speed where weights cannot be downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/sd-turbo"
DEFAULT_VAE = "madebyollin/taesd"
TINY = "tiny"
ARCH_PREFIX = "arch:"
ARCH_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"


class ModelUnavailableError(RuntimeError):
    """The weights for a model spec cannot be had (offline, unknown id, broken folder)."""


@dataclass
class ModelBundle:
    spec: str
    unet: UNet2DConditionModel
    vae: AutoencoderTiny | AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: EulerDiscreteScheduler
    device: torch.device
    dtype: torch.dtype
    width: int
    height: int

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        if isinstance(self.vae, AutoencoderTiny):
            return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_model(
    spec: str,
    *,
    data_dir: Path,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    vae_id: str = DEFAULT_VAE,
    resolution: int | None = None,
) -> ModelBundle:
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    if spec == TINY:
        folder = ensure_tiny_model(data_dir / "models" / "tiny")
        parts = _load_folder(str(folder), vae_id="", dtype=dtype)
    elif spec.startswith(ARCH_PREFIX):
        parts = _build_arch(spec[len(ARCH_PREFIX) :], dtype)
    else:
        parts = _load_folder(spec, vae_id=vae_id, dtype=dtype)
    unet, vae, text_encoder, tokenizer, scheduler = parts
    # from_pretrained already gave the dtype; moving without one keeps diffusers' fp32-only modules.
    unet.to(device=device, memory_format=torch.channels_last).eval()
    vae.to(device=device, memory_format=torch.channels_last).eval()
    text_encoder.to(device=device).eval()
    latent_size = int(unet.config.sample_size)
    scale = 2 ** (len(vae.config.encoder_block_out_channels) - 1) if isinstance(vae, AutoencoderTiny) else 8
    side = resolution or latent_size * scale
    logger.info("model loaded spec=%s device=%s dtype=%s resolution=%d", spec, device, dtype, side)
    return ModelBundle(spec, unet, vae, text_encoder, tokenizer, scheduler, device, dtype, side, side)


_Parts = tuple[UNet2DConditionModel, Any, CLIPTextModel, CLIPTokenizer, EulerDiscreteScheduler]


def _load_folder(source: str, *, vae_id: str, dtype: torch.dtype) -> _Parts:
    """Load each component with diffusers/transformers `from_pretrained` (hub id or local folder)."""
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        scheduler = EulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")
        if vae_id:
            vae: Any = AutoencoderTiny.from_pretrained(vae_id, torch_dtype=dtype)
        else:
            vae = _load_vae(source, dtype)
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(
            f"weights for {source!r} cannot be had ({type(e).__name__}): run with `--model tiny` "
            "(or STYLIZE_MODEL=tiny) for the built-in test model, or pass a local diffusers folder"
        ) from e
    return unet, vae, text_encoder, tokenizer, scheduler


def _load_vae(source: str, dtype: torch.dtype) -> AutoencoderTiny | AutoencoderKL:
    config = AutoencoderTiny.load_config(source, subfolder="vae")
    if config.get("_class_name") == "AutoencoderKL":
        return AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    return AutoencoderTiny.from_pretrained(source, subfolder="vae", torch_dtype=dtype)


def _build_arch(name: str, dtype: torch.dtype) -> _Parts:
    folder = ARCH_DIR / name
    if not folder.is_dir():
        known = sorted(p.name for p in ARCH_DIR.iterdir() if p.is_dir())
        raise ModelUnavailableError(f"unknown architecture {name!r}; known: {known}")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(_read_json(folder / "unet.json"))
    vae = AutoencoderTiny.from_config(_read_json(folder / "vae.json"))
    text_encoder = CLIPTextModel(CLIPTextConfig(**_read_json(folder / "text_encoder.json")))
    scheduler = EulerDiscreteScheduler.from_config(_read_json(folder / "scheduler.json"))
    unet.to(dtype)
    vae.to(dtype)
    text_encoder.to(dtype)
    return unet, vae, text_encoder, byte_level_tokenizer(), scheduler


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def byte_level_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer made here: one token per byte (with and without the word-end mark), no merges.

    CLIP's own vocabulary cannot be downloaded offline; any prompt still tokenizes to valid ids.
    """
    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in byte_chars:
            vocab[char + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 byte values onto printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = []
    extra = 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _visible_init(vae: AutoencoderTiny) -> None:
    """Re-initialise the tiny VAE so its pictures have contrast.

    With PyTorch's default init the ReLU stack shrinks every signal and the decoder returns a
    uniformly black frame, so tests could not tell one prompt's output from another's. He-normal
    weights keep the signal alive; the last layer is scaled to land around mid-grey.
    """
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    last = vae.decoder.layers[-1]
    with torch.no_grad():
        last.weight.mul_(0.07)
        last.bias.fill_(0.5)


def ensure_tiny_model(folder: Path) -> Path:
    """Build the `tiny` model once (seeded random weights) and save it in diffusers format."""
    if (folder / "model_index.json").is_file():
        return folder
    logger.info("building the tiny model at %s", folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    _visible_init(vae)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=byte_level_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    partial = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(partial)
    partial.rename(folder)
    return folder
