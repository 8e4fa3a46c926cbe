"""A LoRA's UNet weights, read off the engine thread by diffusers' own loaders, ready to copy into a slot.

`read_lora` takes what a LoRA source names (a hub id, a folder or a .safetensors file: diffusers',
PEFT's or kohya's layout) through `lora_state_dict` (which converts kohya's keys) and
`UNet2DConditionModel.load_lora_adapter` (which builds PEFT's config: ranks, alphas, their per-layer
patterns) into a twin of the model's UNet whose weights are never written (allocated, not filled: the
memory is only reserved), then reads each PEFT layer's A, B and scaling. So nothing here maps keys or
works out alphas: what diffusers would apply is what a slot gets. The twin is made per read, so reads
may run on any thread at once; `LoraCache` keeps the last few results on the host.

Only the UNet's part is read. A LoRA's text-encoder part (most kohya LoRAs have one) is not applied:
the prompt embeddings are shared by every row that has the same prompt, and a per-LoRA text encoder
would make each (prompt, LoRAs) pair a text-encoder call and a cache entry of its own. The result says
when a part was left out (`text_encoder_skipped`), so the caller can tell the person.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from safetensors import SafetensorError

from pipeline.lora_names import LoraNameError, lora_source
from pipeline.models import ModelBundle, ModelUnavailableError, fetch_lora

# The names PEFT's LoRA layers get while one is read into the twin.
_ADAPTER = "read"
# How a LoRA's down (A) weight is named in the layouts `lora_state_dict` hands back (one per layer).
_DOWN_MARKS = (".lora_A.", ".lora.down.", ".lora_down.")


class LoraError(RuntimeError):
    """A LoRA cannot be had or does not fit the model: `problem` names the source and why."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"LoRA {source!r}: {problem}")
        self.source = source
        self.problem = problem


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA's UNet part: per covered layer its down weight (r, in) and its up weight (r, out) with
    PEFT's scaling (alpha / r, per layer) folded in, so a row's delta is scale * (x @ down.T) @ up."""

    source: str
    rank: int  # its largest layer rank: the columns it takes in a slot
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    text_encoder_skipped: bool  # it had text-encoder weights, which are not applied

    @property
    def nbytes(self) -> int:
        return sum(down.nbytes + up.nbytes for down, up in self.layers.values())


def covered_layers(unet: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """The layers LoRA slots cover, name -> (in, out): every Linear and 1x1 convolution inside the UNet's
    transformer blocks (attention q/k/v/out, feed-forward, proj_in/proj_out): what LoRA trainers target
    (kohya's default network, diffusers' training scripts). Resnet 3x3 convolutions (LoCon) and the
    time embedding are not covered."""
    found: dict[str, tuple[int, int]] = {}
    for prefix, block in unet.named_modules():
        if not isinstance(block, Transformer2DModel):
            continue
        for name, module in block.named_modules():
            full = f"{prefix}.{name}"
            if isinstance(module, torch.nn.Linear):
                found[full] = (module.in_features, module.out_features)
            elif _is_pointwise(module):
                assert isinstance(module, torch.nn.Conv2d)
                found[full] = (module.in_channels, module.out_channels)
    return found


def _is_pointwise(module: torch.nn.Module) -> bool:
    return (
        isinstance(module, torch.nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding == (0, 0)
        and module.groups == 1
    )


def read_lora(source: str, model: ModelBundle) -> LoraWeights:
    """The UNet part of the LoRA at `source` for `model`, on the host in the model's dtype.

    Raises `LoraError` naming the source when it cannot be had, is not a LoRA diffusers reads, has no
    UNet part, or does not fit this UNet (another family's: other layers or shapes; layers slots do not
    cover; DoRA)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
    from peft.tuners.lora import LoraLayer

    try:
        path = fetch_lora(source)
    except ModelUnavailableError as e:
        raise LoraError(source, e.problem.removeprefix(f"LoRA {source!r} ")) from e
    loader = StableDiffusionXLLoraLoaderMixin if model.family.pooled else StableDiffusionLoraLoaderMixin
    where = {"weight_name": path.name} if path.is_file() else {}
    try:
        state, alphas = loader.lora_state_dict(str(path.parent if path.is_file() else path), **where)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise LoraError(source, f"not a LoRA diffusers can read ({_first_line(e)})") from e
    unet_keys = [k for k in state if k.startswith("unet.")]
    if not unet_keys:
        raise LoraError(source, "no UNet weights in it (a text-encoder-only LoRA is not applied)")
    expected = {k.removeprefix("unet.").split(mark)[0] for k in unet_keys for mark in _DOWN_MARKS if mark in k}

    twin = _twin(model.unet.config)
    try:
        twin.load_lora_adapter(
            {k: state[k] for k in unet_keys}, prefix="unet", network_alphas=alphas, adapter_name=_ADAPTER
        )
    except (ValueError, KeyError, RuntimeError) as e:
        raise LoraError(source, f"does not fit this {model.family.name} model's UNet ({_first_line(e)})") from e
    lora_layers: dict[str, Any] = {name: m for name, m in twin.named_modules() if isinstance(m, LoraLayer)}
    missing = sorted(expected - set(lora_layers))
    if missing:
        raise LoraError(source, f"has weights for layers this {model.family.name} UNet lacks, e.g. {missing[0]!r}")
    covered = covered_layers(model.unet)
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in lora_layers.items():
        if name not in covered:
            raise LoraError(
                source,
                f"has weights for {name!r}, a layer LoRA slots do not cover (attention, feed-forward and proj only)",
            )
        if layer.use_dora.get(_ADAPTER) or getattr(layer.lora_B[_ADAPTER], "bias", None) is not None:
            raise LoraError(source, f"is a DoRA or has LoRA biases ({name}), which slots do not hold")
        down = layer.lora_A[_ADAPTER].weight.detach().flatten(1).float()
        up = layer.lora_B[_ADAPTER].weight.detach().flatten(1).float() * float(layer.scaling[_ADAPTER])
        layers[name] = (down.to(model.dtype).contiguous(), up.T.to(model.dtype).contiguous())
    rank = max(down.shape[0] for down, _ in layers.values())
    skipped = any(not k.startswith("unet.") for k in state)
    return LoraWeights(source, rank, layers, skipped)


