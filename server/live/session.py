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

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.pc.connectionState,
            "created": self.created,
            "stats": self.stats.as_dict(),
        }
