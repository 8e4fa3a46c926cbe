"""`GET /api/stats`: what an operator needs to see at a glance, as one JSON object.

`StatsReporter` gathers it from the engine, the live sessions, `Metrics` and the host. Features
that come later plug in their counts: jobs report through `Metrics.set_jobs` (or replace
`reporter.jobs`), presets through `reporter.presets`, a callable returning uses per preset (the
observe room hands in its `PRESET_USAGE` need).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import psutil

from server.engine_service import EngineNotReady, EngineStatus
from server.observe.activity import Activity
from server.observe.metrics import DROP_REASONS, Metrics, cuda_memory_allocated
from server.observe.recent_window import RECENT_S

logger = logging.getLogger(__name__)


class Stream(Protocol):
    """What the stats need of a live stream (`server.live.session.Session`)."""

    def describe(self) -> dict[str, object]: ...


Counts = Callable[[], Mapping[str, int]]
AsyncCounts = Callable[[], Awaitable[Mapping[str, int]]]
ERRORS_KEPT = 50


class RecentErrors(logging.Handler):
    """Keeps the last `capacity` ERROR records (from any logger it is attached to) for /api/stats."""

    def __init__(self, capacity: int = ERRORS_KEPT) -> None:
        super().__init__(logging.ERROR)
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._entries_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry: dict[str, Any] = {
                "time": record.created,
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                entry["exception"] = f"{type(error).__name__}: {error}"
        except Exception:
            self.handleError(record)
            return
        with self._entries_lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        """Oldest first."""
        with self._entries_lock:
            return list(self._entries)


DISK_EVERY_S = 10.0


def disk_usage(data_dir: Path) -> dict[str, Any]:
    """Bytes under the data dir (and its jobs folder), and free and total on its file system (blocking)."""
    used = jobs = 0
    jobs_dir = data_dir / "jobs"
    for root, _, files in os.walk(data_dir):  # symlinked folders (a shared model cache) are not followed
        in_jobs = Path(root).is_relative_to(jobs_dir)
        for name in files:
            try:
                size = os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while walking
            used += size
            jobs += size if in_jobs else 0
    free: int | None = None
    total: int | None = None
    try:
        usage = shutil.disk_usage(data_dir)
        free, total = usage.free, usage.total
    except OSError:
        pass
    return {"data_dir": str(data_dir), "data_bytes": used, "jobs_bytes": jobs, "free_bytes": free, "total_bytes": total}


class SystemProbe:
    """CPU, RAM, disk use of the data dir and, where nvidia-ml-py finds a GPU, its utilisation and memory.

    `sample()` reads /proc and the driver, so `read()` runs it on the probe's own thread (one
    thread, because psutil measures CPU use since the calling thread's previous call). NVML is
    loaded on first use.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self._data_dir = data_dir
        self._disk: dict[str, Any] | None = None
        self._disk_at = float("-inf")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylize-probe")
        self._lock = threading.Lock()
        self._process: psutil.Process | None = None
        self._nvml: Any = None
        self._nvml_tried = False

    async def read(self) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.sample)

    def sample(self) -> dict[str, Any]:
        with self._lock:
            cpu_percent: float | None = None  # the first reading only sets the baseline
            if self._process is None:
                self._process = psutil.Process()
                psutil.cpu_percent(None)
            else:
                cpu_percent = psutil.cpu_percent(None)
            memory = psutil.virtual_memory()
            return {
                "cpu_percent": cpu_percent,
                "cpu_count": psutil.cpu_count(),
                "ram_used_bytes": memory.total - memory.available,
                "ram_total_bytes": memory.total,
                "ram_percent": memory.percent,
                "process_rss_bytes": self._process.memory_info().rss,
                "gpu_memory_allocated_bytes": cuda_memory_allocated(),
                "gpus": self._gpus(),
                "disk": self._disk_usage(),
            }

    def _disk_usage(self) -> dict[str, Any] | None:
        """Walking the data dir is slow with many job files: at most once every `DISK_EVERY_S`."""
        if self._data_dir is None:
            return None
        if time.monotonic() - self._disk_at >= DISK_EVERY_S:
            self._disk = disk_usage(self._data_dir)
            self._disk_at = time.monotonic()
        return self._disk

    def close(self) -> None:
        """Blocks until a running sample ends."""
        self._thread.shutdown(wait=True)
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError as e:
                    logger.warning("NVML shutdown failed: %s", e)
                self._nvml = None

    def _gpus(self) -> list[dict[str, Any]]:
        nvml = self._load_nvml()
        if nvml is None:
            return []
        gpus = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                gpus.append(
                    {
                        "index": index,
                        "name": name.decode() if isinstance(name, bytes) else str(name),
                        "utilization_percent": nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                        "memory_used_bytes": memory.used,
                        "memory_total_bytes": memory.total,
                    }
                )
        except nvml.NVMLError as e:
            logger.warning("GPU statistics unavailable: %s", e)
            return []
        return gpus

    def _load_nvml(self) -> Any:
        if self._nvml_tried:
            return self._nvml
        self._nvml_tried = True
        try:
            import pynvml  # nvidia-ml-py: only useful where an NVIDIA driver is present
        except ImportError:
            logger.info("no GPU statistics: nvidia-ml-py is not installed")
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            logger.info("no GPU statistics: %s", e)
            return None
        self._nvml = pynvml
        return pynvml


