"""What one frame is generated with: the engine's view of a stream's settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameParams:
    prompt: str
    strength: float
    seed: int = 0
    negative_prompt: str = ""
    prompt_b: str = ""
    blend: float = 0.0
    guidance_scale: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength!r}")
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {self.blend!r}")
