"""Everything that touches torch and diffusers: model loading, the one-step transform, the engine.

Nothing here imports the server, aiohttp or aiortc; `Engine(...).submit(frame, params)` is usable alone.
"""

from pipeline.engine import BatchReport, Engine, EngineClosed, FrameReplaced, Priority
from pipeline.models import ModelBundle, ModelUnavailableError, load_model
from pipeline.params import FrameParams

__all__ = [
    "BatchReport",
    "Engine",
    "EngineClosed",
    "FrameParams",
    "FrameReplaced",
    "ModelBundle",
    "ModelUnavailableError",
    "Priority",
    "load_model",
]
