"""Temporal memory, per row of a batch: latent feedback, and the controller that holds a stream's
flicker figure at a target by moving its feedback.

Latent feedback: each stream's last output latent (the clean x0 of its last model frame) is kept in
its slot (`pipeline.stream_slots`) of one fixed device tensor, so a captured CUDA graph reads and
writes it in place; a row's starting latent is `z + f * (prev - z)` (f = 0: exactly `z`), and the
batch's new x0 replace each row's slot. Rows never mix: each reads and writes only its own slot.

The host knows whether a slot holds its stream's previous output: a batch that ran the feedback
wrote every row's slot; one that did not left them stale. A row whose slot is stale, or new, runs
with f = 0 this frame, which makes its slot good for the next.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.cached_attention import MAX_FRAMES, RING
from pipeline.models import ModelBundle

# The controller's bounds: above 0.9 the picture smears and stops following the camera.
FEEDBACK_MAX = 0.9
# Feedback moved per model frame per unit of relative error: from 0 to 0.5 in ~2.5 s at 20 fps when
# the figure is twice its target, slow enough for the smoothed figure (~10 frames) to keep up.
GAIN = 0.01
# Within this share of its target a stream's figure is said to be held.
HOLDING = 0.1


class LatentMemory:
    """Each slot's last clean latent, scaled as the VAE's latents are (float32, on the device)."""

    def __init__(self, model: ModelBundle, slots: int) -> None:
        factor = model.vae_scale_factor
        shape = (slots, model.latent_channels, model.height // factor, model.width // factor)
        self.latents = torch.zeros(shape, device=model.device, dtype=torch.float32)

    def blend(self, latents: torch.Tensor, slots: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
        previous = self.latents.index_select(0, slots)
        return latents + feedback.view(-1, 1, 1, 1) * (previous - latents)

    def remember(self, x0: torch.Tensor, slots: torch.Tensor) -> None:
        self.latents.index_copy_(0, slots, x0.float())


@dataclass
class _Held:
    feedback: float
    asked: float
    target: float | None
    good: bool = False  # the slot holds this stream's previous output
    state: str = "off"
    cached: int = 0  # frames in a row whose keys and values went into the slot's rings


class TemporalControl:
    """Per stream on the host: what feedback each frame runs with, and whether its memory is good.

    Without a target a stream runs with the feedback it asked for. With one, the controller starts
    there and moves it each model frame by GAIN times the figure's relative error, within
    [0, FEEDBACK_MAX]: up while the stream flickers more than its target, down while it flickers
    less (more feedback than needed only smears).
    """

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    def feedback(self, key: str, asked: float, target: float | None, flicker: float | None, fresh: bool) -> float:
        """The feedback `key`'s next frame runs with (0 while its memory is not good)."""
        with self._lock:
            held = self._held.get(key)
            if held is None or fresh or held.asked != asked or held.target != target:
                good, cached = (held.good, held.cached) if held is not None and not fresh else (False, 0)
                held = self._held[key] = _Held(asked, asked, target, good, cached=cached)
            if target is None:
                held.feedback, held.state = asked, "fixed" if asked > 0 else "off"
            elif flicker is not None:
                moved = held.feedback + GAIN * (flicker - target) / max(target, 0.1)
                held.feedback = min(FEEDBACK_MAX, max(0.0, moved))
                held.state = _state(held.feedback, flicker, target)
            return held.feedback if held.good else 0.0

    def wrote(self, keys: Sequence[str], good: bool, cached: bool) -> None:
        """A batch with these rows ran: their slots now hold their outputs (`good`) or are stale, and
        their rings have one more frame (`cached`) or are stale."""
        with self._lock:
            for key in keys:
                held = self._held.get(key)
                if held is not None:
                    held.good = good
                    held.cached = held.cached + 1 if cached else 0

    def ring(self, key: str, frames: int) -> tuple[int, int]:
        """How many past frames `key`'s next frame sees (at most `frames`), and where it goes in its ring."""
        with self._lock:
            held = self._held.get(key)
            cached = held.cached if held is not None else 0
            return min(frames, cached, MAX_FRAMES), cached % RING

    def describe(self, key: str) -> dict[str, object] | None:
        with self._lock:
            held = self._held.get(key)
            if held is None:
                return None
            return {"feedback": round(held.feedback, 3), "target": held.target, "state": held.state}

    def forget(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)


def _state(feedback: float, flicker: float, target: float) -> str:
    if abs(flicker - target) <= HOLDING * target:
        return "holding"
    if feedback >= FEEDBACK_MAX and flicker > target:
        return "at most feedback"
    if feedback <= 0.0 and flicker < target:
        return "below target"
    return "raising" if flicker > target else "lowering"
