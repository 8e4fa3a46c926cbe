"""Per-peer state: one `Session` per WebRTC caller, with the counters its stream reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiortc import RTCPeerConnection

if TYPE_CHECKING:
    from server.tracks import StylizedTrack


@dataclass
class StreamStats:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    latency_s: float = 0.0  # arrival to output of the last frame
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float | int]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "fps_in": round(self.frames_in / elapsed, 2),
            "fps_out": round(self.frames_out / elapsed, 2),
            "latency_ms": round(self.latency_s * 1000.0, 2),
        }


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    stats: StreamStats = field(default_factory=StreamStats)
    track: StylizedTrack | None = None
    created: float = field(default_factory=time.time)
    announced: bool = False  # the offer succeeded and listeners were told the stream is up

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.pc.connectionState,
            "created": self.created,
            "stats": self.stats.as_dict(),
        }
