"""Per-peer state: one `Session` per WebRTC caller."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection

from server.fields import DEFAULT_NAME
from server.live.stream_stats import StreamStats
from server.live.track import StylizedTrack


@dataclass
class Session:
    id: str
    pc: RTCPeerConnection
    stats: StreamStats = field(default_factory=StreamStats)
    track: StylizedTrack | None = None
    created: float = field(default_factory=time.time)
    announced: bool = False  # the offer succeeded and listeners were told the stream is up
    name: str = DEFAULT_NAME  # outputs and per-name settings follow the name, not the id
    remote: str | None = None  # the caller's address, for the log
    connected_at: float | None = None  # monotonic time the connection first reached "connected"
    secret: str | None = None  # WHIP: the last part of its Location, needed to hang up; never listed

    def stale(self, now: float, connect_timeout_s: float, idle_timeout_s: float) -> str | None:
        """Why this session should be closed at monotonic `now`, or None while it is doing its job."""
        if self.connected_at is None:
            return "not connected in time" if now - self.stats.started > connect_timeout_s else None
        last = self.stats.last_in if self.stats.last_in is not None else self.connected_at
        return "no frames" if now - last > idle_timeout_s else None

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.pc.connectionState,
            "created": self.created,
            "stats": {
                **self.stats.as_dict(),
                "flicker": _rounded(self.track.flicker() if self.track else None),
                "temporal": self.track.temporal() if self.track else None,
            },
        }


def _rounded(figure: float | None) -> float | None:
    return round(figure, 3) if figure is not None else None
