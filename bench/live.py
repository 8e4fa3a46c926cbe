"""The live path under load, measured from outside: the server in a process of its own, its peers in others.

    python -m bench.live --model tiny --peers 1,2,4,8,12,16 --seconds 15 --size 512
    python -m bench.live --model tiny --size 256 --peers 1,4 --engine-batch 4 --server-cpus 0 --client-cpus 1

A load generator must never share the server's GIL or its process, so `python -m server` runs as a
subprocess and the peers are spread over `bench.live_client` processes. For each peer count it runs
twice: at strength 0 (the model is skipped: the transport floor) and at `--strength`. Per run: output
fps per peer and in all, round trip p50/p95 (matched by pts) and its first vs last third, the
server's CPU-ms per output frame (from /proc), the engine's busy ratio, mean batch and idle gap
(from /metrics). `--engine-batch N` also measures the engine alone at batch N in the same run, so the
server's throughput can be put against what its engine can do: fed the cameras' frames (which it
converts and resizes, as in the server) and frames at the model's size (its best case).
`--server-cpus` and `--client-cpus` keep the server (and the engine alone) and the load generators on
CPUs of their own, so the clients' codecs do not take the server's CPU on a small box; the clients'
CPU is reported either way. Then the control-to-pixel latency: an OSC or HTTP strength change to the
first frame that obeys it. JSON with the command line goes under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from pythonosc.udp_client import SimpleUDPClient

from bench.result_file import save
from server.testing.rtc_client import RtcClient, connect, is_plain
from server.testing.servers import ROOT, free_port, on_cpus, server_process, wait_ready

RESULTS = Path(__file__).resolve().parent / "results"
SETTLE_S = 1.0  # after a strength change, before measuring
PEER_NAME = "bench"  # with --name-peers, peers are named bench<process>-<peer> (a recording needs a name)
START_MARGIN_S = 1.0  # time for every client process to read its `go` line


class Server:
    """The server under test (its process, or a cluster's front and workers), with what the benchmark reads of it."""

    def __init__(self, http: aiohttp.ClientSession, url: str, pids: list[int], osc_port: int) -> None:
        self.http = http
        self.url = url
        self.pids = pids
        self.osc_port = osc_port

    async def patch(self, body: dict[str, Any]) -> None:
        async with self.http.patch(f"{self.url}/api/settings", json=body) as response:
            response.raise_for_status()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.http.get(f"{self.url}/metrics") as response:
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def cpu_s(self) -> float:
        """User + system seconds the server's processes have used."""
        return process_cpu_s(self.pids)


def process_cpu_s(pids: list[int]) -> float:
    """User + system seconds these processes have used (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def _start_clients(server: Server, peers: int, processes: int, args: argparse.Namespace) -> list[Any]:
    shares = [peers // processes + (1 if i < peers % processes else 0) for i in range(processes)]
    clients = []
    for index, share in enumerate(s for s in shares if s):
        command = [sys.executable, "-m", "bench.live_client", "--url", server.url, "--peers", str(share)]
        command += ["--size", str(args.size), "--fps", str(args.fps)]
        if args.name_peers:
            command += ["--name-prefix", f"{PEER_NAME}{index}-"]
        clients.append(
            await asyncio.create_subprocess_exec(
                *command,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=on_cpus(args.client_cpus),
            )
        )
    return clients


async def run_peers(server: Server, peers: int, strength: float, args: argparse.Namespace) -> dict[str, Any]:
    await server.patch({"strength": 0.0})  # clients calibrate on the untouched pictures
    clients = await _start_clients(server, peers, min(peers, args.clients), args)
    try:
        for client in clients:
            assert client.stdout is not None
            line = await asyncio.wait_for(client.stdout.readline(), 300)
            if line.strip() != b"calibrated":
                raise RuntimeError(f"a client process failed before measuring: {line!r}")
        await server.patch({"strength": strength})
        await asyncio.sleep(SETTLE_S)
        start_at = time.time() + START_MARGIN_S
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(f"go {start_at} {args.seconds}\n".encode())
            await client.stdin.drain()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        metrics_before, cpu_before = await server.metrics(), server.cpu_s()
        clients_before = process_cpu_s([client.pid for client in clients])
        await asyncio.sleep(args.seconds)
        metrics_after, cpu_after = await server.metrics(), server.cpu_s()
        clients_cpu = process_cpu_s([client.pid for client in clients]) - clients_before
        reports = []
        for client in clients:
            out, _ = await asyncio.wait_for(client.communicate(), 120)
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for client in clients:
            if client.returncode is None:
                client.kill()
                await client.wait()
    per_peer = [peer for report in reports for peer in report["peers"]]
    return {
        "peers": peers,
        "strength": strength,
        "client_processes": len(clients),
        **_latency([trip for peer in per_peer for trip in peer["round_trips_s"]]),
        "fps_out_total": round(sum(peer["fps_out"] for peer in per_peer), 2),
        "fps_out_per_peer": [round(peer["fps_out"], 2) for peer in per_peer],
        "latency_ms_p50_per_peer": [_ms(_median(peer["round_trips_s"])) for peer in per_peer],
        **_server_side(metrics_before, metrics_after, cpu_after - cpu_before, args.seconds),
        "clients_cpu_percent": round(100 * clients_cpu / args.seconds, 1),
    }


def _latency(trips: list[float]) -> dict[str, Any]:
    """p50/p95 over every matched frame; p50 of the first and the last third (in arrival order per peer)."""
    if not trips:
        return {"latency_ms_p50": None, "latency_ms_p95": None}
    third = max(1, len(trips) // 3)
    return {
        "latency_ms_p50": _ms(statistics.median(trips)),
        "latency_ms_p95": _ms(float(np.percentile(trips, 95))),
        "latency_ms_first_third_p50": _ms(statistics.median(trips[:third])),
        "latency_ms_last_third_p50": _ms(statistics.median(trips[-third:])),
    }


def _server_side(before: dict[Any, float], after: dict[Any, float], cpu_s: float, seconds: float) -> dict[str, Any]:
    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    frames_out = delta("stylize_frames_out_total")
    batches = delta("stylize_batch_size_count")
    gaps = delta("stylize_engine_idle_gap_seconds_count")
    return {
        "server_frames_out": int(frames_out),
        "server_cpu_ms_per_frame": round(cpu_s * 1000 / frames_out, 2) if frames_out else None,
        "server_cpu_percent": round(100 * cpu_s / seconds, 1),
        "engine_busy_ratio": round(delta("stylize_engine_busy_seconds_total") / seconds, 3),
        "engine_mean_batch": round(delta("stylize_batch_size_sum") / batches, 2) if batches else None,
        "engine_idle_gap_ms_mean": round(delta("stylize_engine_idle_gap_seconds_sum") * 1000 / gaps, 3)
        if gaps
        else None,
        "engine_idle_gap_ms_p50_at_most": _bucket_median(before, after, "stylize_engine_idle_gap_seconds_bucket"),
        "frames_dropped": {
            reason: int(delta("stylize_frames_dropped_total", reason=reason)) for reason in ("engine", "send", "error")
        },
    }


def _bucket_median(before: dict[Any, float], after: dict[Any, float], name: str) -> float | None:
    """The upper bound (ms) of the histogram bucket holding the median of what the window added."""
    bounds = sorted(
        (float(dict(labels)["le"]), after[(n, labels)] - before.get((n, labels), 0.0))
        for (n, labels) in after
        if n == name
    )
    total = bounds[-1][1] if bounds else 0.0
    if not total:
        return None
    return next(round(le * 1000, 3) for le, count in bounds if count >= total / 2)


async def engine_alone(args: argparse.Namespace, frame_size: int) -> dict[str, Any]:
    """`bench.engine` at `--engine-batch` with the same model and size, as a process of its own, fed
    `frame_size`² frames (0: the model's size, so no resize and the least colour conversion)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "bench.engine", "--model", args.model, "--data-dir", str(args.data_dir)]
        command += ["--resolution", str(args.resolution), "--batch-sizes", str(args.engine_batch)]
        command += ["--frame-size", str(frame_size)]
        command += ["--seconds", str(args.seconds), "--out", out]
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, preexec_fn=on_cpus(args.server_cpus)
        )
        if await process.wait() != 0:
            raise RuntimeError(f"{' '.join(command)} failed")
        result = await asyncio.to_thread(_read_result, Path(out))
    rows = {row["mode"]: row for row in result["engine"] if not row.get("graphs")}
    return {mode: {k: row[k] for k in ("frames_per_s", "mean_batch", "busy_ratio")} for mode, row in rows.items()}


def _read_result(folder: Path) -> Any:
    return json.loads(next(folder.glob("engine-*.json")).read_text())


async def control_to_pixel(server: Server, changes: int, size: int) -> dict[str, Any]:
    """Alternate strength 0.8 -> 0 over OSC and 0 -> 0.8 over HTTP; time to the first frame that obeys."""
    await server.patch({"strength": 0.8})
    client = await connect(server.http, f"{server.url}/api/offer", size=(size, size))
    osc = SimpleUDPClient("127.0.0.1", server.osc_port)
    timings: dict[str, list[float]] = {"osc": [], "http": []}
    try:
        await client.wait_frames(10, timeout=120)
        for i in range(changes):
            source = "osc" if i % 2 == 0 else "http"
            seen = len(client.received)
            changed = time.monotonic()
            if source == "osc":
                osc.send_message("/stylize/strength", 0.0)
            else:
                await server.patch({"strength": 0.8})
            hit = await _first_obeying(client, seen, want_plain=source == "osc")
            if hit is not None:
                timings[source].append(hit - changed)
            await asyncio.sleep(0.3)
    finally:
        await client.close()
    every = timings["osc"] + timings["http"]
    return {
        "changes": changes,
        "p50_ms": _ms(_median(every)),
        "osc_p50_ms": _ms(_median(timings["osc"])),
        "http_p50_ms": _ms(_median(timings["http"])),
    }


async def _first_obeying(client: RtcClient, seen: int, want_plain: bool, within_s: float = 10.0) -> float | None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for received in client.received[seen:]:
            if is_plain(received.frame) == want_plain:
                return received.at
        seen = len(client.received)
        await asyncio.sleep(0.002)
    return None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def amain(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    peer_counts = [int(n) for n in args.peers.split(",")]
    osc_port = free_port()
    env = {
        "STYLIZE_SERVER_MAX_PEERS": str(max(peer_counts) + 1),
        # Every client process offers from 127.0.0.1 at once: none of them may supersede another's.
        "STYLIZE_SERVER_MAX_UNCONNECTED_PER_CLIENT": str(max(peer_counts) + 1),
        "STYLIZE_SECURITY_RATE_LIMIT_PER_S": "0",
        "STYLIZE_MODEL_RESOLUTION": str(args.resolution),
        "STYLIZE_OSC_ENABLED": "true",
        "STYLIZE_OSC_PORT": str(osc_port),
    }
    # Alone with the cameras' frames (what the server's engine converts and resizes: like for like),
    # and with frames at the model's size (the engine's best case).
    alone = (
        {"camera_frames": await engine_alone(args, args.size), "model_frames": await engine_alone(args, 0)}
        if args.engine_batch
        else None
    )
    log = Path(tempfile.mkdtemp(prefix="bench-live-")) / "server.log"
    async with (
        aiohttp.ClientSession() as http,
        server_process(args.data_dir, log, model=args.model, env=env, cpus=args.server_cpus) as proc,
    ):
        await wait_ready(http, proc.url, within_s=600)
        server = Server(http, proc.url, [proc.process.pid], osc_port)
        async with http.get(f"{proc.url}/readyz") as response:
            engine = await response.json()
        runs = [
            await run_peers(server, peers, strength, args) for peers in peer_counts for strength in (0.0, args.strength)
        ]
        control = await control_to_pixel(server, args.changes, args.size) if args.changes else None
    stylized = [run for run in runs if run["strength"] > 0]
    summary: dict[str, Any] = {}
    if len(stylized) > 1:
        summary["fps_ratio_most_vs_fewest_peers"] = round(
            stylized[-1]["fps_out_total"] / max(stylized[0]["fps_out_total"], 1e-9), 2
        )
    at_batch = next((run for run in stylized if run["peers"] == args.engine_batch), None)
    if alone is not None and at_batch is not None:
        for frames, rows in alone.items():
            best = max(row["frames_per_s"] for row in rows.values())
            key = f"server_vs_engine_alone_at_{args.engine_batch}_{frames}"
            summary[key] = round(at_batch["fps_out_total"] / best, 3)
    return {
        "command": " ".join(["python -m bench.live", *argv]),
        "device": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "server_cpus": sorted(args.server_cpus or []),
        "client_cpus": sorted(args.client_cpus or []),
        "server_engine": engine,
        "camera": {"size": args.size, "fps": args.fps},
        "engine_alone": alone,
        "runs": runs,
        "summary": summary,
        "control_to_pixel": control,
        "server_log": str(log),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def live_options(parser: argparse.ArgumentParser) -> None:
    """The options of a live run (model, cameras, peers' client processes, strength, control changes)."""
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--resolution", type=int, default=0, help="model resolution; 0 = the model's native size")
    parser.add_argument("--size", type=int, default=512, help="camera frames are size x size")
    parser.add_argument("--fps", type=float, default=30.0, help="camera frames per second of each peer")
    parser.add_argument("--clients", type=int, default=4, help="client processes the peers are spread over")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--changes", type=int, default=20, help="control-to-pixel changes (0 = skip)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name-peers", action="store_true", help=f"name the peers {PEER_NAME}<process>-<peer>")
    parser.add_argument(
        "--server-cpus", type=cpu_list, help="CPUs the server (and the engine alone) run on, e.g. 0 or 0-3"
    )
    parser.add_argument(
        "--client-cpus", type=cpu_list, help="CPUs the client processes and this one run on, e.g. 1 or 4-7"
    )


def cpu_list(text: str) -> set[int]:
    """'0', '0,2' or '4-7' as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n")[0])
    live_options(parser)
    parser.add_argument("--peers", default="1,2,4,8,12,16")
    parser.add_argument("--engine-batch", type=int, default=0, help="also measure the engine alone at this batch")
    args = parser.parse_args(argv)
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)  # this process runs a client too (control to pixel)
    result = asyncio.run(amain(args, argv))
    save(args.out, result, "live", args.model)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