def package_version() -> str:
    try:
        return metadata.version("stylize")
    except metadata.PackageNotFoundError:
        return "unknown"


class StatsReporter:
    def __init__(
        self, metrics: Metrics, *, version: str, errors: RecentErrors | None = None, data_dir: Path | None = None
    ) -> None:
        self.metrics = metrics
        self.version = version
        self.errors = errors if errors is not None else RecentErrors()
        self.probe = SystemProbe(data_dir)
        self.jobs: Counts = metrics.jobs_by_status
        self.presets: AsyncCounts | None = None
        self.activity = Activity()
        self._started = time.monotonic()
        self._started_at = time.time()

    async def report(self, engine: EngineStatus, sessions: Iterable[Stream]) -> dict[str, Any]:
        system = await self.probe.read()
        presets = dict(await self.presets()) if self.presets is not None else {}
        return self.snapshot(engine, sessions, system, presets)

    def snapshot(
        self, engine: EngineStatus, sessions: Iterable[Stream], system: dict[str, Any], presets: dict[str, int]
    ) -> dict[str, Any]:
        metrics = self.metrics
        return {
            "version": self.version,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "started_at": self._started_at,
            "window_s": RECENT_S,
            "engine": self._engine(engine),
            "frames": {
                "in": int(metrics.value("stylize_frames_in_total")),
                "out": int(metrics.value("stylize_frames_out_total")),
                "dropped": {
                    reason: int(metrics.value("stylize_frames_dropped_total", {"reason": reason}))
                    for reason in DROP_REASONS
                },
                "skipped": int(metrics.value("stylize_frames_skipped_total")),
                "fps_in": round(metrics.recent_in.rate(), 2),
                "fps_out": round(metrics.recent_out.rate(), 2),
            },
            "latency_ms": {
                "p50": metrics.recent_latency.percentile_ms(50),
                "p95": metrics.recent_latency.percentile_ms(95),
            },
            "streams": [session.describe() for session in sessions],
            "jobs": dict(self.jobs()),
            "presets": presets,
            "errors": [error for error in self.errors.entries() if error["time"] >= self.activity.reset_at],
            "activity": self.activity.describe(),
            "disk": system.get("disk"),
            "system": system,
        }

    def _engine(self, service: EngineStatus) -> dict[str, Any]:
        described = service.describe()
        batches = self.metrics.recent_batches
        mean_batch = batches.mean()
        described.update(
            {
                "batch_size": round(mean_batch, 2) if mean_batch is not None else None,
                "throughput_fps": round(batches.rate(), 2),
                "batches": int(self.metrics.value("stylize_batch_size_count")),
                # Busy seconds per second over the window; the idle gap between batches.
                "busy_ratio": round(min(1.0, self.metrics.recent_busy.rate()), 3),
                "idle_gap_ms_p50": self.metrics.recent_idle.percentile_ms(50),
            }
        )
        if service.ready:
            with contextlib.suppress(EngineNotReady):  # a cluster's front: the engines run on its workers
                engine = service.engine
                described.update({"max_batch": engine.max_batch, "pending": engine.pending})
        return described
