"""Loads the model and runs the engine without holding up the server: /readyz tells how far it got.

The one place in `server/` that loads torch: on the loader thread, so importing the server (and
`python -m server --help`) stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.contract import BatchReport
from server.config import Config

if TYPE_CHECKING:
    from pipeline import Engine

logger = logging.getLogger(__name__)

State = Literal["loading", "warming", "ready", "failed", "stopped"]


class EngineNotReady(Exception):
    def __init__(self, state: State, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class EngineService:
    def __init__(self, config: Config, on_batch: Callable[[BatchReport], None] | None = None) -> None:
        self._config = config
        self._on_batch = on_batch
        self.state: State = "loading"
        self.reason = f"loading model {config.model.id!r}"
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()

    @property
    def engine(self) -> Engine:
        if self.state != "ready" or self._engine is None:
            raise EngineNotReady(self.state, self.reason)
        return self._engine

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def describe(self) -> dict[str, object]:
        engine = self._engine
        return {
            "state": self.state,
            "reason": self.reason,
            "model": self._config.model.id,
            "device": str(engine.model.device) if engine else None,
            "dtype": str(engine.model.dtype).removeprefix("torch.") if engine else None,
            "resolution": engine.model.width if engine else None,
        }

    def start(self) -> None:
        """Load and warm up on a thread of its own; the loop keeps serving meanwhile."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._load, name="stylize-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._engine is not None:
            self._engine.stop()
        self.state = "stopped"
        self.reason = "server shutting down"

    def _load(self) -> None:
        import torch

        from pipeline import Engine, ModelUnavailableError, load_model
        from pipeline.models import default_device, default_dtype

        config = self._config
        try:
            device = default_device() if config.model.device == "auto" else torch.device(config.model.device)
            model = load_model(
                config.model.id,
                data_dir=Path(config.server.data_dir),
                device=device,
                dtype=default_dtype(device, config.model.dtype),
                vae_id=config.model.vae,
                resolution=config.model.resolution or None,
            )
            engine = Engine(
                model,
                max_batch=config.engine.max_batch,
                max_wait_ms=config.engine.max_wait_ms,
                similarity_threshold=config.engine.similarity_threshold,
                prompt_cache_size=config.engine.prompt_cache_size,
                compile_mode=config.engine.compile,
                cpu_threads=config.engine.cpu_threads,
                on_batch=self._on_batch,
            )
            if config.engine.warmup:
                self._set("warming", "warming up batch buckets")
                engine.warmup(lambda done, total: logger.info("warm-up %d/%d buckets", done, total))
            if self._stopping.is_set():
                return
            engine.start()
            self._engine = engine
            self._set("ready", "ready")
            logger.info("engine ready model=%s device=%s", config.model.id, model.device)
        except ModelUnavailableError as e:
            logger.error("model unavailable: %s", e)
            self._set("failed", str(e))
        except Exception as e:
            logger.exception("model load failed model=%s", config.model.id)
            self._set("failed", f"model load failed: {e}")

    def _set(self, state: State, reason: str) -> None:
        def apply() -> None:
            if self.state != "stopped":
                self.state = state
                self.reason = reason

        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(apply)
