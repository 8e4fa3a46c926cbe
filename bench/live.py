"""The live path under load: N aiortc peers over loopback at 30 fps against a real server.

    python -m bench.live --model tiny --peers 1,4 --seconds 15

Per peer: output fps, round trip p50/p95 (camera frame sent -> its stylized frame received, matched
by pts after a short strength-0 phase reads each peer's pts offset from the pictures) and dropped
frames; latency in the first and the last third of the run, to show it stays flat. Also the
control-to-pixel latency: from an OSC or HTTP strength change to the first frame that obeys it.
Writes JSON with the command line under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pythonosc.udp_client import SimpleUDPClient

from server import keys
from server.config import load_config
from server.testing.rtc_client import TICKS_PER_FRAME, RtcClient, connect, pattern_frame, read_index
from server.testing.servers import RunningServer, start_server, stop_server

RESULTS = Path(__file__).resolve().parent / "results"


def _is_plain(received: Any) -> bool:
    """True when a frame is the untouched camera picture (strength 0)."""
    expected = pattern_frame(read_index(received.frame)).astype(np.int16)
    return float(np.abs(received.frame.to_ndarray(format="rgb24").astype(np.int16) - expected).mean()) < 12


async def _calibrate(client: RtcClient) -> int:
    await client.wait_frames(10, timeout=60)
    sample = client.received[-6:]
    return int(np.median([r.pts - read_index(r.frame) * TICKS_PER_FRAME for r in sample]))


async def run_peers(running: RunningServer, peers: int, seconds: float, strength: float) -> dict[str, Any]:
    await _patch(running, {"strength": 0.0})
    clients = [await connect(running.http, running.url("/api/offer")) for _ in range(peers)]
    try:
        offsets = [await _calibrate(c) for c in clients]
        await _patch(running, {"strength": strength})
        await asyncio.sleep(1.0)
        starts = [len(c.received) for c in clients]
        began = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - began
        rows = []
        for client, offset, start in zip(clients, offsets, starts, strict=True):
            got = client.received[start:]
            trips = []
            for r in got:
                sent = client.source.sent_at.get(round((r.pts - offset) / TICKS_PER_FRAME))
                if sent is not None:
                    trips.append(r.at - sent)
            third = max(1, len(trips) // 3)
            stats = running.app[keys.PEERS].sessions[client.stream_id].stats
            rows.append(
                {
                    "fps_out": round(len(got) / elapsed, 2),
                    "round_trip_ms_p50": round(statistics.median(trips) * 1000, 1) if trips else None,
                    "round_trip_ms_p95": round(float(np.percentile(trips, 95)) * 1000, 1) if trips else None,
                    "round_trip_ms_first_third_p50": round(statistics.median(trips[:third]) * 1000, 1)
                    if trips
                    else None,
                    "round_trip_ms_last_third_p50": round(statistics.median(trips[-third:]) * 1000, 1)
                    if trips
                    else None,
                    "frames_dropped_server": stats.frames_dropped,
                }
            )
        return {
            "peers": peers,
            "aggregate_fps_out": round(sum(float(r["fps_out"] or 0) for r in rows), 2),
            "per_peer": rows,
        }
    finally:
        for client in clients:
            await client.close()


async def control_to_pixel(running: RunningServer, changes: int) -> dict[str, Any]:
    """Alternate strength 0.8 -> 0 over OSC and 0 -> 0.8 over HTTP; time to the first obeying frame."""
    await _patch(running, {"strength": 0.8})
    client = await connect(running.http, running.url("/api/offer"))
    osc = SimpleUDPClient("127.0.0.1", running.app[keys.OSC].port)
    timings: dict[str, list[float]] = {"osc": [], "http": []}
    try:
        await client.wait_frames(10, timeout=60)
        for i in range(changes):
            source = "osc" if i % 2 == 0 else "http"
            want_plain = source == "osc"
            seen = len(client.received)
            changed = time.monotonic()
            if source == "osc":
                osc.send_message("/stylize/strength", 0.0)
            else:
                await _patch(running, {"strength": 0.8})
            deadline = changed + 10
            while time.monotonic() < deadline:
                fresh = client.received[seen:]
                hit = next((r for r in fresh if _is_plain(r) == want_plain), None)
                if hit is not None:
                    timings[source].append(hit.at - changed)
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.3)
    finally:
        await client.close()
    every = timings["osc"] + timings["http"]
    return {
        "changes": changes,
        "p50_ms": round(statistics.median(every) * 1000, 1),
        "osc_p50_ms": round(statistics.median(timings["osc"]) * 1000, 1),
        "http_p50_ms": round(statistics.median(timings["http"]) * 1000, 1),
    }


async def _patch(running: RunningServer, body: dict[str, Any]) -> None:
    async with running.http.patch(running.url("/api/settings"), json=body) as response:
        response.raise_for_status()


async def amain(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    config = load_config(
        overrides={
            "server": {"port": 0, "data_dir": str(args.data_dir), "max_peers": 16},
            "model": {"id": args.model, "resolution": args.resolution},
            "osc": {"port": 0},
            "security": {"rate_limit_per_s": 0},
        }
    )
    running = await start_server(config)
    try:
        runs = [await run_peers(running, int(n), args.seconds, args.strength) for n in args.peers.split(",")]
        control = await control_to_pixel(running, args.changes)
        engine = running.app[keys.ENGINE].describe()
    finally:
        await stop_server(running)
    if len(runs) > 1:
        ratio = runs[-1]["aggregate_fps_out"] / max(runs[0]["aggregate_fps_out"], 1e-9)
    else:
        ratio = None
    return {
        "command": " ".join(["python -m bench.live", *argv]),
        "engine": engine,
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "runs": runs,
        "aggregate_ratio_last_vs_first": round(ratio, 2) if ratio is not None else None,
        "control_to_pixel": control,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--resolution", type=int, default=0)
    parser.add_argument("--peers", default="1,4")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = asyncio.run(amain(args, argv))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"live-{args.model.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
