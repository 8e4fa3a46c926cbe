"""Loads the model and runs the engine without holding up the server: /readyz tells how far it got.

A loader thread loads the model and starts the engine; the engine's own thread warms every bucket
up (the thread that serves must be the one that records CUDA graphs) and then serves. The one place
in `server/` that loads torch, on the loader thread, so importing the server (and
`python -m server --help`) stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pipeline.contract import BatchReport, EngineClosed
from server.config import Config

if TYPE_CHECKING:
    from pipeline import Engine

logger = logging.getLogger(__name__)

State = Literal["loading", "warming", "ready", "failed", "stopped"]


class _Stopping(Exception):
    """The server stops while the loader downloads: the download is abandoned."""


class ModelNotFetched(Exception):
    """`download_model` could not fetch the model; the message says which part and why."""


class EngineNotReady(Exception):
    def __init__(self, state: State, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class EngineStatus(Protocol):
    """The engine as the rooms see it: this process's own (`EngineService`), or on a cluster's front
    its view of the workers' (`WorkerEngines`), whose `engine` is never here."""

    state: State
    reason: str

    @property
    def ready(self) -> bool: ...

    @property
    def engine(self) -> Engine:
        """The running engine; raises `EngineNotReady` while there is none here."""
        ...

    def describe(self) -> dict[str, object]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EngineService:
    def __init__(self, config: Config, on_batch: Callable[[BatchReport], None] | None = None) -> None:
        self._config = config
        self._on_batch = on_batch
        self.state: State = "loading"
        self.reason = f"loading model {config.model.id!r}"
        self._engine: Engine | None = None
        self.download: dict[str, int] | None = None  # bytes done and in all while model files download
        self._download_logged = -1  # the last tenth of the download logged
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
            # Told from the model's config once loaded; until then what [model] family says ("auto").
            "family": engine.model.family.name if engine else self._config.model.family,
            "default_steps": engine.model.family.default_steps if engine else None,
            # The ControlNet kinds loaded (`[control] models`): a stream's `control` may use these.
            "control": list(engine.control.kinds) if engine and engine.control else [],
            # Different LoRAs the device holds at once (`[lora] slots`; 0: LoRAs off).
            "lora_slots": self._config.lora.slots,
            "device": str(engine.model.device) if engine else None,
            "dtype": str(engine.model.dtype).removeprefix("torch.") if engine else None,
            "resolution": engine.model.width if engine else None,
            "download": self.download,
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
        import torch

        from pipeline import Engine, ModelUnavailableError, load_model
        from pipeline.control import load_controlnets
        from pipeline.models import default_device, default_dtype

        quiet_libraries()
        config = self._config
        try:
            device = default_device() if config.model.device == "auto" else torch.device(config.model.device)
            model = load_model(
                config.model.id,
                data_dir=Path(config.server.data_dir),
                device=device,
                dtype=default_dtype(device, config.model.dtype),
                vae=config.model.vae,
                family=config.model.family,
                resolution=config.model.resolution or None,
                lcm_lora=config.model.lcm_lora,
                config=config.model.config,
                progress=self._downloaded,
            )
            control = load_controlnets(
                config.control.models,
                model,
                data_dir=Path(config.server.data_dir),
                depth_model=config.control.depth_model,
                progress=self._downloaded,
            )
            self._set_download(None)
            loras = lora_folder(config)
            loras.mkdir(parents=True, exist_ok=True)  # there to fill
            engine = Engine(
                model,
                max_batch=config.engine.max_batch,
                max_wait_ms=config.engine.max_wait_ms,
                similarity_threshold=config.engine.similarity_threshold,
                similarity_max_skip=config.engine.similarity_max_skip,
                memory_slots=config.engine.memory_slots,
                lora_slots=config.lora.slots,
                lora_max_rank=config.lora.max_rank,
                lora_cache_size=config.lora.cache_size,
                prompt_cache_size=config.engine.prompt_cache_size,
                compile_mode=config.engine.compile,
                cuda_graphs=config.engine.cuda_graphs,
                cpu_threads=config.engine.cpu_threads,
                warmup_steps=config.engine.warmup_steps,
                control=control,
                lora_dir=loras,
                on_batch=self._on_batch,
            )
            with self._lock:
                if self._stopping.is_set():
                    return
                self._engine = engine
                if config.engine.warmup:
                    self._set("warming", f"warming up: 0/{len(engine.buckets)} batch buckets")
                engine.start(warmup=config.engine.warmup, progress=self._warm_progress)
        except _Stopping:
            logger.info("model download abandoned: the server is stopping")
            return
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

    def _downloaded(self, done: int, total: int) -> None:
        """Download progress (the loader thread): in /readyz, and in the log every tenth."""
        if self._stopping.is_set():
            raise _Stopping  # out of the download, so that stop() need not wait for gigabytes
        progress = {"done_bytes": done, "total_bytes": total, "percent": round(100 * done / total) if total else 0}
        self._set_download(progress)
        self._set("loading", f"downloading {self._config.model.id!r}: {describe_download(done, total)}")
        tenth = 10 * done // total if total else 0
        if tenth > self._download_logged:
            self._download_logged = tenth
            logger.info("downloading model=%s %s", self._config.model.id, describe_download(done, total))

    def _set_download(self, progress: dict[str, int] | None) -> None:
        def apply() -> None:
            self.download = progress

        self._on_loop(apply)

    def _set(self, state: State, reason: str) -> None:
        def apply() -> None:
            if self.state != "stopped":
                self.state = state
                self.reason = reason

        self._on_loop(apply)

    def _on_loop(self, apply: Callable[[], None]) -> None:
        """State is read on the event loop; the loader thread hands changes over to it."""
        assert self._loop is not None
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(apply)


