"""One load-generator process of the live benchmark: `--peers` aiortc peers against a running server.

    python -m bench.live_client --url http://127.0.0.1:8080 --peers 4 --size 512 --fps 30

Run by `bench.live`, never by hand. It connects its peers while the server's strength is 0, reads each
peer's pts offset from the pictures (the index drawn into every frame), prints `calibrated`, and
waits for `go <start_at> <seconds>` on stdin (a wall-clock start shared by every client process).
Then it records which frames come back and when, and prints one JSON line: per peer, the output
fps and every round trip (camera frame sent -> its stylized frame received, matched by pts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import numpy as np

from server.testing.rtc_client import TICKS_PER_FRAME, RtcClient, connect, read_index

CALIBRATION_FRAMES = 10


async def _calibrate(client: RtcClient) -> int:
    """The receiver's pts of frame 0: pts keep their spacing through aiortc but not their origin."""
    await client.wait_frames(CALIBRATION_FRAMES, timeout=120)
    sample = client.received[-6:]
    return int(np.median([r.pts - read_index(r.frame) * TICKS_PER_FRAME for r in sample]))


def _measure(client: RtcClient, offset: int, began: float, ended: float) -> dict[str, Any]:
    trips = []
    frames = 0
    for received in client.received:
        if not began <= received.at <= ended:
            continue
        frames += 1
        sent = client.source.sent_at.get(round((received.pts - offset) / TICKS_PER_FRAME))
        if sent is not None:
            trips.append(received.at - sent)
    return {"stream_id": client.stream_id, "fps_out": frames / (ended - began), "round_trips_s": trips}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        offer = f"{args.url}/api/offer"
        clients = [
            await connect(http, offer, fps=args.fps, size=(args.size, args.size), name=_name(args.name_prefix, index))
            for index in range(args.peers)
        ]
        try:
            offsets = [await _calibrate(client) for client in clients]
            print("calibrated", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            _, start_at, seconds = line.split()
            # The shared start is on the wall clock; the frames are timed on this process's monotonic clock.
            began = time.monotonic() + float(start_at) - time.time()
            await asyncio.sleep(max(0.0, began - time.monotonic()) + float(seconds))
            ended = began + float(seconds)
            return {"peers": [_measure(c, o, began, ended) for c, o in zip(clients, offsets, strict=True)]}
        finally:
            for client in clients:
                await client.close()


def _name(prefix: str, index: int) -> str | None:
    """The stream name of this process's peer `index` (so it can be recorded), or none."""
    return f"{prefix}{index}" if prefix else None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live_client", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--size", type=int, default=512, help="camera frames are size x size")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--name-prefix", default="", help="name the peers <prefix>0, <prefix>1, ...")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
