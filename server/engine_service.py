"""Loads the model and runs the engine without holding up the server: /readyz tells how far it got.

A loader thread loads the model and starts the engine; the engine's own thread warms every bucket
up (the thread that serves must be the one that records CUDA graphs) and then serves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from pipeline import BatchReport, Engine, EngineClosed, ModelUnavailableError, load_model
from pipeline.models import default_device, default_dtype
from server.config import Config

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
        # Taken by stop() and by the loader around starting the engine: either the loader sees the
        # stop and starts nothing, or stop() sees the engine and stops it.
        self._lock = threading.Lock()

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
        """Load on a thread of its own and warm up on the engine's; the loop keeps serving meanwhile."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._load, name="stylize-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the engine and wait for the loader (a model still loading is waited for)."""
        with self._lock:
            self._stopping.set()
            engine = self._engine
        if engine is not None:
            engine.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.state = "stopped"
        self.reason = "server shutting down"

    def _load(self) -> None:
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
                cuda_graphs=config.engine.cuda_graphs,
                cpu_threads=config.engine.cpu_threads,
                on_batch=self._on_batch,
            )
            with self._lock:
                if self._stopping.is_set():
                    return
                self._engine = engine
                if config.engine.warmup:
                    self._set("warming", f"warming up: 0/{len(engine.buckets)} batch buckets")
                engine.start(warmup=config.engine.warmup, progress=self._warm_progress)
        except ModelUnavailableError as e:
            logger.error("model unavailable: %s", e)
            self._set("failed", str(e))
            return
        except Exception as e:
            logger.exception("model load failed model=%s", config.model.id)
            self._set("failed", f"model load failed: {e}")
            return
        try:
            engine.wait_ready()
        except EngineClosed:
            return  # stop() came first
        except Exception as e:  # the engine logged it with its traceback
            self._set("failed", f"engine warm-up failed: {e}")
            return
        self._set("ready", "ready")
        logger.info("engine ready model=%s device=%s cuda_graphs=%s", config.model.id, model.device, engine.cuda_graphs)

    def _warm_progress(self, done: int, total: int) -> None:
        """Called on the engine's thread after each bucket it warmed up."""
        logger.info("warm-up %d/%d batch buckets", done, total)
        self._set("warming", f"warming up: {done}/{total} batch buckets")

    def _set(self, state: State, reason: str) -> None:
        def apply() -> None:
            if self.state != "stopped":
                self.state = state
                self.reason = reason

        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(apply)
