"""One stream name's output: the newest stylized frame of the newest stream of that name.

Stream ids change on every Start, reconnect and restart; names do not. MJPEG responses, snapshots
and WHEP viewers hold a `NamedOutput` rather than a stream, so they follow the name: when its
stream ends they keep the last frame, and when a stream of that name is back they go on with it.
"""

from __future__ import annotations

from typing import Literal

from av import VideoFrame

from server.live.frame_fanout import FrameFanout
from server.live.track import Take, TakeListener


class NamedOutput:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stream_id: str | None = None  # the stream that feeds it now; None while waiting for one
        self.frames = FrameFanout()  # the newest frame, kept after its stream ends
        self.viewers = 0  # WHEP viewers
        self.watchers = 0  # MJPEG responses
        self.recorders: list[TakeListener] = []  # told of every frame with its input and settings

    @property
    def frame(self) -> VideoFrame | None:
        return self.frames.newest

    @property
    def state(self) -> Literal["live", "waiting"]:
        return "live" if self.stream_id is not None else "waiting"

    @property
    def idle(self) -> bool:
        """Nothing feeds, shows or watches it: it may be forgotten."""
        return (
            self.stream_id is None
            and self.frame is None
            and not self.viewers
            and not self.watchers
            and not self.recorders
        )

    def show(self, frame: VideoFrame, stream_id: str) -> None:
        """A stylized frame of `stream_id`: the newest of this name when that stream feeds it."""
        if stream_id == self.stream_id:
            self.frames.publish(frame, stream_id)

    def take(self, take: Take, stream_id: str) -> None:
        """A frame of `stream_id` with its input and settings: told to the recorders when that stream feeds the name."""
        if stream_id == self.stream_id:
            for recorder in list(self.recorders):
                recorder(take)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "stream_id": self.stream_id,
            "state": self.state,
            "viewers": self.viewers,
            "mjpeg": self.watchers,
            "frames": self.frames.version,
        }
