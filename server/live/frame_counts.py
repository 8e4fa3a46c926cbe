"""One stream's frame events, each told once: to the stream's own figures (`/api/streams`) and to the
server's metrics (`/metrics`), which were called in pairs at every place a frame was counted."""

from __future__ import annotations

from dataclasses import dataclass

from server.live.stream_stats import StreamStats
from server.observe.metrics import DropReason, Metrics


@dataclass
class FrameCounts:
    stats: StreamStats
    metrics: Metrics

    def received(self) -> None:
        self.stats.frame_in()
        self.metrics.frame_received()

    def converted(self, seconds: float) -> None:
        """A received frame decoded and handed to the engine, `seconds` after it arrived."""
        self.metrics.observe_stage("receive", seconds)

    def sent(self, latency_s: float, send_s: float) -> None:
        """A stylized frame handed to the sender: `latency_s` from its camera frame's arrival,
        `send_s` of it waiting for the sender."""
        self.stats.frame_out(latency_s)
        self.metrics.frame_sent(latency_s=latency_s, send_s=send_s)

    def dropped(self, reason: DropReason) -> None:
        self.stats.frame_dropped()
        self.metrics.frame_dropped(reason)
