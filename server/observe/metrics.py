"""Prometheus metrics (`GET /metrics`) and the short recent windows `/api/stats` reads.

Each app owns one `Metrics` with its own registry (no global registry: tests build many apps).
Counters and histograms are updated from the event loop (tracks, settings, peers) and from the
engine's worker thread (`observe_batch`); prometheus_client's objects are thread-safe.
Names follow DESIGN.md: prefix `stylize_`, base units, no per-peer labels.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from pipeline.contract import BatchReport
from server.control.osc import DROP_REASONS as OSC_DROP_REASONS
from server.control.osc import DropReason as OscDropReason
from server.control.settings import SettingsChange, Source
from server.observe.recent_window import RECENT_S, RecentWindow

Stage = Literal["receive", "preprocess", "model", "postprocess", "send"]
# Why a camera frame gave no output of its own: a newer one replaced it while it waited for the engine,
# or its result while it waited for the sender; or the engine failed on it.
DropReason = Literal["engine", "send", "error"]

STAGES: tuple[Stage, ...] = get_args(Stage)
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)
# From 1 ms: a fast GPU stage takes a few ms, a CPU model call or a stalled stream seconds.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# The flicker figure (pipeline.flicker): ~1 follows the camera; a still scene that boils reads tens.
FLICKER_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
# The device's idle time between batches: a pipelined engine keeps it under a couple of milliseconds.
IDLE_GAP_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.frames_in = Counter("stylize_frames_in_total", "Camera frames received from peers", registry=registry)
        self.frames_out = Counter("stylize_frames_out_total", "Stylized frames handed to peers", registry=registry)
        self.frames_dropped = Counter(
            "stylize_frames_dropped_total",
            "Camera frames without an output of their own, by why: engine (replaced by a newer frame while "
            "waiting for the engine), send (its result replaced before the sender took it), error (the engine failed)",
            ["reason"],
            registry=registry,
        )
        self.frames_skipped = Counter(
            "stylize_frames_skipped_total",
            "Frames that reused the last output because they were nearly identical to the last input",
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "stylize_stage_seconds",
            "Time in each stage: receive (arrival to submitted) and send (result to sender) once per frame; "
            "preprocess, model and postprocess once per engine batch",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.engine_busy = Counter(
            "stylize_engine_busy_seconds_total",
            "Seconds the engine's device spent on batches (its rate is the busy ratio)",
            registry=registry,
        )
        self.engine_idle_gap = Histogram(
            "stylize_engine_idle_gap_seconds",
            "Time the device sat idle between the end of one batch and the start of the next",
            buckets=IDLE_GAP_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "stylize_batch_size", "Frames in each engine batch", buckets=BATCH_BUCKETS, registry=registry
        )
        self.frame_latency = Histogram(
            "stylize_frame_latency_seconds",
            "Camera frame arrival to its stylized frame being handed to the sender",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.stream_flicker = Histogram(
            "stylize_stream_flicker",
            "Each stream's flicker figure after each of its model frames: output change over input change "
            "between consecutive frames, smoothed (1: the picture follows the camera; higher: it flickers)",
            buckets=FLICKER_BUCKETS,
            registry=registry,
        )
        self.streams_active = Gauge("stylize_streams_active", "Connected WebRTC streams", registry=registry)
        self.jobs = Gauge("stylize_jobs", "Offline render jobs by status", ["status"], registry=registry)
        self.control_updates = Counter(
            "stylize_control_updates_total", "Settings changes applied, by control path", ["source"], registry=registry
        )
        self.osc_rejected = Counter(
            "stylize_osc_rejected_total",
            "OSC messages dropped, by reason: source (not on the allow-list), size, depth, count and malformed "
            "(the datagram's framing), address (nobody serves it), value (wrong count, type or range), "
            "preset (cannot be applied), internal (a failure while applying)",
            ["reason"],
            registry=registry,
        )
        self.http_requests = Counter(
            "stylize_http_requests_total",
            "HTTP requests answered, by route template (unmatched: no route), method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "stylize_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template (streams and sockets: their whole life)",
            ["route"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.gpu_memory = Gauge(
            "stylize_gpu_memory_bytes", "GPU memory torch has allocated (0 without CUDA)", registry=registry
        )
        self.gpu_memory.set_function(cuda_memory_allocated)
        # Every label value shows from the start (at 0), so rates work before the first event.
        for reason in DROP_REASONS:
            self.frames_dropped.labels(reason=reason)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        for source in get_args(Source):
            self.control_updates.labels(source=source)
        for osc_reason in OSC_DROP_REASONS:
            self.osc_rejected.labels(reason=osc_reason)

        self.recent_in = RecentWindow(RECENT_S)
        self.recent_out = RecentWindow(RECENT_S)
        self.recent_latency = RecentWindow(RECENT_S)
        self.recent_batches = RecentWindow(RECENT_S)  # one value per batch: its size
        self.recent_busy = RecentWindow(RECENT_S)  # one value per batch: its busy seconds
        self.recent_idle = RecentWindow(RECENT_S)  # one value per batch: the idle gap before it
        self._jobs: dict[str, int] = {}
        self._jobs_lock = threading.Lock()

    # -- the frame path (event loop) -----------------------------------------------------------

    def frame_received(self) -> None:
        self.frames_in.inc()
        self.recent_in.add()

    def frame_dropped(self, reason: DropReason) -> None:
        self.frames_dropped.labels(reason=reason).inc()

    def observe_stage(self, stage: Stage, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def frame_sent(self, latency_s: float, send_s: float) -> None:
        """A stylized frame went to the sender `latency_s` after its camera frame arrived."""
        self.frames_out.inc()
        self.frame_latency.observe(latency_s)
        self.observe_stage("send", send_s)
        self.recent_out.add()
        self.recent_latency.add(latency_s)

    # -- the engine (its worker thread) ---------------------------------------------------------

    def observe_batch(self, report: BatchReport) -> None:
        """`Engine(on_batch=...)`: called on the engine's worker thread after every batch."""
        self.batch_size.observe(report.size)
        self.engine_busy.inc(report.busy_s)
        self.engine_idle_gap.observe(report.idle_s)
        self.recent_busy.add(report.busy_s)
        self.recent_idle.add(report.idle_s)
        for stage, seconds in report.stages.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)
        if report.skipped:
            self.frames_skipped.inc(report.skipped)
        self.recent_batches.add(report.size)
        for figure in report.flicker:
            self.stream_flicker.observe(figure)

    # -- control and jobs ----------------------------------------------------------------------

    def count_control_update(self, change: SettingsChange) -> None:
        """A `SettingsStore` listener; a change made on another node is counted there."""
        if not change.remote:
            self.control_updates.labels(source=change.source).inc()

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route=route, method=method, status=str(status)).inc()
        self.http_duration.labels(route=route).observe(seconds)

    def osc_dropped(self, reason: OscDropReason) -> None:
        self.osc_rejected.labels(reason=reason).inc()

    def set_jobs(self, counts: Mapping[str, int]) -> None:
        """The jobs feature reports how many jobs are in each status; statuses left out read 0."""
        with self._jobs_lock:
            for status in self._jobs.keys() - counts.keys():
                self.jobs.labels(status=status).set(0)
            for status, count in counts.items():
                self.jobs.labels(status=status).set(count)
            self._jobs = dict(counts)

    def jobs_by_status(self) -> dict[str, int]:
        with self._jobs_lock:
            return dict(self._jobs)

    # -- reading -------------------------------------------------------------------------------

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The current value of one sample, e.g. `value("stylize_frames_dropped_total", {"reason": "send"})`.

        Only that sample's collector is read (not the GPU gauge, which asks torch): safe on the loop.
        """
        wanted = dict(labels or {})
        for family in self.registry.restricted_registry([name]).collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return sample.value
        return 0.0

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition for a scrape with this Accept header: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def cuda_memory_allocated() -> float:
    """Bytes torch holds on all GPUs; 0 on a CPU machine. Never imports torch or initialises CUDA itself."""
    torch = sys.modules.get("torch")  # loaded by the engine's loader, if at all
    if torch is None or not torch.cuda.is_initialized():
        return 0.0
    return float(sum(torch.cuda.memory_allocated(index) for index in range(torch.cuda.device_count())))
