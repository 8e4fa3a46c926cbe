"""The live path across processes: a front and 1, then 2 workers on this box, the peers in client processes.

    python -m bench.cluster --model tiny --resolution 256 --size 256 --workers 1,2 --peers 4 --seconds 15
    python -m bench.cluster --model arch:sd-turbo --size 512 --workers 1,2 --gpus 2 --peers 8   # a GPU per worker
    python -m bench.cluster --model arch:sd-turbo --size 512 --workers 1,2 --gpus 1 --peers 8   # two on one GPU

For each worker count: redis-server on a free port, the workers (worker i on GPU i mod `--gpus`; on the
CPU without) and a front, as `make cluster` runs them (`server.testing.cluster`). The peers of
`bench.live`'s client processes offer through the front and stream to their workers; `bench.live`
measures each run at strength 0 and at `--strength` (output fps, round trips, the CPU of every node,
the engines' busy ratio and batches from the front's /metrics, which sums the workers'), then the
control-to-pixel latency across nodes: OSC and HTTP changes made on the front, timed to the first
frame a worker sends that obeys. The summary puts the most workers' fps against one worker's (the
scaling ratio). The CPU time stolen from this VM by its host during the measurements (/proc/stat) is
reported beside the figures. JSON with the command line goes under bench/results/.
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

from bench.live import Server, control_to_pixel, live_options, run_peers
from bench.result_file import save
from server.testing.cluster import ClusterOnThisBox, cluster_view, workers_ready
from server.testing.servers import free_port


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total else None


async def measure(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"bench-cluster-{workers}-"))
    osc_port = free_port()
    env = {
        "STYLIZE_SERVER_MAX_PEERS": str(args.peers + 1),
        "STYLIZE_MODEL_RESOLUTION": str(args.resolution),
    }
    box = ClusterOnThisBox(root, args.data_dir, model=args.model, env=env, prefix=f"bench{workers}")
    await box.start_redis()
    try:
        for index in range(workers):
            pinned = {"CUDA_VISIBLE_DEVICES": str(index % args.gpus)} if args.gpus else {}
            await box.start("worker", env=pinned)
        front = await box.start("front", env={"STYLIZE_OSC_ENABLED": "true", "STYLIZE_OSC_PORT": str(osc_port)})
        async with aiohttp.ClientSession() as http:
            await workers_ready(http, front, workers, within_s=600)
            server = Server(http, front.url, [node.pid for node in box.alive()], osc_port)
            before = cpu_ticks()
            runs = [await run_peers(server, args.peers, strength, args) for strength in (0.0, args.strength)]
            control = await control_to_pixel(server, args.changes, args.size) if args.changes else None
            stolen = steal_percent(before, cpu_ticks())
            view = await cluster_view(http, front)
    finally:
        await box.close()
    return {
        "workers": workers,
        "devices": [worker.get("device") for worker in view["workers"]],
        "runs": runs,
        "control_to_pixel": control,
        "cpu_steal_percent": stolen,
        "logs": str(root),
    }


async def amain(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    counts = [int(n) for n in args.workers.split(",")]
    results = [await measure(count, args) for count in counts]
    stylized = {result["workers"]: result["runs"][-1] for result in results}
    fewest, most = min(stylized), max(stylized)
    summary = {f"fps_{count}_workers": run["fps_out_total"] for count, run in stylized.items()} | {
        f"control_to_pixel_p50_ms_{result['workers']}_workers": (result["control_to_pixel"] or {}).get("p50_ms")
        for result in results
    }
    if most != fewest:
        ratio = stylized[most]["fps_out_total"] / max(stylized[fewest]["fps_out_total"], 1e-9)
        summary[f"scaling_{most}_vs_{fewest}_workers"] = round(ratio, 2)
    return {
        "command": " ".join(["python -m bench.cluster", *argv]),
        "device": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "camera": {"size": args.size, "fps": args.fps},
        "peers": args.peers,
        "results": results,
        "summary": summary,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    live_options(parser)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, one cluster each")
    parser.add_argument("--peers", type=int, default=4, help="peers streaming through the front")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs the workers are pinned to, round robin; 0 = CPU")
    args = parser.parse_args(argv)
    result = asyncio.run(amain(args, argv))
    save(args.out, result, "cluster", args.model)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