def _twin(config: Any) -> UNet2DConditionModel:
    """A UNet of `config`'s shapes whose weights are allocated but never filled: built on the meta
    device (no init), then given empty host memory, which the OS hands out only once written."""
    with torch.device("meta"):
        twin = UNet2DConditionModel.from_config(config)
    return twin.to_empty(device="cpu")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class LoraCache:
    """The last few LoRAs read, on the host (LRU), safe to use from any thread: the server reads a LoRA
    here off the engine thread when a person picks it, so the engine thread only copies it into a slot."""

    def __init__(self, model: ModelBundle, size: int, folder: Path | None = None) -> None:
        self._model = model
        self._size = size
        self._folder = folder  # names resolve under it (`pipeline.lora_names`); None: names are sources
        self._entries: OrderedDict[str, LoraWeights] = OrderedDict()
        self._lock = threading.Lock()

    def _source(self, name: str) -> str:
        if self._folder is None:
            return name
        try:
            return lora_source(name, self._folder)
        except LoraNameError as e:
            raise LoraError(name, str(e)) from e

    def get(self, source: str) -> LoraWeights:
        """`source`'s weights, read now if not kept (outside the lock: reads of other sources go on)."""
        with self._lock:
            found = self._entries.get(source)
            if found is not None:
                self._entries.move_to_end(source)
                return found
        weights = read_lora(self._source(source), self._model)
        with self._lock:
            self._entries[source] = weights
            self._entries.move_to_end(source)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return weights