def lora_folder(config: Config) -> Path:
    """Where LoRA names resolve: `[lora] dir`, or `<data dir>/loras` (made when the engine loads)."""
    return Path(config.lora.dir) if config.lora.dir else Path(config.server.data_dir) / "loras"


def download_model(config: Config, *, full_precision: bool, progress: Callable[[int, int], None]) -> str:
    """Fetch every file `[model]` needs into the hub cache (or build `tiny`), ahead of an offline show.

    fp16 weights (what a GPU runs, and what a CPU can load too); `full_precision` adds the fp32 ones.
    Returns where the files are. Raises `ModelNotFetched`.
    """
    from pipeline import ModelUnavailableError
    from pipeline.control import fetch_controlnets
    from pipeline.families import FamilyError
    from pipeline.models import ARCH_PREFIX, fetch_lora, fetch_model

    quiet_libraries()
    spec = config.model.id
    if spec.startswith(ARCH_PREFIX):
        return "nothing to fetch: the architecture is built with random weights"
    try:
        for fp16 in (True, False) if full_precision else (True,):
            files = fetch_model(
                spec,
                config.model.vae,
                data_dir=Path(config.server.data_dir),
                fp16=fp16,
                family=config.model.family,
                config=config.model.config,
                progress=progress,
            )
        if config.model.lcm_lora:
            fetch_lora(config.model.lcm_lora, progress)
        fetch_controlnets(config.control.models, config.control.depth_model, fp16=True, progress=progress)
    except ModelUnavailableError as e:
        raise ModelNotFetched(e.problem) from e
    except FamilyError as e:
        raise ModelNotFetched(str(e)) from e
    if files.checkpoint is not None and files.tokenizer is not None:
        where = f"tokenizers in {files.tokenizer.folder}, vae in {files.vae.folder}"
        return f"ready offline: model {files.checkpoint}, {where}"
    return f"ready offline: model in {files.model.folder}, vae in {files.vae.folder}"


def describe_download(done: int, total: int) -> str:
    """`1.2 of 2.6 GB (46%)`, or just the bytes while the total is unknown."""
    if not total:
        return f"{done / 1e9:.2f} GB"
    return f"{done / 1e9:.2f} of {total / 1e9:.2f} GB ({100 * done // total}%)"


def quiet_libraries() -> None:
    """Our log says what loading does; diffusers' and transformers' own progress bars only repeat it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
