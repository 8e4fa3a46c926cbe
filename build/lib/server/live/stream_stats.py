"""Per-stream counters: frames in, out and dropped, with fps and latency over the last few seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from server.observe.recent_window import RECENT_S, RecentWindow


@dataclass
class StreamStats:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    latency_s: float = 0.0  # arrival to output of the last frame
    started: float = field(default_factory=time.monotonic)
    last_in: float | None = None  # monotonic time the last camera frame arrived
    # The last few seconds, for fps and latency percentiles "right now".
    recent_in: RecentWindow = field(default_factory=lambda: RecentWindow(RECENT_S))
    recent_out: RecentWindow = field(default_factory=lambda: RecentWindow(RECENT_S))
    recent_latency: RecentWindow = field(default_factory=lambda: RecentWindow(RECENT_S))

    def frame_in(self) -> None:
        self.frames_in += 1
        self.last_in = time.monotonic()
        self.recent_in.add()

    def frame_out(self, latency_s: float) -> None:
        self.frames_out += 1
        self.latency_s = latency_s
        self.recent_out.add()
        self.recent_latency.add(latency_s)

    def frame_dropped(self) -> None:
        self.frames_dropped += 1

    def as_dict(self) -> dict[str, float | int | None]:
        """Counts since the stream started; fps and latency percentiles over the last `RECENT_S` seconds."""
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "fps_in": round(self.recent_in.rate(), 2),
            "fps_out": round(self.recent_out.rate(), 2),
            "latency_ms": round(self.latency_s * 1000.0, 2),
            "latency_p50_ms": self.recent_latency.percentile_ms(50),
            "latency_p95_ms": self.recent_latency.percentile_ms(95),
            "uptime_s": round(time.monotonic() - self.started, 1),
        }
