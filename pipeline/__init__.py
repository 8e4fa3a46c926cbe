"""Everything that touches torch and diffusers: model loading, the one-step transform, the engine.

Nothing here imports the server, aiohttp or aiortc; `Engine(...).submit(frame, params)` is usable alone.
Importing the package is cheap: the torch-free contract (`FrameParams`, `Priority`, `BatchReport`,
`FrameReplaced`, `EngineClosed`) comes at once, the engine and the model loader (torch, diffusers)
only when first named (PEP 562), as diffusers' own lazy `__init__` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.contract import BatchReport, EngineClosed, FrameParams, FrameReplaced, Priority

if TYPE_CHECKING:
    from pipeline.engine import Engine
    from pipeline.lora_files import LoraError
    from pipeline.models import ModelBundle, ModelUnavailableError, load_model

# Names that need torch, and the module each lives in.
_LAZY = {
    "Engine": "pipeline.engine",
    "LoraError": "pipeline.lora_files",
    "ModelBundle": "pipeline.models",
    "ModelUnavailableError": "pipeline.models",
    "load_model": "pipeline.models",
}

__all__ = [
    "BatchReport",
    "Engine",
    "EngineClosed",
    "FrameParams",
    "FrameReplaced",
    "LoraError",
    "ModelBundle",
    "ModelUnavailableError",
    "Priority",
    "load_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
