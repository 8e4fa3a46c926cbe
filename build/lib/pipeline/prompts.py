"""Prompt embeddings with an LRU cache: a prompt change costs one text-encoder call, once."""

from __future__ import annotations

from collections import OrderedDict

import torch

from pipeline.models import ModelBundle


class PromptEmbeddings:
    def __init__(self, model: ModelBundle, capacity: int = 64) -> None:
        self._tokenizer = model.tokenizer
        self._text_encoder = model.text_encoder
        self._device = model.device
        self._dtype = model.dtype
        self._capacity = capacity
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.encoder_calls = 0

    @torch.inference_mode()
    def get(self, prompt: str) -> torch.Tensor:
        """(77, D) embedding of one prompt, as diffusers' `encode_prompt` computes it."""
        cached = self._cache.get(prompt)
        if cached is not None:
            self._cache.move_to_end(prompt)
            return cached
        ids = self._tokenizer(
            prompt,
            padding="max_length",
            max_length=self._tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self._device)
        embedding = self._text_encoder(ids)[0][0].to(self._dtype)
        self.encoder_calls += 1
        self._cache[prompt] = embedding
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return embedding

    def blended(self, prompt: str, prompt_b: str, blend: float) -> torch.Tensor:
        """The embedding interpolated from `prompt` (blend 0) to `prompt_b` (blend 1)."""
        first = self.get(prompt)
        if not prompt_b or blend <= 0.0:
            return first
        return torch.lerp(first.float(), self.get(prompt_b).float(), blend).to(self._dtype)
