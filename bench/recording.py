"""`python -m bench.recording`: what recording every peer costs the live path, in one run.

    python -m bench.recording --model tiny --peers 4 --seconds 15 --size 256

The live benchmark's set-up (`bench.live`: the server in a process of its own, the peers named and
spread over client processes): at `--strength`, the peers alone, then the same with a recording of
every peer's name, then alone again (a drift between the two plain runs is the noise floor).
Per run: output fps, round trip p50/p95, the server's CPU-ms per frame; per recording: frames kept,
frames its writer dropped, bytes. JSON with the command line goes under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.live import PEER_NAME, Server, live_options, run_peers
from bench.result_file import save
from server.testing.servers import free_port, server_process, wait_ready


def peer_names(peers: int, processes: int) -> list[str]:
    """The names `run_peers` gives the peers with --name-peers (process by process, as it spreads them)."""
    shares = [peers // processes + (1 if i < peers % processes else 0) for i in range(processes)]
    return [f"{PEER_NAME}{index}-{peer}" for index, share in enumerate(s for s in shares if s) for peer in range(share)]


async def recorded(server: Server, names: list[str], peers: int, args: argparse.Namespace) -> dict[str, Any]:
    ids = []
    for name in names:
        async with server.http.post(f"{server.url}/api/outputs/{name}/recordings") as response:
            if response.status != 201:
                raise RuntimeError(f"recording {name} refused: {response.status} {await response.text()}")
            ids.append((await response.json())["id"])
    try:
        run = await run_peers(server, peers, args.strength, args)
    finally:
        kept = []
        for recording_id in ids:
            async with server.http.post(f"{server.url}/api/recordings/{recording_id}/stop") as response:
                body = await response.json()
                kept.append({key: body[key] for key in ("name", "frames", "dropped", "bytes", "duration_s")})
            async with server.http.delete(f"{server.url}/api/recordings/{recording_id}"):
                pass
    return {**run, "recordings": kept}


async def amain(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    osc_port = free_port()
    env = {
        "STYLIZE_SERVER_MAX_PEERS": str(args.peers + 1),
        # Every client process offers from 127.0.0.1 at once: none of them may supersede another's.
        "STYLIZE_SERVER_MAX_UNCONNECTED_PER_CLIENT": str(args.peers + 1),
        "STYLIZE_SECURITY_RATE_LIMIT_PER_S": "0",
        "STYLIZE_MODEL_RESOLUTION": str(args.resolution),
        "STYLIZE_OSC_ENABLED": "true",
        "STYLIZE_OSC_PORT": str(osc_port),
        "STYLIZE_RECORDINGS_DIR": tempfile.mkdtemp(prefix="bench-recordings-"),
    }
    args.name_peers = True
    names = peer_names(args.peers, min(args.peers, args.clients))
    log = Path(tempfile.mkdtemp(prefix="bench-recording-")) / "server.log"
    async with (
        aiohttp.ClientSession() as http,
        server_process(args.data_dir, log, model=args.model, env=env, cpus=args.server_cpus) as proc,
    ):
        await wait_ready(http, proc.url, within_s=600)
        server = Server(http, proc.url, [proc.process.pid], osc_port)
        plain = await run_peers(server, args.peers, args.strength, args)
        with_recordings = await recorded(server, names, args.peers, args)
        plain_again = await run_peers(server, args.peers, args.strength, args)
    return {
        "command": " ".join(["python -m bench.recording", *argv]),
        "device": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "camera": {"size": args.size, "fps": args.fps},
        "runs": {"plain": plain, "recording": with_recordings, "plain_again": plain_again},
        "summary": {
            "fps_ratio_recording_vs_plain": round(
                with_recordings["fps_out_total"] / max(plain["fps_out_total"], plain_again["fps_out_total"], 1e-9), 3
            ),
            "p50_ms": {
                "plain": plain["latency_ms_p50"],
                "recording": with_recordings["latency_ms_p50"],
                "plain_again": plain_again["latency_ms_p50"],
            },
        },
        "server_log": str(log),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.recording", description=__doc__.split("\n")[0])
    live_options(parser)
    parser.add_argument("--peers", type=int, default=4, help="peers streaming, each of them recorded in the second run")
    args = parser.parse_args(argv)
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    result = asyncio.run(amain(args, argv))
    save(args.out, result, "recording", args.model)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
