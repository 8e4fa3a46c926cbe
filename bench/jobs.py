"""`python -m bench.jobs`: a live peer's output fps with a render job running vs without.

Starts `python -m server` as a subprocess on a fresh data dir, connects one aiortc peer (the
tests' client, sending numbered 320x240 frames at `--fps`), and counts the stylized frames it
gets back in three windows: live alone, live with an offline render job running, live alone
again. Writes the figures and the command line as JSON under `bench/results/`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.result_file import save
from pipeline.models import ensure_tiny_model
from server.config import load_config
from server.testing.clips import make_clip
from server.testing.rtc_client import RtcClient, connect
from server.testing.servers import ROOT, server_process, wait_ready

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model spec the server runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measuring window")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate the live peer sends")
    parser.add_argument("--clip-size", default="640x360", help="WxH of the clip the job renders")
    parser.add_argument("--live-share", type=float, help="[jobs] live_share for the server (default: config)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON result")
    return parser.parse_args(argv)


async def live_fps(client: RtcClient, seconds: float) -> float:
    start_count, started = len(client.received), time.monotonic()
    await asyncio.sleep(seconds)
    return (len(client.received) - start_count) / (time.monotonic() - started)


async def job_state(http: aiohttp.ClientSession, base: str, job_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/jobs/{job_id}") as response:
        job: dict[str, Any] = await response.json()
        return job


async def start_job(http: aiohttp.ClientSession, base: str, clip: bytes) -> dict[str, Any]:
    """Upload the clip and return once the job has rendered its first frames."""
    form = aiohttp.FormData()
    form.add_field("file", clip, filename="clip.mp4")
    async with http.post(f"{base}/api/jobs", data=form) as response:
        job: dict[str, Any] = await response.json()
        if response.status != 202:
            raise RuntimeError(f"job refused: {response.status} {job}")
    async with asyncio.timeout(60):
        while True:
            if (await job_state(http, base, job["id"]))["frames_done"] > 0:
                return job
            await asyncio.sleep(0.1)


async def measure(args: argparse.Namespace, data_dir: Path, clip: bytes) -> dict[str, Any]:
    env = {"STYLIZE_LOGGING_LEVEL": "WARNING"}
    if args.live_share is not None:
        env["STYLIZE_JOBS_LIVE_SHARE"] = str(args.live_share)
    server = server_process(data_dir, data_dir / "server.log", model=args.model, env=env)
    async with server as running, aiohttp.ClientSession() as http:
        base = running.url
        await wait_ready(http, base, within_s=600.0)
        client = await connect(http, f"{base}/api/offer", fps=args.fps)
        try:
            await client.wait_frames(10)
            await asyncio.sleep(2.0)  # let the peer's bitrate and the engine settle
            alone_before = await live_fps(client, args.seconds)

            job = await start_job(http, base, clip)
            done_before = (await job_state(http, base, job["id"]))["frames_done"]
            started = time.monotonic()
            with_job = await live_fps(client, args.seconds)
            state = await job_state(http, base, job["id"])
            job_fps_with_live = (state["frames_done"] - done_before) / (time.monotonic() - started)
            if state["status"] != "processing":
                raise RuntimeError(f"the job ended inside the window ({state['status']}); use a longer clip")
            async with http.post(f"{base}/api/jobs/{job['id']}/cancel") as response:
                response.raise_for_status()

            alone_after = await live_fps(client, args.seconds)
        finally:
            await client.close()

        job = await start_job(http, base, clip)
        done_before = (await job_state(http, base, job["id"]))["frames_done"]
        started = time.monotonic()
        await asyncio.sleep(min(args.seconds, 5.0))
        job_fps_alone = ((await job_state(http, base, job["id"]))["frames_done"] - done_before) / (
            time.monotonic() - started
        )
        async with http.post(f"{base}/api/jobs/{job['id']}/cancel") as response:
            response.raise_for_status()

    baseline = (alone_before + alone_after) / 2
    return {
        "live_fps_alone_before": round(alone_before, 2),
        "live_fps_with_job": round(with_job, 2),
        "live_fps_alone_after": round(alone_after, 2),
        "live_fps_ratio": round(with_job / baseline, 3) if baseline else None,
        "job_fps_with_live": round(job_fps_with_live, 2),
        "job_fps_alone": round(job_fps_alone, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    width, height = (int(side) for side in args.clip_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as folder:
        data_dir = Path(folder) / "data"
        data_dir.mkdir()
        if args.model == "tiny":
            # Build the tiny model once in the project's data dir and share it.
            models = ROOT / "data" / "models"
            await asyncio.to_thread(ensure_tiny_model, models / "tiny")
            (data_dir / "models").symlink_to(models)
        # Long enough that the job outlasts the window it is measured in, even on a fast machine.
        seconds = max(60.0, args.seconds * 12)
        clip = await asyncio.to_thread(
            make_clip, Path(folder) / "clip.mp4", seconds=seconds, fps=30, width=width, height=height
        )
        figures = await measure(args, data_dir, await asyncio.to_thread(clip.read_bytes))
    # Thread counts and STYLIZE_ overrides change the figures a lot on small machines: record them.
    env = {name: value for name, value in os.environ.items() if name in THREAD_VARIABLES or name.startswith("STYLIZE_")}
    return {
        "bench": "jobs",
        "command": shlex.join(
            [*(f"{name}={value}" for name, value in env.items()), "python", "-m", "bench.jobs", *sys.argv[1:]]
        ),
        "model": args.model,
        "live_peer": {"size": "320x240", "fps_sent": args.fps},
        "job_clip": {"size": f"{width}x{height}", "fps": 30, "seconds": seconds},
        "window_s": args.seconds,
        "live_share": load_config().jobs.live_share if args.live_share is None else args.live_share,
        **figures,
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = asyncio.run(run(args))
    path = save(args.out, result, "jobs")
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
