"""A WHEP viewer's video: the newest frame of one name's output, whichever stream feeds it now.

Every viewer of a name shares that name's frames and keeps only the newest: a slow viewer (a slow
encoder, a slow network) skips frames without slowing the others or the performer, and a viewer
never starts model work. Timestamps keep the stream's own spacing; when the name moves to another
stream (the performer reconnected) they go on from where they were, so the viewer's decoder sees
one continuous stream.
"""

from __future__ import annotations

import fractions

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from server.live.named_output import NamedOutput

CLOCK_RATE = 90000  # RTP's video clock
TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
FRAME_TICKS = CLOCK_RATE // 30  # the step across a change of stream


class NamedOutputTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, output: NamedOutput) -> None:
        super().__init__()
        self._output = output
        self._seen = 0  # the output version last sent
        self._source: str | None = None  # the stream whose frames are being sent
        self._offset = 0  # added to that stream's timestamps
        self._last_pts = -FRAME_TICKS

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._seen, frame, source = await self._output.frames.next_frame(self._seen)
        ticks = round(frame.pts * frame.time_base * CLOCK_RATE) if frame.pts is not None and frame.time_base else 0
        if source != self._source:
            self._source = source
            self._offset = self._last_pts + FRAME_TICKS - ticks
        pts = max(ticks + self._offset, self._last_pts + 1)
        self._last_pts = pts
        # A frame of its own: encoders run on other threads and may touch the frame they are given.
        copy = VideoFrame.from_ndarray(self._output.frames.planes(), format="yuv420p")
        copy.pts = pts
        copy.time_base = TIME_BASE
        return copy
