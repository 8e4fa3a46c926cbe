"""The per-row inputs of the transform: each is a static tensor per batch bucket that every batch of
that size writes in place, so a captured CUDA graph reads this batch's values.

A part names the transform's keyword it feeds, may send a few numbers per row in the batch's one
copy up (`header`), and may be optional: it runs only when `wanted` says a row of the batch needs it,
and the bucket keeps one captured graph per set of parts that run. Conditioning still to come (a
second text encoder, a control image, an adapter index, a temporal state) is another part here; the
scheduler and the runner's copies do not change for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.cached_attention import RING
from pipeline.contract import FrameParams
from pipeline.control import ControlNets
from pipeline.families import MAX_STEPS
from pipeline.lora_bank import LoraBank
from pipeline.models import ModelBundle
from pipeline.onestep import right_aligned, row_timesteps
from pipeline.prompts import PromptEmbeddings


def guided(rows: Sequence[FrameParams]) -> bool:
    """Classifier-free guidance runs for a batch when one of its rows asks for it."""
    return any(r.guidance_scale > 1.0 for r in rows)


def steps_of(row: FrameParams, model: ModelBundle) -> int:
    """A row's number of UNet calls: its own, or its model family's default."""
    return row.num_inference_steps or model.family.default_steps


class RowInput:
    """One per-row input. Subclasses set `name` and implement `allocate` and `fill`."""

    name: str = ""
    # The numpy dtype of the per-row numbers sent in the batch's one copy up; None: nothing to send.
    header_dtype: type[np.generic] | None = None
    # Optional parts run only in batches where `wanted`; the graph key is the set of parts that run.
    optional = False

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return True

    def statics(self, rows: Sequence[FrameParams]) -> dict[str, int]:
        """Plain-number arguments of the transform this batch decides (part of the captured graph's key)."""
        return {}

    def header(self, rows: Sequence[FrameParams]) -> np.ndarray:
        raise NotImplementedError

    def allocate(self, size: int) -> torch.Tensor:
        raise NotImplementedError

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        """Write this batch's values for `rows` (one per bucket row) into `into`; `header` is the
        device view of what `header(rows)` sent up."""
        raise NotImplementedError

    def fill_from(
        self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None, images: torch.Tensor
    ) -> None:
        """`fill`, given the batch's images too (B, 3, H, W) in [-1, 1]: the few parts made from them override it."""
        self.fill(into, rows, header)


class HeaderTable(RowInput):
    """Numbers per row sent in the batch's one copy up and copied into the static tensor as they came."""

    tensor_dtype = torch.float32

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        assert header is not None
        into.copy_(header.view(self.tensor_dtype).view(into.shape))


def negative(model: ModelBundle, embed: Callable[[str], torch.Tensor], prompt: str) -> torch.Tensor:
    """A negative prompt's embedding; for SDXL no negative prompt is zeros, as diffusers' SDXL pipelines
    do (`force_zeros_for_empty_prompt`), where SD 1.x/2.x embed the empty prompt."""
    embedding = embed(prompt)
    return torch.zeros_like(embedding) if model.family.pooled and not prompt else embedding


class PromptInput(RowInput):
    name = "prompt_embeds"

    def __init__(self, prompts: PromptEmbeddings, model: ModelBundle) -> None:
        self._prompts = prompts
        self._model = model

    def allocate(self, size: int) -> torch.Tensor:
        sequence, embedding = self._prompts.get("").shape  # what the text encoder really gives
        return torch.empty((size, sequence, embedding), device=self._model.device, dtype=self._model.dtype)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        torch.stack([self._prompts.blended(r.prompt, r.prompt_b, r.blend) for r in rows], 0, out=into)


class NegativeInput(PromptInput):
    """The negative prompt's embedding, for classifier-free guidance (only when a row asks for it)."""

    name = "negative_embeds"
    optional = True

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return guided(rows)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        torch.stack([negative(self._model, self._prompts.get, r.negative_prompt) for r in rows], 0, out=into)


class PooledInput(PromptInput):
    """SDXL's pooled prompt embedding, blended like the sequence embedding."""

    name = "pooled_embeds"

    def allocate(self, size: int) -> torch.Tensor:
        (width,) = self._prompts.pooled("").shape
        return torch.empty((size, width), device=self._model.device, dtype=self._model.dtype)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        torch.stack([self._prompts.blended_pooled(r.prompt, r.prompt_b, r.blend) for r in rows], 0, out=into)


class NegativePooledInput(PooledInput):
    name = "negative_pooled"
    optional = True

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return guided(rows)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        torch.stack([negative(self._model, self._prompts.pooled, r.negative_prompt) for r in rows], 0, out=into)


class RowNumber(RowInput):
    """One number per row, read off its params and sent in the batch's copy up; optional parts say
    when a batch wants it (`wanted`)."""

    header_dtype: type[np.generic] = np.float32
    tensor_dtype = torch.float32

    def __init__(self, device: torch.device) -> None:
        self._device = device

    def number(self, row: FrameParams) -> float:
        raise NotImplementedError

    def header(self, rows: Sequence[FrameParams]) -> np.ndarray:
        return np.array([self.number(r) for r in rows], dtype=self.header_dtype)

    def allocate(self, size: int) -> torch.Tensor:
        return torch.zeros(size, device=self._device, dtype=self.tensor_dtype)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        assert header is not None
        into.copy_(header.view(self.tensor_dtype))


class GuidanceInput(RowNumber):
    name = "guidance_scale"
    optional = True

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return guided(rows)

    def number(self, row: FrameParams) -> float:
        return row.guidance_scale


class TimestepInput(HeaderTable):
    """Each row's schedule (`row_timesteps`) right-aligned in `MAX_STEPS` columns, -1 before it; the
    batch runs as many UNet calls as its longest schedule (`num_steps`, a key of the captured graphs)."""

    name = "timesteps"
    header_dtype = np.int64
    tensor_dtype = torch.int64

    def __init__(self, model: ModelBundle) -> None:
        self._model = model
        self.num_train_timesteps = int(model.scheduler.config.num_train_timesteps)

    def statics(self, rows: Sequence[FrameParams]) -> dict[str, int]:
        return {"num_steps": max(steps_of(r, self._model) for r in rows)}

    def header(self, rows: Sequence[FrameParams]) -> np.ndarray:
        table = [
            right_aligned(row_timesteps(r.strength, steps_of(r, self._model), self.num_train_timesteps)) for r in rows
        ]
        return np.array(table, dtype=np.int64).reshape(-1)

    def allocate(self, size: int) -> torch.Tensor:
        return torch.zeros((size, MAX_STEPS), device=self._model.device, dtype=torch.int64)


class NoiseInput(RowInput):
    """Fixed noise per seed (what keeps video from flickering), made on the CPU as diffusers does: one
    generator per seed draws the first noise, then one more per step after the first (LCM's re-noising),
    laid out right-aligned like the timesteps with the first noise in every column before the schedule."""

    name = "noise"
    CACHE_SIZE = 256

    def __init__(self, model: ModelBundle) -> None:
        self._model = model
        factor = model.vae_scale_factor
        self._shape = (model.latent_channels, model.height // factor, model.width // factor)
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    def allocate(self, size: int) -> torch.Tensor:
        return torch.zeros((size, MAX_STEPS, *self._shape), device=self._model.device, dtype=torch.float32)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        torch.stack([self.for_seed(r.seed, steps_of(r, self._model)) for r in rows], out=into)

    def for_seed(self, seed: int, steps: int) -> torch.Tensor:
        """(MAX_STEPS, C, h, w): the draws of `seed`'s generator, right-aligned for `steps` steps."""
        key = (seed, steps)
        noise = self._cache.get(key)
        if noise is None:
            generator = torch.Generator().manual_seed(seed)
            # One call per draw, as diffusers' pipeline and scheduler draw them (a single larger call differs).
            draws = [torch.randn((1, *self._shape), generator=generator, dtype=torch.float32) for _ in range(steps)]
            noise = torch.cat([draws[0]] * (MAX_STEPS - steps) + draws)
            noise = self._cache[key] = noise.to(self._model.device)
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return noise


def uses_memory(rows: Sequence[FrameParams]) -> bool:
    """The memory runs for a batch when one of its rows remembers (all its rows then keep their output)."""
    return any(r.remembers for r in rows)


class MemorySlotInput(RowNumber):
    """Each row's memory slot (only in batches where a row remembers)."""

    name = "memory_slots"
    header_dtype = np.int64
    tensor_dtype = torch.int64
    optional = True

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return uses_memory(rows)

    def number(self, row: FrameParams) -> float:
        return row.memory_slot


class FeedbackInput(RowNumber):
    """Each row's feedback, the share of its previous output in its starting latent."""

    name = "feedback"
    optional = True

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return uses_memory(rows)

    def number(self, row: FrameParams) -> float:
        return row.feedback_now


def attends(rows: Sequence[FrameParams]) -> bool:
    """Cached attention runs for a batch when one of its rows asks for past frames."""
    return any(r.frames > 0 for r in rows)


class AttentionVisibleInput(RowInput):
    """Which entries of its ring each row sees: its `past` most recent, counted back from `ring_at`."""

    name = "attention_visible"
    header_dtype = np.bool_
    optional = True

    def __init__(self, device: torch.device) -> None:
        self._device = device

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return attends(rows)

    def header(self, rows: Sequence[FrameParams]) -> np.ndarray:
        visible = np.zeros((len(rows), RING), dtype=np.bool_)
        for index, row in enumerate(rows):
            for back in range(row.past):
                visible[index, (row.ring_at - 1 - back) % RING] = True
        return visible

    def allocate(self, size: int) -> torch.Tensor:
        return torch.zeros((size, RING), device=self._device, dtype=torch.bool)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        assert header is not None
        into.copy_(header.view(torch.bool).view(-1, RING))


class AttentionWriteInput(RowNumber):
    """Where in its ring each row's keys and values of this frame go."""

    name = "attention_write"
    header_dtype = np.int64
    tensor_dtype = torch.int64
    optional = True

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return attends(rows)

    def number(self, row: FrameParams) -> float:
        return row.ring_at


class _ControlPart(RowInput):
    """A ControlNet part: it runs in batches where some row uses a loaded kind."""

    optional = True

    def __init__(self, control: ControlNets, model: ModelBundle) -> None:
        self._control = control
        self._kinds = control.kinds
        self._model = model

    def column(self, row: FrameParams) -> int | None:
        on = row.control_scale > 0.0 and row.control_kind in self._kinds
        return self._kinds.index(row.control_kind) if on else None

    def running(self, rows: Sequence[FrameParams]) -> set[int]:
        return {c for r in rows if (c := self.column(r)) is not None}

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return bool(self.running(rows))


class ControlImageInput(_ControlPart):
    """Each running kind's control image of every row, made from the batch's images on the device
    before the transform (outside its graph: see `pipeline.control`); kinds not running keep stale rows."""

    name = "control_images"

    def allocate(self, size: int) -> torch.Tensor:
        model = self._model
        shape = (len(self._kinds), size, 3, model.height, model.width)
        return torch.zeros(shape, device=model.device, dtype=model.dtype)

    def fill(self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None) -> None:
        raise TypeError("control images are made from the batch's images: call fill_from")

    def fill_from(
        self, into: torch.Tensor, rows: Sequence[FrameParams], header: torch.Tensor | None, images: torch.Tensor
    ) -> None:
        for column, image in self._control.conditions(images, sorted(self.running(rows))).items():
            into[column].copy_(image)


class ControlScaleInput(_ControlPart, HeaderTable):
    """Each row's scale per loaded ControlNet kind (its own kind's column, zeros elsewhere); the kinds
    some row of the batch uses run (`control_kinds`, a bit per kind: part of the captured graph's key)."""

    name = "control_scales"
    header_dtype = np.float32

    def statics(self, rows: Sequence[FrameParams]) -> dict[str, int]:
        return {"control_kinds": sum(1 << column for column in self.running(rows))}

    def header(self, rows: Sequence[FrameParams]) -> np.ndarray:
        scales = np.zeros((len(rows), len(self._kinds)), dtype=np.float32)
        for index, row in enumerate(rows):
            column = self.column(row)
            if column is not None:
                scales[index, column] = row.control_scale
        return scales

    def allocate(self, size: int) -> torch.Tensor:
        return torch.zeros((size, len(self._kinds)), device=self._model.device, dtype=torch.float32)


def wants_loras(rows: Sequence[FrameParams]) -> bool:
    """The LoRA slots are read for a batch when one of its rows wears a LoRA (a batch where none does
    runs the plain UNet, under a graph of its own)."""
    return any(r.loras for r in rows)


class LoraColumnsInput(HeaderTable):
    """The slot rows each row's LoRAs take in every covered layer (`LoraBank.columns`)."""

    name = "lora_columns"
    header_dtype: type[np.generic] = np.int64
    tensor_dtype = torch.int64
    optional = True

    def __init__(self, bank: LoraBank, device: torch.device) -> None:
        self._bank = bank
        self._device = device

    def wanted(self, rows: Sequence[FrameParams]) -> bool:
        return wants_loras(rows)

    def header(self, rows: Sequence[FrameParams]) -> np.ndarray:
        return np.array([self._bank.columns(r)[0] for r in rows], dtype=np.int64)

    def allocate(self, size: int) -> torch.Tensor:
        return torch.zeros((size, self._bank.max_rank), device=self._device, dtype=torch.int64)


class LoraScalesInput(LoraColumnsInput):
    """Each of those slot rows' scale: its LoRA's scale, 0 for padding."""

    name = "lora_scales"
    header_dtype = np.float32
    tensor_dtype = torch.float32

    def header(self, rows: Sequence[FrameParams]) -> np.ndarray:
        return np.array([self._bank.columns(r)[1] for r in rows], dtype=np.float32)

    def allocate(self, size: int) -> torch.Tensor:
        return torch.zeros((size, self._bank.max_rank), device=self._device, dtype=torch.float32)


def one_step_inputs(
    model: ModelBundle,
    prompts: PromptEmbeddings,
    loras: LoraBank | None = None,
    control: ControlNets | None = None,
) -> list[RowInput]:
    """What `OneStepImg2Img` takes beside the images, in the order of its arguments (SDXL's pooled
    embeddings only for that family, the LoRA rows only with a bank, the ControlNets' parts only with
    ControlNets loaded)."""
    parts: list[RowInput] = [
        PromptInput(prompts, model),
        TimestepInput(model),
        NoiseInput(model),
        NegativeInput(prompts, model),
        GuidanceInput(model.device),
        MemorySlotInput(model.device),
        FeedbackInput(model.device),
        AttentionVisibleInput(model.device),
        AttentionWriteInput(model.device),
    ]
    if model.family.pooled:
        parts += [PooledInput(prompts, model), NegativePooledInput(prompts, model)]
    if control is not None:
        parts += [ControlImageInput(control, model), ControlScaleInput(control, model)]
    if loras is not None:
        parts += [LoraColumnsInput(loras, model.device), LoraScalesInput(loras, model.device)]
    return parts
