"""LoRAs per row: every covered layer of the UNet (`lora_files.covered_layers`) adds, for each row,
the LoRAs that row wears, read from a fixed number of device slots.

Each covered layer holds two tensors for all slots at once: down (slots * max_rank + 1, in) and up
(slots * max_rank + 1, out), slot s in rows [s * max_rank, (s + 1) * max_rank), unused rows zero, and
one last row that is always zero. A row of the batch reads `max_rank` of those rows (`LoraRows.columns`:
its LoRAs' rows one after another, the zero row after them) with a scale per row read (its LoRA's
scale, 0 for padding), so its delta is (x @ down[columns].T * scales) @ up[columns]: two batched
matmuls on gathered weights, the same ops whatever the rows wear. A row's LoRAs share its `max_rank`
columns (two rank-16 LoRAs take 32).

Why gathered matmuls (as S-LoRA and punica do) and not PEFT's mixed batches: PEFT's `adapter_names`
forward groups the rows by adapter with data-dependent indexing (a Python loop over the adapters a
batch has, boolean masks of its rows), so each mix of adapters is another sequence of kernels, which a
CUDA graph cannot hold; and adding an adapter injects new modules into the UNet, which re-captures and
recompiles. Here a LoRA entering a slot is an in-place copy into the slot's rows of those fixed
tensors (`load`), and which slot and scale a row uses are inputs (static tensors of the bucket): a
captured graph sees new LoRAs and new scales with no re-capture and no recompile. The price is that
every row runs `max_rank` columns when one row of the batch wears a LoRA (a batch where none does
runs the plain UNet, `row_inputs.wants_loras`). The slots' tensors are made on the first load, so a
server where nobody wears a LoRA spends no memory on them.

The deltas are added by forward hooks on the covered layers (the module tree, its names and its
state dict stay diffusers' own); while no batch wears LoRAs (`rows` None) the hooks add nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from torch.utils.hooks import RemovableHandle

from pipeline.contract import FrameParams
from pipeline.lora_files import LoraError, LoraWeights, covered_layers

# Where a UNet keeps the bank its hooks read.
_INSTALLED = "_stylize_lora_bank"


@dataclass
class LoraRows:
    """What the covered layers read while a batch wears LoRAs, one row per UNet batch row (guidance's
    unconditional twins repeat the rows): the slot rows each reads (B, max_rank) int64 and the scale
    of each (B, max_rank), in the model's dtype."""

    columns: torch.Tensor
    scales: torch.Tensor


class LoraBank:
    """The slots of every covered layer, which LoRA rank each slot holds, and the rows of the batch being
    run (None: no LoRA). One per UNet (its hooks hold it): `of` hands out the UNet's."""

    def __init__(self, unet: UNet2DConditionModel, slots: int, max_rank: int) -> None:
        if slots < 1 or max_rank < 1:
            raise ValueError(f"LoRA slots and max_rank must be >= 1, got {slots} and {max_rank}")
        self.slots = slots
        self.max_rank = max_rank
        self.rows: LoraRows | None = None
        self.layers = covered_layers(unet)
        self.ranks = [0] * slots  # the rank of the LoRA each slot holds (0: empty)
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> down, up (made on first load)
        self._device = unet.device
        self._dtype = unet.dtype
        self._hooks: list[RemovableHandle] = []

    @classmethod
    def of(cls, unet: UNet2DConditionModel, slots: int, max_rank: int) -> LoraBank:
        """The bank installed in `unet` with these sizes, its slots marked empty (installed now if need be)."""
        bank = getattr(unet, _INSTALLED, None)
        if not isinstance(bank, LoraBank) or (bank.slots, bank.max_rank) != (slots, max_rank):
            if isinstance(bank, LoraBank):
                bank.uninstall()
            bank = cls(unet, slots, max_rank)
            bank.install(unet)
            setattr(unet, _INSTALLED, bank)
        bank.rows, bank.ranks = None, [0] * slots
        return bank

    def install(self, unet: UNet2DConditionModel) -> None:
        for name in self.layers:
            module = unet.get_submodule(name)
            self._hooks.append(
                module.register_forward_hook(_SlotDelta(self, name, isinstance(module, torch.nn.Conv2d)))
            )

    def uninstall(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def zero_column(self) -> int:
        return self.slots * self.max_rank

    def nbytes(self) -> int:
        """Device memory the slots take once made."""
        width = sum(i + o for i, o in self.layers.values())
        return (self.zero_column + 1) * width * torch.empty(0, dtype=self._dtype).element_size()

    def load(self, slot: int, lora: LoraWeights) -> None:
        """Copy `lora` into `slot` in place (the tensors captured graphs read stay where they are)."""
        if lora.rank > self.max_rank:
            raise LoraError(
                lora.source, f"rank {lora.rank} is above the slots' max_rank {self.max_rank} ([lora] max_rank)"
            )
        if not self.weights:
            self.weights = {
                name: (
                    torch.zeros((self.zero_column + 1, i), device=self._device, dtype=self._dtype),
                    torch.zeros((self.zero_column + 1, o), device=self._device, dtype=self._dtype),
                )
                for name, (i, o) in self.layers.items()
            }
        start = slot * self.max_rank
        for down, up in self.weights.values():
            down[start : start + self.max_rank].zero_()
            up[start : start + self.max_rank].zero_()
        for name, (lora_down, lora_up) in lora.layers.items():
            down, up = self.weights[name]
            rank = lora_down.shape[0]
            down[start : start + rank].copy_(lora_down)
            up[start : start + rank].copy_(lora_up)
        self.ranks[slot] = lora.rank

    def columns(self, row: FrameParams) -> tuple[list[int], list[float]]:
        """The slot rows `row` reads and their scales, `max_rank` of each (the engine placed its LoRAs)."""
        columns: list[int] = []
        scales: list[float] = []
        for (_, scale), slot in zip(row.loras, row.lora_slots, strict=True):
            rank = self.ranks[slot]
            columns += range(slot * self.max_rank, slot * self.max_rank + rank)
            scales += [scale] * rank
        padding = self.max_rank - len(columns)
        return columns + [self.zero_column] * padding, scales + [0.0] * padding

    def rank_of(self, slots: Sequence[int]) -> int:
        return sum(self.ranks[slot] for slot in slots)


class _SlotDelta:
    """A covered layer's forward hook: its output plus each row's LoRAs while a batch wears them."""

    def __init__(self, bank: LoraBank, layer: str, pointwise: bool) -> None:
        self.bank = bank
        self.layer = layer
        self.pointwise = pointwise  # a 1x1 convolution: channels first, tokens are the pixels

    def __call__(
        self, module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        rows = self.bank.rows
        if rows is None:
            return None
        x = args[0]
        batch, width = rows.columns.shape
        tokens = x.flatten(2).transpose(1, 2) if self.pointwise else x.reshape(batch, -1, x.shape[-1])
        down, up = self.bank.weights[self.layer]
        picked = rows.columns.view(-1)
        mid = torch.bmm(tokens, down.index_select(0, picked).view(batch, width, -1).transpose(1, 2))
        delta = torch.bmm(mid * rows.scales.view(batch, 1, width), up.index_select(0, picked).view(batch, width, -1))
        if self.pointwise:
            return output + delta.transpose(1, 2).reshape(output.shape)
        return output + delta.view(output.shape)
