"""The one fan-out of stylized frames: readers get the newest, never a queue; subscribers hear each frame once."""

from __future__ import annotations

import asyncio

import numpy as np
from av import VideoFrame

from server.live.frame_fanout import FrameFanout


def _frame(level: int) -> VideoFrame:
    return VideoFrame.from_ndarray(np.full((96, 64), level, dtype=np.uint8), format="yuv420p")


async def test_a_slow_reader_gets_the_newest_frame_and_skips_the_rest() -> None:
    fanout = FrameFanout()
    heard: list[tuple[int, str]] = []
    stop = fanout.subscribe(lambda frame, source: heard.append((int(frame.to_ndarray(threads=1)[0, 0]), source)))
    waiting = asyncio.create_task(fanout.next_frame(0))
    await asyncio.sleep(0)
    assert not waiting.done()
    for level in (10, 20, 30):
        fanout.publish(_frame(level), "s1")
    version, frame, source = await waiting
    assert (version, source) == (3, "s1") and frame is fanout.newest  # the newest, not the first
    assert int(fanout.planes()[0, 0]) == 30
    stop()
    fanout.publish(_frame(40), "s2")
    assert heard == [(10, "s1"), (20, "s1"), (30, "s1")]
    assert (await fanout.next_frame(3))[0] == 4
