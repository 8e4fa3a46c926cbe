"""ControlNet per row: structure from the camera frame itself, on the device, inside the engine's batch.

`[control] models` lists the ControlNets to load, one per kind ("canny=<hub id or folder>",
"depth=..."), for the model's family. Each row of a batch carries a scale per loaded kind (0: that
kind is off for the row); the batch runs the kinds at least one of its rows uses, each on every row,
and a row's residuals are its scale times each ControlNet's, summed (what diffusers' multi-ControlNet
does with one scale per net). Running a kind on the whole batch keeps the shapes static, so the
batch stays one CUDA graph per set of kinds that run; a batch where no row uses a kind never runs it.

The control images are made on the device from the batch's own images, once per frame (not per
step): edges with kornia's Canny, depth with Depth Anything through transformers. They are made
before the transform, outside its CUDA graph (`pipeline.row_inputs.ControlImageInput`): kornia builds
its Sobel kernel from Python numbers on every call, a copy to the device that no graph can hold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import kornia
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from pipeline.contract import CONTROL_KINDS as KINDS
from pipeline.control_names import CONTROL_FIX, TINY, parse_models
from pipeline.hub import Progress
from pipeline.models import (
    ARCH_PREFIX,
    TWINS,
    Files,
    ModelBundle,
    ModelUnavailableError,
    _load,
    _locate,
    _seeded,
    build_once,
)

logger = logging.getLogger(__name__)

AUTO_DEPTH = "auto"  # the depth model: Depth Anything V2 Small, or its random twin beside a tiny depth ControlNet
DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
CONTROLNET_PATTERNS = ["config.json", "*.safetensors", "*.bin"]
DEPTH_PATTERNS = ["config.json", "*.safetensors"]
# Canny's thresholds on kornia's magnitude (an unnormalised Sobel of a [0, 1] image, about 8x a step):
# near OpenCV's Canny(image, 100, 200) on 0..255 pixels, the thresholds ControlNet's canny models learnt on.
CANNY_LOW, CANNY_HIGH = 0.4, 0.8
CANNY_SIGMA = 1.0  # the blur before the gradient: kornia's default
# Depth Anything's input: ImageNet's normalisation and a side that is a multiple of its 14-pixel patches.
DEPTH_MEAN = (0.485, 0.456, 0.406)
DEPTH_STD = (0.229, 0.224, 0.225)
DEPTH_PATCH = 14


@dataclass
class ControlNets:
    """The loaded ControlNets (column k of a batch's scales is `kinds[k]`) and the depth model."""

    kinds: tuple[str, ...]
    nets: list[ControlNetModel]
    depth: DepthAnythingForDepthEstimation | None
    device: torch.device

    def __post_init__(self) -> None:
        # Made once on the device: built from Python numbers per call they would be a copy up each time.
        self._mean = torch.tensor(DEPTH_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(DEPTH_STD, device=self.device).view(1, 3, 1, 1)
        self._sigma = torch.tensor([[CANNY_SIGMA, CANNY_SIGMA]], device=self.device)

    def column(self, kind: str) -> int:
        return self.kinds.index(kind)

    def conditions(self, images: torch.Tensor, running: Sequence[int]) -> dict[int, torch.Tensor]:
        """Each running kind's control image of every row, (B, 3, H, W) in [0, 1], from images in [-1, 1]."""
        pixels = (images.float() + 1.0) / 2.0
        made = {}
        for column in running:
            kind = self.kinds[column]
            if kind == "depth":
                assert self.depth is not None  # loaded with the depth ControlNet
                image = depth_map(self.depth, pixels, self._mean, self._std)
            else:
                image = canny(pixels, self._sigma.expand(pixels.shape[0], -1))
            made[column] = image.to(images.dtype)
        return made

    def residuals(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
        conditions: dict[int, torch.Tensor],
        scales: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The UNet's added residuals (down blocks, mid block): each running net's times each row's scale, summed.

        `sample`, `t`, `embeds` (and `conditions`, `scales`) have the UNet call's rows, guidance's twins included.
        """
        down: list[torch.Tensor] = []
        mid = torch.zeros(())
        for column, condition in conditions.items():
            net_down, net_mid = self.nets[column](
                sample,
                t,
                encoder_hidden_states=embeds,
                controlnet_cond=condition,
                added_cond_kwargs=added,
                return_dict=False,
            )
            scale = scales[:, column].to(sample.dtype).view(-1, 1, 1, 1)
            if not down:
                down, mid = [r * scale for r in net_down], net_mid * scale
            else:
                down = [d + r * scale for d, r in zip(down, net_down, strict=True)]
                mid = mid + net_mid * scale
        return down, mid


def canny(pixels: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """Canny edges of images in [0, 1] as a 3-channel [0, 1] image, on the device (`sigma`: the blur's,
    (B, 2) on the device; None: kornia's own default of 1).

    kornia's full hysteresis repeats until nothing changes, which asks the host after every round: one
    round is run here, keeping the weak edges next to a strong one.
    """
    blur: tuple[float, float] | torch.Tensor = (CANNY_SIGMA, CANNY_SIGMA) if sigma is None else sigma
    _, edges = kornia.filters.canny(pixels, CANNY_LOW, CANNY_HIGH, sigma=blur, hysteresis=False)
    strong = (edges == 1.0).float()
    near_strong = F.max_pool2d(strong, kernel_size=3, stride=1, padding=1) > 0
    kept = torch.where((edges == 0.5) & near_strong, 1.0, strong)
    return kept.expand(-1, 3, -1, -1)


def depth_map(
    model: DepthAnythingForDepthEstimation, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """Relative depth of images in [0, 1], each normalised to [0, 1] and given as 3 channels, as
    diffusers' depth ControlNet examples make it (the model's output resized back, min to max)."""
    height, width = pixels.shape[-2:]
    side = (
        max(DEPTH_PATCH, round(height / DEPTH_PATCH) * DEPTH_PATCH),
        max(DEPTH_PATCH, round(width / DEPTH_PATCH) * DEPTH_PATCH),
    )
    resized = F.interpolate(pixels, size=side, mode="bicubic", align_corners=False)
    dtype = next(model.parameters()).dtype
    predicted = model(pixel_values=((resized - mean) / std).to(dtype)).predicted_depth.float()
    depth = F.interpolate(predicted.unsqueeze(1), size=(height, width), mode="bicubic", align_corners=False)
    low = depth.amin(dim=(2, 3), keepdim=True)
    high = depth.amax(dim=(2, 3), keepdim=True)
    return ((depth - low) / (high - low).clamp(min=1e-6)).expand(-1, 3, -1, -1)


def load_controlnets(
    entries: Sequence[str],
    model: ModelBundle,
    *,
    data_dir: Path,
    depth_model: str = AUTO_DEPTH,
    progress: Progress | None = None,
) -> ControlNets | None:
    """The ControlNets `[control] models` lists (None when it lists none), on the model's device and dtype.

    Raises `ControlError` for a list that is not one, `ModelUnavailableError` naming a ControlNet or
    the depth model that cannot be had or does not fit the model.
    """
    models = parse_models(entries)
    if not models:
        return None
    nets = []
    for kind, source in models.items():
        net = (
            _twin_controlnet(model, kind, data_dir)
            if source == TINY
            else _hub_controlnet(model, kind, source, progress)
        )
        _check_fits(net, model, kind, source)
        nets.append(net.to(device=model.device, memory_format=torch.channels_last).eval())
    depth = None
    if "depth" in models:
        source = depth_source(models, depth_model)
        depth = _depth_model(model, source, data_dir, progress).to(device=model.device, dtype=model.dtype).eval()
    logger.info("ControlNets loaded kinds=%s depth=%s", ",".join(models), depth_model if depth is not None else "-")
    return ControlNets(tuple(models), nets, depth, model.device)


def depth_source(models: dict[str, str], depth_model: str) -> str:
    """The depth model a depth ControlNet runs with: `[control] depth_model`, or for "auto" the twin
    beside a twin ControlNet and Depth Anything V2 Small beside a real one."""
    if depth_model != AUTO_DEPTH:
        return depth_model
    return TINY if models.get("depth") == TINY else DEPTH_MODEL


def fetch_controlnets(entries: Sequence[str], depth_model: str, *, fp16: bool, progress: Progress | None) -> None:
    """Every hub file `[control]` needs into the hub cache (`python -m server download`); twins are built at load."""
    models = parse_models(entries)
    for kind, source in models.items():
        if source != TINY:
            _locate(f"ControlNet {kind}", source, CONTROLNET_PATTERNS, fp16, progress)
    if "depth" in models and depth_source(models, depth_model) != TINY:
        _locate("depth model", depth_source(models, depth_model), DEPTH_PATTERNS, False, progress)


def _hub_controlnet(model: ModelBundle, kind: str, source: str, progress: Progress | None) -> ControlNetModel:
    files = _locate(f"ControlNet {kind}", source, CONTROLNET_PATTERNS, model.dtype != torch.float32, progress)
    net: ControlNetModel = _load(
        files,
        lambda f, s, v: ControlNetModel.from_pretrained(f, subfolder=s, variant=v, torch_dtype=model.dtype),
        model.dtype,
    )
    return net


def _twin_controlnet(model: ModelBundle, kind: str, data_dir: Path) -> ControlNetModel:
    """A random-weight ControlNet shaped for the model's UNet: built once and saved beside a twin, and
    loaded back through `from_pretrained`; made in memory for an `arch:` model (speed figures only)."""
    if model.spec.startswith(ARCH_PREFIX):
        return _random_controlnet(model, kind)
    if model.spec not in TWINS:
        raise ModelUnavailableError(f"ControlNet {kind} 'tiny': the model {model.spec!r} has no twin", CONTROL_FIX)
    folder = data_dir / "models" / f"{model.spec}-control-{kind}"
    if not (folder / "config.json").is_file():
        build_once(folder, _random_controlnet(model, kind).save_pretrained, "config.json")
    files = Files(f"ControlNet {kind}", TINY, "built-in", folder, None)
    net: ControlNetModel = _load(
        files, lambda f, s, v: ControlNetModel.from_pretrained(f, torch_dtype=model.dtype), model.dtype
    )
    return net


def _random_controlnet(model: ModelBundle, kind: str) -> ControlNetModel:
    """ControlNet's own start (a copy of the UNet's encoder) with seeded random weights where it starts at
    zero (its zero convolutions), so a random twin changes the picture; a seed per kind."""
    with _seeded(KINDS.index(kind) + 1):
        net = ControlNetModel.from_unet(model.unet, conditioning_channels=3).float()
        zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero_convs:
                conv.weight.normal_(0.0, 0.05)
                conv.bias.normal_(0.0, 0.05)
    return net.to(model.dtype)


def _check_fits(net: ControlNetModel, model: ModelBundle, kind: str, source: str) -> None:
    """A ControlNet for another family is refused at load, naming it (the first call would fail instead)."""
    theirs = (net.config.cross_attention_dim, tuple(net.config.block_out_channels), net.config.addition_embed_type)
    unet = model.unet.config
    ours = (unet.cross_attention_dim, tuple(unet.block_out_channels), unet.addition_embed_type)
    if theirs != ours:
        raise ModelUnavailableError(
            f"ControlNet {kind} {source!r} does not fit the model {model.spec!r} ({model.family.name}): "
            f"cross-attention, blocks and added conditioning {theirs} against the UNet's {ours}",
            CONTROL_FIX,
        )


def _depth_model(
    model: ModelBundle, source: str, data_dir: Path, progress: Progress | None
) -> DepthAnythingForDepthEstimation:
    if source == TINY:
        if model.spec.startswith(ARCH_PREFIX):  # the real architecture, random weights, for speed figures
            with _seeded():
                return DepthAnythingForDepthEstimation(depth_anything_v2_small())
        folder = data_dir / "models" / "tiny-depth"
        if not (folder / "config.json").is_file():
            with _seeded():
                build_once(folder, DepthAnythingForDepthEstimation(_tiny_depth_config()).save_pretrained, "config.json")
        files = Files("depth model", TINY, "built-in", folder, None)
    else:
        files = _locate("depth model", source, DEPTH_PATTERNS, False, progress)
    depth: DepthAnythingForDepthEstimation = _load(
        files,
        lambda f, s, v: DepthAnythingForDepthEstimation.from_pretrained(f, subfolder=s or "", dtype=model.dtype),
        model.dtype,
    )
    return depth


def depth_anything_v2_small() -> DepthAnythingConfig:
    """Depth Anything V2 Small's architecture (its hub config): a DINOv2-S backbone and a DPT head."""
    backbone = Dinov2Config(
        image_size=518,
        patch_size=14,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        out_indices=[3, 6, 9, 12],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
        reassemble_hidden_size=384,
        depth_estimation_type="relative",
    )


def _tiny_depth_config() -> DepthAnythingConfig:
    backbone = Dinov2Config(
        image_size=70,
        patch_size=DEPTH_PATCH,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[8, 16, 32, 32],
        reassemble_hidden_size=32,
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
