"""What callers exchange with the engine, importable without torch: frame parameters, priorities,
batch reports, and the two ways a frame's future can fail."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from pipeline.families import MAX_STEPS

# ControlNet kinds (`pipeline.control`) and the largest scale a row may give one.
CONTROL_KINDS = ("canny", "depth")
MAX_CONTROL_SCALE = 2.0
# LoRAs one row may wear at once, and the largest |scale| each may have (diffusers takes any scale; past
# 4 a LoRA trained for 1 only burns the picture, and a bound keeps a typo from doing that).
MAX_LORAS_PER_ROW = 4
MAX_LORA_SCALE = 4.0


@dataclass(frozen=True)
class FrameParams:
    """What one frame is generated with: the engine's view of a stream's settings."""

    prompt: str
    strength: float
    seed: int = 0
    negative_prompt: str = ""
    prompt_b: str = ""
    blend: float = 0.0
    guidance_scale: float = 0.0
    num_inference_steps: int = 0  # UNet calls, 1 to 4; 0: the model family's default
    # Temporal memory (`pipeline.temporal`): the share of the stream's previous output in this frame's
    # start, and the flicker figure to hold by moving it (None: fixed). When the engine takes the
    # frame into a batch it sets its stream's memory slot and the feedback it runs with now.
    feedback: float = 0.0
    flicker_target: float | None = None
    memory_slot: int = -1
    feedback_now: float = 0.0
    # Cached attention: how many of its own last frames each self-attention layer also attends to
    # (asked), and, set by the engine, how many it sees now and where this frame goes in its ring.
    frames: int = 0
    past: int = 0
    ring_at: int = 0
    # ControlNet: the kind of control image made from the frame, and how strongly it steers (0: off).
    control_kind: str = ""
    control_scale: float = 0.0
    # LoRAs (`pipeline.lora_bank`): (source, scale) pairs, the source a hub id, folder or .safetensors
    # file as the caller resolved it; set by the engine when it takes the frame, each one's device slot.
    loras: tuple[tuple[str, float], ...] = ()
    lora_slots: tuple[int, ...] = ()

    @property
    def remembers(self) -> bool:
        """Its stream keeps its output in memory (it feeds back, or will once the controller says so)."""
        return self.feedback > 0.0 or self.flicker_target is not None or self.frames > 0

    def __post_init__(self) -> None:
        if not 0 <= self.num_inference_steps <= MAX_STEPS:
            raise ValueError(
                f"num_inference_steps must be in [1, {MAX_STEPS}] (or 0: the default), got {self.num_inference_steps!r}"
            )
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength!r}")
        if not 0.0 <= self.feedback <= 1.0:
            raise ValueError(f"feedback must be in [0, 1], got {self.feedback!r}")
        if self.flicker_target is not None and not self.flicker_target > 0.0:
            raise ValueError(f"flicker_target must be above 0, got {self.flicker_target!r}")
        if not 0 <= self.frames <= 4:
            raise ValueError(f"frames must be in [0, 4], got {self.frames!r}")
        if self.control_kind not in ("", *CONTROL_KINDS):
            raise ValueError(f"control kind must be one of {CONTROL_KINDS}, got {self.control_kind!r}")
        if not 0.0 <= self.control_scale <= MAX_CONTROL_SCALE:
            raise ValueError(f"control scale must be in [0, {MAX_CONTROL_SCALE}], got {self.control_scale!r}")
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {self.blend!r}")
        self._check_loras()

    def _check_loras(self) -> None:
        if len(self.loras) > MAX_LORAS_PER_ROW:
            raise ValueError(f"loras: at most {MAX_LORAS_PER_ROW} per frame, got {len(self.loras)}")
        sources = [source for source, _ in self.loras]
        if len(set(sources)) != len(sources):
            raise ValueError(f"loras: each source at most once, got {sources!r}")
        for source, scale in self.loras:
            if not source:
                raise ValueError("loras: a source must not be empty")
            if not (math.isfinite(scale) and abs(scale) <= MAX_LORA_SCALE):
                raise ValueError(
                    f"loras: scale of {source!r} must be in [-{MAX_LORA_SCALE}, {MAX_LORA_SCALE}], got {scale!r}"
                )


class Priority(enum.IntEnum):
    LIVE = 0
    JOB = 1


@dataclass
class BatchReport:
    """What one batch did, for metrics: frames in it, frames that reused an output, stage durations (s).

    `busy_s` is how long the device worked on the batch, from its colour conversion in to its colour
    conversion out; `idle_s` is how long the device sat idle between the previous batch's work and
    this one's (0 when the batch was queued behind the previous one). Summed over a window they give
    the engine's busy ratio. A batch in which no frame needed the model has neither (both 0).
    """

    size: int
    skipped: int
    stages: dict[str, float]
    busy_s: float = 0.0
    idle_s: float = 0.0
    flicker: list[float] = field(default_factory=list)  # the figure of each stream measured in it


class FrameReplaced(Exception):
    """A newer frame of the same key arrived before this one was taken into a batch."""


class EngineClosed(Exception):
    """The engine stopped before this frame was processed."""
