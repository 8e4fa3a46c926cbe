"""Cached attention (StreamV2V's extended self-attention), per row: each row's self-attention also
attends to the keys and values its own stream's last frames had in that layer.

Every self-attention layer of the UNet gets a processor that, while a batch asks for it, reads each
row's past keys and values from its slot (`pipeline.stream_slots`) of fixed device tensors (a ring
of `frames` entries per slot and layer, made on the layer's first use) and writes this frame's into
the ring. A row's own mask says which past entries it may see (none of another row's: rows never
mix; none older than its `temporal.frames`; none not yet written). While no row of a batch asks,
the layers run diffusers' own processor, so off is exactly today's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

# The most past frames a row may attend to (the setting's bound).
MAX_FRAMES = 4
# A ring's entries: one more than a row may see, so the entry this frame writes is never one it
# reads (with several UNet calls a frame, the first call's write would otherwise be read by the next).
RING = MAX_FRAMES + 1
# Where a UNet keeps the bank its processors read.
_INSTALLED = "_stylize_attention_bank"


@dataclass
class AttentionRows:
    """What the layers read while a batch caches attention: per row its slot (B,) int64, which of
    its ring's entries it sees (B, RING) bool, and where this frame goes (B,) int64."""

    slots: torch.Tensor
    visible: torch.Tensor
    write_at: torch.Tensor


class AttentionBank:
    """The rings of every self-attention layer, and the rows of the batch being run (None: off).

    One per UNet (its layers' processors hold it): `of` hands out the UNet's, emptied.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.rows: AttentionRows | None = None
        self.rings: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> keys, values

    @classmethod
    def of(cls, unet: UNet2DConditionModel, slots: int) -> AttentionBank:
        """The bank installed in `unet` with `slots` slots and empty rings (installed now if need be)."""
        bank = getattr(unet, _INSTALLED, None)
        if not isinstance(bank, AttentionBank) or bank.slots != slots:
            bank = cls(slots)
            bank.install(unet)
            setattr(unet, _INSTALLED, bank)
        bank.rows, bank.rings = None, {}
        return bank

    def install(self, unet: UNet2DConditionModel) -> None:
        """Give every self-attention layer (`attn1` of the transformer blocks) a caching processor."""
        for index, (name, module) in enumerate(unet.named_modules()):
            if not (isinstance(module, Attention) and name.endswith("attn1")):
                continue
            extras = [part for part in ("spatial_norm", "group_norm", "norm_q", "norm_k") if getattr(module, part)]
            if extras or module.is_cross_attention:
                raise ValueError(f"cached attention does not know the self-attention layer {name} ({extras})")
            module.set_processor(CachedSelfAttention(self, index))

    def ring(self, layer: int, tokens: int, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found = self.rings.get(layer)
        if found is None:
            shape = (self.slots, RING, tokens, width)
            found = self.rings[layer] = (
                torch.zeros(shape, device=like.device, dtype=like.dtype),
                torch.zeros(shape, device=like.device, dtype=like.dtype),
            )
        return found


class CachedSelfAttention:
    """A self-attention layer's processor: diffusers' own while the bank is off, extended while on."""

    def __init__(self, bank: AttentionBank, layer: int) -> None:
        self.bank = bank
        self.layer = layer
        self.plain = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        rows = self.bank.rows
        if rows is None or encoder_hidden_states is not None or hidden_states.ndim != 3:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch, tokens, _ = hidden_states.shape
        people = rows.slots.shape[0]
        repeats = batch // people  # with guidance the batch is every row twice (conditional first)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        width = key.shape[-1]
        past_keys, past_values = self.bank.ring(self.layer, tokens, width, key)
        slots = rows.slots.repeat(repeats)
        keys = torch.cat((key.unsqueeze(1), past_keys.index_select(0, slots)), dim=1).view(batch, -1, width)
        values = torch.cat((value.unsqueeze(1), past_values.index_select(0, slots)), dim=1).view(batch, -1, width)
        seen = torch.cat((torch.ones_like(rows.visible[:, :1]), rows.visible), dim=1).repeat(repeats, 1)
        mask = seen.repeat_interleave(tokens, dim=1).view(batch, 1, 1, -1)

        heads, head_dim = attn.heads, width // attn.heads
        out = F.scaled_dot_product_attention(
            query.view(batch, -1, heads, head_dim).transpose(1, 2),
            keys.view(batch, -1, heads, head_dim).transpose(1, 2),
            values.view(batch, -1, heads, head_dim).transpose(1, 2),
            attn_mask=mask,
        )
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        # This frame's keys and values into each row's ring (the conditional rows' only).
        past_keys[rows.slots, rows.write_at] = key[:people]
        past_values[rows.slots, rows.write_at] = value[:people]
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor
