"""Prompt embeddings with an LRU cache: a prompt change costs one text-encoder call (per encoder), once.

One text encoder (SD 1.5, SD 2.x): its last hidden state. SDXL's two: both encoders' penultimate hidden
states side by side, and the second's projected (pooled) embedding, as diffusers' `encode_prompt` does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from transformers import CLIPTokenizer

from pipeline.models import ModelBundle


class PromptEmbeddings:
    def __init__(self, model: ModelBundle, capacity: int = 64) -> None:
        self._model = model
        self._device = model.device
        self._dtype = model.dtype
        self._capacity = capacity
        # prompt -> (sequence embedding (77, D), pooled embedding (P,) or None)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.encoder_calls = 0

    def get(self, prompt: str) -> torch.Tensor:
        """(77, D) embedding of one prompt, as diffusers' `encode_prompt` computes it."""
        return self._encoded(prompt)[0]

    def pooled(self, prompt: str) -> torch.Tensor:
        """(P,) pooled embedding of one prompt (SDXL's second text encoder)."""
        pooled = self._encoded(prompt)[1]
        if pooled is None:
            raise ValueError(f"model family {self._model.family.name} has no pooled prompt embeddings")
        return pooled

    def blended(self, prompt: str, prompt_b: str, blend: float) -> torch.Tensor:
        """The embedding interpolated from `prompt` (blend 0) to `prompt_b` (blend 1)."""
        return self._blend(self.get, prompt, prompt_b, blend)

    def blended_pooled(self, prompt: str, prompt_b: str, blend: float) -> torch.Tensor:
        """The pooled embedding blended the same way, so SDXL's two conditionings move together."""
        return self._blend(self.pooled, prompt, prompt_b, blend)

    def _blend(self, embed: Callable[[str], torch.Tensor], prompt: str, prompt_b: str, blend: float) -> torch.Tensor:
        first = embed(prompt)
        if not prompt_b or blend <= 0.0:
            return first
        return torch.lerp(first.float(), embed(prompt_b).float(), blend).to(self._dtype)

    @torch.inference_mode()
    def _encoded(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        cached = self._cache.get(prompt)
        if cached is not None:
            self._cache.move_to_end(prompt)
            return cached
        model = self._model
        if model.text_encoder_2 is None or model.tokenizer_2 is None:
            encoded: tuple[torch.Tensor, torch.Tensor | None] = (
                model.text_encoder(self._ids(model.tokenizer, prompt))[0][0].to(self._dtype),
                None,
            )
        else:
            first = model.text_encoder(self._ids(model.tokenizer, prompt), output_hidden_states=True)
            second = model.text_encoder_2(self._ids(model.tokenizer_2, prompt), output_hidden_states=True)
            sequence = torch.cat((first.hidden_states[-2][0], second.hidden_states[-2][0]), dim=-1)
            encoded = (sequence.to(self._dtype), second[0][0].to(self._dtype))
        self.encoder_calls += 1
        self._cache[prompt] = encoded
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return encoded

    def _ids(self, tokenizer: CLIPTokenizer, prompt: str) -> torch.Tensor:
        ids: torch.Tensor = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids.to(self._device)
